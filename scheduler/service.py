"""The scheduler as the API sees it: admission, lookup, cancellation, drain."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from scheduler.config import AppConfig
from scheduler.core import cost
from scheduler.core.assignments import Lease
from scheduler.core.queue import QueueFull
from scheduler.dispatch import EndpointDispatcher, RouteRecord
from scheduler.jobs import Job, JobMode, new_job_id
from scheduler.observability.metrics import EndpointGauges, Metrics
from scheduler.pinned import SessionNotFound
from scheduler.seams import Forwarder, Router
from scheduler.store.memory import MemoryJobStore
from scheduler.vast.types import summarise_counts
from scheduler.webhooks import WebhookSender

log = structlog.get_logger("scheduler.service")
SWEEP_INTERVAL_S = 5.0


class UnknownEndpoint(Exception):
    pass


class DeadlineUnmeetable(Exception):
    def __init__(self, eta_s: float) -> None:
        super().__init__(f"the backlog needs about {eta_s:.0f}s, past the job's deadline")
        self.eta_s = eta_s


class NotAccepting(Exception):
    """The daemon is draining: new jobs go elsewhere."""


class Overloaded(Exception):
    """Admission refused for now (queue depth or cost, a tenant's quota): 429, retry later."""

    def __init__(self, reason: str, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.reason = reason  # also the jobs_rejected label: a bounded set of names
        self.retry_after_s = retry_after_s


class TooCostly(Exception):
    """A job that could never be admitted: its cost alone is over a limit (422, field cost)."""


@dataclass(frozen=True, slots=True)
class Quota:
    """How much one tenant may have queued, over all endpoints; None: unlimited."""

    max_jobs: int | None = None
    max_cost: float | None = None


@dataclass(frozen=True, slots=True)
class Submission:
    endpoint: str
    route: str | None
    payload: Any
    cost: float | None
    priority: int
    timeout_s: float | None
    idempotency_key: str | None
    webhook_url: str | None
    tenant: str = "default"
    session: str | None = None
    quota: Quota | None = None


class SchedulerService:
    def __init__(
        self,
        config: AppConfig,
        router: Router,
        forwarder: Forwarder,
        metrics: Metrics,
        webhooks: WebhookSender | None,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.store = MemoryJobStore(config.server.job_retention_s, config.server.max_jobs_retained)
        self.accepting = True
        self._activity = asyncio.Event()
        self._clock = clock
        self._webhooks = webhooks
        self.dispatchers = {
            name: EndpointDispatcher(
                name,
                ep,
                router,
                forwarder,
                metrics,
                self._job_finished,
                clock,
                rng,
                on_task_done=self._activity.set,
            )
            for name, ep in config.endpoints.items()
        }
        metrics.watch(self.gauges)

    def gauges(self) -> list[EndpointGauges]:
        return [d.gauges() for d in self.dispatchers.values()]

    def dispatcher(self, endpoint: str) -> EndpointDispatcher:
        found = self.dispatchers.get(endpoint)
        if found is None:
            raise UnknownEndpoint(endpoint)
        return found

    def submit(self, sub: Submission, mode: JobMode, delivery: Any, request_id: str | None) -> Job:
        """Admit a job or raise (``UnknownEndpoint``, ``NotAccepting``, ``Overloaded``,
        ``TooCostly``, ``DeadlineUnmeetable``, the pinned-session errors)."""
        dispatcher = self.dispatcher(sub.endpoint)
        if not self.accepting:
            raise NotAccepting()
        ep = dispatcher.config
        route = sub.route or ep.default_route
        estimator = cost.select(ep.cost, ep.routes, route)
        job_cost = cost.resolve(estimator, sub.payload, sub.cost)
        if estimator.calibrate and sub.cost is None:
            job_cost = cost.clamp(dispatcher.calibrator.apply(job_cost), estimator)
        timeout_s = sub.timeout_s or ep.default_timeout_s
        eta_s = dispatcher.eta_s()
        if ep.refuse_unmeetable_deadlines and eta_s is not None and eta_s > timeout_s:
            raise DeadlineUnmeetable(eta_s)
        job = Job(
            id=new_job_id(),
            endpoint=sub.endpoint,
            route=route,
            payload=json.dumps(
                sub.payload, separators=(",", ":")
            ).encode(),  # ASCII: lone surrogates too
            cost=job_cost,
            priority=sub.priority,
            timeout_s=timeout_s,
            mode=mode,
            delivery=delivery,
            created_mono=self._clock(),
            idempotency_key=sub.idempotency_key,
            webhook_url=sub.webhook_url,
            request_id=request_id,
            tenant=sub.tenant,
        )
        if sub.session is not None:
            pinned = dispatcher.sessions.find(sub.session)
            if pinned is not None and pinned.owner not in (None, sub.tenant):
                raise SessionNotFound(sub.session)
            dispatcher.submit_pinned(job, sub.session)
        else:
            self._check_room(dispatcher, job, sub.quota)
            try:
                dispatcher.submit(job)
            except QueueFull as exc:
                raise Overloaded("queue_full", str(exc), dispatcher.retry_after_s()) from exc
        self.store.add(job)
        return job

    def _check_room(self, dispatcher: EndpointDispatcher, job: Job, quota: Quota | None) -> None:
        """Refuse a job over the endpoint's queued-cost limit or its tenant's quota."""
        quota = quota or Quota()
        limits: list[tuple[str, str, float | None, Callable[[], float]]] = [
            ("queue_cost_full", "the endpoint", dispatcher.config.queue.max_cost,
             lambda: dispatcher.queue.queued_cost),
            ("tenant_cost_quota", f"tenant {job.tenant}", quota.max_cost,
             lambda: self.queued_by(job.tenant)[1]),
        ]  # fmt: skip
        for reason, whose, limit, queued_now in limits:
            if limit is None:
                continue
            if job.cost > limit:
                raise TooCostly(f"cost {job.cost:g} is over {whose}'s queued-cost limit {limit:g}")
            queued = queued_now()
            if queued + job.cost > limit:
                raise Overloaded(reason, f"{whose} has {queued:g} of {limit:g} cost units queued",
                                 dispatcher.retry_after_s())  # fmt: skip
        if quota.max_jobs is not None:
            jobs = self.queued_by(job.tenant)[0]
            if jobs >= quota.max_jobs:
                raise Overloaded("tenant_jobs_quota",
                                 f"tenant {job.tenant} has {jobs} of {quota.max_jobs} jobs queued",
                                 dispatcher.retry_after_s())  # fmt: skip

    def queued_by(self, tenant: str) -> tuple[int, float]:
        """A tenant's queued jobs and queued cost, over every endpoint."""
        jobs, total = 0, 0.0
        for d in self.dispatchers.values():
            jobs += d.queue.depth_by_tenant().get(tenant, 0)
            total += d.queue.cost_by_tenant().get(tenant, 0.0)
        return jobs, total

    def now(self) -> float:
        return self._clock()

    def view(self, job: Job) -> dict[str, Any]:
        return job.public(self._clock())

    def get(self, job_id: str) -> Job | None:
        self.store.sweep(self._clock())  # cheap: pops only what is due
        return self.store.get(job_id)

    def cancel(self, job: Job) -> bool:
        return self.dispatcher(job.endpoint).cancel(job)

    def _job_finished(self, job: Job) -> None:
        now = self._clock()
        self.store.mark_finished(job, now)
        if job.webhook_url is not None and self._webhooks is not None:
            task = self._webhooks.send(job.id, job.webhook_url, job.public(now))
            task.add_done_callback(lambda _: self._activity.set())

    def idle(self) -> bool:
        webhooks_pending = self._webhooks is not None and bool(self._webhooks.tasks)
        return not webhooks_pending and all(d.idle for d in self.dispatchers.values())

    def status(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "accepting": self.accepting,
            "endpoints": {name: endpoint_status(d, now) for name, d in self.dispatchers.items()},
        }

    async def sweep_forever(self) -> None:
        interval_s = min(SWEEP_INTERVAL_S, self.config.server.job_retention_s)
        while True:
            await asyncio.sleep(interval_s)
            self.store.sweep(self._clock())
            for dispatcher in self.dispatchers.values():
                await dispatcher.sessions.close_expired()

    async def drain(self, grace_s: float) -> bool:
        """Stop intake, let queued and running jobs finish for up to ``grace_s``; True if idle."""
        self.accepting = False
        log.info("daemon.draining", grace_period_s=grace_s)
        try:
            async with asyncio.timeout(grace_s):
                await self._until_idle()
        except TimeoutError:
            return False
        return True

    async def _until_idle(self) -> None:
        while not self.idle():
            self._activity.clear()
            await self._activity.wait()

    async def abort_remaining(self) -> None:
        for d in self.dispatchers.values():
            await d.abort("daemon shut down before the job finished")


def endpoint_status(d: EndpointDispatcher, now: float) -> dict[str, Any]:
    """One endpoint's live state for ``GET /v1/status`` and the status page."""
    return {
        "queue_depth": len(d.queue),
        "queued_cost": d.queue.queued_cost,
        "inflight": d.inflight,
        "max_concurrency": d.config.max_concurrency,
        "max_depth": d.config.queue.max_depth,
        "known_workers": sorted(d.known_workers),
        "leases": len(d.pool),
        "lease_workers": len(d.pool.workers()),
        "leased_budget": d.pool.budget(),
        "leased_inflight_cost": d.pool.inflight_cost(),
        "lease_details": [lease_view(lease, now) for lease in d.pool],
        "reuse": str(d.mode),
        "legacy_detected": d.legacy_detected,
        "polling": d.polling,
        "eta_s": d.eta_s(),
        "throughput_cost_per_s": d.throughput_cost_per_s,
        "calibration": {"ratio": d.calibrator.ratio, "samples": d.calibrator.samples},
        "last_no_worker": None
        if d.last_waiting is None
        else {
            "status": d.last_waiting.status,
            "worker_counts": d.last_waiting.worker_counts,
            "state": summarise_counts(d.last_waiting.worker_counts),
            "request_idx": d.last_waiting.request_idx,
        },
        "recent_routes": [route_view(r, now) for r in reversed(d.recent_routes)],  # newest first
        "errors": {
            "worker": dict(sorted(d.worker_error_counts.items())),
            "route": dict(sorted(d.route_error_counts.items())),
            "ejected_workers": len(d.outliers.ejected(now)),
            "ejections": d.outliers.ejections_total,
        },
    }


def lease_view(lease: Lease, now: float) -> dict[str, Any]:
    return {
        "lease_id": lease.lease_id,
        "worker_url": lease.worker_url,
        "mode": str(lease.mode),
        "session": lease.session_id is not None,
        "capacity": lease.capacity,
        "budget": lease.budget,
        "inflight_cost": lease.inflight_cost,
        "inflight_jobs": lease.inflight_jobs,
        "completed": lease.completed,
        "retired": lease.retired,
        "expires_in_s": round(max(0.0, lease.expires_at - now), 3),
    }


def route_view(record: RouteRecord, now: float) -> dict[str, Any]:
    return {
        "age_s": round(max(0.0, now - record.at), 3),
        "outcome": record.outcome,
        "cost": record.cost,
        "latency_s": round(record.latency_s, 6),
        "detail": record.detail,
    }
