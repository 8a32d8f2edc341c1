"""Cached worker assignments (leases) and their in-flight budgets. Pure: time is passed in.

A lease (``core/leases.py``) is one route answer the daemon may place jobs on. The pool holds
an endpoint's leases, sends jobs out on them and takes them back (``acquire``, ``release``),
and closes them when idle, retired or spent; where a job goes is its placement half
(``core/placement.py``). Budgets adapt by AIMD: halved when the worker answers 429, grown
back towards the routed cost on success.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from scheduler.core.calibration import BusyMeter
from scheduler.core.capacity import Capacity, Change, Sent
from scheduler.core.leases import EPSILON, HOLD, Held, Lease, ReuseMode
from scheduler.core.placement import (
    PACK_TOLERANCE,
    RENEWAL_WINDOW_S,
    LeasePlacement,
    admitted_finish,
)
from scheduler.core.sessions import SESSION_MARGIN_S

__all__ = [
    "BUSY_ALPHA",
    "EPSILON",
    "HOLD",
    "PACK_TOLERANCE",
    "RENEWAL_WINDOW_S",
    "Held",
    "Lease",
    "LeaseLimits",
    "LeasePool",
    "ReuseMode",
    "admitted_finish",
]

BUSY_ALPHA = 0.05  # decay of the per-worker busy-rate sums, per completion (see tests)


@dataclass(frozen=True, slots=True)
class LeaseLimits:
    ttl_s: float = 300.0  # no new placements after this age
    idle_close_s: float = 2.0  # an idle lease is closed after this long (lease.idle_close_s)
    spare_close_s: float = 0.5  # ... on a spare worker (``LeasePool.spare_workers``) this long
    min_budget_fraction: float = 0.05  # AIMD never shrinks a budget below this share
    increase_fraction: float = 0.1  # additive increase per success, as a share of capacity
    # The official worker removes a request's entry (keyed by reqnum) only after it has sent
    # the answer; reusing the answer at once can start the next request before that removal,
    # which then deletes the new entry and the worker under-reports its load. A short rest
    # lets the worker finish its bookkeeping first.
    sequential_rest_s: float = 0.1


class LeasePool(LeasePlacement):
    """The leases of one endpoint."""

    def __init__(
        self, limits: LeaseLimits, meter: BusyMeter | None = None, capacity: Capacity | None = None
    ) -> None:
        self.limits = limits
        self.meter = meter or BusyMeter(alpha=BUSY_ALPHA)
        self.capacity = capacity  # per-worker concurrency limits; None: leases alone bound it
        self._leases: dict[int, Lease] = {}
        self._next_id = 1
        self._renewing: dict[str, float] = {}  # worker -> when its session was retired as spent

    def __len__(self) -> int:
        return len(self._leases)

    def __iter__(self) -> Iterator[Lease]:
        return iter(list(self._leases.values()))

    def make_lease(
        self,
        worker_url: str,
        answer: Any,
        mode: ReuseMode,
        capacity: float,
        now: float,
        expires_at: float | None = None,
    ) -> Lease:
        """A new lease with this pool's next id, not (yet) in the pool."""
        lease = Lease(
            lease_id=self._next_id,
            worker_url=worker_url,
            answer=answer,
            mode=mode,
            capacity=max(capacity, EPSILON),
            created_at=now,
            expires_at=now + self.limits.ttl_s if expires_at is None else expires_at,
        )
        self._next_id += 1
        return lease

    def add(self, lease: Lease) -> Lease:
        self._leases[lease.lease_id] = lease
        self._renewing.pop(lease.worker_url, None)
        return lease

    def new_lease(
        self, worker_url: str, answer: Any, mode: ReuseMode, capacity: float, now: float
    ) -> Lease:
        return self.add(self.make_lease(worker_url, answer, mode, capacity, now))

    def acquire(self, lease: Lease, cost: float, now: float) -> Sent | None:
        """A job goes out on ``lease``; what it returns goes back to ``release``."""
        lease.inflight_cost += cost
        lease.inflight_jobs += 1
        lease.uses += 1
        lease.last_used = now
        if lease.session is not None:
            lease.session.started()
        self.meter.started(lease.worker_url, now)
        if self.capacity is None:
            return None
        return self.capacity.started(lease.worker_url, now, cost)

    def release(
        self,
        lease: Lease,
        cost: float,
        now: float,
        succeeded: bool,
        sent: Sent | None = None,
    ) -> Change | None:
        """A job on ``lease`` ended (``sent``: what ``acquire`` returned for it); returns a
        change of its worker's concurrency limit."""
        self.meter.finished(lease.worker_url, cost, now, succeeded)
        change = None
        if self.capacity is not None and sent is not None:
            change = self.capacity.finished(lease.worker_url, sent, cost, now, succeeded)
        last = lease.inflight_jobs <= 1  # reset to exactly 0 so float drift cannot pile up
        lease.inflight_cost = 0.0 if last else max(0.0, lease.inflight_cost - cost)
        lease.inflight_jobs = max(0, lease.inflight_jobs - 1)
        lease.last_used = now
        if lease.mode is not ReuseMode.SESSION:
            lease.available_at = now + self.limits.sequential_rest_s
        if succeeded:
            lease.completed += 1
            step = lease.capacity * self.limits.increase_fraction
            lease.budget = min(lease.capacity, lease.budget + step)
        return change

    def shrink(self, lease: Lease) -> None:
        """Multiplicative decrease: the worker answered 429."""
        floor = lease.capacity * self.limits.min_budget_fraction
        lease.budget = max(floor, lease.budget / 2)

    def retire(self, lease: Lease) -> None:
        lease.retired = True

    def retire_worker(self, worker_url: str) -> list[Lease]:
        hit = [lease for lease in self._leases.values() if lease.worker_url == worker_url]
        for lease in hit:
            lease.retired = True
        return hit

    def collect(self, now: float, spare: frozenset[str] = frozenset()) -> list[Lease]:
        """Remove and return the leases to close: idle and (retired, expired or unused too long:
        ``spare_close_s`` on the ``spare`` workers, else ``idle_close_s``)."""
        done = [
            lease
            for lease in self._leases.values()
            if lease.idle
            and (
                lease.retired
                or now >= lease.expires_at
                or (lease.session is not None and lease.session.spent(now))
                or now - lease.last_used >= self._idle_close_s(lease, spare)
                or (lease.mode is ReuseMode.NEVER and lease.uses > 0)
            )
        ]
        for lease in done:
            del self._leases[lease.lease_id]
        return done

    def next_collection(self, now: float, spare: frozenset[str] = frozenset()) -> float | None:
        """When ``collect`` (given the same ``spare``) next has something to do."""
        times = [
            min(
                lease.expires_at,
                lease.last_used + self._idle_close_s(lease, spare),
                lease.session.expires_at - SESSION_MARGIN_S if lease.session else math.inf,
            )
            for lease in self._leases.values()
            if lease.idle
        ]
        return min(times) if times else None

    def _idle_close_s(self, lease: Lease, spare: frozenset[str]) -> float:
        limits = self.limits
        return limits.spare_close_s if lease.worker_url in spare else limits.idle_close_s

    def spare_workers(self) -> frozenset[str]:
        """The leased workers running nothing, but the one used last: while nothing waits for a
        worker, their sessions close after ``spare_close_s``. Placement packs light load onto
        the workers used last (``_packed``); an open session is load on its worker, which Vast
        scales on, and keeps it from being stopped: in the bill scenario's traces, 2-3 workers
        ran nothing for the whole 2 s idle close at each lull and at the end."""
        busy = self.loads().keys()
        idle = self.workers() - busy
        if not busy and idle:
            idle = idle - {max(idle, key=self.meter.last_active)}
        return frozenset(idle)

    def next_available(self, now: float) -> float | None:
        """When a resting sequential answer can take a job again."""
        times = [
            lease.available_at
            for lease in self._leases.values()
            if lease.idle and not lease.retired and lease.available_at > now
        ]
        return min(times) if times else None

    def inflight_cost(self) -> float:
        return sum(lease.inflight_cost for lease in self._leases.values())

    def budget(self) -> float:
        return sum(lease.budget for lease in self._leases.values() if not lease.retired)
