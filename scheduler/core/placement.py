"""Placement over the leases of one endpoint (``LeasePool``'s rules for where a job goes).
Pure: time is passed in.

Placement (``choose``) is per worker, not per lease: a worker's expected finish for a new job
is (cost in flight on all its leases + the job's cost) / the rate at which it clears work
(``BusyMeter``). The job goes to the earliest finish among the workers that admit it, and a
worker admits work only while it is under its learnt concurrency limit (and, with
``placement.horizon_s``, idle or the job would finish within it). A job no worker admits is
held in the daemon's queue (``HOLD``) until one does; the hold is bounded because every
worker that refuses it has work in flight, whose completion is the next chance.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from scheduler.core.calibration import BusyMeter
from scheduler.core.capacity import Capacity
from scheduler.core.leases import EPSILON, HOLD, Held, Lease

# A worker whose last usable session was just retired as spent (renewed) is routed for, as one
# short of budget is, for this long: left to the held route calls' back-off, the fleet's fastest
# worker went unused for 2-8 s per renewal in (b).
RENEWAL_WINDOW_S = 2.0
# Idle workers whose expected finish is within this share of the best one are alike: the one
# used last gets the job (``LeasePool._packed``).
PACK_TOLERANCE = 0.25


def admitted_finish(
    load: float, jobs: int, cost: float, rate: float | None, horizon_s: float | None
) -> float | None:
    """Seconds until a job of ``cost`` would finish on a worker with ``load`` cost in ``jobs``
    jobs, clearing ``rate`` cost per second (0 before its rate is measured: admitted); None
    when the worker does not admit it: busy, and the job would finish past ``horizon_s``
    (None: no horizon, the worker's concurrency limit alone decides)."""
    if not rate:
        return 0.0
    finish = (load + cost) / rate
    return finish if jobs == 0 or horizon_s is None or finish <= horizon_s else None


class LeasePlacement:
    """Where a job goes among the leases: the placement half of ``LeasePool``, which holds
    the leases and their bookkeeping."""

    _leases: dict[int, Lease]
    _renewing: dict[str, float]  # worker -> when its session was retired as spent
    capacity: Capacity | None
    meter: BusyMeter

    def pick(
        self,
        cost: float,
        now: float,
        rng: random.Random,
        excluded: frozenset[str] = frozenset(),
        speed: Callable[[str], float | None] | None = None,
        until: float | None = None,
    ) -> Lease | None:
        """Power of two choices among the leases with room: by expected finish time when both
        workers' observed speed is known (cost in flight over cost per second), else by
        utilisation, so faster workers carry more of the load."""
        candidates = [
            lease
            for lease in self._leases.values()
            if lease.worker_url not in excluded and lease.has_room(cost, now, until)
        ]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        first, second = rng.sample(candidates, 2)
        speeds = (speed(first.worker_url), speed(second.worker_url)) if speed else (None, None)
        if speeds[0] and speeds[1]:
            first_finish = (first.inflight_cost + cost) / speeds[0]
            second_finish = (second.inflight_cost + cost) / speeds[1]
            return first if first_finish <= second_finish else second
        return first if first.utilisation <= second.utilisation else second

    def choose(
        self,
        cost: float,
        now: float,
        rng: random.Random,
        excluded: frozenset[str] = frozenset(),
        horizon_s: float | None = None,
        until: float | None = None,
        route_for_budget: bool = False,
    ) -> Lease | Held | None:
        """Earliest expected finish among the workers that admit the job (see the module
        docstring); ``None`` when no lease has room (route for more), ``HOLD`` when leases have
        room but every such worker is at its concurrency limit or busy past ``horizon_s``.
        Until every worker with room has a measured rate (a new worker, the first jobs),
        ``pick``'s two choices decide. ``until``: the job's deadline, which a session lease
        must cover; a session lease that can take no job any more is retired here (renewed:
        the next route answer opens a new session). ``route_for_budget``: a job that would
        only go beyond the last limit that paid on its worker, while another worker has room
        under its own but no lease with budget for the job, is routed for (None) instead: that
        worker needs a bigger session, which only a route call brings."""
        room = self._room(cost, now, excluded, until)
        loads = self.loads()
        full = self._at_limit(loads, now, cost)  # told they held a job back, room or not
        at_limit = full & room.keys()
        if not room:
            return HOLD if self._all_full(full, excluded) else None
        if len(at_limit) == len(room):
            # A worker under its limit whose leases are all full needs a bigger budget, which
            # only a route call brings: route (None) rather than wait for the others (HOLD).
            return None if self._short_of_budget(room, loads, excluded, now, cost) else HOLD
        rates = {url: self.meter.throughput(url) for url in room if url not in at_limit}
        if len(rates) > 1 and None in rates.values():
            return self.pick(cost, now, rng, excluded | at_limit, self.meter.throughput, until)
        finishes: dict[str, float] = {}
        for url, rate in rates.items():
            finish = admitted_finish(*loads.get(url, (0.0, 0)), cost, rate, horizon_s)
            if finish is not None:
                finishes[url] = finish
        if not finishes:
            return HOLD
        # Room under a worker's proven limit (the last that paid there) comes before the
        # headroom a raised limit is testing: jobs sent into one worker's headroom while
        # another has proven room queue behind its batch while the other idles.
        proven = {url: f for url, f in finishes.items() if self._under_proven(url, loads)}
        if proven:
            finishes = proven
        earliest = min(finishes, key=finishes.__getitem__)
        if route_for_budget and self._fund_first(earliest, room, loads, excluded):
            return None
        return room[self._packed(earliest, finishes, loads)]

    def _all_full(self, full: frozenset[str], excluded: frozenset[str]) -> bool:
        """With ``max_worker_cost``, every leased worker is among ``full`` (it holds as much
        work as lets the job join): the job waits here (their sessions declare that much, so
        none has budget for it; a route call would only name one of them)."""
        if self._cost_cap() is None:
            return False
        workers = self.workers() - excluded
        return bool(workers) and workers <= full

    def _room(
        self, cost: float, now: float, excluded: frozenset[str], until: float | None
    ) -> dict[str, Lease]:
        """Per worker, its least utilised lease with room for the job; spent sessions retired."""
        room: dict[str, Lease] = {}
        for lease in self._leases.values():
            if lease.session is not None and not lease.retired and lease.session.spent(now):
                lease.retired = True
                self._renewing[lease.worker_url] = now
                continue
            url = lease.worker_url
            if url not in excluded and lease.has_room(cost, now, until):
                best = room.get(url)
                if best is None or lease.utilisation < best.utilisation:
                    room[url] = lease
        return room

    def _packed(
        self, best: str, finishes: dict[str, float], loads: dict[str, tuple[float, int]]
    ) -> str:
        """When the earliest finish is on an idle worker, the idle worker used last among those
        about as fast (within ``PACK_TOLERANCE``): light load then stays on few workers, and
        the others go idle, close their leases (their sessions end) and can be scaled down by
        Vast, which keeps a worker whose session is open. Measured rates of alike workers
        differ by noise; left to it, light load spreads over every worker it ever met."""
        if loads.get(best, (0.0, 0))[1]:
            return best
        bound = finishes[best] * (1 + PACK_TOLERANCE) + EPSILON
        idle = [u for u, f in finishes.items() if f <= bound and not loads.get(u, (0.0, 0))[1]]
        if len(idle) < 2:
            return best
        return max(idle, key=lambda url: (self.meter.last_active(url), -finishes[url]))

    def _at_limit(
        self, loads: dict[str, tuple[float, int]], now: float, cost: float
    ) -> frozenset[str]:
        """The leased workers that hold as many jobs as their limit allows (as much work, for
        a job of ``cost``, under ``max_worker_cost``). Each is told it held a job back (that
        is what lets its limit grow), whether or not its leases have room: one whose only
        lease is full would otherwise never grow, and never get the bigger lease that growing
        asks for."""
        capacity = self.capacity
        if capacity is None:
            return frozenset()
        full = frozenset(url for url in self.workers() if self._held_at_limit(url, loads, cost))
        for url in full:
            capacity.blocked(url, now)
        return full

    def _short_of_budget(
        self,
        room: dict[str, Lease],
        loads: dict[str, tuple[float, int]],
        excluded: frozenset[str],
        now: float,
        cost: float,
    ) -> bool:
        """A worker under its limit has no lease with room: a leased one whose leases are
        full, or one whose session was just renewed (``RENEWAL_WINDOW_S``)."""
        if self.capacity is None:
            return False
        for url, at in list(self._renewing.items()):
            if now - at > RENEWAL_WINDOW_S:
                del self._renewing[url]
        roomless = self._roomless(room, excluded) | (self._renewing.keys() - room.keys() - excluded)
        return any(not self._held_at_limit(url, loads, cost) for url in roomless)

    def _roomless(self, room: dict[str, Lease], excluded: frozenset[str]) -> set[str]:
        """Leased workers, not excluded, none of whose leases has room for the job."""
        return self.workers() - room.keys() - excluded

    def _proven(self, worker_url: str) -> int:
        """The last limit that paid on the worker (0: none measured yet, limits off, or the
        work a worker holds bounds it instead, ``max_worker_cost``)."""
        capacity = self.capacity
        if capacity is None or self._cost_cap() is not None:
            return 0
        state = capacity.state(worker_url)
        return state.base_limit if state is not None else 0

    def _under_proven(self, worker_url: str, loads: dict[str, tuple[float, int]]) -> bool:
        """The worker holds fewer jobs than the last limit that paid on it (a new worker: than
        its first limit)."""
        if self.capacity is None or self._cost_cap() is not None:
            return True
        proven = self._proven(worker_url) or self.capacity.limit(worker_url)
        return loads.get(worker_url, (0.0, 0))[1] < proven

    def _fund_first(
        self,
        chosen: str,
        room: dict[str, Lease],
        loads: dict[str, tuple[float, int]],
        excluded: frozenset[str],
    ) -> bool:
        """The job would take ``chosen`` past the last limit that paid on it, while another
        leased worker holds fewer jobs than its own such limit and no lease of it has budget
        for the job: a route call for a bigger session comes first."""
        if not 0 < self._proven(chosen) <= loads.get(chosen, (0.0, 0))[1]:
            return False
        unfunded = self._roomless(room, excluded)
        return any(loads.get(url, (0.0, 0))[1] < self._proven(url) for url in unfunded)

    def _held_at_limit(
        self, worker_url: str, loads: dict[str, tuple[float, int]], cost: float = 0.0
    ) -> bool:
        """The worker holds as many jobs as its concurrency limit allows (``loads``: what
        ``loads()`` returned); never while limits are off. With ``max_worker_cost``, as much
        work as that lets a job of ``cost`` join (the first job always), or ``max_limit``
        jobs: the learnt limit does not bound it."""
        capacity = self.capacity
        if capacity is None:
            return False
        load, jobs = loads.get(worker_url, (0.0, 0))
        cap = self._cost_cap()
        if cap is None:
            return jobs >= capacity.limit(worker_url)
        return jobs >= capacity.policy.max_limit or (jobs > 0 and load + cost > cap)

    def _cost_cap(self) -> float | None:
        """``capacity.max_worker_cost`` (None: unset, or limits off)."""
        return self.capacity.policy.max_worker_cost if self.capacity is not None else None

    def saturated(self, worker_url: str) -> bool:
        """The worker is leased and holds as many jobs as its limit allows: another lease on it
        would only open another Vast session that nothing can use."""
        return worker_url in self.workers() and self._held_at_limit(worker_url, self.loads())

    def admits(self, lease: Lease, cost: float, now: float, horizon_s: float | None) -> bool:
        """Whether ``lease`` may take a job of ``cost`` now: room, and its worker admits it."""
        if not lease.has_room(cost, now):
            return False
        url = lease.worker_url
        loads = self.loads()
        if self.capacity is not None and self._held_at_limit(url, loads, cost):
            self.capacity.blocked(url, now)
            return False
        load, jobs = loads.get(url, (0.0, 0))
        return admitted_finish(load, jobs, cost, self.meter.throughput(url), horizon_s) is not None

    def loads(self) -> dict[str, tuple[float, int]]:
        """Per worker: cost and jobs in flight over all its leases (retired ones still run)."""
        loads: dict[str, tuple[float, int]] = {}
        for lease in self._leases.values():
            if lease.inflight_jobs:
                cost, jobs = loads.get(lease.worker_url, (0.0, 0))
                loads[lease.worker_url] = (cost + lease.inflight_cost, jobs + lease.inflight_jobs)
        return loads

    def workers(self) -> set[str]:
        return {lease.worker_url for lease in self._leases.values() if not lease.retired}
