"""Route answers become leases here and only here, for the endpoint's pool and for caller
sessions alike; Vast sessions are opened and ended with them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from scheduler.config import EndpointConfig
from scheduler.core.assignments import Lease, LeasePool, ReuseMode
from scheduler.core.capacity import Capacity, CapacityPolicy, Change, Sent
from scheduler.core.kept_answers import Kept, KeptAnswers
from scheduler.core.sessions import SessionClock, session_lifetime
from scheduler.dispatch.context import (
    MAX_REMEMBERED_WORKERS,
    EndpointContext,
    capacity_policy,
    lease_limits,
    log,
    reuse_mode,
)
from scheduler.dispatch.seams import Forwarder
from scheduler.tasks import cancel_and_wait, spawn
from scheduler.vast.types import Ready, SessionRefused, WorkerError

Unreachable = Callable[[str, str], None]  # worker URL, error kind
MAX_SESSIONS_PER_WORKER = 4
MAX_RETIRING_SESSIONS = 2  # retired sessions still running their last jobs, on top
MAX_SESSIONS_HELD = MAX_SESSIONS_PER_WORKER + MAX_RETIRING_SESSIONS  # per worker, all told
END_ATTEMPTS = 4  # /session/end tries: after 0, 0.5, 1.5 and 3.5 s (each call up to 10 s)
END_BACKOFF_S = 0.5
LATE_END_GROWTH = 10  # late /session/end tries back off to this many times session_end_retry_s
MAX_LATE_ENDS = 1000  # a bound, not a limit reached: the session's expiry ends them first
ROUTINE_LIMIT_CHANGES = frozenset({"probe", "probe_dropped"})  # logged at debug


class Leasing:
    def __init__(self, ctx: EndpointContext, forwarder: Forwarder, unreachable: Unreachable):
        self._ctx = ctx
        self._forwarder = forwarder
        self._unreachable = unreachable
        policy = capacity_policy(ctx.config)
        self.capacity = Capacity(policy or CapacityPolicy())
        self.pool = LeasePool(lease_limits(ctx.config), capacity=self.capacity if policy else None)
        self.mode = reuse_mode(ctx.config.reuse)
        self.legacy_detected = False
        self._sessionless_workers: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._late_ends: set[asyncio.Task[None]] = set()  # lost /session/end calls, tried later
        self._opening: dict[str, float] = {}  # worker -> cost of the sessions being opened on it
        # answers of sessions the worker confirmed ended, to renew sessions with
        self._kept: KeptAnswers[Ready] = KeptAnswers(MAX_SESSIONS_HELD, MAX_REMEMBERED_WORKERS)
        self._renewing: set[str] = set()  # workers with a renewal's create call out
        self._closing = False

    def session_room(self, worker_url: str, cost: float) -> bool:
        """Whether the daemon may open another session, declaring ``cost``, on the worker. It
        keeps to ``MAX_SESSIONS_PER_WORKER`` open for placement, below the official worker's
        max_sessions (10), which sessions it never ended (or other clients') share. At that
        count, the smallest is retired (it ends once its jobs have) when the new one declares
        more: small sessions opened early for a few jobs would otherwise cap the worker's
        budget below what its learnt limit holds of larger jobs, for the leases' lifetime."""
        sessions = self._session_leases(worker_url)
        open_ = [x for x in sessions if not x.retired]
        if len(open_) < MAX_SESSIONS_PER_WORKER:
            return len(sessions) < MAX_SESSIONS_HELD
        smallest = min(open_, key=lambda lease: lease.capacity)
        if smallest.capacity >= cost or len(sessions) >= MAX_SESSIONS_HELD:
            return False
        self.pool.retire(smallest)
        log.info("lease.replaced", endpoint=self._ctx.name, lease_id=smallest.lease_id,
                 capacity=smallest.capacity, by_capacity=cost)  # fmt: skip
        return True

    def session_budget(self, worker_url: str) -> float:
        """What the daemon's sessions on the worker declare: the open ones' budgets, and
        those being opened."""
        declared = sum(lease.budget for lease in self._open_sessions(worker_url))
        return declared + self._opening.get(worker_url, 0.0)

    def free_session_budget(self, worker_url: str) -> float:
        """The cost the daemon's sessions on the worker have room for: the open ones' budgets
        less their jobs in flight, and those being opened (their create call is out)."""
        open_room = sum(
            max(0.0, lease.budget - lease.inflight_cost)
            for lease in self._open_sessions(worker_url)
        )
        return open_room + self._opening.get(worker_url, 0.0)

    def _session_leases(self, worker_url: str) -> list[Lease]:
        """The worker's leases that hold a Vast session, retired (still running) or not."""
        return [lease for lease in self.pool if lease.worker_url == worker_url and lease.session_id]

    def _open_sessions(self, worker_url: str) -> Iterator[Lease]:
        """The worker's leases that hold a Vast session and are not retired."""
        return (
            lease
            for lease in self.pool
            if lease.worker_url == worker_url and lease.session_id and not lease.retired
        )

    async def open(self, ready: Ready) -> Lease | None:
        """A lease in the pool for a ready answer, with a Vast session when the mode wants one
        and the worker has room for it; None when the worker cannot be reached."""
        mode = self.mode
        session_id = None
        if mode is ReuseMode.SESSION and ready.url in self._sessionless_workers:
            mode = ReuseMode.SEQUENTIAL
        started = self._ctx.clock()
        lifetime_s = self.lifetime_for_jobs(started)
        if mode is ReuseMode.SESSION:
            try:
                session_id = await self._create_session(ready, lifetime_s)
            except SessionRefused as exc:
                mode = ReuseMode.SEQUENTIAL  # this answer carries one job at a time
                if exc.status != 429:  # 429: at max_sessions for now, not for good
                    self._remember_sessionless(ready.url)
            except WorkerError as exc:
                self._unreachable(ready.url, exc.kind)
                return None
        now = self._ctx.clock()
        lease = self.pool.add(self.pool.make_lease(ready.url, ready, mode, ready.cost, now))
        if session_id is not None:
            self._track(lease, session_id, started, lifetime_s)
        self._ctx.metrics.leases_opened.labels(self._ctx.name, str(mode)).inc()
        log.info("lease.opened", endpoint=self._ctx.name, lease_id=lease.lease_id,
                 worker=ready.url, mode=str(mode), capacity=ready.cost,
                 session=session_id is not None,
                 session_lifetime_s=lifetime_s if session_id else None)  # fmt: skip
        self._ctx.wakeup.set()
        return lease

    async def _create_session(self, ready: Ready, lifetime_s: float) -> str:
        """``/session/create`` on the answer's worker, its cost counted among those being
        opened there (``session_budget``) while the call is out."""
        url = ready.url
        self._opening[url] = self._opening.get(url, 0.0) + ready.cost
        try:
            return await self._forwarder.create_session(ready, lifetime_s)
        finally:
            left = self._opening.pop(url, 0.0) - ready.cost
            if left > 1e-9:
                self._opening[url] = left

    async def open_pinned(self, ready: Ready, lifetime_s: float) -> Lease:
        """A caller session's lease: a Vast session of its own, kept out of the pool (only the
        caller's jobs run on it). Raises the worker's error when it cannot be opened."""
        started = self._ctx.clock()
        session_id = await self._forwarder.create_session(ready, lifetime_s)
        now = self._ctx.clock()
        lease = self.pool.make_lease(
            ready.url, ready, ReuseMode.SESSION, ready.cost, now, expires_at=float("inf")
        )
        self._track(lease, session_id, started, lifetime_s)
        return lease

    def lifetime_for_jobs(self, now: float) -> float:
        """The lifetime a new lease's session is opened with: ``lease.session_lifetime_s``,
        or longer so that no job held here (queued, routing or running) could be cut by the
        worker's expiry before its deadline (``core.assignments.session_lifetime``)."""
        config = self._ctx.config
        deadlines = (job.deadline for job in self._ctx.jobs.values())
        return session_lifetime(config.lease.session_lifetime_s, deadlines, now,
                                config.max_timeout_s)  # fmt: skip

    def _track(self, lease: Lease, session_id: str, created_at: float, lifetime_s: float) -> None:
        lease.session_id = session_id
        bound_s = self._ctx.config.lease.session_end_bound_s
        lease.session = SessionClock.opened(created_at, lifetime_s, bound_s)

    def release(self, lease: Lease, cost: float, succeeded: bool, sent: Sent | None) -> None:
        """A job on ``lease`` ended (``sent``: what the pool returned when it started)."""
        change = self.pool.release(lease, cost, self._ctx.clock(), succeeded, sent)
        if lease.idle:  # the loop's next look must count its idle close (and end its session)
            self._ctx.wakeup.set()
        self._limit_changed(change, lease.worker_url)

    def refused(self, worker_url: str) -> None:
        """The worker answered 429: its concurrency limit drops (``Capacity.refused``)."""
        capacity = self.pool.capacity
        if capacity is not None:
            self._limit_changed(capacity.refused(worker_url, self._ctx.clock()), worker_url)

    def _limit_changed(self, change: Change | None, worker_url: str) -> None:
        if change is not None:
            ctx = self._ctx
            ctx.metrics.limit_changes.labels(ctx.name, change.reason).inc()
            # A steady worker probes one above its limit and drops back every few rounds:
            # those at debug (the metric counts them), the rest at info.
            emit = log.debug if change.reason in ROUTINE_LIMIT_CHANGES else log.info
            measured = {
                name: round(value, 6 if name == "latency" else 2)
                for name, value in (("rate", change.rate), ("latency", change.latency),
                                    ("held", change.held), ("base_rate", change.base_rate))
                if value is not None
            }  # fmt: skip
            emit("worker.limit_changed", endpoint=ctx.name, old=change.old, new=change.new,
                 reason=change.reason, worker=worker_url, **measured)  # fmt: skip

    def _remember_sessionless(self, url: str) -> None:
        if len(self._sessionless_workers) >= MAX_REMEMBERED_WORKERS:
            self._sessionless_workers.clear()  # rare; forgetting only costs one refused create
        self._sessionless_workers.add(url)

    def spare_workers(self) -> frozenset[str]:
        """The workers whose idle sessions close early (``LeasePool.spare_workers``): none while
        jobs wait here."""
        return frozenset() if len(self._ctx.queue) else self.pool.spare_workers()

    def renew_due(self, now: float) -> None:
        """Sessions near their bound (``SessionClock.renewal_due``) renewed from a kept answer
        of their worker (``core.kept_answers``): the successor opens while the old one still
        takes jobs, which is then retired (it ends once its jobs have). A worker with no
        answer to spare is left to the route call that a spent session brings."""
        if self.mode is not ReuseMode.SESSION or self._closing:
            return
        for lease in list(self.pool):
            url = lease.worker_url
            clock = lease.session
            if (
                clock is None
                or lease.retired
                or url in self._renewing
                or not self._kept.count(url)
                or not clock.renewal_due(now)
            ):
                continue
            sessions = self._session_leases(url)
            if len(sessions) >= MAX_SESSIONS_HELD:
                continue
            live = {x.answer.reqnum for x in sessions}
            kept = self._kept.take(url, lease.budget, live, now)
            if kept is None:
                continue
            self._renewing.add(url)
            spawn(self._renew(lease, kept), self._background, f"session-renew-{self._ctx.name}")

    async def _renew(self, old: Lease, kept: Kept[Ready]) -> None:
        answer, url = kept.answer, kept.answer.url
        metric = self._ctx.metrics.session_renewals
        started = self._ctx.clock()
        lifetime_s = self.lifetime_for_jobs(started)
        try:
            session_id = await self._create_session(answer, lifetime_s)
        except (SessionRefused, WorkerError) as exc:
            self._kept.forget(url)  # the old lease goes on until spent, then a route call
            metric.labels(self._ctx.name, "failed").inc()
            log.info("session.renewal_failed", endpoint=self._ctx.name, worker=url,
                     lease_id=old.lease_id, error=repr(exc))  # fmt: skip
            return
        finally:
            self._renewing.discard(url)
        now = self._ctx.clock()
        lease = self.pool.add(
            self.pool.make_lease(url, answer, ReuseMode.SESSION, answer.cost, now, kept.until)
        )
        self._track(lease, session_id, started, lifetime_s)
        self.pool.retire(old)
        if self._closing or self.mode is not ReuseMode.SESSION:
            self.pool.retire(lease)  # shut down or reconfigured meanwhile: it only ends
        metric.labels(self._ctx.name, "renewed").inc()
        log.info("lease.renewed", endpoint=self._ctx.name, lease_id=lease.lease_id,
                 replaces=old.lease_id, worker=url, capacity=answer.cost,
                 session_lifetime_s=lifetime_s)  # fmt: skip
        self._ctx.wakeup.set()

    def _keep(self, lease: Lease) -> None:
        """The worker confirmed the end of the lease's session: its answer may renew another
        (a caller session's lease, which never expires, for the pool's ``ttl_s``)."""
        until = min(lease.expires_at, lease.created_at + self.pool.limits.ttl_s)
        self._kept.keep(lease.answer, until)

    def close_idle(self, now: float) -> None:
        """Close the leases that are done (idle and retired, expired or unused too long)."""
        spare = self.spare_workers()
        for lease in self.pool.collect(now, spare):
            log.info("lease.closed", endpoint=self._ctx.name, lease_id=lease.lease_id,
                     completed=lease.completed, retired=lease.retired)  # fmt: skip
            if lease.session_id is not None:
                spawn(self.end_session(lease), self._background, f"session-end-{self._ctx.name}")

    async def end_session(self, lease: Lease) -> None:
        """``/session/end``, tried ``END_ATTEMPTS`` times with back-off. Where every try fails
        (the worker gone, the network), the worker ends the session itself at its expiry,
        which ``SessionClock`` keeps within ``lease.session_end_bound_s`` of now."""
        session_id = lease.session_id
        if session_id is None:
            return
        for attempt in range(1, END_ATTEMPTS + 1):
            try:
                await self._forwarder.end_session(lease.answer, session_id)
                self._keep(lease)
                return
            except WorkerError as exc:
                if attempt == END_ATTEMPTS:
                    expires_in = (
                        lease.session.expires_at - self._ctx.clock() if lease.session else None
                    )
                    log.warning("session.end_failed", endpoint=self._ctx.name,
                                lease_id=lease.lease_id, kind=exc.kind, attempts=attempt,
                                worker_ends_it_in_s=expires_in)  # fmt: skip
                    if not self._closing:
                        spawn(self._end_late(lease, session_id), self._late_ends,
                              f"session-end-late-{self._ctx.name}")  # fmt: skip
                    return
                await asyncio.sleep(END_BACKOFF_S * 2 ** (attempt - 1))

    async def _end_late(self, lease: Lease, session_id: str) -> None:
        """A lost ``/session/end`` tried again every ``lease.session_end_retry_s`` (doubling,
        up to ``LATE_END_GROWTH`` times it) until it goes through or the worker's own expiry
        of the session has passed. Cancelled on shutdown."""
        interval = self._ctx.config.lease.session_end_retry_s
        ceiling = interval * LATE_END_GROWTH
        for tries in range(1, MAX_LATE_ENDS + 1):
            await asyncio.sleep(interval)
            if lease.session is not None and self._ctx.clock() >= lease.session.expires_at:
                return  # the worker's sweep has ended it
            try:
                await self._forwarder.end_session(lease.answer, session_id)
            except WorkerError:
                interval = min(ceiling, interval * 2)
                continue
            self._keep(lease)
            log.info("session.ended_late", endpoint=self._ctx.name, lease_id=lease.lease_id,
                     late_tries=tries)  # fmt: skip
            return

    def switch_to_never(self) -> None:
        """Legacy (replay-protected) workers: one route answer per job from now on."""
        if self.mode is ReuseMode.NEVER:
            return
        self.mode = ReuseMode.NEVER
        self.legacy_detected = True
        self._retire_all()
        log.warning("endpoint.legacy_workers_detected", endpoint=self._ctx.name, reuse="never")

    def _retire_all(self) -> None:
        for lease in self.pool:  # they finish what they run, then close
            self.pool.retire(lease)

    def reconfigure(self, config: EndpointConfig) -> None:
        self.pool.limits = lease_limits(config)
        policy = capacity_policy(config)
        if policy is not None:
            self.capacity.policy = policy  # what was learnt per worker is kept
        self.pool.capacity = self.capacity if policy is not None else None
        mode = reuse_mode(config.reuse)
        if mode is not self.mode and not (self.legacy_detected and config.reuse == "auto"):
            self.mode = mode
            self._retire_all()

    async def close_all(self) -> None:
        """On the way out: every lease retired and closed, their sessions ended (those whose
        end was lost earlier are left to the workers' expiry)."""
        self._closing = True
        await cancel_and_wait(self._late_ends)
        self._retire_all()
        self.close_idle(self._ctx.clock())
        await asyncio.gather(*self._background, return_exceptions=True)
        # the sessions that renewals under way opened meanwhile (retired as they opened)
        self.close_idle(self._ctx.clock())
        await asyncio.gather(*self._background, return_exceptions=True)
