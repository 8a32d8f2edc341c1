"""One attempt of one job on one lease: the HTTP exchange, the deadline, the delivery."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from scheduler.core.assignments import Lease
from scheduler.core.retry import AttemptKind as Kind
from scheduler.core.retry import Outcome, classify_status
from scheduler.dispatch.seams import Forwarder
from scheduler.jobs import Job, JobResult
from scheduler.jobs.delivery import (
    AnswerCutShort,
    CallerGone,
    MalformedAnswer,
    ResultTooLarge,
    StreamBroken,
)
from scheduler.vast.types import WorkerError


@dataclass(frozen=True, slots=True)
class AttemptResult:
    kind: Kind
    status: int | None = None
    error_kind: str | None = None
    detail: str | None = None
    headers_after_s: float | None = None


async def attempt(
    forwarder: Forwarder,
    job: Job,
    lease: Lease,
    remaining_s: float,
    may_run_again: Callable[[], bool],
    clock: Callable[[], float],
) -> AttemptResult:
    started = clock()
    try:
        async with asyncio.timeout(max(0.0, remaining_s)) as deadline:
            post = forwarder.post(lease.answer, job.route, job.payload or b"{}", lease.session_id)
            async with post as resp:
                waited = clock() - started
                # Answers that never reach the caller: the job goes to another worker instead.
                if classify_status(resp.status) is Outcome.RETRY_ELSEWHERE:
                    return AttemptResult(Kind.ANSWERED, resp.status, headers_after_s=waited)
                if resp.status >= 500 and may_run_again():
                    return AttemptResult(Kind.RETRYABLE_5XX, resp.status, headers_after_s=waited)
                # The answer has started: from here the deadline no longer applies.
                deadline.reschedule(None)
                try:
                    body = await job.delivery.deliver(resp)
                except MalformedAnswer as exc:
                    return AttemptResult(Kind.MALFORMED, resp.status, "malformed", str(exc), waited)
                except AnswerCutShort as exc:
                    # No answer, nothing sent to the caller, the job ran: retried as after a
                    # malformed answer (idempotent endpoints only), under its own label.
                    return AttemptResult(Kind.MALFORMED, resp.status, "cut_short", str(exc), waited)
                job.result = JobResult(resp.status, resp.content_type, body)
                return AttemptResult(Kind.ANSWERED, resp.status, headers_after_s=waited)
    except TimeoutError:
        return AttemptResult(Kind.EXPIRED, detail="deadline passed before a worker answered")
    except WorkerError as exc:
        kinds = {"timeout": Kind.TIMEOUT, "lost": Kind.LOST}
        kind = kinds.get(exc.kind, Kind.GONE)
        return AttemptResult(kind, error_kind=exc.kind, detail=str(exc))
    except CallerGone:
        return AttemptResult(Kind.CALLER_GONE, detail="caller went away")
    except (ResultTooLarge, StreamBroken) as exc:
        return AttemptResult(Kind.BROKEN, detail=str(exc))
