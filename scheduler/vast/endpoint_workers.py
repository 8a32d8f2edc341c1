"""The endpoints' workers as Vast sees them (``get_endpoint_workers``), asked for only while
someone reads the status or jobs wait, every ``vast.endpoint_workers_interval_s``: loading
workers and their measured perf make a cold start legible."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from scheduler.vast.console import ConsoleClient, ConsoleError, EndpointWorkers
from scheduler.vast.endpoint_keys import EndpointKeys

log = structlog.get_logger("scheduler.vast.endpoint_workers")
WANTED_FOR_INTERVALS = 6  # a status read keeps the polling on for this many intervals
MAX_SHOWN = 64


@dataclass(frozen=True, slots=True)
class Seen:
    at: float
    workers: EndpointWorkers | None
    error: str | None


class EndpointWorkersWatch:
    def __init__(
        self,
        console: ConsoleClient,
        keys: EndpointKeys,
        interval_s: float,
        clock: Callable[[], float],
        jobs_waiting: Callable[[], bool],
    ) -> None:
        self._console = console
        self._keys = keys
        self._interval_s = interval_s
        self._clock = clock
        self._jobs_waiting = jobs_waiting
        self._wanted_at: float | None = None
        self._wake = asyncio.Event()
        self._seen: dict[str, Seen] = {}
        self.polls = 0

    def touch(self) -> None:
        """Someone reads the status: poll now (if not polled lately) and for a while."""
        self._wanted_at = self._clock()
        self._wake.set()

    def _wanted(self) -> bool:
        now = self._clock()
        recently = self._wanted_at is not None and (
            now - self._wanted_at <= self._interval_s * WANTED_FOR_INTERVALS
        )
        return recently or self._jobs_waiting()

    async def run(self) -> None:
        while True:
            if self._wanted():
                await self.poll_all()
                await asyncio.sleep(self._interval_s)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)

    async def poll_all(self) -> None:
        self.polls += 1
        for name in self._keys.endpoint_names():
            listed = self._keys.listed(name)
            if listed is None:
                continue
            try:
                workers: EndpointWorkers | None = await self._console.endpoint_workers(listed.id)
                error = None
            except ConsoleError as exc:
                workers, error = None, str(exc)
                log.warning("vast.endpoint_workers_failed", endpoint=name, error=error)
            self._seen[name] = Seen(self._clock(), workers, error)

    def view(self, endpoint: str) -> dict[str, Any] | None:
        seen = self._seen.get(endpoint)
        if seen is None:
            return None
        workers = seen.workers
        listed = () if workers is None else workers.workers
        return {
            "age_s": self._clock() - seen.at,
            "error": seen.error,
            "unavailable": None if workers is None else workers.unavailable,
            "count": len(listed),
            "by_status": _count_statuses(listed),
            "workers": [w.view() for w in listed[:MAX_SHOWN]],
        }


def _count_statuses(workers: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for worker in workers:
        counts[worker.status] = counts.get(worker.status, 0) + 1
    return dict(sorted(counts.items()))
