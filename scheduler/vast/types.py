"""Typed results and errors of the Vast protocol. No I/O here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_STATUS_COUNT = re.compile(r"([A-Za-z][A-Za-z ]*?)\s*[:=]\s*(\d+)")


@dataclass(frozen=True, slots=True)
class Ready:
    """A worker assignment: the autoscaler's answer, kept verbatim as ``auth_data``."""

    url: str
    cost: float
    reqnum: int
    request_idx: int
    auth_data: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Waiting:
    """No worker is ready; poll again with ``request_idx`` to keep the place in Vast's queue."""

    status: str
    request_idx: int | None
    worker_counts: dict[str, int] = field(default_factory=dict)


RouteResult = Ready | Waiting


def summarise_counts(counts: dict[str, int]) -> str:
    """``scaled_to_zero`` | ``loading`` | ``all_busy`` | ``unknown`` from parsed worker counts."""
    if not counts:
        return "unknown"
    starting = sum(v for k, v in counts.items() if k in STARTING_STATES)
    if counts.get("ready", 0) > 0:
        return "all_busy"
    if starting > 0:
        return "loading"
    return "scaled_to_zero"


STARTING_STATES = frozenset(
    {"loading", "model_loading", "creating", "starting", "rebooting", "updating"}
)


def parse_status_counts(status: str) -> dict[str, int]:
    """``"Loading: 2, Ready: 0"`` -> ``{"loading": 2, "ready": 0}``; unknown shapes give ``{}``."""
    return {
        name.strip().lower().replace(" ", "_"): int(count)
        for name, count in _STATUS_COUNT.findall(status)
    }


class VastError(Exception):
    """Base of every error raised at the Vast boundary; messages never hold secrets."""

    kind = "error"


class RouteError(VastError):
    kind = "route_error"


class RouteBadRequest(RouteError):
    kind = "bad_request"


class RouteUnauthorized(RouteError):
    kind = "unauthorized"


class RouteRateLimited(RouteError):
    kind = "rate_limited"

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RouteServerError(RouteError):
    kind = "server_error"


class RouteTimeout(RouteError):
    kind = "timeout"


class RouteUnavailable(RouteError):
    kind = "unavailable"


class RouteKeyUnknown(RouteUnavailable):
    """No key for the endpoint yet (the account listing has not answered): backed off and
    tried again like an unreachable autoscaler; no job fails for it."""

    kind = "key_unknown"


class RouteMalformed(RouteError):
    kind = "malformed"


class RouteWorkerNotAllowed(RouteError):
    """A READY answer's worker is outside ``vast.worker_networks``: no job goes there.

    A plain ``RouteError`` (not ``RouteBadRequest``): the dispatcher backs off and routes
    again, since the autoscaler may pick an allowed worker next time; jobs that never get
    one end by their deadline or attempts."""

    kind = "worker_not_allowed"


class WorkerError(VastError):
    kind = "worker_error"


class WorkerGone(WorkerError):
    """Connection refused or reset: the worker was scaled down or preempted."""

    kind = "gone"


class WorkerLost(WorkerGone):
    """The connection broke after the request was (or may have been) sent, before an answer:
    a reset, a server disconnect. The worker may have run the job (at-most-once: only an
    idempotent endpoint runs it again). A plain ``WorkerGone`` is a request that provably
    never reached the worker: connection refused, DNS, a failed TLS handshake."""

    kind = "lost"


class SessionRefused(WorkerError):
    """The worker will not open a session: at ``max_sessions`` (429) or no session support."""

    kind = "session_refused"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # 429: at its limit for now; 404, 405: never


class WorkerTLSError(WorkerGone):
    """TLS with the worker failed: its certificate did not verify under Vast's root (fetched
    from the console, or ``vast.ca_bundle``), or the handshake broke."""

    kind = "tls"


class WorkerTimeout(WorkerError):
    kind = "timeout"


class VastRootUnavailable(WorkerError):
    """Vast's root certificate (for HTTPS workers) could not be fetched from the console or
    is not a certificate. Fetched again with back-off (``scheduler.vast.tls``); a job waits
    for it within its deadline, a session call for a few seconds."""

    kind = "tls_root"
