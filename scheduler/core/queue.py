"""A bounded priority queue, FIFO within a priority, with deadlines. Pure: no I/O, no clock."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

MIN_PRIORITY = 0
MAX_PRIORITY = 9


class QueueFull(Exception):
    def __init__(self, depth: int) -> None:
        super().__init__(f"queue is full ({depth} jobs)")
        self.depth = depth


@dataclass(slots=True)
class _Entry:
    job_id: str
    cost: float
    deadline: float
    live: bool = True


class JobQueue:
    """Higher priority first (9 before 0), FIFO within a priority.

    Removal (cancel, expiry) is lazy: the entry is marked dead and skipped when it surfaces,
    so every operation stays O(log n).
    """

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self._order: list[tuple[int, int, _Entry]] = []
        self._deadlines: list[tuple[float, int, _Entry]] = []
        self._entries: dict[str, _Entry] = {}
        self._seq = itertools.count()
        self.queued_cost = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries

    def push(self, job_id: str, priority: int, cost: float, deadline: float) -> None:
        if len(self._entries) >= self.max_depth:
            raise QueueFull(len(self._entries))
        self.push_unbounded(job_id, priority, cost, deadline)

    def push_unbounded(self, job_id: str, priority: int, cost: float, deadline: float) -> None:
        """Requeue path: a job already admitted is never refused for depth."""
        if job_id in self._entries:
            raise ValueError(f"job {job_id} is already queued")
        entry = _Entry(job_id, cost, deadline)
        seq = next(self._seq)
        heapq.heappush(self._order, (-priority, seq, entry))
        heapq.heappush(self._deadlines, (deadline, seq, entry))
        self._entries[job_id] = entry
        self.queued_cost += cost

    def pop(self) -> str | None:
        while self._order:
            _, _, entry = heapq.heappop(self._order)
            if entry.live:
                self._drop(entry)
                return entry.job_id
        return None

    def remove(self, job_id: str) -> bool:
        entry = self._entries.get(job_id)
        if entry is None:
            return False
        self._drop(entry)
        return True

    def pop_expired(self, now: float) -> list[str]:
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, entry = heapq.heappop(self._deadlines)
            if entry.live:
                self._drop(entry)
                expired.append(entry.job_id)
        return expired

    def next_deadline(self) -> float | None:
        while self._deadlines and not self._deadlines[0][2].live:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def _drop(self, entry: _Entry) -> None:
        entry.live = False
        del self._entries[entry.job_id]
        self.queued_cost = max(0.0, self.queued_cost - entry.cost) if self._entries else 0.0
        self._compact()

    def _compact(self) -> None:
        # Dead entries pile up under cancel-heavy loads; rebuild once they dominate.
        if len(self._order) > 64 and len(self._order) > 4 * len(self._entries):
            self._order = [item for item in self._order if item[2].live]
            heapq.heapify(self._order)
            self._deadlines = [item for item in self._deadlines if item[2].live]
            heapq.heapify(self._deadlines)
