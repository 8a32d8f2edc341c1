"""Health, readiness, status, metrics and config reload."""

from __future__ import annotations

import contextlib

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scheduler.api.context import METRICS, SERVICE
from scheduler.api.reload import reload, reload_answer, require_admin
from scheduler.api.vast_status import not_ready_reason
from scheduler.api.vast_status import status as full_status
from scheduler.jobs.service import SchedulerService
from scheduler.store.base import StoreUnavailable
from scheduler.vast.tls import WORKER_TLS

MAX_REASONS = 5  # endpoints named in one not-ready answer


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    service = request.app.get(SERVICE)
    if service is None or not service.accepting:
        return web.json_response({"status": "draining"}, status=503)
    if not service.store.healthy():
        return web.json_response({"status": "store_unavailable"}, status=503)
    reason = not_ready_reason(request.app)
    if reason is not None:
        return web.json_response({"status": "vast_keys_unavailable", "reason": reason}, status=503)
    refused = route_refused(service)
    if refused is not None:  # Vast answers 400/401 to route calls: nothing routes until fixed
        return web.json_response({"status": "route_refused", "reason": refused}, status=503)
    return web.json_response({"status": "ready"})


def route_refused(service: SchedulerService) -> str | None:
    """Why the daemon cannot route: endpoints whose route calls Vast refuses (400/401)."""
    reasons = [
        reason for d in service.dispatchers.values()
        if (reason := d.routing.refused_reason(d.ctx.clock())) is not None
    ]  # fmt: skip
    return "; ".join(reasons[:MAX_REASONS]) if reasons else None


async def status(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = full_status(request.app)
    trust = request.app.get(WORKER_TLS)
    if trust is not None:  # Vast's root for HTTPS workers: where from, fetched or why not
        body["worker_tls"] = trust.status()
    if service.store.shared:  # what the whole fleet still owes, beside this replica's view
        with contextlib.suppress(StoreUnavailable):
            for name, endpoint in body["endpoints"].items():
                jobs, cost = await service.store.backlog(name)
                endpoint["fleet"] = {"unfinished_jobs": jobs, "unfinished_cost": cost}
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def reload_config(request: web.Request) -> web.Response:
    """``POST /v1/admin/reload``: an admin token only; the answer says what changed or why not."""
    require_admin(request)
    return reload_answer(request, await reload(request.app, "http"))
