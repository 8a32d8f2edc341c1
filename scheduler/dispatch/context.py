"""What one endpoint's collaborators (routing, leasing, settling, the loop) share."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from scheduler.config import EndpointConfig
from scheduler.core.assignments import LeaseLimits, ReuseMode
from scheduler.core.capacity import CapacityPolicy
from scheduler.core.health import EjectionPolicy, RetryBudget
from scheduler.core.queue import JobQueue
from scheduler.core.retry import backoff_s
from scheduler.jobs import Job, JobStatus
from scheduler.observability.metrics import Metrics

log = structlog.get_logger("scheduler.dispatch")
FinishHook = Callable[[Job], None]
MAX_REMEMBERED_WORKERS = 4096


def reuse_mode(setting: str) -> ReuseMode:
    """``reuse`` as configured -> how leases start (``auto`` starts with sessions)."""
    return {"never": ReuseMode.NEVER, "sequential": ReuseMode.SEQUENTIAL}.get(
        setting, ReuseMode.SESSION
    )


def lease_limits(config: EndpointConfig) -> LeaseLimits:
    lc = config.lease
    return LeaseLimits(lc.ttl_s, lc.idle_close_s, min(lc.spare_close_s, lc.idle_close_s),
                       lc.min_budget_fraction,
                       sequential_rest_s=lc.sequential_rest_s)  # fmt: skip


def capacity_policy(config: EndpointConfig) -> CapacityPolicy | None:
    """None when the endpoint turns per-worker limits off."""
    c = config.capacity
    return CapacityPolicy(**c.model_dump(exclude={"enabled"})) if c.enabled else None


def max_concurrency(config: EndpointConfig) -> float:
    """The endpoint's cap on jobs routing or running; inf when none is set."""
    return math.inf if config.max_concurrency is None else config.max_concurrency


def ejection_policy(config: EndpointConfig) -> EjectionPolicy:
    ej = config.ejection
    return EjectionPolicy(ej.consecutive_failures, ej.base_s, ej.max_s)


def retry_budget(config: EndpointConfig) -> RetryBudget:
    rb = config.retry_budget
    return RetryBudget(rb.ratio, rb.min_retries, rb.window_s)


@dataclass(eq=False)
class EndpointContext:
    """The endpoint's name, live config, clock, queue and the jobs held here (queued, routing
    or running); ``wakeup`` makes the loop look again; ``finish`` ends a job once."""

    name: str
    config: EndpointConfig
    metrics: Metrics
    clock: Callable[[], float]
    rng: random.Random
    on_finish: FinishHook
    queue: JobQueue = field(init=False)
    jobs: dict[str, Job] = field(default_factory=dict)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.queue = JobQueue(self.config.queue.max_depth, self.config.tenant_weights)

    def backoff(self, errors: int) -> float:
        poll = self.config.poll
        return backoff_s(errors, poll.initial_s, poll.max_s, poll.multiplier, self.rng.random())

    def requeue_front(self, job: Job) -> None:
        job.status = JobStatus.QUEUED
        self.queue.requeue_front(job.id, job.priority, job.cost, job.deadline, job.tenant)

    def finish(self, job: Job, status: JobStatus, error: str | None = None) -> None:
        now = self.clock()
        if not job.finish(status, now, error):
            return
        if self.jobs.get(job.id) is job:
            del self.jobs[job.id]
        outcome = str(status)
        self.metrics.series(self.metrics.jobs_finished, self.name, outcome).inc()
        self.metrics.series(self.metrics.job_duration, self.name, outcome).observe(
            now - job.created_mono
        )
        log.info(
            "job.finished", job_id=job.id, endpoint=self.name, status=outcome,
            attempts=job.attempts, duration_s=round(now - job.created_mono, 6), error=error,
        )  # fmt: skip
        self.on_finish(job)
