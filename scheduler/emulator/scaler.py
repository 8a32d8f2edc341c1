"""The autoscaler model at work: one loop per endpoint with ``autoscale: true`` that starts
and stops the endpoint's emulated workers by :func:`scheduling.workers_wanted`
(see :class:`~scheduler.emulator.settings.EmulatedEndpoint` for what is Vast's and what is
assumed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from scheduler.emulator.route_book import RouteBook
from scheduler.emulator.scaling import Demand, RateWindow, ScalingParams, workers_wanted
from scheduler.emulator.settings import EmulatedEndpoint
from scheduler.emulator.worker import EmulatedWorker
from scheduler.emulator.workload import benchmark_perf

log = structlog.get_logger(__name__)

AddWorker = Callable[[str], Awaitable[EmulatedWorker]]
WorkersOf = Callable[[str], list[EmulatedWorker]]


@dataclass
class ScalerStats:
    wanted: int = 0
    load_rate: float = 0.0
    backlog: float = 0.0
    starts: int = 0
    stops: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


class EndpointScaler:
    """Scales one endpoint: ``tick`` once, or ``run`` forever every interval."""

    def __init__(
        self,
        endpoint: str,
        settings: EmulatedEndpoint,
        book: RouteBook,
        workers_of: WorkersOf,
        add_worker: AddWorker,
    ) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self.params = ScalingParams(
            min_load=settings.min_load,
            target_util=settings.target_util,
            target_queue_time_s=settings.target_queue_time_s,
            inactivity_timeout_s=settings.inactivity_timeout_s,
            max_workers=settings.max_workers,
        )
        self.stats = ScalerStats()
        self._book = book
        self._workers_of = workers_of
        self._add_worker = add_worker
        self._window = RateWindow(settings.load_window_s)
        self._routed_window = RateWindow(settings.load_window_s)
        self._idle_since: dict[int, float] = {}
        self._last_busy: float | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.autoscale_interval_s)
            try:
                await self.tick(time.monotonic())
            except Exception as exc:  # a failed start must not end the model
                log.warning("emulator.scale_failed", endpoint=self.endpoint, error=repr(exc))

    def demand(self, now: float) -> Demand:
        running = [w for w in self._workers_of(self.endpoint) if w.running]
        if any(w.busy for w in running):
            self._last_busy = now
        traffic = [t for t in (self._last_busy, self._book.last_route_at.get(self.endpoint)) if t]
        _, waiting_cost = self._book.waiting(self.endpoint, now)
        reported = sum(
            float((self._book.workers[w.id].report or {}).get("cur_load") or 0.0)
            for w in running
            if w.id in self._book.workers
        )
        return Demand(
            load_rate=self._window.add(now, self._book.received.get(self.endpoint, 0.0)),
            backlog=reported + waiting_cost,
            since_traffic_s=now - max(traffic) if traffic else float("inf"),
            worker_perf=benchmark_perf(self.settings),
            routed_rate=self._routed_window.add(now, self._book.routed.get(self.endpoint, 0.0)),
        )

    async def tick(self, now: float) -> None:
        demand = self.demand(now)
        wanted = workers_wanted(self.params, demand)
        self.stats.wanted, self.stats.load_rate, self.stats.backlog = (
            wanted,
            demand.load_rate,
            demand.backlog,
        )
        workers = self._workers_of(self.endpoint)
        running = [w for w in workers if w.running]
        for worker in running:
            if worker.busy:
                self._idle_since.pop(worker.id, None)
            else:
                self._idle_since.setdefault(worker.id, now)
        if wanted > len(running):
            await self._start(wanted - len(running), [w for w in workers if not w.running])
        elif wanted < len(running):
            await self._stop(len(running) - wanted, running, now)

    async def _start(self, count: int, stopped: list[EmulatedWorker]) -> None:
        for _ in range(count):
            if stopped:
                await stopped.pop().restore()
            else:
                await self._add_worker(self.endpoint)
            self.stats.starts += 1
        log.info("emulator.scaled_up", endpoint=self.endpoint, started=count)

    async def _stop(self, count: int, running: list[EmulatedWorker], now: float) -> None:
        idle_for = self.settings.scale_down_idle_s
        idle = [
            w for w in running if not w.busy and now - self._idle_since.get(w.id, now) >= idle_for
        ]
        # Not-yet-ready workers first (nothing routed to them), then the newest.
        idle.sort(key=lambda w: (w.state == "ready", -w.id))
        for worker in idle[:count]:
            await worker.stop()
            self._idle_since.pop(worker.id, None)
            self.stats.stops += 1
            log.info("emulator.scaled_down", endpoint=self.endpoint, worker_id=worker.id)
