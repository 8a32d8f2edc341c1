"""Pure service model of one worker: how much work a payload is, and who finishes when.

No I/O and no clock reads: times are passed in (seconds, any monotonic origin).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scheduler.emulator.settings import EmulatedEndpoint, ServiceModel

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
    """Jobs with remaining work, served by one of the service models (see EmulatedEndpoint).

    ``rate`` is the rate of one job alone (units/s). ``processor_sharing``: each of n jobs
    progresses at rate/n. ``fifo``: only the oldest job progresses, at the full rate.
    ``batching``: the oldest ``max_batch`` jobs progress, each at
    ``rate / (1 + batch_slowdown * (n - 1))`` with n of them in the batch; a job leaving
    the batch lets the oldest waiting one in at once (continuous batching). With
    ``max_batch_cost``, the batch also holds no more than that much work (each job's whole
    work, from its start: a vLLM server's KV cache holds so many tokens); the oldest job is
    always let in, and a job that does not fit waits, with those behind it (first come,
    first served).
    """

    rate: float
    service: ServiceModel = "processor_sharing"
    max_batch: int = 32
    batch_slowdown: float = 0.02
    max_batch_cost: float | None = None
    now: float = 0.0
    remaining: dict[int, float] = field(default_factory=dict)
    work: dict[int, float] = field(default_factory=dict)  # each job's whole work

    @classmethod
    def for_endpoint(cls, endpoint: EmulatedEndpoint, now: float = 0.0) -> WorkQueue:
        return cls(
            rate=endpoint.perf,
            service=endpoint.service,
            max_batch=endpoint.max_batch,
            batch_slowdown=endpoint.batch_slowdown,
            max_batch_cost=endpoint.max_batch_cost,
            now=now,
        )

    def add(self, job: int, work: float, now: float) -> list[int]:
        done = self.advance(now)
        self.remaining[job] = self.work[job] = max(work, 0.0)
        return done + self._pop_finished()

    def remove(self, job: int, now: float) -> list[int]:
        done = self.advance(now)
        self.remaining.pop(job, None)
        self.work.pop(job, None)
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

    def in_service(self) -> list[int]:
        """The jobs progressing now, oldest first (the others wait)."""
        jobs = list(self.remaining)
        if self.service == "fifo":
            return jobs[:1]
        if self.service == "batching":
            return self._batch(jobs[: self.max_batch])
        return jobs

    def _batch(self, oldest: list[int]) -> list[int]:
        budget = self.max_batch_cost
        if budget is None:
            return oldest
        held = 0.0
        for index, job in enumerate(oldest):
            held += self.work[job]
            if index and held > budget:
                return oldest[:index]
        return oldest

    def job_rate(self) -> float:
        """The rate at which each job in service progresses now (units/s)."""
        n = len(self.in_service())
        if n == 0 or self.service == "fifo":
            return self.rate
        if self.service == "batching":
            return self.rate / (1 + self.batch_slowdown * (n - 1))
        return self.rate / n

    def next_completion_in(self) -> float | None:
        """Seconds until the next job finishes at the current rate; None when idle."""
        serving = self.in_service()
        if not serving:
            return None
        return min(self.remaining[job] for job in serving) / self.job_rate()

    def _serve(self, dt: float) -> float:
        """Serve until ``dt`` runs out or the next job finishes; return the time left."""
        step = self.next_completion_in()
        if step is None:
            return 0.0
        used = min(step, dt)
        served = used * self.job_rate()
        for job in self.in_service():
            self.remaining[job] -= served
        return dt - used

    def _pop_finished(self) -> list[int]:
        """Jobs with (up to rounding) no work left, in arrival order."""
        done = [job for job, left in self.remaining.items() if left <= _EPSILON_UNITS]
        for job in done:
            del self.remaining[job]
            self.work.pop(job, None)
        return done


def benchmark_perf(endpoint: EmulatedEndpoint) -> float:
    """The ``max_perf`` the official worker's benchmark would measure on this model.

    It sends ``concurrency`` equal requests together (1 when its handler serves FIFO) and
    takes ``total_workload / time_elapsed``; the work of a request cancels out.
    """
    concurrency = 1 if endpoint.service == "fifo" else endpoint.benchmark_concurrency
    queue = WorkQueue.for_endpoint(endpoint)
    for job in range(concurrency):
        queue.add(job, 1.0, 0.0)
    elapsed = 0.0
    for _ in range(concurrency + 1):
        step = queue.next_completion_in()
        if step is None:
            break
        elapsed += step
        queue.advance(elapsed)
    return concurrency / elapsed
