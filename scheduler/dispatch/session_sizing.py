"""What a session the daemon opens on a worker should declare, and when a worker has all the
session budget it can use. A session's cost is load on its worker for the session's whole
life (the worker reports it, Vast scales on it), so sessions are sized to what the worker's
learnt limit will hold, not to the demand the route call that opened them carried."""

from __future__ import annotations

import math

from scheduler.core.assignments import ReuseMode
from scheduler.core.capacity_state import Phase
from scheduler.core.sessions import held_cost, session_cost
from scheduler.dispatch.context import EndpointContext
from scheduler.dispatch.leasing import Leasing


class SessionSizing:
    def __init__(self, ctx: EndpointContext, leasing: Leasing) -> None:
        self._ctx = ctx
        self._leasing = leasing

    def settled_limit(self) -> int | None:
        """The largest limit learnt by the leased workers past their start-up: what a
        session on a worker like them will hold. A batch routed beyond it would open a session
        declaring more than its worker runs, counted by the worker as load for the session's
        life, and Vast scales on that load. With no such worker leased now (all closed in a
        quiet spell), the largest of those remembered: the endpoint's workers run the same
        server, and a new one would otherwise open its session for a full batch. None: no
        worker has settled yet."""
        capacity = self._leasing.pool.capacity
        if self._leasing.mode is not ReuseMode.SESSION or capacity is None:
            return None
        states = (capacity.state(url) for url in self._leasing.pool.workers())
        learnt = [s.limit for s in states if s is not None and s.phase is not Phase.STARTUP]
        return max(learnt) if learnt else capacity.settled_limit()

    def worker_cost_cap(self) -> float | None:
        """``capacity.max_worker_cost`` when sessions are sized by limits: what a worker holds
        at most, and so what its sessions declare."""
        capacity = self._leasing.pool.capacity
        if self._leasing.mode is not ReuseMode.SESSION or capacity is None:
            return None
        return capacity.policy.max_worker_cost

    def batch_cost(self) -> float:
        """The most cost one route call carries: no more than a worker holds."""
        cap = self.worker_cost_cap()
        max_cost = self._ctx.config.batch.max_cost
        return max_cost if cap is None else min(max_cost, cap)

    def batch_jobs(self) -> int:
        """The most jobs one route call carries."""
        if self._leasing.mode is not ReuseMode.SESSION:
            return 1
        settled = self.settled_limit()
        max_jobs = self._ctx.config.batch.max_jobs
        # A session declares its answer's cost for its whole life: no more than it will hold.
        return max_jobs if settled is None else min(max_jobs, settled)

    def declared_cost(self, cost: float, cost_sq: float) -> float:
        """A batch's route call declares its jobs' cost (``cost``; ``cost_sq``: the sum of their
        squares); for a session under learnt limits, at least what the busiest worker's limit
        would hold of such jobs, and no less than the largest job waiting (``session_cost``)."""
        leasing, config = self._leasing, self._ctx.config
        capacity = leasing.pool.capacity
        if leasing.mode is not ReuseMode.SESSION or capacity is None:
            return cost
        worker_cap = self.worker_cost_cap()
        if worker_cap is not None:
            return min(max(cost, worker_cap), config.poll.max_cost, config.batch.max_cost)
        settled = self.settled_limit()
        limit = settled or max(
            (self._next_step(url, capacity.limit(url)) for url in leasing.pool.workers()),
            default=1,
        )
        queue = self._ctx.queue
        cap = min(config.poll.max_cost, config.batch.max_cost)
        return session_cost(cost, cost_sq, queue.queued_cost, queue.queued_cost_sq, limit, cap,
                            queue.largest_cost())  # fmt: skip

    def head_session_cost(self) -> float:
        """What a session opened for the queue's next batch declares (``declared_cost``)."""
        queue = self._ctx.queue
        share = max(1, min(self.batch_jobs(), len(queue))) / max(1, len(queue))
        return self.declared_cost(queue.queued_cost * share, queue.queued_cost_sq * share)

    def held_cost(self) -> float:
        """The mean cost of a job a worker holds, of the jobs waiting here (``held_cost``)."""
        queue = self._ctx.queue
        return held_cost(queue.queued_cost, queue.queued_cost_sq)

    def funded(self, url: str, job_cost: float) -> bool:
        """The daemon's sessions on the worker (open, or being opened) have room for as many
        such jobs as its limit lets it take beside those it runs. Parallel batch calls after
        a worker is found name it together: each opened a session (3-6 on one new FIFO
        worker running one job, in the bill scenario's traces). A worker that joins a fleet
        whose peers had settled before it came, still in its start-up, is funded for one job
        beyond their limit (the endpoint's workers run the same server): a faster one grows
        past it by its probes once its start-up is over. Workers met together are not: in a
        mixed fleet (h) the FIFO worker settles first, and its limit of one would have held
        the batching worker's start-up to two jobs (34.8 jobs/s against 41-42)."""
        worker_cap = self.worker_cost_cap()
        if worker_cap is not None:
            load = self._leasing.pool.loads().get(url, (0.0, 0))[0]
            wanted = min(job_cost, max(0.0, worker_cap - load))
            return self._leasing.free_session_budget(url) >= wanted - 1e-9
        sized = self._sized_limit(url)
        if sized is None:
            return False
        limit, jobs = sized
        wanted = max(0, limit - jobs) * max(job_cost, self.held_cost())
        return self._leasing.free_session_budget(url) >= wanted - 1e-9

    def stocked(self, url: str, job_cost: float) -> bool:
        """The worker's sessions (open, or being opened) declare at least what its limit (in
        its start-up, its next step: ``_next_step``) holds of such jobs (``job_cost``, or a
        held job of the queue's if larger), whatever runs on them now: a worker at its limit
        with small jobs is not funded for the large ones that follow them (an answer naming
        it is used)."""
        worker_cap = self.worker_cost_cap()
        if worker_cap is not None:
            return self._leasing.session_budget(url) >= min(worker_cap, job_cost) - 1e-9
        sized = self._sized_limit(url)
        if sized is None:
            return True
        wanted = sized[0] * max(job_cost, self.held_cost())
        return self._leasing.session_budget(url) >= wanted - 1e-9

    def _sized_limit(self, url: str) -> tuple[int, int] | None:
        """The limit the worker's sessions are sized for, and the jobs it runs (None: sessions
        are not sized by limits)."""
        leasing = self._leasing
        capacity = leasing.pool.capacity
        if leasing.mode is not ReuseMode.SESSION or capacity is None:
            return None
        jobs = leasing.pool.loads().get(url, (0.0, 0))[1]
        limit = capacity.limit(url)
        state = capacity.state(url)
        if state is None or state.phase is Phase.STARTUP:
            settled = capacity.settled_limit(before=state.first_seen if state else math.inf)
            limit = self._next_step(url, limit) if settled is None else min(limit, settled + 1)
        return limit, jobs

    def _next_step(self, url: str, limit: int) -> int:
        """What the worker, at ``limit`` in its start-up with no worker settled to say where it
        ends, may hold after its next step: up to 4x (start-up's longest), at most a batch's
        jobs, once a round at the first limit or more showed no queueing (a FIFO worker, found
        queueing in its first round, starts again from one job and is sized for its limit; so
        is any worker before its first round's verdict). Its sessions are sized for that: sized
        for its limit, a batching worker's first session (four jobs' worth) capped it below its
        step to 32 when no answer happened to name it while it was under its limit (in (f2)'s
        cold starts it then held 6 of (f2)'s large jobs in its 32 for the load's first second,
        and another took them past its batch, where they waited behind it: 70 jobs/s against
        95)."""
        capacity = self._leasing.pool.capacity
        state = capacity.state(url) if capacity is not None else None
        if capacity is None or state is None or state.base_limit < capacity.policy.initial_limit:
            return limit
        return max(limit, min(self._ctx.config.batch.max_jobs, 4 * limit))
