"""The ``JobStore`` seam: where admitted jobs wait, who runs them, and where their results live.

One store instance belongs to one replica (its *consumer*). The dispatcher side of a replica
``claim``s queued jobs, runs them, and ``finish``es them (first result wins, the claim is
acknowledged); jobs it claimed but will not run go back with ``requeue``; ``touch`` keeps its
claims from being taken over; ``reclaim`` takes over jobs another consumer claimed and then
stopped touching (it died). The API side ``enqueue``s (atomically with the idempotency key and
the admission limits), ``get``s, ``cancel``s and ``wait_finished``es on any replica.

``memory`` holds everything in this process; ``redis`` shares it between replicas.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from scheduler.jobs import Job, JobMode, JobResult, JobStatus
from scheduler.jobs.delivery import Delivery


@dataclass(frozen=True, slots=True)
class Admission:
    """Limits checked atomically with an enqueue, over every replica's unfinished jobs.

    ``None``: no limit. Depth and cost count jobs from enqueue until ``finish`` (queued,
    claimed or running): what the fleet still owes."""

    max_depth: int | None = None
    max_cost: float | None = None
    tenant_max_jobs: int | None = None
    tenant_max_cost: float | None = None


class StoreFull(Exception):
    """An ``Admission`` limit refused the job; ``reason`` is a bounded metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # queue_full | queue_cost_full | tenant_jobs_quota | tenant_cost_quota


class StoreUnavailable(Exception):
    """The shared store cannot be reached (after its retries): 503, nothing was queued."""


@dataclass(frozen=True, slots=True)
class Enqueued:
    job: Job
    created: bool  # False: the idempotency key named an existing job, returned instead


class CancelOutcome(enum.StrEnum):
    CANCELLED = "cancelled"  # it was queued: now cancelled for good
    SIGNALLED = "signalled"  # it was claimed: every replica's cancel listener is told
    FINISHED = "finished"  # it had ended already
    UNKNOWN = "unknown"


CancelListener = Callable[[str], None]  # called with a job id on each replica


class JobStore(Protocol):
    shared: bool  # True: other replicas see these jobs (drain gives queued ones back)

    async def start(self, on_cancel: CancelListener) -> None:
        """Connect; ``on_cancel`` is called for a cancelled job another replica may be running."""

    async def close(self) -> None: ...

    async def enqueue(self, job: Job, admission: Admission) -> Enqueued:
        """Queue ``job`` unless its idempotency key is taken (then the existing job) or a limit
        refuses it (``StoreFull``)."""

    async def claim(self, endpoint: str, max_jobs: int, block_s: float) -> list[Job]:
        """Up to ``max_jobs`` queued jobs of ``endpoint`` for this consumer, oldest first, waiting
        up to ``block_s`` for the first. Jobs finished meanwhile (cancelled) are skipped."""

    def push_arrivals(self, endpoint: str, take: Callable[[list[Job]], None] | None) -> bool:
        """Claim ``endpoint``'s jobs as they are enqueued and hand them to ``take`` at once
        (``None``: stop). False if this store cannot (its consumers ``claim``)."""

    async def finish(self, job: Job) -> bool:
        """Record ``job``'s terminal state and result and release its claim. First result wins:
        False if the job had already ended (another replica ran it too)."""

    async def requeue(self, job_ids: list[str]) -> None:
        """Give claimed, unstarted jobs back to the queue for any consumer."""

    async def touch(self) -> None:
        """Renew every claim this consumer holds (they would be reclaimed after the timeout)."""

    async def reclaim(self, endpoint: str, min_idle_s: float, max_jobs: int) -> list[Job]:
        """Take over jobs claimed by consumers that have not touched them for ``min_idle_s``."""

    async def cancel(self, job_id: str) -> CancelOutcome: ...

    async def get(self, job_id: str) -> Job | None: ...

    async def by_idempotency_key(self, endpoint: str, tenant: str, key: str) -> Job | None: ...

    async def wait_finished(self, job_id: str, timeout_s: float) -> Job | None:
        """The job once it ended (on any replica), or its current state after ``timeout_s``."""

    async def backlog(self, endpoint: str) -> tuple[int, float]:
        """Unfinished jobs of ``endpoint`` and their cost, over the whole fleet."""

    def healthy(self) -> bool:
        """False while the store is unreachable (``/readyz`` says 503)."""


DeliveryFactory = Callable[[JobMode], Delivery]


def to_record(job: Job, now_mono: float) -> dict[str, str]:
    """A job as flat string fields (a Redis hash); times relative to its creation."""
    record = {
        "id": job.id,
        "endpoint": job.endpoint,
        "route": job.route,
        "payload": "" if job.payload is None else job.payload.decode("ascii"),
        "cost": repr(job.cost),
        "priority": str(job.priority),
        "timeout_s": repr(job.timeout_s),
        "mode": job.mode,
        "created_wall": repr(job.created_wall),
        "tenant": job.tenant,
        "status": str(job.status),
        "attempts": str(job.attempts),
    }
    optional = {
        "idempotency_key": job.idempotency_key,
        "webhook_url": job.webhook_url,
        "request_id": job.request_id,
        "error": job.error,
        "error_status": None if job.error_status is None else str(job.error_status),
        "history": json.dumps(job.history) if job.history else None,
        "queued_s": None if job.started_mono is None else repr(job.started_mono - job.created_mono),
        "total_s": None
        if job.finished_mono is None
        else repr(job.finished_mono - job.created_mono),
        "result": None if job.result is None else json.dumps(result_fields(job.result)),
    }
    record.update({k: v for k, v in optional.items() if v is not None})
    return record


def result_fields(result: JobResult) -> dict[str, Any]:
    return {"status_code": result.status_code, "content_type": result.content_type,
            "body": result.body}  # fmt: skip


def from_record(
    record: dict[str, str], delivery: Delivery, now_mono: float, now_wall: float
) -> Job:
    """A job rebuilt on any replica: its monotonic times re-based on this process's clock."""
    created_wall = float(record["created_wall"])
    created_mono = now_mono - max(0.0, now_wall - created_wall)
    queued_s, total_s = record.get("queued_s"), record.get("total_s")
    result = json.loads(record["result"]) if "result" in record else None
    job = Job(
        id=record["id"],
        endpoint=record["endpoint"],
        route=record["route"],
        payload=record["payload"].encode("ascii") if record.get("payload") else None,
        cost=float(record["cost"]),
        priority=int(record["priority"]),
        timeout_s=float(record["timeout_s"]),
        mode=record["mode"],  # type: ignore[arg-type]  # written from a JobMode by to_record
        delivery=delivery,
        created_mono=created_mono,
        idempotency_key=record.get("idempotency_key"),
        webhook_url=record.get("webhook_url"),
        request_id=record.get("request_id"),
        tenant=record["tenant"],
        error_status=int(record["error_status"]) if "error_status" in record else None,
        history=tuple(json.loads(record["history"])) if "history" in record else (),
        created_wall=created_wall,
        status=JobStatus(record["status"]),
        attempts=int(record["attempts"]),
        started_mono=None if queued_s is None else created_mono + float(queued_s),
        finished_mono=None if total_s is None else created_mono + float(total_s),
        error=record.get("error"),
    )
    job.result = None if result is None else JobResult(**result)
    return job


class FleetPolling(Protocol):
    """Who may call ``/route/`` for an endpoint while no worker is known to be ready.

    A replica with no lease of its own routes only if the fleet is *warm* (some replica got a
    worker recently) or it holds the endpoint's poll lease; so a cold fleet makes the route
    calls of one replica, not one per replica."""

    async def may_route(self, endpoint: str, ttl_s: float) -> bool:
        """True if warm, or the poll lease is (now) this replica's: acquired or renewed."""

    async def got_worker(self, endpoint: str, warm_s: float) -> None:
        """A route call answered READY: mark warm for ``warm_s`` and give the lease up."""

    async def no_worker(self, endpoint: str) -> None:
        """A route call answered WAITING: not warm any more (others stop probing)."""

    async def release(self, endpoint: str) -> None:
        """Give the poll lease up if held (drain, or the backlog is gone)."""


class LocalPolling:
    """One replica: it is always the poller."""

    async def may_route(self, endpoint: str, ttl_s: float) -> bool:
        return True

    async def got_worker(self, endpoint: str, warm_s: float) -> None:
        return None

    async def no_worker(self, endpoint: str) -> None:
        return None

    async def release(self, endpoint: str) -> None:
        return None


def check_admission(
    admission: Admission, job: Job, endpoint: tuple[int, float], tenant: tuple[int, float]
) -> tuple[str, str] | None:
    """(reason, message) if ``job`` does not fit beside the unfinished jobs and cost counted."""
    jobs, cost = endpoint
    tenant_jobs, tenant_cost = tenant
    if admission.max_depth is not None and jobs + 1 > admission.max_depth:
        return "queue_full", f"the endpoint has {jobs} of {admission.max_depth} jobs queued"
    if admission.max_cost is not None and cost + job.cost > admission.max_cost:
        return (
            "queue_cost_full",
            f"the endpoint has {cost:g} of {admission.max_cost:g} cost units queued",
        )
    if admission.tenant_max_jobs is not None and tenant_jobs + 1 > admission.tenant_max_jobs:
        return "tenant_jobs_quota", (f"tenant {job.tenant} has {tenant_jobs} of "
                                     f"{admission.tenant_max_jobs} jobs queued")  # fmt: skip
    tenant_cost_limit = admission.tenant_max_cost
    if tenant_cost_limit is not None and tenant_cost + job.cost > tenant_cost_limit:
        return "tenant_cost_quota", (f"tenant {job.tenant} has {tenant_cost:g} of "
                                     f"{tenant_cost_limit:g} cost units queued")  # fmt: skip
    return None
