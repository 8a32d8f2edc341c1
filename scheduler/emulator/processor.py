"""Async driver of a WorkQueue: ``await processor.run(work)`` returns once it is served."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

from scheduler.emulator.settings import EmulatedEndpoint
from scheduler.emulator.workload import WorkQueue

_MAX_SLEEP_S = 1.0


class Processor:
    """Serves work by the endpoint's service model, ``slow_factor`` times slower."""

    def __init__(self, settings: EmulatedEndpoint) -> None:
        self._perf = settings.perf
        self._factor = 1.0
        self._queue = WorkQueue.for_endpoint(settings, now=time.monotonic())
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def slow_factor(self) -> float:
        return self._factor

    @property
    def preemptions(self) -> int:
        """Jobs a paged batch (``batch_memory: grow``) preempted, so far."""
        return self._queue.preemptions

    def set_slow_factor(self, factor: float) -> None:
        self._factor = max(factor, 1e-6)
        self._resolve(self._queue.set_rate(self._perf / self._factor, time.monotonic()))
        self._changed.set()

    async def run(self, work: float) -> None:
        """Wait until ``work`` units have been served; cancel-safe."""
        job = next(self._ids)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[job] = done
        self._ensure_driver()
        self._resolve(self._queue.add(job, work, time.monotonic()))
        self._changed.set()
        try:
            await done
        finally:
            self._waiters.pop(job, None)
            self._resolve(self._queue.remove(job, time.monotonic()))
            self._changed.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _ensure_driver(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drive(), name="emulator-processor")

    async def _drive(self) -> None:
        while True:
            self._changed.clear()
            delay = self._queue.next_completion_in()
            timeout = _MAX_SLEEP_S if delay is None else min(delay, _MAX_SLEEP_S)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands
            # while the event is being set, and close() then waits forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(timeout, 0.0)):
                    await self._changed.wait()
            self._resolve(self._queue.advance(time.monotonic()))

    def _resolve(self, jobs: list[int]) -> None:
        for job in jobs:
            waiter = self._waiters.get(job)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
