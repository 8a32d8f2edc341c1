"""The job: what a caller submitted, where it stands, and what came back."""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from scheduler.jobs.delivery import CLOSED, Delivery

JobMode = Literal["async", "sync", "proxy"]


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    ROUTING = "routing"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


TERMINAL = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED}
)


CANCELLED_BY_CALLER = "cancelled by caller"
SHUTDOWN_REASON = "daemon shut down before the job finished"


def new_job_id() -> str:
    return "job_" + secrets.token_urlsafe(12)


@dataclass(slots=True)
class JobResult:
    status_code: int
    content_type: str | None
    body: Any = None  # parsed JSON, text, or None when it was streamed to a waiting caller


@dataclass(eq=False, slots=True)
class Job:
    id: str
    endpoint: str
    route: str
    payload: bytes | None = field(repr=False)  # the JSON-encoded payload; None once finished
    cost: float
    priority: int
    timeout_s: float
    mode: JobMode
    delivery: Delivery = field(repr=False)
    created_mono: float
    idempotency_key: str | None = None
    webhook_url: str | None = None
    request_id: str | None = None
    tenant: str = "default"
    pinned_session: str | None = None  # a caller session: the job runs on its worker only
    error_status: int | None = None  # the HTTP status a failure without an answer maps to
    history: tuple[str, ...] = ()  # why each earlier attempt did not end it
    created_wall: float = field(default_factory=time.time)
    status: JobStatus = JobStatus.QUEUED
    attempts: int = 0
    started_mono: float | None = None
    finished_mono: float | None = None
    # The worker's answer as (status code, content type, body), read and written through
    # ``result``: an exact tuple of plain values is one the garbage collector stops tracking,
    # so a retained finished job costs every full collection one object instead of three
    # (job, result, history list): 23 instead of 34-41 ms per 100,000 retained jobs.
    answer: tuple[int, str | None, Any] | None = field(default=None, repr=False)
    error: str | None = None
    cancel_requested: bool = False

    @property
    def result(self) -> JobResult | None:
        return None if self.answer is None else JobResult(*self.answer)

    @result.setter
    def result(self, value: JobResult | None) -> None:
        self.answer = None if value is None else (value.status_code, value.content_type,
                                                  value.body)  # fmt: skip

    @property
    def deadline(self) -> float:
        return self.created_mono + self.timeout_s

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def finish(self, status: JobStatus, now: float, error: str | None = None) -> bool:
        """Move to a terminal state once; later calls are ignored and return False."""
        if self.finished:
            return False
        self.status = status
        self.finished_mono = now
        self.error = error
        self.delivery.close()
        self.delivery = CLOSED  # the live one holds the worker's response: let it go
        self.payload = None  # a finished job is kept for its result only: free the request
        return True

    def public(self, now: float) -> dict[str, Any]:
        end = self.finished_mono if self.finished_mono is not None else now
        # A job that ended without starting (expired, cancelled) was queued until it ended.
        queued_until = self.started_mono if self.started_mono is not None else end
        view: dict[str, Any] = {
            "id": self.id,
            "endpoint": self.endpoint,
            "route": self.route,
            "status": str(self.status),
            "cost": self.cost,
            "priority": self.priority,
            "tenant": self.tenant,
            "attempts": self.attempts,
            "created_at": self.created_wall,
            "timings": {
                "queued_s": round(max(0.0, queued_until - self.created_mono), 6),
                "total_s": round(max(0.0, end - self.created_mono), 6),
            },
        }
        if self.idempotency_key is not None:
            view["idempotency_key"] = self.idempotency_key
        if self.history:
            view["history"] = list(self.history)
        if self.error is not None:
            view["error"] = self.error
        if (result := self.result) is not None:  # built afresh on each read: read it once
            view["result"] = {
                "status_code": result.status_code,
                "content_type": result.content_type,
                "body": result.body,
            }
        return view
