"""Synchronous run and the transparent proxy: the worker's answer streams through as it comes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from scheduler.api.context import CONFIG, SERVICE
from scheduler.api.errors import REQUEST_ID, REQUEST_ID_HEADER, ApiError, read_json
from scheduler.api.jobs import admit, parse_submission
from scheduler.api.models import check_worker_route
from scheduler.jobs import Job, JobMode, JobResult, JobStatus
from scheduler.jobs.admission import Submission
from scheduler.jobs.delivery import (
    AnswerStart,
    BufferedDelivery,
    CallerGone,
    StreamBroken,
    StreamDelivery,
)

# Hop-by-hop or re-computed headers never copied from the worker to the caller.
_DROPPED_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date",
     "proxy-authenticate", "proxy-connection", "te", "trailer", "upgrade"}
)  # fmt: skip
RESULT_WAIT_MARGIN_S = 5.0  # past the job's own timeout: its replica reports the expiry first
_JOB_HEADER_FIELDS = {
    "X-Job-Priority": "priority",
    "X-Job-Cost": "cost",
    "X-Job-Timeout": "timeout_s",
}


async def run_job(request: web.Request) -> web.StreamResponse:
    endpoint = request.match_info["endpoint"]
    request.app[SERVICE].dispatcher(endpoint)
    body = await read_json(request)
    if isinstance(body, dict) and body.get("webhook") is not None:
        raise ApiError(422, "invalid_field", "webhook: only for async jobs", "webhook")
    sub = parse_submission(request, endpoint, body)
    if sub.idempotency_key is not None:
        raise ApiError(422, "invalid_field", "idempotency_key: only for async jobs",
                       "idempotency_key")  # fmt: skip
    return await stream_job(request, sub, "sync")


def endpoint_and_route(request: web.Request) -> tuple[str, str]:
    """The configured endpoint (else 404) and the worker route of a ``.../{endpoint}/{tail}``
    URL (else 422 naming ``route``)."""
    endpoint = request.match_info["endpoint"]
    request.app[SERVICE].dispatcher(endpoint)
    try:
        return endpoint, check_worker_route("/" + request.match_info["tail"])
    except ValueError as exc:
        raise ApiError(422, "invalid_field", f"route: {exc}", "route") from exc


async def proxy(request: web.Request) -> web.StreamResponse:
    endpoint, route = endpoint_and_route(request)
    payload = await read_json(request)
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_field", "body: must be a JSON object", "body")
    fields: dict[str, Any] = {"route": route, "payload": payload}
    for header, name in _JOB_HEADER_FIELDS.items():
        if header in request.headers:
            fields[name] = header_number(request.headers[header])
    return await stream_job(request, parse_submission(request, endpoint, fields), "proxy")


async def stream_job(request: web.Request, sub: Submission, mode: JobMode) -> web.StreamResponse:
    service = request.app[SERVICE]
    streamed = isinstance(sub.payload, dict) and sub.payload.get("stream") is True
    if service.store.shared and not streamed and sub.session is None:
        return await answer_from_store(request, sub, mode)
    delivery = StreamDelivery()
    job = (await admit(request, sub, mode, delivery, stream=True)).job
    try:
        start = await delivery.response
    except asyncio.CancelledError:
        # The caller went away (handler cancellation): nobody wants this answer any more.
        await service.cancel(job)
        raise
    if start is None:
        raise unanswered(job)
    return await pipe(request, job, start, delivery)


async def answer_from_store(request: web.Request, sub: Submission, mode: JobMode) -> web.Response:
    """Shared store: the job may run on any replica; its stored answer comes back here."""
    service = request.app[SERVICE]
    delivery = BufferedDelivery(request.app[CONFIG].server.max_result_bytes)
    job = (await admit(request, sub, mode, delivery)).job
    try:
        ended = await service.store.wait_finished(job.id, job.timeout_s + RESULT_WAIT_MARGIN_S)
    except asyncio.CancelledError:
        await service.cancel(job)
        raise
    if ended is None or not ended.finished:
        raise ApiError(504, "expired", "no result within the job's timeout", "timeout_s",
                       {"X-Job-Id": job.id})  # fmt: skip
    if ended.result is None:
        raise unanswered(ended)
    return stored_response(request, ended, ended.result)


def stored_response(request: web.Request, job: Job, result: JobResult) -> web.Response:
    body = result.body
    if result.content_type == "application/json":
        raw = json.dumps(body, separators=(",", ":")).encode()
    else:
        raw = b"" if body is None else str(body).encode()
    headers = {"X-Job-Id": job.id, REQUEST_ID_HEADER: request[REQUEST_ID]}
    return web.Response(status=result.status_code, body=raw, headers=headers,
                        content_type=result.content_type or "application/octet-stream")  # fmt: skip


def header_number(value: str) -> Any:
    """``"9"`` -> 9, ``"0.5"`` -> 0.5; anything else stays a string for validation to refuse."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def unanswered(job: Job) -> ApiError:
    headers = {"X-Job-Id": job.id}
    message = job.error or str(job.status)
    if job.status is JobStatus.EXPIRED:
        return ApiError(504, "expired", message, "timeout_s", headers)
    if job.status is JobStatus.CANCELLED:
        return ApiError(409, "cancelled", message, None, headers)
    if job.error_status is not None:
        return ApiError(job.error_status, "session_gone", message, "session", headers)
    return ApiError(502, "job_failed", message, None, headers)


async def pipe(
    request: web.Request, job: Job, start: AnswerStart, delivery: StreamDelivery
) -> web.StreamResponse:
    """The worker's answer to the caller, from what the attempt read of it (``read_head``): a
    whole small answer goes out with its headers in one write; anything else is copied chunk by
    chunk as it comes. If the worker breaks off after that, the caller's connection is closed
    before the answer's end (a chunked answer lacks its last chunk): the caller's client sees an
    answer cut short, never one that looks complete."""
    upstream = start.response
    headers = answer_headers(request, job, upstream)
    error: BaseException | None = None
    if start.whole:
        out: web.StreamResponse = web.Response(
            status=upstream.status, reason=upstream.reason, body=start.head, headers=headers
        )
    else:
        out = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    try:
        await out.prepare(request)
        if not start.whole:
            await out.write(start.head)
            error = await copy_body(upstream, out)
        if error is None:
            await out.write_eof()
        elif request.transport is not None:
            request.transport.close()  # what was written still goes out, then the connection ends
    except (ConnectionError, aiohttp.ClientConnectionResetError) as exc:
        error = CallerGone(str(exc))
    except asyncio.CancelledError:
        delivery.stream_finished(CallerGone("caller went away"))
        raise
    delivery.stream_finished(error)
    return out


def answer_headers(
    request: web.Request, job: Job, upstream: aiohttp.ClientResponse
) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.headers.items():
        if name.lower() not in _DROPPED_HEADERS:
            headers.add(name, value)
    headers["X-Job-Id"] = job.id
    headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
    return headers


async def copy_body(upstream: aiohttp.ClientResponse, out: web.StreamResponse) -> Exception | None:
    """Copies chunk by chunk; returns the upstream error that cut the answer short, if any."""
    while True:
        try:
            chunk = await upstream.content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return StreamBroken(f"worker stream broke: {type(exc).__name__}")
        if not chunk:
            return None
        await out.write(chunk)
