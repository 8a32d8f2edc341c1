"""Route calls for one endpoint's queued jobs: batches when no lease takes them (a batch
answered WAITING while the poller runs keeps its own ``request_idx`` and asks again with it),
and what an answer opens (a lease, or nothing). One call at a time, its token bucket and
back-off: ``route_calls``; the poller while no worker is ready: ``poller``; when held calls,
demand calls and probes go: ``held_routes``; the demand calls that tell Vast of jobs piling up
here and the probes (one job's cost) that find a worker Vast added while held calls are backed
off: ``side_calls``; what a session declares, and whether a worker needs another:
``session_sizing``; whether an answer's worker may take a lease (per-worker back-off after a
429, workers just gone): ``answer_check``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from scheduler.config import EndpointConfig
from scheduler.core.assignments import Lease
from scheduler.core.batching import BatchLimits, take_batch
from scheduler.core.sessions import held_cost
from scheduler.dispatch.answer_check import AnswerCheck
from scheduler.dispatch.context import EndpointContext
from scheduler.dispatch.held_routes import HeldRoutes
from scheduler.dispatch.leasing import Leasing
from scheduler.dispatch.poller import FleetBacklog, Poller
from scheduler.dispatch.route_calls import RouteCalls
from scheduler.dispatch.seams import Router
from scheduler.dispatch.session_sizing import SessionSizing
from scheduler.dispatch.side_calls import SideCalls
from scheduler.jobs import Job, JobStatus
from scheduler.store.base import FleetPolling
from scheduler.tasks import cancel_and_wait, spawn
from scheduler.vast.types import (
    Ready,
    RouteBadRequest,
    RouteError,
    RouteUnauthorized,
    Waiting,
)

MAX_BATCH_POLLS = 100_000  # a bound, not a limit reached in practice: jobs' deadlines end it
StartJob = Callable[[Job, Lease], None]


@dataclass(slots=True)
class Batch:
    job_ids: list[str]
    cost: float
    cost_sq: float = 0.0  # the sum of its jobs' costs squared (``SessionSizing.declared_cost``)


class Routing:
    def __init__(
        self,
        ctx: EndpointContext,
        router: Router,
        leasing: Leasing,
        start_job: StartJob,
        fleet: FleetPolling,
        fleet_backlog: FleetBacklog | None,
    ) -> None:
        self._ctx = ctx
        self._leasing = leasing
        self._start_job = start_job
        self._fleet = fleet
        now = ctx.clock()
        self.reserved: dict[str, Batch] = {}  # job id -> the batch routing for it
        self.tasks: set[asyncio.Task[None]] = set()
        self._budget_route_at = now  # no route call for a worker's budget before this
        self.calls = RouteCalls(ctx, router, leasing, fleet)
        self.held = HeldRoutes(ctx.config, leasing.pool, now)
        self.sizing = SessionSizing(ctx, leasing)
        self.answers = AnswerCheck(ctx, leasing, self.sizing)
        self.side = SideCalls(ctx, self.calls, self.held, self.answers, self.tasks)
        self.worker_backoff = self.answers.worker_backoff  # endpoint, settle, snapshot read it
        self.poller = Poller(
            ctx, self.calls, leasing, self.sizing, self.held.demand, fleet, fleet_backlog
        )

    @property
    def polling(self) -> bool:
        return self.poller.polling

    def reconfigure(self, config: EndpointConfig) -> None:
        self.calls.reconfigure(config)
        self.answers.reconfigure(config)
        self.held.reconfigure(config)

    def arrived(self, cost: float) -> None:
        """A job was queued here: demand a held route call declares (``DemandLedger``)."""
        self.held.demand.arrived(self._ctx.clock(), cost)

    def delay_until(self, until: float) -> None:
        """No new route call before ``until`` (a worker refused a job: Vast may well answer
        the same worker again at once)."""
        self.calls.delay_until(until)

    def worker_refused(self, worker_url: str, now: float) -> float:
        """A worker answered a job 429: returns until when no job goes to it."""
        return self.answers.worker_refused(worker_url, now)

    def refused_reason(self, now: float) -> str | None:
        """Why this endpoint cannot route now: Vast refused its last route call (400/401), and
        jobs wait for the next or its back-off is not over. With nothing waiting, nothing
        would call again to clear it (a balancer sends no jobs to a replica not ready)."""
        trouble = self.calls.trouble
        if trouble is None or not trouble.refused:
            return None
        if now >= trouble.retry_at and not len(self._ctx.queue) and not self.reserved:
            return None
        return (
            f"endpoint {self._ctx.name}: route calls refused ({trouble.kind}) "
            f"{trouble.streak} times in a row for {now - trouble.since:.0f} s; "
            f"next try in {max(0.0, trouble.retry_at - now):.0f} s"
        )

    def may_route_for_budget(self, now: float) -> bool:
        """Placement may route for a worker short of budget (``LeasePool.choose``): no route
        call is out, and the last such answer was of use (else it waits as a held one does)."""
        return (
            not self.tasks
            and not self.polling
            and now >= max(self._budget_route_at, self.calls.retry_at)
        )

    # batches ----------------------------------------------------------------------------
    def maybe_route(self, now: float, free_slots: float, holding: bool) -> float | None:
        """Start a batch route call for queued jobs that no lease takes; returns when to look
        again. ``holding``: the last placement kept jobs for busy workers."""
        queue = self._ctx.queue
        if not len(queue) or free_slots <= 0 or self.polling:
            return None
        # With no lease yet nothing says a worker is ready: probe with one call, not a stampede.
        max_inflight = self._ctx.config.max_route_inflight if len(self._leasing.pool) else 1
        if len(self.tasks) >= max_inflight:
            return None
        if now < self.calls.retry_at:
            return self.calls.retry_at
        if holding:
            waiting = self._waiting_cost()
            due = self.held.due(waiting)
            if now < due:
                self.side.maybe_probe(now)
                return due
            self.held.went(now, waiting)
        linger_until = self._linger_until(now)
        if linger_until is not None:
            return linger_until
        if not self.calls.bucket.try_take(now):
            return self.calls.bucket.ready_at(now)
        self._route_next_batch(free_slots, holding)
        return now  # look again at once: more batches may go out in parallel

    def _waiting_cost(self) -> float:
        """The cost of the jobs waiting here: queued, or reserved by a route call."""
        jobs = self._ctx.jobs
        return self._ctx.queue.queued_cost + sum(jobs[job_id].cost for job_id in self.reserved)

    def _route_next_batch(self, free_slots: float, held: bool = False) -> None:
        queue = self._ctx.queue
        jobs_cap = int(min(self.sizing.batch_jobs(), free_slots))
        limits = BatchLimits(jobs_cap, self.sizing.batch_cost())
        job_ids, cost = take_batch(queue.peek, queue.pop, limits)
        if not job_ids:
            return
        jobs = self._ctx.jobs
        batch = Batch(job_ids, cost, sum(jobs[job_id].cost ** 2 for job_id in job_ids))
        metrics, name = self._ctx.metrics, self._ctx.name
        metrics.lease_lookups.labels(name, "miss").inc(len(job_ids))
        metrics.route_batch_jobs.labels(name).observe(len(job_ids))
        for job_id in job_ids:
            self.reserved[job_id] = batch
            self._ctx.jobs[job_id].status = JobStatus.ROUTING
        spawn(self._route_batch(batch, held), self.tasks, f"route-{name}",
              lambda _: self._ctx.wakeup.set())  # fmt: skip

    def _linger_until(self, now: float) -> float | None:
        linger_s = self._ctx.config.batch.linger_ms / 1000
        queue = self._ctx.queue
        if linger_s <= 0 or len(queue) >= self._ctx.config.batch.max_jobs:
            return None
        head = queue.peek()
        if head is None:
            return None
        ready_at = self._ctx.jobs[head[0]].created_mono + linger_s
        return ready_at if ready_at > now else None

    async def _route_batch(self, batch: Batch, held: bool = False) -> None:
        """``held``: a held call (jobs wait for busy workers); when its answer names no worker
        to open a session on, the arrivals Vast has not heard of follow
        (``SideCalls.declare_demand``)."""
        name = self._ctx.name
        if not len(self._leasing.pool) and not await self._fleet.may_route(
            name, self.poller.ttl_s()
        ):
            self.release(batch)  # cold, and another replica is the fleet's poller
            self.poller.start(None)
            return
        declared = self.sizing.declared_cost(batch.cost, batch.cost_sq)
        try:
            result = await self.calls.route(declared, None)
        except RouteError as exc:
            self.failed(exc, batch)
            return
        if isinstance(result, Waiting):
            if not self.polling:
                self.release(batch)  # the poller carries its request_idx and its jobs' cost
                self.poller.start(result.request_idx)
                return
            # Another request_idx is being polled: this one is in Vast's queue with this
            # batch's cost, and stays there until asked again or timed out. Ask with it until
            # it is answered, rather than let it count twice beside the poller's backlog.
            ready = await self._wait_in_line(batch, result.request_idx)
            if ready is None:
                return
            result = ready
        if not await self._use_answer(batch, result) and held:
            await self.side.declare_demand(declared)

    async def _use_answer(self, batch: Batch, result: Ready) -> bool:
        """Opens a lease on the answer's worker and places the batch there; False when the
        answer is of no use (its jobs go back to the queue, or try again)."""
        now = self._ctx.clock()
        # A job the worker would hold of this batch's: its large jobs stay longest.
        mean_cost = batch.cost / max(1, len(batch.job_ids))
        job_cost = max(mean_cost, held_cost(batch.cost, batch.cost_sq))
        unusable = self.answers.unusable(result.url, now, job_cost, result.cost)
        if unusable == "blocked":
            # Vast may well name it again at once (its view of a worker that stopped lags),
            # and the jobs must not spend their attempts on it in a few milliseconds.
            self.delay_until(now + self._ctx.config.placement.held_route_interval_s)
            self.release(batch)
            return False
        if unusable == "full":
            self._budget_route_at = self._ctx.clock() + self.held.answer_unused()
            self.release(batch)
            return False
        self.held.answer_used()
        new_worker = result.url not in self._leasing.pool.workers()
        lease = await self._leasing.open(result)
        if lease is None:
            self.answers.remember_gone(result.url)
            self._batch_attempt_failed(batch)
            return False
        if new_worker:
            # Vast names the least loaded worker: one not leased yet may not be the only one
            # with room. The next held call goes at once, not on the beat (a cold (f2) start
            # found its third worker a start-up round late, and its ramp trailed by a round);
            # the chain ends at the first answer naming a worker already leased.
            self.held.room_named(self._ctx.clock())
        self._place_batch(batch, lease)
        return True

    async def _wait_in_line(self, batch: Batch, request_idx: int | None) -> Ready | None:
        """Poll for a WAITING batch with its own ``request_idx`` until Vast names a worker
        (returned); None when its jobs are gone (finished, cancelled, expired, or given back
        to the queue because a lease has room for them now)."""
        ctx = self._ctx
        for waits in range(1, MAX_BATCH_POLLS + 1):
            await asyncio.sleep(ctx.backoff(waits))
            if not self._still_waiting(batch):
                return None
            await self.calls.wait_for_token()
            try:
                declared = self.sizing.declared_cost(batch.cost, batch.cost_sq)
                result = await self.calls.route(declared, request_idx)
            except RouteError as exc:
                if isinstance(exc, RouteBadRequest | RouteUnauthorized):
                    self.failed(exc, batch)
                    return None
                continue
            if isinstance(result, Ready):
                return result
            request_idx = result.request_idx if result.request_idx is not None else request_idx
        self.release(batch)
        return None

    def _still_waiting(self, batch: Batch) -> bool:
        """Drop the batch's jobs that are gone (expiring those past their deadline); give the
        rest back to the queue if a lease takes its first job now. True: it still waits."""
        ctx, now = self._ctx, self._ctx.clock()
        live: list[str] = []
        for job_id in batch.job_ids:
            job = ctx.jobs.get(job_id)
            if job is None or job.finished or job_id not in self.reserved:
                self.reserved.pop(job_id, None)
            elif job.deadline <= now:
                self.reserved.pop(job_id, None)
                ctx.finish(job, JobStatus.EXPIRED, "deadline passed while waiting for a worker")
            else:
                live.append(job_id)
        batch.job_ids = live
        batch.cost = sum(ctx.jobs[job_id].cost for job_id in live)
        if not live:
            return False
        first = ctx.jobs[live[0]]
        if (
            self._leasing.pool.pick(first.cost, now, ctx.rng, self.answers.unavailable(now))
            is not None
        ):
            self.release(batch)
            return False
        return True

    def _batch_attempt_failed(self, batch: Batch) -> None:
        """The routed worker could not be reached: that counts as an attempt for each job."""
        jobs = self._ctx.jobs
        for job_id in batch.job_ids:
            job = jobs.get(job_id)
            if job is not None and not job.finished and job_id in self.reserved:
                job.attempts += 1
                job.history += ("reroute_gone:session_open",)
        max_attempts = self._ctx.config.max_attempts
        exhausted = [
            job_id for job_id in batch.job_ids
            if job_id in self.reserved and jobs[job_id].attempts >= max_attempts
        ]  # fmt: skip
        for job_id in exhausted:
            self.reserved.pop(job_id, None)
            job = jobs[job_id]
            self._ctx.finish(job, JobStatus.FAILED, f"gave up after {job.attempts} attempts")
        self.release(batch)

    def failed(self, exc: RouteError, batch: Batch | None) -> None:
        """A route call for ``batch`` failed (``route`` has set the back-off): give the batch
        back, or fail it when Vast refuses the call as configured."""
        if isinstance(exc, RouteBadRequest | RouteUnauthorized):
            # Nothing queued here can succeed until the config is fixed: fail the batch only,
            # later jobs try again after the back-off (the key may be rotated under us).
            for job_id in batch.job_ids if batch else []:
                self.reserved.pop(job_id, None)
                job = self._ctx.jobs.get(job_id)
                if job is not None and not job.finished:
                    self._ctx.finish(job, JobStatus.FAILED, str(exc))
            return
        if batch is not None:
            self.release(batch)

    def release(self, batch: Batch) -> None:
        """Put a batch's jobs back at the head of the queue, in order."""
        for job_id in reversed(batch.job_ids):
            if self.reserved.pop(job_id, None) is None:
                continue
            job = self._ctx.jobs.get(job_id)
            if job is None or job.finished:
                continue
            self._ctx.requeue_front(job)

    def _place_batch(self, batch: Batch, lease: Lease) -> None:
        now = self._ctx.clock()
        pool, horizon_s = self._leasing.pool, self._ctx.config.placement.horizon_s
        leftover = []
        for job_id in batch.job_ids:
            job = self._ctx.jobs.get(job_id)
            if job is None or job.finished or job_id not in self.reserved:
                self.reserved.pop(job_id, None)
                continue
            if pool.admits(lease, job.cost, now, horizon_s):
                self.reserved.pop(job_id, None)
                self._start_job(job, lease)
            else:
                leftover.append(job_id)
        if leftover:
            self.release(Batch(leftover, 0.0))

    # the way out ------------------------------------------------------------------------
    async def abort(self, reason: str) -> None:
        """Stop routing: cancel the calls and the poller, fail the jobs they were for."""
        await cancel_and_wait(list(self.tasks))
        await self.poller.stop()
        for reserved_id in list(self.reserved):
            self._ctx.finish(self._ctx.jobs[reserved_id], JobStatus.FAILED, reason)
        self.reserved.clear()
