"""Closed-loop and open-loop load, bounded in count and time; one record per job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.systems import Job, System


@dataclass(slots=True)
class Record:
    index: int
    start_s: float  # perf_counter when the job arrived (open loop: its scheduled arrival)
    end_s: float
    ok: bool
    status: int

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s


async def _one(system: System, job: Job, start_s: float, out: list[Record]) -> None:
    ok, status = await system.call(job)
    out.append(Record(job.index, start_s, time.perf_counter(), ok, status))


async def closed_loop(
    system: System, jobs: Sequence[Job], concurrency: int, max_s: float
) -> tuple[list[Record], float]:
    """``concurrency`` clients each take the next job once the last answered; stops taking
    jobs after ``max_s``. Returns the records and the wall time."""
    records: list[Record] = []
    feed = iter(jobs)
    started = time.perf_counter()
    stop_at = started + max_s

    async def client() -> None:
        for job in feed:
            if time.perf_counter() > stop_at:
                return
            await _one(system, job, time.perf_counter(), records)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return records, time.perf_counter() - started


async def open_loop(
    system: System,
    jobs: Sequence[Job],
    arrivals_s: Sequence[float],
    max_outstanding: int,
    drain_s: float,
) -> tuple[list[Record], float, int]:
    """Each job starts at its arrival offset whatever the others do (no coordinated omission:
    latency counts from the scheduled arrival). Jobs arriving while ``max_outstanding`` are
    open are dropped (counted as failed). Returns records, wall time, dropped count."""
    records: list[Record] = []
    tasks: set[asyncio.Task[None]] = set()
    dropped = 0
    started = time.perf_counter()
    for job, offset in zip(jobs, arrivals_s, strict=True):
        due = started + offset
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= max_outstanding:
            dropped += 1
            records.append(Record(job.index, due, due, False, -1))
            continue
        task = asyncio.create_task(_one(system, job, due, records))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=drain_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return records, time.perf_counter() - started, dropped


async def burst(system: System, jobs: Sequence[Job], max_s: float) -> tuple[list[Record], float]:
    """Every job at once (the cold start), each awaited up to ``max_s``."""
    records: list[Record] = []
    started = time.perf_counter()
    tasks = [asyncio.create_task(_one(system, job, started, records)) for job in jobs]
    _, pending = await asyncio.wait(tasks, timeout=max_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    done = {r.index for r in records}
    now = time.perf_counter()
    records += [Record(j.index, started, now, False, -2) for j in jobs if j.index not in done]
    return records, time.perf_counter() - started
