"""The beat of held route calls (jobs wait here for workers at their limit) and of the demand
calls that follow them. Held calls find workers Vast started and tell it of the jobs waiting;
they back off while the answers name workers already at their limit, but not while jobs pile
up here, nor beyond a share of the time the leased workers need to clear what waits; while
they are backed off, a probe declaring one job's cost goes every PROBE_JOBS jobs sent. A
demand call declares what arrived here while jobs waited and no call declared yet
(``core.demand.DemandLedger``)."""

from __future__ import annotations

import math

from scheduler.config import EndpointConfig
from scheduler.core.assignments import LeasePool
from scheduler.core.demand import DemandLedger

MAX_HELD_ROUTE_DOUBLINGS = 4  # held route calls back off to 16x held_route_interval_s
# A demand call declares the cost that arrived within this many held intervals and no call
# declared yet, and goes at most once per such window: Vast then hears the recent arrival
# rate, and a worker it names for it (and never gets the jobs) looks loaded to it for at most
# a status report of that window.
DEMAND_WINDOW_INTERVALS = 4
DRAIN_SHARE = 0.25  # held calls back off to at most this share of the backlog's drain time
# ... once it lasts longer than this many held intervals: a closed loop's queue, cleared and
# refilled all the time, would otherwise keep the calls at their base beat (in (b) the route
# calls per job went from 0.01-0.03 to 0.03-0.05 against a bound of 0.05).
SHORT_BACKLOG_INTERVALS = 2
# While held calls are backed off, a probe (one job's cost) may go once this many jobs were sent
# to workers since the last call, and PROBE_INTERVALS held intervals after it: at most
# 1/PROBE_JOBS route calls per job (at 50, (b)'s route calls per job went from 0.03 to 0.04-0.05
# against a bound of 0.05), and a worker Vast adds to a busy fleet is found within that many
# jobs or a second, not at the next held call (up to 16 held intervals, 8 s by default, away).
PROBE_JOBS = 100
PROBE_INTERVALS = 2


class HeldRoutes:
    """When the next held call and the next demand call may go (times are passed in)."""

    def __init__(self, config: EndpointConfig, pool: LeasePool, now: float) -> None:
        self._config = config
        self._pool = pool
        self.unused = 0  # held route calls in a row whose answer opened nothing
        self._backed_off_at = now  # the next held call, backed off as answers went unused
        self._held_at = now  # when the last held call went
        self._called_at = now  # when the last held call or probe went
        self._starts = 0  # jobs sent to workers since then
        self._waiting_at_held = 0.0  # the cost waiting here at the last held call
        self.demand_grew = False  # that cost grew between the last two held calls
        self._demand_declared_at = -math.inf  # when the last demand call went
        self.demand = DemandLedger(self._demand_window_s(config))

    def reconfigure(self, config: EndpointConfig) -> None:
        self._config = config
        self.demand.window_s = self._demand_window_s(config)

    @staticmethod
    def _demand_window_s(config: EndpointConfig) -> float:
        return DEMAND_WINDOW_INTERVALS * config.placement.held_route_interval_s

    def job_started(self) -> None:
        """A job was sent to a worker."""
        self._starts += 1

    def due(self, waiting_cost: float) -> float:
        """When the next held call may go, with ``waiting_cost`` waiting here now. Doubling
        while answers keep naming workers already at their limit: Vast has nothing new, and
        hears the demand at a slower beat too. Not while jobs pile up here (the cost waiting
        grew since the last held call): that is demand beyond the workers Vast runs, which
        these calls (and the demand calls after them) tell Vast of; then the next goes
        ``held_route_interval_s`` after the last. Nor, when the leased workers need more than
        two intervals to clear what waits, beyond ``DRAIN_SHARE`` of that time: a worker Vast
        starts meanwhile is found while it can still help (in the bill scenario, two new
        workers stood idle for 6 s while a burst's backlog drained through the others, the
        calls backed off to 8 s; the official client would have routed each of those jobs)."""
        base = self.interval_s(0)
        soonest = self._held_at + base
        if waiting_cost > self._waiting_at_held:
            return min(self._backed_off_at, soonest)
        drain_s = self._drain_s(waiting_cost)
        if drain_s is None or drain_s <= SHORT_BACKLOG_INTERVALS * base:
            return self._backed_off_at  # what waits clears soon: no new worker needed for it
        return min(self._backed_off_at, max(soonest, self._held_at + DRAIN_SHARE * drain_s))

    def _drain_s(self, waiting_cost: float) -> float | None:
        """Seconds the leased workers need to clear ``waiting_cost`` at the rate they clear
        cost (None before any has a measured rate)."""
        pool = self._pool
        rate = sum(pool.meter.throughput(url) or 0.0 for url in pool.workers())
        return waiting_cost / rate if rate > 0 else None

    def went(self, now: float, waiting_cost: float) -> None:
        """A held call goes now, with ``waiting_cost`` waiting here."""
        self.demand_grew = waiting_cost > self._waiting_at_held
        self._held_at, self._waiting_at_held = now, waiting_cost
        self._backed_off_at = now + self.interval_s(self.unused)
        self.probed(now)

    def probe_due(self, now: float) -> bool:
        """A probe may go now: held calls are backed off (their answers named workers at their
        limit), PROBE_JOBS jobs were sent to workers since the last call, and that call is at least
        PROBE_INTERVALS held intervals old."""
        return (
            self.unused > 0
            and self._starts >= PROBE_JOBS
            and now >= self._called_at + PROBE_INTERVALS * self.interval_s(0)
        )

    def probed(self, now: float) -> None:
        self._called_at, self._starts = now, 0

    def interval_s(self, doublings: int) -> float:
        base = self._config.placement.held_route_interval_s
        return base * float(2 ** min(doublings, MAX_HELD_ROUTE_DOUBLINGS))

    def answer_unused(self) -> float:
        """An answer named a worker the daemon cannot use: returns how long to wait before
        routing for a worker's budget again (doubling with such answers in a row)."""
        self.unused += 1
        return self.interval_s(self.unused)

    def answer_used(self) -> None:
        """An answer opened a lease: the back-off starts again from the base interval, for the
        next held call too (in (k) the first call after a lull opened a lease, and the next,
        which found the worker Vast had added, went 2 s later, on the back-off of the lull's
        calls)."""
        self.unused = 0
        self._backed_off_at = min(self._backed_off_at, self._held_at + self.interval_s(0))

    def room_named(self, now: float) -> None:
        """The next held call may go now: an answer that opens nothing (a probe's, a demand
        call's: their cost is not what a session should declare) named a worker with room,
        which that call opens a session sized for; or an answer opened a session on a worker
        not leased before, and Vast may hold more with room (``Routing._use_answer``). Left to
        the held beat, a cold start's second worker sat unleased for 0.25 s while 90 jobs
        waited ((f2) cold: its p99 jobs were those), and its third came a start-up round late."""
        self.unused = 0
        self._backed_off_at = min(self._backed_off_at, now)

    def demand_due(self, now: float, declared: float) -> float | None:
        """The cost a demand call should declare now, after a held call that declared
        ``declared`` and opened nothing: the undeclared arrivals beyond it, only while the
        cost waiting here grew, at most once per window. None: no demand call."""
        undeclared = self.demand.undeclared(now) - declared
        if (
            not self.demand_grew
            or undeclared <= 0
            or now < self._demand_declared_at + self.demand.window_s
        ):
            return None
        return undeclared

    def demand_declared(self, now: float) -> None:
        self.demand.declared()
        self._demand_declared_at = now
