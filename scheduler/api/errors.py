"""Domain errors to HTTP answers, in one table; every error body is JSON and names the field."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from scheduler.core.queue import QueueFull
from scheduler.pinned import NoWorkerReady, SessionBusy, SessionGone, SessionNotFound
from scheduler.service import DeadlineUnmeetable, NotAccepting, UnknownEndpoint

log = structlog.get_logger("scheduler.api")
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def error_response(request: web.Request, error: ApiError) -> web.Response:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.field is not None:
        body["field"] = error.field
    return web.json_response(
        {"error": body, "request_id": request.get(REQUEST_ID)},
        status=error.status,
        headers=error.headers,
    )


def validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    message = str(first["msg"]).removeprefix("Value error, ")
    return ApiError(422, "invalid_field", f"{field}: {message}" if field else message, field)


_SIMPLE: dict[type[Exception], Callable[[Exception], ApiError]] = {
    UnknownEndpoint: lambda e: ApiError(404, "unknown_endpoint", f"no endpoint named {e}",
                                        "endpoint"),
    NotAccepting: lambda e: ApiError(503, "draining", "shutting down; retry elsewhere",
                                     headers={"Retry-After": "1"}),
    SessionNotFound: lambda e: ApiError(404, "unknown_session", f"no session {e}", "session"),
    SessionGone: lambda e: ApiError(410, "session_gone", str(e), "session"),
    SessionBusy: lambda e: ApiError(429, "session_busy", str(e), "session",
                                    {"Retry-After": "1"}),
    NoWorkerReady: lambda e: ApiError(503, "no_worker_ready", f"no worker ready: {e}", None,
                                      {"Retry-After": "5"}),
    QueueFull: lambda e: ApiError(429, "queue_full", str(e)),
    web.HTTPRequestEntityTooLarge: lambda e: ApiError(413, "body_too_large",
                                                      "request body is too large", "body"),
}  # fmt: skip


def translate(exc: Exception) -> ApiError | None:
    """The one table from domain errors to HTTP answers."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationError):
        return validation_error(exc)
    if isinstance(exc, DeadlineUnmeetable):
        return ApiError(429, "deadline_unmeetable", str(exc), "timeout_s",
                        {"Retry-After": str(max(1, round(exc.eta_s)))})  # fmt: skip
    for kind, make in _SIMPLE.items():
        if isinstance(exc, kind):
            return make(exc)
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return ApiError(exc.status, re.sub(r"\W+", "_", exc.reason.lower()), exc.reason)
    return None


async def read_json(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", "body is not valid JSON", "body") from exc
    except RecursionError as exc:
        raise ApiError(400, "invalid_json", "body is nested too deeply", "body") from exc


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get(REQUEST_ID_HEADER, "")
    if not _REQUEST_ID.fullmatch(request_id):
        request_id = secrets.token_hex(8)
    request[REQUEST_ID] = request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    metrics = request.app.get(METRICS_HOOK)
    started = time.monotonic()
    try:
        response = await handler(request)
    except Exception as exc:
        api_error = translate(exc)
        if api_error is None:
            log.exception("api.crashed", path=request.path)
            api_error = ApiError(500, "internal_error", "internal error")
        response = error_response(request, api_error)
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    if metrics is not None:
        metrics(request, response.status, time.monotonic() - started)
    return response


METRICS_HOOK: web.AppKey[Callable[[web.Request, int, float], None]] = web.AppKey("metrics_hook")
