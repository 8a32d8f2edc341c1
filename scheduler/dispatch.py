"""The per-endpoint loop: places queued jobs on leases, routes batches, polls once while waiting.

The pure parts (queue, batching, leases, back-off, decisions) live in ``scheduler.core``; this
module owns the tasks and the I/O through the ``Router`` and ``Forwarder`` seams.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from scheduler.attempt import AttemptResult, attempt
from scheduler.config import EndpointConfig
from scheduler.core.assignments import Held, Lease, LeaseLimits, LeasePool, ReuseMode
from scheduler.core.batching import BatchLimits, take_batch
from scheduler.core.calibration import Calibrator, ThroughputMeter
from scheduler.core.health import EjectionPolicy, OutlierDetector, RetryBudget
from scheduler.core.queue import JobQueue
from scheduler.core.ratelimit import TokenBucket
from scheduler.core.retry import Action, backoff_s, decide, worker_error_kind
from scheduler.jobs import CANCELLED_BY_CALLER, Job, JobStatus
from scheduler.observability.metrics import EndpointGauges, Metrics
from scheduler.pinned import PinnedSession, PinnedSessions
from scheduler.seams import Forwarder, Router
from scheduler.store.base import FleetPolling, LocalPolling
from scheduler.vast.types import (
    Ready,
    RouteBadRequest,
    RouteError,
    RouteRateLimited,
    RouteResult,
    RouteUnauthorized,
    SessionRefused,
    Waiting,
    WorkerError,
)

log = structlog.get_logger("scheduler.dispatch")
FinishHook = Callable[[Job], None]
THROUGHPUT_ALPHA = 0.2
MAX_REMEMBERED_WORKERS = 4096
MAX_TOKEN_WAITS = 10_000  # a bound, not a limit reached in practice: each wait is until a token
RECENT_ROUTES = 20  # route answers kept for the status page
FOLLOWER_CHECK_S = 0.2  # a replica waiting on another's poller looks this often for a worker


def reuse_mode(setting: str) -> ReuseMode:
    """``reuse`` as configured -> how leases start (``auto`` starts with sessions)."""
    return {"never": ReuseMode.NEVER, "sequential": ReuseMode.SEQUENTIAL}.get(
        setting, ReuseMode.SESSION
    )


def refusals(job: Job) -> int:
    """How often a worker answered the job 429 (queue past its max_queue_time)."""
    return sum(entry.startswith(Action.REROUTE_SHRINK.value) for entry in job.history)


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
        backlog: Callable[[str], Awaitable[tuple[int, float]]] | None = None,
    ) -> None:
        self.name = name
        self._fleet = fleet or LocalPolling()
        self._fleet_backlog = backlog
        self._room = asyncio.Event()
        self.config = config
        self._router = router
        self._forwarder = forwarder
        self._metrics = metrics
        self._on_finish = on_finish
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_task_done = on_task_done
        metrics.start_endpoint(name)
        # This endpoint's series bound once: ``.labels()`` on every job costs ~1.3 us each.
        self._hits = metrics.lease_lookups.labels(name, "hit")
        self._queue_wait = metrics.queue_wait.labels(name)
        self._worker_latency = metrics.worker_latency.labels(name)
        self._cost_ratio = metrics.cost_ratio.labels(name)
        now = clock()
        self.queue = JobQueue(config.queue.max_depth, config.tenant_weights)
        self.pool = LeasePool(
            LeaseLimits(config.lease.ttl_s, config.lease.idle_close_s,
                        config.lease.min_budget_fraction,
                        sequential_rest_s=config.lease.sequential_rest_s)
        )  # fmt: skip
        self.bucket = TokenBucket(config.route_rate_per_s, config.route_burst, now)
        self.outliers = OutlierDetector(
            EjectionPolicy(config.ejection.consecutive_failures, config.ejection.base_s,
                           config.ejection.max_s)
        )  # fmt: skip
        self.retry_budget = RetryBudget(
            config.retry_budget.ratio, config.retry_budget.min_retries,
            config.retry_budget.window_s,
        )  # fmt: skip
        self.mode = reuse_mode(config.reuse)
        self.legacy_detected = False
        self.sessions = PinnedSessions(forwarder, clock, config.max_caller_sessions)
        self.calibrator = Calibrator(config.cost.calibration_alpha)
        self.meter = ThroughputMeter()
        self._jobs: dict[str, Job] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._reserved: dict[str, Batch] = {}  # job id -> the batch routing for it
        self._route_tasks: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._route_errors = 0
        self._route_retry_at = now
        self._wakeup = asyncio.Event()
        self.known_workers: dict[str, float] = {}
        self._sessionless_workers: set[str] = set()
        self.last_waiting: Waiting | None = None
        self.recent_routes: deque[RouteRecord] = deque(maxlen=RECENT_ROUTES)
        self.worker_error_counts: Counter[str] = Counter()
        self.route_error_counts: Counter[str] = Counter()
        self.throughput_cost_per_s = 0.0
        self._last_completion: float | None = None
        self._gap_ewma_s: float | None = None
        self._cost_ewma = 0.0
        self._holding = False  # the last placement pass held the head for busy workers
        self._hold_route_at = now

    # intake -----------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job kept out of the store; raises ``QueueFull`` at ``max_depth``."""
        self.queue.push(job.id, job.priority, job.cost, job.deadline, job.tenant)
        self._queued(job)

    def accept(self, job: Job, redelivered: bool = False) -> None:
        """Queue a job claimed from the store (admitted there: never refused here). A job
        taken back while its first run is still here (this replica stalled past the
        visibility timeout) is not run a second time here."""
        if job.id in self._jobs:
            return
        self.queue.push_unbounded(job.id, job.priority, job.cost, job.deadline, job.tenant)
        if redelivered:
            self._metrics.jobs_redelivered.labels(self.name).inc()
        self._queued(job)

    def _queued(self, job: Job) -> None:
        job.status = JobStatus.QUEUED
        self._jobs[job.id] = job
        log.info("job.queued", job_id=job.id, endpoint=self.name, cost=job.cost, mode=job.mode)
        self._place_now()

    def _place_now(self) -> None:
        """Place what has room at once, without a round of the loop (which costs a task switch
        per job); the loop routes for what is left."""
        try:
            self._place(self._clock())
        except Exception:  # the loop places it later; the caller (a store, an API call) goes on
            log.exception("dispatch.place_failed", endpoint=self.name)
        if len(self.queue):
            self._wakeup.set()

    def take_queued(self) -> list[str]:
        """Drain with a shared store: every queued job leaves, oldest claim first."""
        taken = []
        while (job_id := self.queue.pop()) is not None:
            taken.append(job_id)
            self._jobs.pop(job_id, None)
        self._wakeup.set()
        return taken

    def wake_feeder(self) -> None:
        self._room.set()

    async def wait_for_room(self, timeout_s: float) -> None:
        """Until the queue may have shrunk (the loop went round), at most ``timeout_s``."""
        self._room.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._room.wait()

    def submit_pinned(self, job: Job, session_id: str) -> None:
        """Run a job on a caller session's worker at once (the session bounds its cost)."""
        lease = self.sessions.admit(session_id, job.cost)
        job.pinned_session = session_id
        self._jobs[job.id] = job
        self._start(job, lease)

    async def open_session(self, cost: float, lifetime_s: float, wait_s: float) -> PinnedSession:
        return await self.sessions.open(self._route_with_token, cost, lifetime_s, wait_s)

    async def _route_with_token(self, cost: float, request_idx: int | None) -> RouteResult:
        await self._wait_for_token()
        return await self._route(cost, request_idx)

    def cancel(self, job: Job) -> bool:
        if job.finished:
            return False
        job.cancel_requested = True
        if self.queue.remove(job.id) or job.id in self._reserved:
            self._finish(job, JobStatus.CANCELLED, CANCELLED_BY_CALLER)
        elif (task := self._running.get(job.id)) is not None:
            task.cancel()
        self._wakeup.set()
        return True

    def cancel_by_id(self, job_id: str) -> bool:
        """Cancel a job of this endpoint held here; False if it is not here."""
        job = self._jobs.get(job_id)
        return job is not None and self.cancel(job)

    def reconfigure(self, config: EndpointConfig) -> None:
        """Live reload: the new limits apply from the next turn of the loop. Queued and running
        jobs, leases, the poller and what was learnt (health, calibration) are kept."""
        self.queue.set_tenant_weights(config.tenant_weights)  # first: it may refuse a weight
        self.config = config
        self.queue.max_depth = config.queue.max_depth
        lc = config.lease
        self.pool.limits = LeaseLimits(lc.ttl_s, lc.idle_close_s, lc.min_budget_fraction,
                                       sequential_rest_s=lc.sequential_rest_s)  # fmt: skip
        self.bucket.set_rate(config.route_rate_per_s, config.route_burst, self._clock())
        ej, rb = config.ejection, config.retry_budget
        self.outliers.policy = EjectionPolicy(ej.consecutive_failures, ej.base_s, ej.max_s)
        self.retry_budget.ratio, self.retry_budget.min_retries = rb.ratio, rb.min_retries
        self.retry_budget.window_s = rb.window_s
        self.calibrator.alpha = config.cost.calibration_alpha
        self.sessions.limit = config.max_caller_sessions
        mode = reuse_mode(config.reuse)
        if mode is not self.mode and not (self.legacy_detected and config.reuse == "auto"):
            self.mode = mode
            for lease in self.pool:  # they finish what they run, then close
                self.pool.retire(lease)
        self._wakeup.set()  # a raised max_concurrency is used at once

    # state ------------------------------------------------------------------------------
    @property
    def inflight(self) -> int:
        return len(self._running) + len(self._reserved)

    def inflight_cost(self) -> float:
        return sum(self._jobs[j].cost for j in (*self._running, *self._reserved) if j in self._jobs)

    @property
    def idle(self) -> bool:
        return not self._running and not self._reserved and not len(self.queue)

    @property
    def polling(self) -> bool:
        return self._poller is not None and not self._poller.done()

    def gauges(self) -> EndpointGauges:
        return EndpointGauges(
            endpoint=self.name,
            queue_depth=len(self.queue),
            queued_cost=self.queue.queued_cost,
            inflight_jobs=self.inflight,
            leases=len(self.pool),
            leased_workers=len(self.pool.workers()),
            inflight_cost=self.pool.inflight_cost(),
            budget_cost=self.pool.budget(),
            polling=int(self.polling),
            calibration_ratio=self.calibrator.ratio,
            throughput_cost_per_second=self.throughput_cost_per_s,
        )

    def eta_s(self) -> float | None:
        """Queued cost over observed throughput: roughly when a new job would start."""
        if self.throughput_cost_per_s <= 0:
            return None
        return self.queue.queued_cost / self.throughput_cost_per_s

    def retry_after_s(self) -> int:
        eta = self.eta_s()
        if eta is None:
            return max(1, min(60, len(self.queue) // max(1, self.config.max_concurrency)))
        return max(1, min(600, round(eta)))

    # the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                wake_at = self._step(self._clock())
            except Exception:  # a bug must not stop the endpoint for good: log it, go on
                log.exception("dispatch.step_failed", endpoint=self.name)
                wake_at = self._clock() + 0.1
            self._room.set()
            await self._sleep(wake_at)

    def _step(self, now: float) -> float | None:
        self._expire_queued(now)
        self._close_leases(now)
        self._place(now)
        return self._maybe_route(now)

    async def _sleep(self, wake_at: float | None) -> None:
        self._wakeup.clear()
        deadline = self.queue.next_deadline()
        now = self._clock()
        lease_due = self.pool.next_collection(now)
        rested = self.pool.next_available(now) if len(self.queue) else None
        times = [t for t in (wake_at, deadline, lease_due, rested) if t is not None]
        timeout = max(0.0, min(times) - self._clock()) if times else None
        try:
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()
        except TimeoutError:
            pass

    def _place(self, now: float) -> None:
        excluded = self.outliers.ejected(now)
        self._holding = False
        while len(self.queue) and self.inflight < self.config.max_concurrency:
            head = self.queue.peek()
            if head is None:
                return
            lease = self.pool.choose(
                head[1], now, self._rng, excluded, self.config.placement.horizon_s
            )
            if isinstance(lease, Held):
                self._holding = True
                return
            if lease is None:
                return
            job_id = self.queue.pop()
            if job_id is not None:
                self._hits.inc()
                self._start(self._jobs[job_id], lease)

    def _maybe_route(self, now: float) -> float | None:
        """Start a batch route call when queued jobs have no room; returns when to look again."""
        if not len(self.queue) or self.inflight >= self.config.max_concurrency or self.polling:
            return None
        # With no lease yet nothing says a worker is ready: probe with one call, not a stampede.
        max_inflight = self.config.max_route_inflight if len(self.pool) else 1
        if len(self._route_tasks) >= max_inflight:
            return None
        if now < self._route_retry_at:
            return self._route_retry_at
        if self._holding:
            if now < self._hold_route_at:
                return self._hold_route_at
            self._hold_route_at = now + self.config.placement.held_route_interval_s
        linger_until = self._linger_until(now)
        if linger_until is not None:
            return linger_until
        if not self.bucket.try_take(now):
            return self.bucket.ready_at(now)
        room = self.config.max_concurrency - self.inflight
        max_jobs = 1 if self.mode is not ReuseMode.SESSION else self.config.batch.max_jobs
        limits = BatchLimits(min(max_jobs, room), self.config.batch.max_cost)
        job_ids, cost = take_batch(self.queue.peek, self.queue.pop, limits)
        if not job_ids:
            return None
        batch = Batch(job_ids, cost)
        self._metrics.lease_lookups.labels(self.name, "miss").inc(len(job_ids))
        self._metrics.route_batch_jobs.labels(self.name).observe(len(job_ids))
        for job_id in job_ids:
            self._reserved[job_id] = batch
            self._jobs[job_id].status = JobStatus.ROUTING
        self._spawn(self._route_batch(batch), self._route_tasks, "route")
        return now  # look again at once: more batches may go out in parallel

    def _linger_until(self, now: float) -> float | None:
        linger_s = self.config.batch.linger_ms / 1000
        if linger_s <= 0 or len(self.queue) >= self.config.batch.max_jobs:
            return None
        head = self.queue.peek()
        if head is None:
            return None
        ready_at = self._jobs[head[0]].created_mono + linger_s
        return ready_at if ready_at > now else None

    def _spawn(
        self, coro: Coroutine[Any, Any, None], into: set[asyncio.Task[None]], name: str
    ) -> None:
        task = asyncio.create_task(coro, name=f"{name}-{self.name}")
        into.add(task)
        task.add_done_callback(into.discard)
        task.add_done_callback(lambda _: self._wakeup.set())

    # routing ----------------------------------------------------------------------------
    async def _route_batch(self, batch: Batch) -> None:
        if not len(self.pool) and not await self._fleet.may_route(self.name, self._poll_ttl_s()):
            self._release_batch(batch)  # cold, and another replica is the fleet's poller
            self._start_poller(None)
            return
        try:
            result = await self._route(batch.cost, None)
        except RouteError as exc:
            self._route_failed(exc, batch)
            return
        if isinstance(result, Waiting):
            self._release_batch(batch)
            self._start_poller(result.request_idx)
            return
        lease = await self._open_lease(result)
        if lease is None:
            self._batch_attempt_failed(batch)
            return
        self._place_batch(batch, lease)

    def _batch_attempt_failed(self, batch: Batch) -> None:
        """The routed worker could not be reached: that counts as an attempt for each job."""
        for job_id in batch.job_ids:
            job = self._jobs.get(job_id)
            if job is not None and not job.finished and job_id in self._reserved:
                job.attempts += 1
                job.history += ("reroute_gone:session_open",)
        exhausted = [
            job_id for job_id in batch.job_ids
            if job_id in self._reserved and self._jobs[job_id].attempts >= self.config.max_attempts
        ]  # fmt: skip
        for job_id in exhausted:
            self._reserved.pop(job_id, None)
            job = self._jobs[job_id]
            self._finish(job, JobStatus.FAILED, f"gave up after {job.attempts} attempts")
        self._release_batch(batch)

    def _route_failed(self, exc: RouteError, batch: Batch | None) -> None:
        now = self._clock()
        if isinstance(exc, RouteBadRequest | RouteUnauthorized):
            # Nothing queued here can succeed until the config is fixed: fail the batch only,
            # later jobs try again (the key may be rotated under us).
            for job_id in batch.job_ids if batch else []:
                self._reserved.pop(job_id, None)
                job = self._jobs.get(job_id)
                if job is not None and not job.finished:
                    self._finish(job, JobStatus.FAILED, str(exc))
            return
        self._route_errors += 1
        if isinstance(exc, RouteRateLimited):
            delay = exc.retry_after_s or self._backoff(self._route_errors)
            self.bucket.block_until(now + delay)
        else:
            self._route_retry_at = now + self._backoff(self._route_errors)
        if batch is not None:
            self._release_batch(batch)

    def _release_batch(self, batch: Batch) -> None:
        """Put a batch's jobs back at the head of the queue, in order."""
        for job_id in reversed(batch.job_ids):
            if self._reserved.pop(job_id, None) is None:
                continue
            job = self._jobs.get(job_id)
            if job is None or job.finished:
                continue
            job.status = JobStatus.QUEUED
            self.queue.requeue_front(job.id, job.priority, job.cost, job.deadline, job.tenant)

    def _place_batch(self, batch: Batch, lease: Lease) -> None:
        now = self._clock()
        leftover = []
        for job_id in batch.job_ids:
            job = self._jobs.get(job_id)
            if job is None or job.finished or job_id not in self._reserved:
                self._reserved.pop(job_id, None)
                continue
            if self.pool.admits(lease, job.cost, now, self.config.placement.horizon_s):
                self._reserved.pop(job_id, None)
                self._start(job, lease)
            else:
                leftover.append(job_id)
        if leftover:
            self._release_batch(Batch(leftover, 0.0))

    async def _route(self, cost: float, request_idx: int | None) -> RouteResult:
        started = self._clock()
        outcome = "error"
        detail = "interrupted"  # cancelled or an unexpected exception
        try:
            result = await self._router.route(self.name, cost, request_idx)
            outcome = "ready" if isinstance(result, Ready) else "no_worker"
            detail = result.url if isinstance(result, Ready) else result.status
            self._metrics.route_batch_cost.labels(self.name).observe(cost)
            if isinstance(result, Waiting):
                await self._fleet.no_worker(self.name)
                self.last_waiting = result
                self._metrics.no_worker.labels(self.name).inc()
                log.info("route.no_worker", endpoint=self.name, cost=cost,
                         request_idx=result.request_idx, status=result.status)  # fmt: skip
            else:
                if not len(self.pool):
                    await self._fleet.got_worker(self.name, self.config.lease.ttl_s)
                self._route_errors = 0
                if len(self.known_workers) >= MAX_REMEMBERED_WORKERS:
                    self.known_workers.pop(next(iter(self.known_workers)))
                self.known_workers[result.url] = self._clock()
                log.info("route.ready", endpoint=self.name, cost=cost, reqnum=result.reqnum,
                         latency_s=round(self._clock() - started, 6))  # fmt: skip
            return result
        except RouteError as exc:
            outcome = "rate_limited" if isinstance(exc, RouteRateLimited) else "error"
            detail = exc.kind
            self.route_error_counts[exc.kind] += 1
            log.warning("route.error", endpoint=self.name, kind=exc.kind, error=str(exc))
            raise
        finally:
            latency_s = self._clock() - started
            self._metrics.route_calls.labels(self.name, outcome).inc()
            self._metrics.route_latency.labels(self.name, outcome).observe(latency_s)
            self.recent_routes.append(RouteRecord(started, outcome, cost, latency_s, detail))

    def _start_poller(self, request_idx: int | None) -> None:
        if not self.polling:
            self._poller = asyncio.create_task(self._poll(request_idx), name=f"poll-{self.name}")
            self._poller.add_done_callback(lambda _: self._wakeup.set())

    async def _poll(self, request_idx: int | None) -> None:
        """The endpoint's one poller while Vast has no worker ready: it carries ``request_idx``
        and declares the whole backlog's cost (capped) so the autoscaler scales for all of it."""
        poll = self.config.poll
        waits = 0
        following = False
        while len(self.queue) and not self._room_for_head():
            waits += 1
            delay = backoff_s(waits, poll.initial_s, poll.max_s, poll.multiplier,
                              self._rng.random())  # fmt: skip
            await asyncio.sleep(min(delay, FOLLOWER_CHECK_S) if following else delay)
            following = not await self._fleet.may_route(self.name, self._poll_ttl_s())
            if following:
                continue  # another replica polls for the fleet: wait for its worker
            await self._wait_for_token()
            cost = min(max(await self._backlog_cost(), 1.0), poll.max_cost)
            try:
                result = await self._route(cost, request_idx)
            except RouteError as exc:
                self._route_failed(exc, None)
                continue
            if isinstance(result, Waiting):
                request_idx = result.request_idx if result.request_idx is not None else request_idx
                continue
            await self._open_lease(result)
            return
        await self._fleet.release(self.name)  # the backlog is gone or has room: nothing to poll for

    def _poll_ttl_s(self) -> float:
        """The fleet's poll lease outlives the longest wait between two polls."""
        return 3 * self.config.poll.max_s + 5.0

    async def _backlog_cost(self) -> float:
        """What the autoscaler should scale for: every replica's unfinished jobs if shared."""
        fleet_cost = (
            0.0 if self._fleet_backlog is None else (await self._fleet_backlog(self.name))[1]
        )
        return max(self.queue.queued_cost, fleet_cost)

    async def _wait_for_token(self) -> None:
        for _ in range(MAX_TOKEN_WAITS):
            now = self._clock()
            if self.bucket.try_take(now):
                return
            await asyncio.sleep(max(0.001, self.bucket.ready_at(now) - now))

    def _room_for_head(self) -> bool:
        head = self.queue.peek()
        now = self._clock()
        return head is not None and self.pool.pick(head[1], now, self._rng) is not None

    async def _open_lease(self, ready: Ready) -> Lease | None:
        mode = self.mode
        session_id = None
        if mode is ReuseMode.SESSION and ready.url in self._sessionless_workers:
            mode = ReuseMode.SEQUENTIAL
        if mode is ReuseMode.SESSION:
            try:
                session_id = await self._forwarder.create_session(
                    ready, self.config.lease.session_lifetime_s
                )
            except SessionRefused:
                mode = ReuseMode.SEQUENTIAL  # at max_sessions or no session support
                self._remember_sessionless(ready.url)
            except WorkerError as exc:
                self._worker_trouble(ready.url, exc.kind)
                self._record_failure(ready.url, self._clock())
                return None
        lease = self.pool.new_lease(ready.url, ready, mode, ready.cost, self._clock())
        lease.session_id = session_id
        self._metrics.leases_opened.labels(self.name, str(mode)).inc()
        log.info("lease.opened", endpoint=self.name, lease_id=lease.lease_id, mode=str(mode),
                 capacity=ready.cost, session=session_id is not None)  # fmt: skip
        self._wakeup.set()
        return lease

    def _remember_sessionless(self, url: str) -> None:
        if len(self._sessionless_workers) >= MAX_REMEMBERED_WORKERS:
            self._sessionless_workers.clear()  # rare; forgetting only costs one refused create
        self._sessionless_workers.add(url)

    def _close_leases(self, now: float) -> None:
        for lease in self.pool.collect(now):
            log.info("lease.closed", endpoint=self.name, lease_id=lease.lease_id,
                     completed=lease.completed, retired=lease.retired)  # fmt: skip
            if lease.session_id is not None:
                self._spawn(self._end_session(lease), self._background, "session-end")

    async def _end_session(self, lease: Lease) -> None:
        session_id = lease.session_id
        if session_id is None:
            return
        # A failure means the worker is gone or reaps the session itself after its lifetime.
        with contextlib.suppress(WorkerError):
            await self._forwarder.end_session(lease.answer, session_id)

    # one job on one lease ---------------------------------------------------------------
    def _start(self, job: Job, lease: Lease) -> None:
        now = self._clock()
        self.pool.acquire(lease, job.cost, now)
        self.outliers.dispatched(lease.worker_url, now)
        task = asyncio.create_task(self._run_job(job, lease), name=f"job-{job.id}")
        self._running[job.id] = task

    async def _run_job(self, job: Job, lease: Lease) -> None:
        now = self._clock()
        if job.started_mono is None:
            job.started_mono = now
            self._queue_wait.observe(now - job.created_mono)
        job.status = JobStatus.RUNNING
        job.attempts += 1
        log.info("job.started", job_id=job.id, endpoint=self.name, attempt=job.attempts,
                 lease_id=lease.lease_id, queued_s=round(now - job.created_mono, 6))  # fmt: skip
        self.retry_budget.record_request(now)
        result: AttemptResult | None = None
        try:
            result = await attempt(
                self._forwarder, job, lease, job.deadline - now,
                self._may_retry_5xx(job), self._clock,
            )  # fmt: skip
        except asyncio.CancelledError:
            self.pool.release(lease, job.cost, self._clock(), succeeded=False)
            if job.cancel_requested:
                self._finish(job, JobStatus.CANCELLED, CANCELLED_BY_CALLER)
            else:
                self._finish(job, JobStatus.FAILED, "daemon shut down before the job finished")
            raise
        except Exception:
            log.exception("job.crashed", job_id=job.id, endpoint=self.name)
            self.pool.release(lease, job.cost, self._clock(), succeeded=False)
            self._finish(job, JobStatus.FAILED, "internal error")
        else:
            self._settle(job, lease, result)
        finally:
            self._running.pop(job.id, None)
            if len(self.queue):  # room for the next; with nothing queued the loop sleeps on
                self._wakeup.set()
            self._on_task_done()

    def _may_retry_5xx(self, job: Job) -> Callable[[], bool]:
        def allowed() -> bool:
            return (
                self.config.idempotent
                and job.attempts < self.config.max_attempts
                and self.retry_budget.try_retry(self._clock())
            )

        return allowed

    def _settle(self, job: Job, lease: Lease, result: AttemptResult) -> None:
        now = self._clock()
        if result.headers_after_s is not None:
            self._worker_latency.observe(result.headers_after_s)
        if result.kind in ("expired", "caller_gone", "broken"):
            self.pool.release(lease, job.cost, now, succeeded=False)
            status = {"expired": JobStatus.EXPIRED, "caller_gone": JobStatus.CANCELLED}.get(
                result.kind, JobStatus.FAILED
            )
            self._finish(job, status, result.detail)
            return
        reused = lease.uses > 1  # this attempt is one use: was the answer sent before it?
        action = decide(result.kind, result.status, reused, self.config.reuse == "auto")
        succeeded = action is Action.SUCCEED
        self.pool.release(lease, job.cost, now, succeeded)
        if succeeded:
            self.outliers.success(lease.worker_url)
            self._record_throughput(job.cost, now)
            self._calibrate(job, lease, result)
            self._finish(job, JobStatus.SUCCEEDED)
            return
        self._apply_failure(job, lease, action, result)

    def _apply_failure(self, job: Job, lease: Lease, action: Action, result: AttemptResult) -> None:
        now = self._clock()
        kind = result.error_kind or worker_error_kind(result.status or 0)
        self._worker_trouble(lease.worker_url, kind, job)
        job.history += (f"{action.value}:{kind}",)
        if (action is Action.RETRY and result.kind in ("timeout", "malformed")
                and not self._may_retry_5xx(job)()):  # fmt: skip
            action = Action.FAIL  # it may have run: only idempotent ones go again
        if action is Action.FAIL:
            answered = result.kind == "answered" and result.status
            error = f"worker answered {result.status}" if answered else result.detail
            self._finish(job, JobStatus.FAILED, error)
            return
        if job.pinned_session is not None:
            # A pinned job has nowhere else to go: the conversation lives on that worker.
            if action in (Action.REROUTE_GONE, Action.REROUTE_EVICT, Action.REROUTE_LEGACY):
                self.sessions.mark_gone(lease)
            job.error_status = 410 if lease.retired else 503
            self._finish(job, JobStatus.FAILED, f"session worker unavailable ({kind})")
            return
        if action is not Action.REROUTE_SHRINK:
            self._record_failure(lease.worker_url, now)
        if action is Action.REROUTE_GONE:
            self.pool.retire_worker(lease.worker_url)
            self.known_workers.pop(lease.worker_url, None)
        elif action is Action.REROUTE_EVICT:
            self.pool.retire(lease)
        elif action is Action.REROUTE_SHRINK:
            self.pool.shrink(lease)
            if lease.mode is not ReuseMode.SESSION:
                self.pool.retire(lease)  # one job at a time cannot shrink: route elsewhere
            # The autoscaler may well answer the same worker again: no new route call before
            # a back-off (a lease with room still takes the job at once).
            delay = self._backoff(refusals(job))
            self._route_retry_at = max(self._route_retry_at, now + delay)
        elif action is Action.REROUTE_LEGACY:
            self._switch_to_never()
        self._requeue(job, action.value)

    def _record_failure(self, worker_url: str, now: float) -> None:
        if self.outliers.failure(worker_url, now):
            self._metrics.ejections.labels(self.name).inc()
            self.pool.retire_worker(worker_url)
            log.warning("worker.ejected", endpoint=self.name)

    def _switch_to_never(self) -> None:
        if self.mode is ReuseMode.NEVER:
            return
        self.mode = ReuseMode.NEVER
        self.legacy_detected = True
        for lease in self.pool:
            self.pool.retire(lease)
        log.warning("endpoint.legacy_workers_detected", endpoint=self.name, reuse="never")

    def _requeue(self, job: Job, reason: str) -> None:
        self._metrics.retries.labels(self.name, reason).inc()
        # A worker's 429 refused the job before running it: not an attempt that counts.
        if job.attempts - refusals(job) >= self.config.max_attempts:
            self._finish(job, JobStatus.FAILED,
                         f"gave up after {job.attempts} attempts (last: {reason})")  # fmt: skip
            return
        log.info("job.requeued", job_id=job.id, endpoint=self.name, reason=reason,
                 attempt=job.attempts)  # fmt: skip
        job.status = JobStatus.QUEUED
        self.queue.requeue_front(job.id, job.priority, job.cost, job.deadline, job.tenant)

    def _worker_trouble(self, worker_url: str, kind: str, job: Job | None = None) -> None:
        self._metrics.worker_errors.labels(self.name, kind).inc()
        self.worker_error_counts[kind] += 1
        event = "worker.gone" if kind in ("gone", "tls") else "worker.error"
        log.warning(event, endpoint=self.name, kind=kind, job_id=job.id if job else None,
                    attempt=job.attempts if job else None)  # fmt: skip

    def _record_throughput(self, cost: float, now: float) -> None:
        """Completed cost per second: EWMAs of cost and of the gap between completions, divided.
        (An EWMA of cost/gap samples overshoots when completions come in bursts.)"""
        if self._last_completion is None:
            self._cost_ewma = cost
        else:
            gap = now - self._last_completion
            previous = self._gap_ewma_s
            self._gap_ewma_s = (
                gap if previous is None else previous + THROUGHPUT_ALPHA * (gap - previous)
            )
            self._cost_ewma += THROUGHPUT_ALPHA * (cost - self._cost_ewma)
            if self._gap_ewma_s > 0:
                self.throughput_cost_per_s = self._cost_ewma / self._gap_ewma_s
        self._last_completion = now

    def _calibrate(self, job: Job, lease: Lease, result: AttemptResult) -> None:
        """Observed cost = the worker's service time x its observed throughput."""
        service_s = result.headers_after_s
        if service_s is None:
            return
        self.meter.observe(lease.worker_url, job.cost, service_s)
        throughput = self.meter.throughput(lease.worker_url)
        if throughput is not None and job.cost > 0:
            self.calibrator.observe(job.cost, service_s, throughput)
            self._cost_ratio.observe(service_s * throughput / job.cost)

    def _backoff(self, errors: int) -> float:
        poll = self.config.poll
        return backoff_s(errors, poll.initial_s, poll.max_s, poll.multiplier, self._rng.random())

    # endings ----------------------------------------------------------------------------
    def _expire_queued(self, now: float) -> None:
        for job_id in self.queue.pop_expired(now):
            self._finish(self._jobs[job_id], JobStatus.EXPIRED, "deadline passed while queued")

    def _finish(self, job: Job, status: JobStatus, error: str | None = None) -> None:
        now = self._clock()
        if not job.finish(status, now, error):
            return
        if self._jobs.get(job.id) is job:
            del self._jobs[job.id]
        outcome = str(status)
        self._metrics.series(self._metrics.jobs_finished, self.name, outcome).inc()
        self._metrics.series(self._metrics.job_duration, self.name, outcome).observe(
            now - job.created_mono
        )
        log.info(
            "job.finished", job_id=job.id, endpoint=self.name, status=outcome,
            attempts=job.attempts, duration_s=round(now - job.created_mono, 6), error=error,
        )  # fmt: skip
        self._on_finish(job)

    async def abort(self, reason: str) -> None:
        """After the grace period: fail what is queued or routing, cancel what runs, wait."""
        for task in [*self._route_tasks, *([self._poller] if self._poller else [])]:
            task.cancel()
        await asyncio.gather(*self._route_tasks, return_exceptions=True)
        if self._poller is not None:
            await asyncio.gather(self._poller, return_exceptions=True)
        for reserved_id in list(self._reserved):
            self._finish(self._jobs[reserved_id], JobStatus.FAILED, reason)
        self._reserved.clear()
        while (job_id := self.queue.pop()) is not None:
            self._finish(self._jobs[job_id], JobStatus.FAILED, reason)
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lease in self.pool:
            self.pool.retire(lease)
        self._close_leases(self._clock())
        await self.sessions.close_all()
        await asyncio.gather(*self._background, return_exceptions=True)
