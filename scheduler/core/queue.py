"""A bounded priority queue with weighted per-tenant fair sharing and deadlines.

Pure: no I/O, no clock. Order of service:

1. Higher priority first (9 before 0), strictly.
2. Within a priority, jobs put back with ``requeue_front`` first, the latest put back first
   (LIFO: putting a taken batch back in reverse restores its order).
3. Then the tenants share *cost* by weight, with start-time fair queueing (SFQ): each
   backlogged tenant has a virtual start tag; the next job is the head of the tenant with the
   smallest tag (ties: the tenant waiting longest). Serving a job of cost ``c`` moves its
   tenant's tag to ``start + c / weight`` and the level's virtual time to ``start``. A tenant
   that becomes backlogged starts at ``max(virtual time, its last finish tag)``: idleness banks
   no credit, and going idle for an instant sheds no debt. FIFO within one tenant.

Each priority level is dropped once it holds no job, which also resets its virtual time.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

MIN_PRIORITY = 0
MAX_PRIORITY = 9
DEFAULT_TENANT = "default"
# A zero-cost job is charged this much, so serving it always moves its tenant's tag forward.
MIN_CHARGE = 1e-6
# Lazy structures are rebuilt once they exceed _COMPACT_MIN and _COMPACT_RATIO x live items.
_COMPACT_MIN = 64
_COMPACT_RATIO = 4


class QueueFull(Exception):
    def __init__(self, depth: int) -> None:
        super().__init__(f"queue is full ({depth} jobs)")
        self.depth = depth


@dataclass(slots=True, eq=False)
class _Entry:
    job_id: str
    priority: int
    tenant: str
    cost: float
    deadline: float
    front: bool
    live: bool = True


@dataclass(slots=True, eq=False)
class _Tenant:
    """One tenant at one priority: its FIFO and its SFQ tags."""

    jobs: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    finish: float = 0.0  # virtual finish tag of its last served job
    key: int = -1  # sequence number of its live item in the level heap; -1 when idle


def _check_weight(name: str, weight: float) -> float:
    if not (math.isfinite(weight) and weight > 0.0):
        raise ValueError(f"{name}: weight must be finite and > 0, got {weight!r}")
    return float(weight)


def _advance(start: float, cost: float, weight: float) -> float:
    """The finish tag of a job of ``cost`` started at ``start``; always > ``start``."""
    finish = start + max(cost, MIN_CHARGE) / weight
    return finish if finish > start else math.nextafter(start, math.inf)


class _Level:
    """The jobs of one priority: the requeued-at-head stack, then tenants by start tag."""

    __slots__ = ("backlogged", "front", "heap", "live", "seq", "tenants", "vtime")

    def __init__(self) -> None:
        self.front: OrderedDict[str, _Entry] = OrderedDict()
        self.tenants: dict[str, _Tenant] = {}
        # (start tag, key, tenant); an item is live while its key equals the tenant's key
        self.heap: list[tuple[float, int, str]] = []
        self.seq = itertools.count()
        self.vtime = 0.0
        self.live = 0
        self.backlogged = 0

    def add(self, entry: _Entry) -> None:
        self.live += 1
        if entry.front:
            self.front[entry.job_id] = entry
            self.front.move_to_end(entry.job_id, last=False)
            return
        state = self.tenants.get(entry.tenant)
        if state is None:
            state = self.tenants[entry.tenant] = _Tenant()
        state.jobs[entry.job_id] = entry
        if len(state.jobs) == 1:
            self.backlogged += 1
            self._schedule(entry.tenant, state, max(self.vtime, state.finish))

    def discard(self, entry: _Entry) -> None:
        """Take out a job that was not served (cancelled, expired): nobody is charged."""
        self.live -= 1
        if entry.front:
            del self.front[entry.job_id]
            return
        state = self.tenants[entry.tenant]
        del state.jobs[entry.job_id]
        if not state.jobs:
            self._idle(entry.tenant, state)

    def head(self) -> _Entry | None:
        """The job to serve next; drops stale heap items on the way (no change in order)."""
        if self.front:
            return next(iter(self.front.values()))
        while self.heap:
            _, key, name = self.heap[0]
            state = self.tenants.get(name)
            if state is not None and state.key == key:
                return next(iter(state.jobs.values()))
            heapq.heappop(self.heap)
        return None

    def take(self, entry: _Entry, weight: float) -> None:
        """Serve ``entry``, which ``head()`` just returned, and charge its tenant."""
        if entry.front:  # charged when it was first served; a retry is not charged again
            self.discard(entry)
            return
        start, _, name = heapq.heappop(self.heap)
        state = self.tenants[name]
        self.live -= 1
        del state.jobs[entry.job_id]
        self.vtime = start
        state.finish = _advance(start, entry.cost, weight)
        if state.jobs:
            self._schedule(name, state, state.finish)
        else:
            self._idle(name, state)

    def footprint(self) -> int:
        return len(self.heap) + len(self.tenants)

    def _schedule(self, name: str, state: _Tenant, start: float) -> None:
        state.key = next(self.seq)
        heapq.heappush(self.heap, (start, state.key, name))
        if self.footprint() > _COMPACT_MIN + _COMPACT_RATIO * self.backlogged:
            self._compact()

    def _idle(self, name: str, state: _Tenant) -> None:
        self.backlogged -= 1
        state.key = -1  # its heap item is stale from now on
        if state.finish <= self.vtime:  # its tag can no longer matter
            del self.tenants[name]

    def _compact(self) -> None:
        # Stale heap items pile up when tenants empty by cancellation; idle tenants keep a
        # finish tag. Past a bound, idle tenants forfeit their debt (at most one job each).
        self.heap = [item for item in self.heap if self._is_live(item)]
        heapq.heapify(self.heap)
        self.tenants = {
            name: state
            for name, state in self.tenants.items()
            if state.jobs or state.finish > self.vtime
        }
        if len(self.tenants) > _COMPACT_MIN // 2 + self.backlogged:
            self.tenants = {name: state for name, state in self.tenants.items() if state.jobs}

    def _is_live(self, item: tuple[float, int, str]) -> bool:
        state = self.tenants.get(item[2])
        return state is not None and state.key == item[1]


_HeapItem = tuple[float, int, _Entry]


def _live_head(heap: list[_HeapItem]) -> _HeapItem | None:
    """The first item of a lazy heap whose job is still queued, dead ones above it dropped."""
    while heap and not heap[0][2].live:
        heapq.heappop(heap)
    return heap[0] if heap else None


def _live_items(heap: list[_HeapItem]) -> list[_HeapItem]:
    """A lazy heap rebuilt from its live items."""
    items = [item for item in heap if item[2].live]
    heapq.heapify(items)
    return items


class JobQueue:
    """Priorities, then requeued-at-head jobs, then weighted fair sharing between tenants.

    Cancelled and expired jobs leave their priority level at once (O(1)); the deadline heap
    and the per-level tenant heaps are lazy and rebuilt once dead items dominate, so every
    operation stays O(log n) amortised and memory stays O(live jobs).
    """

    def __init__(
        self,
        max_depth: int,
        tenant_weights: Mapping[str, float] | None = None,
        default_weight: float = 1.0,
    ) -> None:
        self.max_depth = max_depth
        self.queued_cost = 0.0
        self.queued_cost_sq = 0.0  # the sum of the queued jobs' costs squared (``held_cost``)
        self._default_weight = _check_weight("default_weight", default_weight)
        self._weights: dict[str, float] = {}
        self.set_tenant_weights(tenant_weights or {})
        self._levels: dict[int, _Level] = {}
        self._priorities: list[int] = []  # negated priorities of levels, lazy
        self._listed: set[int] = set()  # priorities present in _priorities
        self._deadlines: list[_HeapItem] = []
        self._largest: list[_HeapItem] = []  # by cost, largest first (negated)
        self._entries: dict[str, _Entry] = {}
        self._depth: dict[str, int] = {}
        self._cost: dict[str, float] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries

    # --- configuration and introspection --------------------------------------------------

    def set_tenant_weights(self, weights: Mapping[str, float]) -> None:
        """Replace the weights; tenants not named get ``default_weight``.

        Applies from the next job served: tags already given are kept.
        """
        self._weights = {name: _check_weight(name, w) for name, w in weights.items()}

    def weight_of(self, tenant: str) -> float:
        return self._weights.get(tenant, self._default_weight)

    def tenant_of(self, job_id: str) -> str | None:
        entry = self._entries.get(job_id)
        return None if entry is None else entry.tenant

    def depth_by_tenant(self) -> dict[str, int]:
        return dict(self._depth)

    def cost_by_tenant(self) -> dict[str, float]:
        return dict(self._cost)

    # --- admission ------------------------------------------------------------------------

    def push(
        self, job_id: str, priority: int, cost: float, deadline: float, tenant: str = DEFAULT_TENANT
    ) -> None:
        if len(self._entries) >= self.max_depth:
            raise QueueFull(len(self._entries))
        self._add(_Entry(job_id, priority, tenant, cost, deadline, front=False))

    def push_unbounded(
        self, job_id: str, priority: int, cost: float, deadline: float, tenant: str = DEFAULT_TENANT
    ) -> None:
        """Re-admission path: a job already admitted is never refused for depth."""
        self._add(_Entry(job_id, priority, tenant, cost, deadline, front=False))

    def requeue_front(
        self, job_id: str, priority: int, cost: float, deadline: float, tenant: str = DEFAULT_TENANT
    ) -> None:
        """Put back a job that was taken and must run again (e.g. a worker answered 429).

        Never refused for depth; it runs before every other job now queued at its priority,
        whatever their tenant, including earlier requeued ones (LIFO: to put a batch back in
        order, requeue it in reverse). Not charged to its tenant a second time.
        """
        self._add(_Entry(job_id, priority, tenant, cost, deadline, front=True))

    def _add(self, entry: _Entry) -> None:
        if entry.job_id in self._entries:
            raise ValueError(f"job {entry.job_id} is already queued")
        if not (math.isfinite(entry.cost) and entry.cost >= 0.0):
            raise ValueError(f"job {entry.job_id}: cost must be finite and >= 0")
        self._level_for(entry.priority).add(entry)
        seq = next(self._seq)
        heapq.heappush(self._deadlines, (entry.deadline, seq, entry))
        heapq.heappush(self._largest, (-entry.cost, seq, entry))
        self._entries[entry.job_id] = entry
        self.queued_cost += entry.cost
        self.queued_cost_sq += entry.cost * entry.cost
        self._depth[entry.tenant] = self._depth.get(entry.tenant, 0) + 1
        self._cost[entry.tenant] = self._cost.get(entry.tenant, 0.0) + entry.cost

    def _level_for(self, priority: int) -> _Level:
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = _Level()
            if priority not in self._listed:
                self._listed.add(priority)
                heapq.heappush(self._priorities, -priority)
        return level

    # --- service --------------------------------------------------------------------------

    def peek(self) -> tuple[str, float] | None:
        """What ``pop()`` would return next, with its cost, without removing it."""
        level = self._top()
        if level is None:
            return None
        entry = self._head(level)
        return entry.job_id, entry.cost

    def pop(self) -> str | None:
        level = self._top()
        if level is None:
            return None
        entry = self._head(level)
        level.take(entry, self.weight_of(entry.tenant))
        self._forget(entry)
        return entry.job_id

    def remove(self, job_id: str) -> bool:
        entry = self._entries.get(job_id)
        if entry is None:
            return False
        self._levels[entry.priority].discard(entry)
        self._forget(entry)
        return True

    def pop_expired(self, now: float) -> list[str]:
        """Jobs whose deadline is <= ``now``, by deadline then admission order."""
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, entry = heapq.heappop(self._deadlines)
            if entry.live:
                self.remove(entry.job_id)
                expired.append(entry.job_id)
        return expired

    def next_deadline(self) -> float | None:
        head = _live_head(self._deadlines)
        return head[0] if head else None

    def largest_cost(self) -> float:
        """The cost of the largest queued job (0 when the queue is empty)."""
        head = _live_head(self._largest)
        return -head[0] if head else 0.0

    # --- internals ------------------------------------------------------------------------

    def _top(self) -> _Level | None:
        """The highest priority level holding a job."""
        while self._priorities:
            level = self._levels.get(-self._priorities[0])
            if level is not None:
                return level
            self._listed.discard(-heapq.heappop(self._priorities))
        return None

    @staticmethod
    def _head(level: _Level) -> _Entry:
        entry = level.head()
        assert entry is not None, "a level is dropped as soon as it holds no job"
        return entry

    def _forget(self, entry: _Entry) -> None:
        """Bookkeeping once ``entry`` has left its level (served, cancelled or expired)."""
        entry.live = False
        del self._entries[entry.job_id]
        if not self._levels[entry.priority].live:
            del self._levels[entry.priority]
        self.queued_cost = max(0.0, self.queued_cost - entry.cost) if self._entries else 0.0
        left_sq = self.queued_cost_sq - entry.cost * entry.cost
        self.queued_cost_sq = max(0.0, left_sq) if self._entries else 0.0
        self._forget_tenant(entry)
        self._compact()

    def _forget_tenant(self, entry: _Entry) -> None:
        depth = self._depth[entry.tenant] - 1
        if depth:
            self._depth[entry.tenant] = depth
            self._cost[entry.tenant] = max(0.0, self._cost[entry.tenant] - entry.cost)
        else:
            del self._depth[entry.tenant]
            del self._cost[entry.tenant]

    def _compact(self) -> None:
        # Dead heap items pile up (popped and cancelled jobs); rebuild once they dominate.
        bound = max(_COMPACT_MIN, _COMPACT_RATIO * len(self._entries))
        if len(self._deadlines) > bound:
            self._deadlines = _live_items(self._deadlines)
        if len(self._largest) > bound:
            self._largest = _live_items(self._largest)

    def _footprint(self) -> int:
        """Internal items held, live or dead (for tests of the memory bound)."""
        levels = sum(level.footprint() + len(level.front) for level in self._levels.values())
        return len(self._deadlines) + len(self._largest) + len(self._priorities) + levels
