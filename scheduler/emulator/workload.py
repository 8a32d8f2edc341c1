"""Pure service model of one worker: how much work a payload is, and who finishes when.

No I/O and no clock reads: times are passed in (seconds, any monotonic origin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from scheduler.emulator.settings import BatchMemory, EmulatedEndpoint, ServiceModel

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
    first served). ``batch_memory="grow"`` (vLLM's paged KV cache) holds instead
    ``prompt_share`` of a job's work from its start plus what it has served so far: a job
    joins while that share fits; when the batch's holding reaches ``max_batch_cost`` the
    newest job in it is preempted (its progress is lost, it waits first in line) and no job
    joins until one finishes.
    """

    rate: float
    service: ServiceModel = "processor_sharing"
    max_batch: int = 32
    batch_slowdown: float = 0.02
    max_batch_cost: float | None = None
    batch_memory: BatchMemory = "reserve"
    prompt_share: float = 0.1
    now: float = 0.0
    remaining: dict[int, float] = field(default_factory=dict)
    work: dict[int, float] = field(default_factory=dict)  # each job's whole work
    preemptions: int = 0
    _running: list[int] = field(default_factory=list)  # "grow": the batch, oldest first
    _paused: bool = False  # "grow": a job was preempted, none joins until one finishes

    @classmethod
    def for_endpoint(cls, endpoint: EmulatedEndpoint, now: float = 0.0) -> WorkQueue:
        return cls(
            rate=endpoint.perf,
            service=endpoint.service,
            max_batch=endpoint.max_batch,
            batch_slowdown=endpoint.batch_slowdown,
            max_batch_cost=endpoint.max_batch_cost,
            batch_memory=endpoint.batch_memory,
            prompt_share=endpoint.prompt_share,
            now=now,
        )

    def add(self, job: int, work: float, now: float) -> list[int]:
        done = self.advance(now)
        self.remaining[job] = self.work[job] = max(work, 0.0)
        done += self._pop_finished()
        self._admit()
        return done

    def remove(self, job: int, now: float) -> list[int]:
        done = self.advance(now)
        self.remaining.pop(job, None)
        self.work.pop(job, None)
        if job in self._running:
            self._running.remove(job)
            self._admit()
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
        # Each step ends at a completion or a preemption (at most one per job in the batch).
        for _ in range(2 * len(self.remaining) + 2):
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
            return list(self._running) if self._grows else self._batch(jobs[: self.max_batch])
        return jobs

    @property
    def _paged_memory(self) -> float | None:
        """ "grow": the batch's memory (``max_batch_cost``); None for every other model."""
        if self.service == "batching" and self.batch_memory == "grow":
            return self.max_batch_cost
        return None

    @property
    def _grows(self) -> bool:
        return self._paged_memory is not None

    def _memory_held(self) -> float:
        """ "grow": what the batch holds: each job's prompt share and what it has served."""
        return sum(
            self.prompt_share * self.work[job] + self.work[job] - self.remaining[job]
            for job in self._running
        )

    def _admit(self) -> None:
        """ "grow": the oldest waiting jobs join while their prompts fit (the first always)."""
        budget = self._paged_memory
        if budget is None or self._paused:
            return
        held = self._memory_held()
        running = set(self._running)
        for job in self.remaining:
            if len(self._running) >= self.max_batch:
                return
            if job in running:
                continue
            joining = self.prompt_share * self.work[job]
            if self._running and held + joining > budget:
                return
            self._running.append(job)
            held += joining

    def _until_full(self, served_rate: float) -> float:
        """ "grow": seconds until the batch's memory is full (inf with one job: it runs)."""
        budget = self._paged_memory
        if budget is None or len(self._running) < 2:
            return math.inf
        return max(budget - self._memory_held(), 0.0) / (served_rate * len(self._running))

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
        rate = self.job_rate()
        full = self._until_full(rate)
        used = min(step, dt, full)
        for job in self.in_service():
            self.remaining[job] -= used * rate
        if full <= min(step, dt):
            preempted = self._running.pop()  # the newest: it starts again, first in line
            self.remaining[preempted] = self.work[preempted]
            self._paused = True
            self.preemptions += 1
        return dt - used

    def _pop_finished(self) -> list[int]:
        """Jobs with (up to rounding) no work left, in arrival order."""
        done = [job for job, left in self.remaining.items() if left <= _EPSILON_UNITS]
        for job in done:
            del self.remaining[job]
            self.work.pop(job, None)
        if done and self._grows:
            self._running = [job for job in self._running if job in self.remaining]
            self._paused = False
            self._admit()
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
