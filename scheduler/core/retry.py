"""Classifying worker answers and computing back-off. Pure: randomness and time are passed in."""

from __future__ import annotations

import enum
import math


class Outcome(enum.Enum):
    SUCCESS = "success"  # 2xx: the answer goes to the caller
    RETRY_ELSEWHERE = "retry_elsewhere"  # the worker cannot take it now: route again
    FAIL = "fail"  # the job's own fault or the backend's: pass the answer through


# 401: bad or stale signature, 410: unknown session, 429: worker queue past max_queue_time.
_RETRY_STATUSES = frozenset({401, 410, 429})


def classify_status(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.SUCCESS
    if status in _RETRY_STATUSES:
        return Outcome.RETRY_ELSEWHERE
    return Outcome.FAIL


def worker_error_kind(status: int) -> str:
    """A bounded label for metrics and logs."""
    return {401: "unauthorized", 410: "session_gone", 422: "bad_envelope", 429: "overloaded"}.get(
        status, "server_error" if status >= 500 else "client_error"
    )


def backoff_s(
    attempt: int, initial_s: float, max_s: float, multiplier: float, jitter: float
) -> float:
    """Capped exponential back-off; ``jitter`` in [0, 1] spreads it over [50%, 100%] of the step."""
    exponent = max(0, attempt - 1)
    # Past the cap the power is never needed: stop before it overflows a float.
    if multiplier > 1 and exponent * math.log(multiplier) >= math.log(max(max_s / initial_s, 1.0)):
        step = max_s
    else:
        step = min(max_s, initial_s * multiplier**exponent)
    return step * (0.5 + 0.5 * min(1.0, max(0.0, jitter)))


class Action(enum.Enum):
    """What the dispatcher does after one attempt of a job on a lease."""

    SUCCEED = "succeed"  # 2xx delivered
    FAIL = "fail"  # final: the answer (if any) went to the caller
    # the worker is gone: drop its leases; the job goes elsewhere if it never reached the
    # worker, or (connection lost after sending) if it may run again
    REROUTE_GONE = "reroute_gone"
    REROUTE_EVICT = "reroute_evict"  # 401/410: drop this lease
    REROUTE_SHRINK = "reroute_shrink"  # 429: halve the lease's budget
    REROUTE_LEGACY = "reroute_legacy"  # 401 on a reused answer: replay-protected worker
    # 5xx, timeout or a malformed answer on an idempotent endpoint, within the retry budget
    RETRY = "retry"


class AttemptKind(enum.StrEnum):
    """How one attempt of a job on a worker ended."""

    ANSWERED = "answered"  # the worker answered ``status`` (delivered, or a re-route status)
    GONE = "gone"  # the request never reached the worker (refused, DNS, TLS): it is gone
    LOST = "lost"  # the connection broke after the request was sent, before an answer
    TIMEOUT = "timeout"  # no answer in time (it may have run)
    RETRYABLE_5XX = "retryable_5xx"  # a 5xx the endpoint allows to run again elsewhere
    MALFORMED = "malformed"  # a 2xx that is not what it says, or cut short before the caller
    EXPIRED = "expired"  # the job's deadline passed before a worker answered
    CALLER_GONE = "caller_gone"  # the caller left: nobody wants the answer
    BROKEN = "broken"  # the answer broke off after part of it reached the caller, or too large


# Outcomes after which the job may have run on the worker: only an idempotent one goes again.
MAY_HAVE_RUN = frozenset(
    {AttemptKind.TIMEOUT, AttemptKind.RETRYABLE_5XX, AttemptKind.MALFORMED, AttemptKind.LOST}
)
# Outcomes that end the job whatever the worker's state: no retry, no worker penalty.
FINAL = frozenset({AttemptKind.EXPIRED, AttemptKind.CALLER_GONE, AttemptKind.BROKEN})


def decide(kind: AttemptKind, status: int | None, reused: bool, detect_legacy: bool) -> Action:
    """What to do after an attempt; ``status`` is the worker's when it ``ANSWERED`` (the
    caller checks that a job which may have run may run again: ``MAY_HAVE_RUN``)."""
    if kind in (AttemptKind.GONE, AttemptKind.LOST):
        return Action.REROUTE_GONE
    if kind in MAY_HAVE_RUN:
        return Action.RETRY
    if kind != AttemptKind.ANSWERED or status is None:
        return Action.FAIL
    if 200 <= status < 300:
        return Action.SUCCEED
    if status == 401:
        return Action.REROUTE_LEGACY if reused and detect_legacy else Action.REROUTE_EVICT
    if status == 410:
        return Action.REROUTE_EVICT
    if status == 429:
        return Action.REROUTE_SHRINK
    return Action.FAIL
