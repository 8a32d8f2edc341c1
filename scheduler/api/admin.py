"""Health, readiness, status and metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scheduler.api.context import METRICS, SERVICE


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    service = request.app.get(SERVICE)
    if service is None or not service.accepting:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ready"})


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE].status())


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
