"""Domain errors to HTTP answers, in one table; every error body is JSON and names the field."""

from __future__ import annotations

import codecs
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from scheduler import fastjson
from scheduler.api.context import CONFIG
from scheduler.core.queue import QueueFull
from scheduler.dispatch.pinned import NoWorkerReady, SessionBusy, SessionGone, SessionNotFound
from scheduler.jobs.admission import (
    DeadlineUnmeetable,
    NotAccepting,
    Overloaded,
    TooCostly,
    UnknownEndpoint,
)
from scheduler.store.base import StoreUnavailable
from scheduler.vast.types import RouteError, RouteRateLimited, SessionRefused, VastError

log = structlog.get_logger("scheduler.api")
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
DEFAULT_MAX_JSON_DEPTH = 64
SESSION_REFUSED_RETRY_S = 5


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
    StoreUnavailable: lambda e: ApiError(503, "store_unavailable",
                                         "the job store cannot be reached; retry", None,
                                         {"Retry-After": "1"}),
    TooCostly: lambda e: ApiError(422, "invalid_field", f"cost: {e}", "cost"),
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
    if isinstance(exc, VastError):
        return upstream_error(exc)
    if isinstance(exc, Overloaded):
        return ApiError(429, exc.reason, str(exc), None,
                        {"Retry-After": str(exc.retry_after_s)})  # fmt: skip
    for kind, make in _SIMPLE.items():
        if isinstance(exc, kind):
            return make(exc)
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        kept = {k: v for k, v in exc.headers.items() if k.lower() in _KEPT_HEADERS}
        return ApiError(exc.status, re.sub(r"\W+", "_", exc.reason.lower()), exc.reason,
                        headers=kept)  # fmt: skip
    return None


def upstream_error(exc: VastError) -> ApiError:
    """Vast or a worker failed a call made for this request (opening a caller session)."""
    if isinstance(exc, RouteRateLimited):
        retry_after = max(1, round(exc.retry_after_s or 1))
        return ApiError(503, "upstream_rate_limited", "Vast is rate limiting route calls",
                        headers={"Retry-After": str(retry_after)})  # fmt: skip
    if isinstance(exc, SessionRefused) and exc.status == 429:
        return ApiError(429, "session_refused", "the worker is at its session limit",
                        headers={"Retry-After": str(SESSION_REFUSED_RETRY_S)})  # fmt: skip
    where = "route call" if isinstance(exc, RouteError) else "worker"
    return ApiError(502, "upstream_error", f"{where} failed: {exc.kind}")


# Headers of aiohttp's own errors that carry meaning (405 names the allowed methods).
_KEPT_HEADERS = frozenset({"allow"})


def too_deep(value: Any, max_depth: int) -> bool:
    """Whether JSON ``value`` nests objects and arrays more than ``max_depth`` levels."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


async def read_json(request: web.Request) -> Any:
    """The body as JSON: UTF-8 only, at most ``server.max_json_depth`` levels deep; else 400
    naming ``body`` (413 past ``server.max_body_bytes``)."""
    config = request.app.get(CONFIG)
    max_depth = DEFAULT_MAX_JSON_DEPTH if config is None else config.server.max_json_depth
    raw = await request.read()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        value = fastjson.loads(raw)
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_json", "body is not valid UTF-8", "body") from exc
    except ValueError as exc:
        raise ApiError(400, "invalid_json", "body is not valid JSON", "body") from exc
    except RecursionError as exc:
        raise ApiError(400, "invalid_json", "body is nested too deeply", "body") from exc
    if too_deep(value, max_depth):
        raise ApiError(400, "invalid_json", f"body nests deeper than {max_depth} levels", "body")
    return value


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
