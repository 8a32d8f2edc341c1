"""Route calls for one endpoint: batches of queued jobs, the one poller while Vast has no worker
ready (a batch answered WAITING while it polls keeps its own ``request_idx`` and asks again
with it), demand calls that tell Vast of jobs piling up here, the token bucket that spaces
calls, back-off after refusals (of route calls, and per worker after a 429), and what recent
calls answered. When held calls and demand calls go is ``held_routes``; what a session
declares, and whether a worker needs another, ``session_sizing``."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from scheduler.config import EndpointConfig
from scheduler.config.endpoint import BackoffConfig
from scheduler.core.assignments import Lease, ReuseMode
from scheduler.core.backoff import (
    Backoff,
    RouteTrouble,
    WorkerBackoff,
    route_failed,
    route_refusal_delay_s,
)
from scheduler.core.batching import BatchLimits, take_batch
from scheduler.core.ratelimit import TokenBucket
from scheduler.dispatch.context import MAX_REMEMBERED_WORKERS, EndpointContext, log
from scheduler.dispatch.held_routes import HeldRoutes
from scheduler.dispatch.leasing import Leasing
from scheduler.dispatch.seams import Router
from scheduler.dispatch.session_sizing import SessionSizing
from scheduler.jobs import Job, JobStatus
from scheduler.store.base import FleetPolling
from scheduler.tasks import cancel_and_wait, spawn
from scheduler.vast.types import (
    Ready,
    RouteBadRequest,
    RouteError,
    RouteRateLimited,
    RouteResult,
    RouteUnauthorized,
    Waiting,
)

MAX_TOKEN_WAITS = 10_000  # a bound, not a limit reached in practice: each wait is until a token
RECENT_ROUTES = 20  # route answers kept for the status page
GONE_MEMORY_S = 3.0  # a worker found unreachable gets no new lease for this long
FOLLOWER_CHECK_S = 0.2  # a replica waiting on another's poller looks this often for a worker
MAX_BATCH_POLLS = 100_000  # a bound, not a limit reached in practice: jobs' deadlines end it
StartJob = Callable[[Job, Lease], None]
FleetBacklog = Callable[[str], Awaitable[tuple[int, float]]]


@dataclass(slots=True)
class Batch:
    job_ids: list[str]
    cost: float


@dataclass(frozen=True, slots=True)
class RouteRecord:
    """One route call as the status page shows it; ``detail``: worker URL, status or error."""

    at: float  # clock time the call started
    outcome: str  # ready | no_worker | rate_limited | error
    cost: float
    latency_s: float
    detail: str


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
        self._router = router
        self._leasing = leasing
        self._start_job = start_job
        self._fleet = fleet
        self._fleet_backlog = fleet_backlog
        now = ctx.clock()
        self.bucket = TokenBucket(ctx.config.route_rate_per_s, ctx.config.route_burst, now)
        self.reserved: dict[str, Batch] = {}  # job id -> the batch routing for it
        self.tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._errors = 0  # route errors in a row
        self._retry_at = now  # no route call before this (back-off after errors, 429s)
        self._gone_at: dict[str, float] = {}  # workers found unreachable, and when
        self._budget_route_at = now  # no route call for a worker's budget before this
        self.known_workers: dict[str, float] = {}
        self.last_waiting: Waiting | None = None
        self.recent: deque[RouteRecord] = deque(maxlen=RECENT_ROUTES)
        self.error_counts: Counter[str] = Counter()
        self.trouble: RouteTrouble | None = None  # route calls failing in a row, if any
        self.worker_backoff = WorkerBackoff(backoff_policy(ctx.config.worker_backoff))
        self.held = HeldRoutes(ctx.config, leasing.pool, now)
        self.sizing = SessionSizing(ctx, leasing)

    @property
    def polling(self) -> bool:
        return self._poller is not None and not self._poller.done()

    def reconfigure(self, config: EndpointConfig) -> None:
        self.bucket.set_rate(config.route_rate_per_s, config.route_burst, self._ctx.clock())
        self.worker_backoff.policy = backoff_policy(config.worker_backoff)
        self.held.reconfigure(config)

    def arrived(self, cost: float) -> None:
        """A job was queued here: demand a held route call declares (``DemandLedger``)."""
        self.held.demand.arrived(self._ctx.clock(), cost)

    def delay_until(self, until: float) -> None:
        """No new route call before ``until`` (a worker refused a job: Vast may well answer
        the same worker again at once)."""
        self._retry_at = max(self._retry_at, until)

    def worker_refused(self, worker_url: str, now: float) -> float:
        """A worker answered a job 429: no job goes to it until the returned time (its back-off
        doubles with each 429 in a row, up to ``worker_backoff.max_s``)."""
        until = self.worker_backoff.refused(worker_url, now, self._ctx.rng.random())
        self._ctx.metrics.worker_backoffs.labels(self._ctx.name).inc()
        log.info("worker.backed_off", endpoint=self._ctx.name, worker_url=worker_url,
                 streak=self.worker_backoff.streak(worker_url),
                 for_s=round(until - now, 3))  # fmt: skip
        return until

    def refused_reason(self, now: float) -> str | None:
        """Why this endpoint cannot route now: Vast refused its last route call (400/401), and
        jobs wait for the next or its back-off is not over. With nothing waiting, nothing
        would call again to clear it (a balancer sends no jobs to a replica not ready)."""
        trouble = self.trouble
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
            and now >= max(self._budget_route_at, self._retry_at)
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
        if now < self._retry_at:
            return self._retry_at
        if holding:
            waiting = self._waiting_cost()
            due = self.held.due(waiting)
            if now < due:
                return due
            self.held.went(now, waiting)
        linger_until = self._linger_until(now)
        if linger_until is not None:
            return linger_until
        if not self.bucket.try_take(now):
            return self.bucket.ready_at(now)
        self._route_next_batch(free_slots, holding)
        return now  # look again at once: more batches may go out in parallel

    def _waiting_cost(self) -> float:
        """The cost of the jobs waiting here: queued, or reserved by a route call."""
        jobs = self._ctx.jobs
        return self._ctx.queue.queued_cost + sum(jobs[job_id].cost for job_id in self.reserved)

    def _route_next_batch(self, free_slots: float, held: bool = False) -> None:
        config, queue = self._ctx.config, self._ctx.queue
        limits = BatchLimits(int(min(self.sizing.batch_jobs(), free_slots)), config.batch.max_cost)
        job_ids, cost = take_batch(queue.peek, queue.pop, limits)
        if not job_ids:
            return
        batch = Batch(job_ids, cost)
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
        to open a session on, the arrivals Vast has not heard of follow (``_declare_demand``)."""
        name = self._ctx.name
        if not len(self._leasing.pool) and not await self._fleet.may_route(name, self.poll_ttl_s()):
            self.release(batch)  # cold, and another replica is the fleet's poller
            self._start_poller(None)
            return
        declared = self.sizing.declared_cost(batch.cost, len(batch.job_ids))
        try:
            result = await self.route(declared, None)
        except RouteError as exc:
            self.failed(exc, batch)
            return
        if isinstance(result, Waiting):
            if not self.polling:
                self.release(batch)  # the poller carries its request_idx and its jobs' cost
                self._start_poller(result.request_idx)
                return
            # Another request_idx is being polled: this one is in Vast's queue with this
            # batch's cost, and stays there until asked again or timed out. Ask with it until
            # it is answered, rather than let it count twice beside the poller's backlog.
            ready = await self._wait_in_line(batch, result.request_idx)
            if ready is None:
                return
            result = ready
        if not await self._use_answer(batch, result) and held:
            await self._declare_demand(declared)

    async def _declare_demand(self, declared: float) -> None:
        """A route call for the cost that arrived here while jobs waited and that no call
        declared yet (``DemandLedger``), its answer left unused: the official client routes
        every job, so Vast scales on its arrival rate; the daemon's batches and sessions
        declare what the workers will hold (a session's cost is its load on the worker for
        its whole life), and this call the rest. Only while the cost waiting here grew since
        the last held call (demand the fleet does not absorb), and only what exceeds the
        call just made."""
        now = self._ctx.clock()
        cost = self.held.demand_due(now, declared)
        if cost is None or not self.bucket.try_take(now):
            return
        self.held.demand_declared(now)
        try:
            await self.route(min(cost, self._ctx.config.poll.max_cost), None)
        except RouteError as exc:
            self.failed(exc, None)

    async def _use_answer(self, batch: Batch, result: Ready) -> bool:
        """Opens a lease on the answer's worker and places the batch there; False when the
        answer is of no use (its jobs go back to the queue, or try again)."""
        leasing = self._leasing
        now = self._ctx.clock()
        if self.worker_backoff.blocked(result.url, now) or self._just_gone(result.url, now):
            # The worker answered 429, or could not be reached, a moment ago: Vast may well
            # name it again at once (its view of a worker that stopped lags), and the jobs
            # must not spend their attempts on it in a few milliseconds.
            self.delay_until(now + self._ctx.config.placement.held_route_interval_s)
            self.release(batch)
            return False
        if leasing.mode is ReuseMode.SESSION and (
            leasing.pool.saturated(result.url)
            or self.sizing.funded(result.url, batch.cost / max(1, len(batch.job_ids)))
            or not leasing.session_room(result.url, result.cost)
        ):
            # A worker held at its limit, funded for it already, or holding as many of our
            # sessions as we allow: no session that nothing can use (its cost would be load
            # on the worker for its life, which Vast scales on), nor one that pushes it to
            # its max_sessions.
            self._budget_route_at = self._ctx.clock() + self.held.answer_unused()
            self.release(batch)
            return False
        self.held.answer_used()
        lease = await self._leasing.open(result)
        if lease is None:
            self._remember_gone(result.url)
            self._batch_attempt_failed(batch)
            return False
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
            await self._wait_for_token()
            try:
                declared = self.sizing.declared_cost(batch.cost, len(batch.job_ids))
                result = await self.route(declared, request_idx)
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
        if self._leasing.pool.pick(first.cost, now, ctx.rng, self._unavailable(now)) is not None:
            self.release(batch)
            return False
        return True

    def _unavailable(self, now: float) -> frozenset[str]:
        return self.worker_backoff.backed_off(now)

    def _remember_gone(self, url: str) -> None:
        if len(self._gone_at) >= MAX_REMEMBERED_WORKERS:
            self._gone_at.clear()  # rare; forgetting costs one more attempt on a dead worker
        self._gone_at[url] = self._ctx.clock()

    def _just_gone(self, url: str, now: float) -> bool:
        gone_at = self._gone_at.get(url)
        return gone_at is not None and now - gone_at < GONE_MEMORY_S

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

    def _backed_off(self, exc: RouteError) -> None:
        """No route call for a while after a failed one. Refusals (429, 400, 401) block every
        route call (batches, the poller, caller sessions): Vast's ``Retry-After`` if it sent
        one (capped), else a back-off doubling up to ``route_backoff.max_s``. Other failures
        (5xx, timeouts) hold new batches back for the poll back-off."""
        ctx = self._ctx
        now = ctx.clock()
        self._errors += 1
        if isinstance(exc, RouteRateLimited | RouteBadRequest | RouteUnauthorized):
            rb = ctx.config.route_backoff
            retry_after = exc.retry_after_s if isinstance(exc, RouteRateLimited) else None
            delay = route_refusal_delay_s(backoff_policy(rb), self._errors, retry_after,
                                          rb.max_retry_after_s, ctx.rng.random())  # fmt: skip
            self.bucket.block_until(now + delay)
        else:
            delay = ctx.backoff(self._errors)
            self._retry_at = now + delay
        self.trouble = route_failed(self.trouble, exc.kind, now, now + delay)

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

    # one route call ---------------------------------------------------------------------
    async def route(self, cost: float, request_idx: int | None) -> RouteResult:
        """One route call, measured, logged and remembered for the status page."""
        ctx = self._ctx
        started = ctx.clock()
        outcome = "error"
        detail = "interrupted"  # cancelled or an unexpected exception
        try:
            result = await self._router.route(ctx.name, cost, request_idx)
            self._errors, self.trouble = 0, None
            outcome = "ready" if isinstance(result, Ready) else "no_worker"
            detail = result.url if isinstance(result, Ready) else result.status
            ctx.metrics.route_batch_cost.labels(ctx.name).observe(cost)
            if isinstance(result, Waiting):
                await self._no_worker(result, cost)
            else:
                await self._ready(result, cost, started)
            return result
        except RouteError as exc:
            outcome = "rate_limited" if isinstance(exc, RouteRateLimited) else "error"
            detail = exc.kind
            self.error_counts[exc.kind] += 1
            self._backed_off(exc)
            log.warning("route.error", endpoint=ctx.name, kind=exc.kind, error=str(exc),
                        streak=self._errors)  # fmt: skip
            raise
        finally:
            latency_s = ctx.clock() - started
            ctx.metrics.route_calls.labels(ctx.name, outcome).inc()
            ctx.metrics.route_latency.labels(ctx.name, outcome).observe(latency_s)
            self.recent.append(RouteRecord(started, outcome, cost, latency_s, detail))

    async def _no_worker(self, result: Waiting, cost: float) -> None:
        ctx = self._ctx
        await self._fleet.no_worker(ctx.name)
        self.last_waiting = result
        ctx.metrics.no_worker.labels(ctx.name).inc()
        log.info("route.no_worker", endpoint=ctx.name, cost=cost,
                 request_idx=result.request_idx, status=result.status)  # fmt: skip

    async def _ready(self, result: Ready, cost: float, started: float) -> None:
        ctx = self._ctx
        if not len(self._leasing.pool):
            await self._fleet.got_worker(ctx.name, ctx.config.lease.ttl_s)
        if len(self.known_workers) >= MAX_REMEMBERED_WORKERS:
            self.known_workers.pop(next(iter(self.known_workers)))
        self.known_workers[result.url] = ctx.clock()
        log.info("route.ready", endpoint=ctx.name, cost=cost, worker=result.url,
                 reqnum=result.reqnum,
                 latency_s=round(ctx.clock() - started, 6))  # fmt: skip

    async def route_with_token(self, cost: float, request_idx: int | None) -> RouteResult:
        await self._wait_for_token()
        return await self.route(cost, request_idx)

    async def _wait_for_token(self) -> None:
        for _ in range(MAX_TOKEN_WAITS):
            now = self._ctx.clock()
            if self.bucket.try_take(now):
                return
            await asyncio.sleep(max(0.001, self.bucket.ready_at(now) - now))

    # the poller -------------------------------------------------------------------------
    def _start_poller(self, request_idx: int | None) -> None:
        if not self.polling:
            name = f"poll-{self._ctx.name}"
            self._poller = asyncio.create_task(self._poll(request_idx), name=name)
            self._poller.add_done_callback(lambda _: self._ctx.wakeup.set())

    async def _poll(self, request_idx: int | None) -> None:
        """The endpoint's one poller while Vast has no worker ready: it carries ``request_idx``
        and declares the whole backlog's cost (capped) so the autoscaler scales for all of it."""
        ctx = self._ctx
        waits = 0
        following = False
        while len(ctx.queue) and not self._head_fits_a_lease():
            waits += 1
            poll = ctx.config.poll
            delay = ctx.backoff(waits)
            await asyncio.sleep(min(delay, FOLLOWER_CHECK_S) if following else delay)
            if not len(ctx.queue):
                break  # the backlog went while it slept: no call for nothing
            following = not await self._fleet.may_route(ctx.name, self.poll_ttl_s())
            if following:
                continue  # another replica polls for the fleet: wait for its worker
            await self._wait_for_token()
            cost = min(max(await self._backlog_cost(), 1.0), poll.max_cost)
            try:
                result = await self.route(cost, request_idx)
                self.held.demand.declared()  # the backlog holds every arrival here
                own = self.sizing.head_session_cost()
                if isinstance(result, Ready) and len(ctx.queue) and cost > own + 1e-9:
                    # Vast heard the backlog. A session's load on its worker is its answer's
                    # cost for its whole life: it opens on one that declares what it holds.
                    result = await self.route_with_token(own, None)
            except RouteError as exc:
                self.failed(exc, None)
                continue
            if isinstance(result, Waiting):
                request_idx = result.request_idx if result.request_idx is not None else request_idx
                continue
            await self._leasing.open(result)
            return
        await self._fleet.release(ctx.name)  # the backlog is gone or has room: nothing to poll for

    def poll_ttl_s(self) -> float:
        """The fleet's poll lease outlives the longest wait between two polls."""
        return 3 * self._ctx.config.poll.max_s + 5.0

    async def _backlog_cost(self) -> float:
        """What the autoscaler should scale for: every replica's unfinished jobs if shared."""
        fleet_cost = (
            0.0 if self._fleet_backlog is None else (await self._fleet_backlog(self._ctx.name))[1]
        )
        return max(self._ctx.queue.queued_cost, fleet_cost)

    def _head_fits_a_lease(self) -> bool:
        head = self._ctx.queue.peek()
        now = self._ctx.clock()
        return head is not None and self._leasing.pool.pick(head[1], now, self._ctx.rng) is not None

    # the way out ------------------------------------------------------------------------
    async def abort(self, reason: str) -> None:
        """Stop routing: cancel the calls and the poller, fail the jobs they were for."""
        await cancel_and_wait([*self.tasks, *([self._poller] if self._poller else [])])
        for reserved_id in list(self.reserved):
            self._ctx.finish(self._ctx.jobs[reserved_id], JobStatus.FAILED, reason)
        self.reserved.clear()


def backoff_policy(config: BackoffConfig) -> Backoff:
    return Backoff(config.initial_s, config.max_s, config.multiplier)
