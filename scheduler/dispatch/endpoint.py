"""One endpoint's loop: jobs come in, are placed on leases with room, and what no lease takes
is routed for. Routing, leasing and settling are collaborators with their own state; this
module joins them with placement and runs the jobs.

The pure parts (queue, batching, leases, back-off, decisions) live in ``scheduler.core``; the
I/O goes through the ``Router`` and ``Forwarder`` seams.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any

from scheduler.config import EndpointConfig
from scheduler.core.assignments import Held, Lease
from scheduler.core.capacity import Sent
from scheduler.core.queue import JobQueue
from scheduler.dispatch.attempt import AttemptResult, attempt
from scheduler.dispatch.context import EndpointContext, FinishHook, log, max_concurrency
from scheduler.dispatch.leasing import Leasing
from scheduler.dispatch.pinned import PinnedSession, PinnedSessions
from scheduler.dispatch.poller import FleetBacklog
from scheduler.dispatch.routing import Routing
from scheduler.dispatch.seams import Forwarder, Router
from scheduler.dispatch.settle import Settling
from scheduler.dispatch.snapshot import endpoint_snapshot
from scheduler.jobs import CANCELLED_BY_CALLER, SHUTDOWN_REASON, Job, JobStatus
from scheduler.observability.metrics import EndpointGauges, Metrics
from scheduler.store.base import FleetPolling, LocalPolling
from scheduler.tasks import cancel_and_wait


class EndpointDispatcher:
    """Owns one endpoint's queue, leases and in-flight jobs; ``run()`` is its only loop."""

    def __init__(
        self,
        name: str,
        config: EndpointConfig,
        router: Router,
        forwarder: Forwarder,
        metrics: Metrics,
        on_finish: FinishHook,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        on_task_done: Callable[[], None] = lambda: None,
        fleet: FleetPolling | None = None,
        backlog: FleetBacklog | None = None,
    ) -> None:
        metrics.start_endpoint(name)
        self.ctx = EndpointContext(name, config, metrics, clock, rng or random.Random(), on_finish)
        self._forwarder = forwarder
        self._on_task_done = on_task_done
        self.leasing = Leasing(self.ctx, forwarder, lambda url, kind: self._unreachable(url, kind))
        self.routing = Routing(
            self.ctx, router, self.leasing, self._start, fleet or LocalPolling(), backlog
        )
        self.sessions = PinnedSessions(self.leasing, clock, config.max_caller_sessions)
        self.settling = Settling(self.ctx, self.leasing, self.routing, self.sessions)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._queue_went_round = asyncio.Event()  # the feeder waits on it for queue space
        self._holding = False  # the last placement pass held the head for busy workers
        # This endpoint's series bound once: ``.labels()`` on every job costs ~1.3 us each.
        self._hits = metrics.lease_lookups.labels(name, "hit")
        self._queue_wait = metrics.queue_wait.labels(name)

    @property
    def name(self) -> str:
        return self.ctx.name

    @property
    def config(self) -> EndpointConfig:
        return self.ctx.config

    @property
    def queue(self) -> JobQueue:
        return self.ctx.queue

    def _unreachable(self, worker_url: str, kind: str) -> None:
        self.settling.unreachable(worker_url, kind)

    # intake -----------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job kept out of the store; raises ``QueueFull`` at ``max_depth``."""
        self.queue.push(job.id, job.priority, job.cost, job.deadline, job.tenant)
        self._queued(job)

    def accept(self, job: Job, redelivered: bool = False) -> None:
        """Queue a job claimed from the store (admitted there: never refused here). A job
        taken back while its first run is still here (this replica stalled past the
        visibility timeout) is not run a second time here."""
        if job.id in self.ctx.jobs:
            return
        self.queue.push_unbounded(job.id, job.priority, job.cost, job.deadline, job.tenant)
        if redelivered:
            self.ctx.metrics.jobs_redelivered.labels(self.name).inc()
        self._queued(job)

    def _queued(self, job: Job) -> None:
        job.status = JobStatus.QUEUED
        self.ctx.jobs[job.id] = job
        self.routing.arrived(job.cost)
        log.info("job.queued", job_id=job.id, endpoint=self.name, cost=job.cost, mode=job.mode)
        self._place_now()

    def _place_now(self) -> None:
        """Place what has room at once, without a round of the loop (which costs a task switch
        per job); the loop routes for what is left."""
        try:
            self._place(self.ctx.clock())
        except Exception:  # the loop places it later; the caller (a store, an API call) goes on
            log.exception("dispatch.place_failed", endpoint=self.name)
        if len(self.queue):
            self.ctx.wakeup.set()

    def take_queued(self) -> list[str]:
        """Drain with a shared store: every queued job leaves, oldest claim first."""
        taken = []
        while (job_id := self.queue.pop()) is not None:
            taken.append(job_id)
            self.ctx.jobs.pop(job_id, None)
        self.ctx.wakeup.set()
        return taken

    def wake_feeder(self) -> None:
        self._queue_went_round.set()

    async def wait_for_room(self, timeout_s: float) -> None:
        """Until the queue may have shrunk (the loop went round), at most ``timeout_s``."""
        self._queue_went_round.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._queue_went_round.wait()

    def submit_pinned(self, job: Job, session_id: str) -> None:
        """Run a job on a caller session's worker at once (the session bounds its cost)."""
        lease = self.sessions.admit(session_id, job.cost)
        job.pinned_session = session_id
        self.ctx.jobs[job.id] = job
        self._start(job, lease)

    async def open_session(self, cost: float, lifetime_s: float, wait_s: float) -> PinnedSession:
        return await self.sessions.open(
            self.routing.calls.route_with_token, cost, lifetime_s, wait_s
        )

    def cancel(self, job: Job) -> bool:
        if job.finished:
            return False
        job.cancel_requested = True
        if self.queue.remove(job.id) or job.id in self.routing.reserved:
            self.ctx.finish(job, JobStatus.CANCELLED, CANCELLED_BY_CALLER)
        elif (task := self._running.get(job.id)) is not None:
            task.cancel()
        self.ctx.wakeup.set()
        return True

    def cancel_by_id(self, job_id: str) -> bool:
        """Cancel a job of this endpoint held here; False if it is not here."""
        job = self.ctx.jobs.get(job_id)
        return job is not None and self.cancel(job)

    def reconfigure(self, config: EndpointConfig) -> None:
        """Live reload: the new limits apply from the next turn of the loop. Queued and running
        jobs, leases, the poller and what was learnt (health, calibration) are kept."""
        self.queue.set_tenant_weights(config.tenant_weights)
        self.ctx.config = config
        self.queue.max_depth = config.queue.max_depth
        self.leasing.reconfigure(config)
        self.routing.reconfigure(config)
        self.settling.reconfigure(config)
        self.sessions.limit = config.max_caller_sessions
        self.ctx.wakeup.set()  # a raised max_concurrency is used at once

    # state ------------------------------------------------------------------------------
    @property
    def inflight(self) -> int:
        return len(self._running) + len(self.routing.reserved)

    def inflight_cost(self) -> float:
        jobs = self.ctx.jobs
        return sum(jobs[j].cost for j in (*self._running, *self.routing.reserved) if j in jobs)

    @property
    def idle(self) -> bool:
        return not self._running and not self.routing.reserved and not len(self.queue)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The endpoint's live state: ``GET /v1/status``, the status page and the gauges."""
        return endpoint_snapshot(self, now)

    def gauges(self) -> EndpointGauges:
        return EndpointGauges.of(self.name, self.snapshot(self.ctx.clock()))

    def eta_s(self) -> float | None:
        """Queued cost over observed throughput: roughly when a new job would start."""
        rate = self.settling.completions.cost_per_s
        return None if rate <= 0 else self.queue.queued_cost / rate

    def retry_after_s(self) -> int:
        eta = self.eta_s()
        if eta is None:
            slots = self.config.max_concurrency or self.inflight
            return max(1, min(60, len(self.queue) // max(1, slots)))
        return max(1, min(600, round(eta)))

    # the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                wake_at = self._step(self.ctx.clock())
            except Exception:  # a bug must not stop the endpoint for good: log it, go on
                log.exception("dispatch.step_failed", endpoint=self.name)
                wake_at = self.ctx.clock() + 0.1
            self._queue_went_round.set()
            await self._sleep(wake_at)

    def _step(self, now: float) -> float | None:
        for job_id in self.queue.pop_expired(now):
            job = self.ctx.jobs[job_id]
            self.ctx.finish(job, JobStatus.EXPIRED, "deadline passed while queued")
        self.leasing.close_idle(now)
        self.leasing.renew_due(now)
        self._place(now)
        free_slots = max_concurrency(self.config) - self.inflight
        wake_at = self.routing.maybe_route(now, free_slots, self._holding)
        # Look again when a worker's 429 back-off ends: its leases may take queued jobs.
        back = self.routing.worker_backoff.next_release(now) if len(self.queue) else None
        return min((t for t in (wake_at, back) if t is not None), default=None)

    async def _sleep(self, wake_at: float | None) -> None:
        wakeup = self.ctx.wakeup
        wakeup.clear()
        now = self.ctx.clock()
        pool = self.leasing.pool
        rested = pool.next_available(now) if len(self.queue) else None
        collection = pool.next_collection(now, self.leasing.spare_workers())
        times = [wake_at, self.queue.next_deadline(), collection, rested]
        due = [t for t in times if t is not None]
        timeout = max(0.0, min(due) - self.ctx.clock()) if due else None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await wakeup.wait()

    def _place(self, now: float) -> None:
        backed_off = self.routing.worker_backoff.backed_off(now)  # answered 429 a moment ago
        excluded = self.settling.outliers.ejected(now) | backed_off
        horizon_s = self.config.placement.horizon_s
        self._holding = False
        cap = max_concurrency(self.config)
        route_for_budget = self.routing.may_route_for_budget(now)
        while len(self.queue) and self.inflight < cap:
            head = self.queue.peek()
            if head is None:
                return
            job = self.ctx.jobs.get(head[0])
            until = job.deadline if job is not None else None  # a session must cover it
            lease = self.leasing.pool.choose(
                head[1], now, self.ctx.rng, excluded, horizon_s, until, route_for_budget
            )
            if isinstance(lease, Held):
                self._holding = True
                return
            if lease is None:
                return
            job_id = self.queue.pop()
            if job_id is not None:
                self._hits.inc()
                self._start(self.ctx.jobs[job_id], lease)

    # one job on one lease ---------------------------------------------------------------
    def _start(self, job: Job, lease: Lease) -> None:
        now = self.ctx.clock()
        sent = self.leasing.pool.acquire(lease, job.cost, now)
        self.settling.outliers.dispatched(lease.worker_url, now)
        self.routing.held.job_started()
        task = asyncio.create_task(self._run_job(job, lease, sent), name=f"job-{job.id}")
        self._running[job.id] = task
        task.add_done_callback(lambda done: self._never_ran(done, job, lease, sent))

    def _never_ran(
        self, task: asyncio.Task[None], job: Job, lease: Lease, sent: Sent | None
    ) -> None:
        """Cleans up after a job task cancelled before its first step: its body never ran (the
        cancellation is thrown in before the body's ``try``), so nothing released its lease or
        finished the job. Found by the API fuzzer: a job cancelled the moment it was started
        stayed running for good, its lease's slot with it. A task whose body ran has popped
        itself from ``_running`` in its ``finally``."""
        if self._running.get(job.id) is task:
            self._cancelled(job, lease, sent)
            self._task_over(job)

    def _cancelled(self, job: Job, lease: Lease, sent: Sent | None) -> None:
        """A job task cancelled (by its caller, or by shutdown): its lease is released and the
        job finished so."""
        self.leasing.release(lease, job.cost, False, sent)
        reason = CANCELLED_BY_CALLER if job.cancel_requested else SHUTDOWN_REASON
        status = JobStatus.CANCELLED if job.cancel_requested else JobStatus.FAILED
        self.ctx.finish(job, status, reason)

    def _task_over(self, job: Job) -> None:
        self._running.pop(job.id, None)
        if len(self.queue):  # room for the next; with nothing queued the loop sleeps on
            self.ctx.wakeup.set()
        self._on_task_done()

    async def _run_job(self, job: Job, lease: Lease, sent: Sent | None) -> None:
        ctx = self.ctx
        now = ctx.clock()
        if job.started_mono is None:
            job.started_mono = now
            self._queue_wait.observe(now - job.created_mono)
        job.status = JobStatus.RUNNING
        job.attempts += 1
        log.info("job.started", job_id=job.id, endpoint=self.name, attempt=job.attempts,
                 lease_id=lease.lease_id, queued_s=round(now - job.created_mono, 6))  # fmt: skip
        self.settling.retry_budget.record_request(now)
        result: AttemptResult | None = None
        try:
            result = await attempt(
                self._forwarder, job, lease, job.deadline - now,
                self.settling.may_run_again(job), ctx.clock,
            )  # fmt: skip
        except asyncio.CancelledError:
            self._cancelled(job, lease, sent)
            raise
        except Exception:
            log.exception("job.crashed", job_id=job.id, endpoint=self.name)
            self.leasing.release(lease, job.cost, False, sent)
            ctx.finish(job, JobStatus.FAILED, "internal error")
        else:
            self.settling.settle(job, lease, result, sent)
        finally:
            self._task_over(job)

    # the way out ------------------------------------------------------------------------
    async def abort(self, reason: str) -> None:
        """After the grace period: fail what is queued or routing, cancel what runs, wait."""
        await self.routing.abort(reason)
        while (job_id := self.queue.pop()) is not None:
            self.ctx.finish(self.ctx.jobs[job_id], JobStatus.FAILED, reason)
        await cancel_and_wait(list(self._running.values()))
        await self.leasing.close_all()
        await self.sessions.close_all()
