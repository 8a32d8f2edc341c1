"""Pure service model of one worker: how much work a payload is, and who finishes when.

No I/O and no clock reads: times are passed in (seconds, any monotonic origin).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scheduler.emulator.settings import EmulatedEndpoint

_EPSILON_UNITS = 1e-6  # rounding residue: a job this close to done is done


def requested_tokens(payload: dict[str, Any], default: int) -> int:
    value = payload.get("max_tokens")
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return default
    return int(value)


def workload_of(payload: dict[str, Any], endpoint: EmulatedEndpoint) -> float:
    """The workload a worker computes for a payload (see EmulatedEndpoint's docstring)."""
    if endpoint.workload == "constant":
        return endpoint.workload_units
    tokens = requested_tokens(payload, endpoint.default_max_tokens)
    return tokens * endpoint.workload_units_per_token


def queue_time_s(workloads: list[float], perf: float) -> float:
    """The official worker's queue-time estimate: in-flight workload over throughput."""
    return sum(workloads) / max(perf, 0.00001)


@dataclass
class WorkQueue:
    """Jobs with remaining work served at ``rate`` units/s.

    ``shared`` True: processor sharing (each of n jobs progresses at rate/n).
    ``shared`` False: FIFO (only the oldest job progresses, at the full rate).
    """

    rate: float
    shared: bool
    now: float = 0.0
    remaining: dict[int, float] = field(default_factory=dict)

    def add(self, job: int, work: float, now: float) -> list[int]:
        done = self.advance(now)
        self.remaining[job] = max(work, 0.0)
        return done + self._pop_finished()

    def remove(self, job: int, now: float) -> list[int]:
        done = self.advance(now)
        self.remaining.pop(job, None)
        return done

    def set_rate(self, rate: float, now: float) -> list[int]:
        done = self.advance(now)
        self.rate = rate
        return done

    def advance(self, now: float) -> list[int]:
        """Serve work up to ``now``; return the jobs that finished, in order."""
        dt = max(now - self.now, 0.0)
        self.now = max(now, self.now)
        done = self._pop_finished()
        for _ in range(len(self.remaining) + 1):
            if dt <= 0 or not self.remaining:
                break
            dt = self._serve(dt)
            done += self._pop_finished()
        return done

    def next_completion_in(self) -> float | None:
        """Seconds until the next job finishes at the current rate; None when idle."""
        if not self.remaining:
            return None
        if self.shared:
            return min(self.remaining.values()) * len(self.remaining) / self.rate
        return next(iter(self.remaining.values())) / self.rate

    def _serve(self, dt: float) -> float:
        """Serve until ``dt`` runs out or the next job finishes; return the time left."""
        step = self.next_completion_in()
        if step is None:
            return 0.0
        used = min(step, dt)
        if self.shared:
            share = used * self.rate / len(self.remaining)
            for job in self.remaining:
                self.remaining[job] -= share
        else:
            head = next(iter(self.remaining))
            self.remaining[head] -= used * self.rate
        return dt - used

    def _pop_finished(self) -> list[int]:
        """Jobs with (up to rounding) no work left, in arrival order."""
        done = [job for job, left in self.remaining.items() if left <= _EPSILON_UNITS]
        for job in done:
            del self.remaining[job]
        return done
