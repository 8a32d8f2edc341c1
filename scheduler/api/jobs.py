"""Async jobs: submit, look up, cancel."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from scheduler.api.auth import caller
from scheduler.api.context import CONFIG, SERVICE
from scheduler.api.errors import REQUEST_ID, ApiError, read_json
from scheduler.api.models import JobRequest
from scheduler.config import TENANT_NAME
from scheduler.core.queue import DEFAULT_TENANT
from scheduler.jobs import Job, JobMode
from scheduler.jobs.admission import NotAccepting, Overloaded, Quota, Submission
from scheduler.jobs.delivery import BufferedDelivery, Delivery
from scheduler.jobs.webhooks import check_webhook_url
from scheduler.store.base import Enqueued

TENANT_HEADER = "X-Tenant"


def parse_submission(request: web.Request, endpoint: str, body: Any) -> Submission:
    service = request.app[SERVICE]
    ep = service.dispatcher(endpoint).config
    parsed = JobRequest.model_validate(body)
    if parsed.timeout_s is not None and parsed.timeout_s > ep.max_timeout_s:
        raise ApiError(422, "invalid_field", f"timeout_s: must be <= {ep.max_timeout_s}",
                       "timeout_s")  # fmt: skip
    webhook_url = parsed.webhook.url if parsed.webhook else None
    if webhook_url is not None:
        problem = check_webhook_url(webhook_url, request.app[CONFIG].server.webhook)
        if problem is not None:
            raise ApiError(422, "invalid_field", f"webhook.url: {problem}", "webhook.url")
    return Submission(
        endpoint=endpoint,
        route=parsed.route,
        payload=parsed.payload,
        cost=parsed.cost,
        priority=parsed.priority,
        timeout_s=parsed.timeout_s,
        idempotency_key=parsed.idempotency_key,
        webhook_url=webhook_url,
        tenant=tenant_of(request),
        session=parsed.session,
        quota=quota_of(request),
    )


def tenant_of(request: web.Request) -> str:
    """The tenant whose share of the queue a job counts against: the token's name while auth
    is on (an ``X-Tenant`` naming another tenant is refused), the ``X-Tenant`` header if off."""
    header = request.headers.get(TENANT_HEADER)
    principal = caller(request)
    if principal is not None:
        if header is not None and header != principal.name:
            raise ApiError(403, "forbidden", f"{TENANT_HEADER}: this token's tenant is "
                           f"{principal.name}", TENANT_HEADER)  # fmt: skip
        return principal.name
    tenant = DEFAULT_TENANT if header is None else header  # present but empty: refused
    if not TENANT_NAME.fullmatch(tenant):
        raise ApiError(422, "invalid_field", f"{TENANT_HEADER}: letters, digits, . _ - (1-64)",
                       TENANT_HEADER)  # fmt: skip
    return tenant


def quota_of(request: web.Request) -> Quota | None:
    principal = caller(request)
    if principal is None or (principal.max_queued_jobs is None and
                             principal.max_queued_cost is None):  # fmt: skip
        return None
    return Quota(principal.max_queued_jobs, principal.max_queued_cost)


async def admit(
    request: web.Request, sub: Submission, mode: JobMode, delivery: Delivery, stream: bool = False
) -> Enqueued:
    service = request.app[SERVICE]
    try:
        return await service.submit(sub, mode, delivery, request.get(REQUEST_ID), stream)
    except Overloaded as exc:
        service.metrics.jobs_rejected.labels(sub.endpoint, exc.reason).inc()
        raise
    except NotAccepting:
        service.metrics.jobs_rejected.labels(sub.endpoint, "draining").inc()
        raise


async def submit_job(request: web.Request) -> web.Response:
    endpoint = request.match_info["endpoint"]
    service = request.app[SERVICE]
    service.dispatcher(endpoint)
    sub = parse_submission(request, endpoint, await read_json(request))
    delivery = BufferedDelivery(request.app[CONFIG].server.max_result_bytes)
    enqueued = await admit(request, sub, "async", delivery)
    job = enqueued.job
    if not enqueued.created:  # the idempotency key names an earlier job: that one, not a new one
        return web.json_response(
            service.view(job), status=200, headers={"Idempotent-Replayed": "true"}
        )
    eta_s = service.dispatcher(endpoint).eta_s()
    return web.json_response(
        {
            "id": job.id,
            "status": str(job.status),
            "cost": job.cost,
            "eta_s": None if eta_s is None else round(eta_s, 3),
        },
        status=202,
        headers={"Location": f"/v1/jobs/{job.id}"},
    )


async def find_job(request: web.Request) -> Job:
    """The job named in the URL; another tenant's job is as unknown as a missing one."""
    job = await request.app[SERVICE].lookup(request.match_info["job_id"])
    principal = caller(request)
    if job is None or (principal is not None and job.tenant != principal.name):
        raise ApiError(404, "unknown_job", "no such job (or it was forgotten)", "job_id")
    return job


async def get_job(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE].view(await find_job(request)))


async def cancel_job(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    job = await find_job(request)
    if not await service.cancel(job):
        raise ApiError(409, "already_finished", f"job is already {job.status}", "job_id")
    return web.json_response(service.view(job), status=202)
