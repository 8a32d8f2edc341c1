"""The local Vast.ai Serverless emulator: one autoscaler plus the endpoints' workers."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from types import TracebackType
from typing import Any, Literal

import structlog
from aiohttp import web

from scheduler.emulator.accounts import Accounts
from scheduler.emulator.admin import AdminApi
from scheduler.emulator.autoscaler import Autoscaler
from scheduler.emulator.console import Console, ConsoleStats
from scheduler.emulator.listener import Listener
from scheduler.emulator.scaler import EndpointScaler
from scheduler.emulator.settings import EmulatedEndpoint, EmulatorConfig
from scheduler.emulator.tls_root import TlsRoot
from scheduler.emulator.worker import EmulatedWorker, WorkerSpec

log = structlog.get_logger(__name__)
_READY_POLL_S = 0.02
# The official worker reports on change, else about every 11 s (and retries a failed
# report 3 times, 2 s apart): a longer silence than this means it is gone.
EXTERNAL_STALE_AFTER_S = 30.0
MAX_OUTAGE_S = 600.0
_AUTOSCALER_SHUTDOWN_TIMEOUT_S = 2.0
OutageMode = Literal["refuse", "hang"]


class Emulator:
    """Autoscaler (route, pubkey, reports, admin API) on ``config.host:config.port`` and
    one aiohttp server per worker on 127.0.0.1, all real sockets.

    ``async with Emulator(cfg, ["key"]) as emu: ...`` starts and stops it.

    ``api_keys`` route to every endpoint that has no key of its own (``accounts``); the
    same port serves Vast's console listing and ``/get_endpoint_workers/`` (``console``),
    opened by ``config.account_api_key``.
    """

    def __init__(self, config: EmulatorConfig, api_keys: Sequence[str]) -> None:
        if not api_keys:
            raise ValueError("the emulator needs at least one API key")
        self.config = config
        self.accounts = Accounts(config, api_keys, created_at=time.time())
        self.autoscaler = Autoscaler(config, self.accounts)
        self.console = Console(self.accounts, self.autoscaler.book, ConsoleStats())
        self.tls_root = TlsRoot.from_path(config.tls_root_cert)  # the console's root certificate
        self._workers: dict[str, list[EmulatedWorker]] = {}
        self._ids = itertools.count(1)
        self._listener = Listener()
        self._port = 0
        self._started = False
        self.outage_mode: OutageMode | None = None  # the autoscaler is down (outage())
        self._up = asyncio.Event()  # set while the autoscaler is up: hung requests wait on it
        self._up.set()
        self._outage_task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None  # a refuse outage closing the port
        self.scalers = {
            name: EndpointScaler(name, ep, self.autoscaler.book, self.workers, self.add_worker)
            for name, ep in config.endpoints.items()
            if ep.autoscale
        }
        self._scaler_tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def autoscaler_url(self) -> str:
        if not self._started:
            raise RuntimeError("emulator not started")
        return f"http://{self.config.host}:{self._port}"

    async def start(self) -> None:
        """Start the autoscaler, then every configured worker."""
        await self._serve(self.config.port)
        self._started = True
        for endpoint, settings in self.config.endpoints.items():
            for _ in range(settings.workers):
                self._create_worker(endpoint, settings)
        await asyncio.gather(*(w.start() for w in self.all_workers()))
        self._scaler_tasks = [asyncio.create_task(s.run()) for s in self.scalers.values()]
        log.info("emulator.autoscaler_listening", url=self.autoscaler_url)

    async def stop(self) -> None:
        """Stop every worker, then the autoscaler."""
        await self._cancel_outage()
        for task in self._scaler_tasks:
            task.cancel()
        await asyncio.gather(*self._scaler_tasks, return_exceptions=True)
        self._scaler_tasks = []
        self._started = False
        await asyncio.gather(*(w.stop() for w in self.all_workers()), return_exceptions=True)
        await self._listener.close(abort=False)

    async def _serve(self, port: int) -> None:
        """(Re)open the autoscaler and admin API; a fresh app each time, same port after."""
        app = web.Application(middlewares=[self._outage_gate])
        app.add_routes(
            self.autoscaler.routes() + self.console.routes() + self.tls_root.routes()
            + AdminApi(self).routes()
        )  # fmt: skip
        self._port = await self._listener.start(
            app, self.config.host, port, access_log=None,
            shutdown_timeout=_AUTOSCALER_SHUTDOWN_TIMEOUT_S,
        )  # fmt: skip

    # ------------------------------------------------------------------ autoscaler outage
    async def outage(self, duration_s: float, mode: OutageMode = "refuse") -> None:
        """Take the autoscaler down for ``duration_s`` (0: end an outage now); returns at once.

        ``refuse``: its port closes (connections refused; admin API included), then reopens
        on the same port. ``hang``: connections are accepted but ``/route/`` and the workers'
        reports get no answer until the end (the admin API keeps answering). Workers keep
        serving; their reports fail meanwhile, as against the real autoscaler.
        """
        if not 0 <= duration_s <= MAX_OUTAGE_S or mode not in ("refuse", "hang"):
            raise ValueError(f"duration_s must be in [0, {MAX_OUTAGE_S}], mode refuse or hang")
        if not self._started:
            raise RuntimeError("emulator not started")
        await self._end_outage()
        if duration_s > 0:
            self.outage_mode = mode
            self._up.clear()
            self._outage_task = asyncio.create_task(
                self._outage(duration_s, mode), name="emulator-autoscaler-outage"
            )

    async def _outage(self, duration_s: float, mode: OutageMode) -> None:
        log.info("emulator.autoscaler_down", mode=mode, duration_s=duration_s)
        if mode == "refuse":
            await asyncio.sleep(0)  # let the admin answer that started this go out first
            # Shielded: a cancelled outage waits for the close to end (_cancel_outage), never
            # leaves a half-closed server behind.
            self._closing = asyncio.create_task(self._listener.close(abort=False))
            await asyncio.shield(self._closing)
        await asyncio.sleep(duration_s)
        await self._come_back()

    async def _come_back(self) -> None:
        self.outage_mode = None
        if not self._listener.open and self._started:
            await self._serve(self._port)
        self._up.set()
        log.info("emulator.autoscaler_up", url=self.autoscaler_url)

    async def _cancel_outage(self) -> None:
        task, self._outage_task = self._outage_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        closing, self._closing = self._closing, None
        if closing is not None:
            await closing
        self.outage_mode = None
        self._up.set()  # hung requests go on (and meet a closing server on stop)

    async def _end_outage(self) -> None:
        """Back up now if down (a no-op otherwise)."""
        if self._outage_task is None or self._outage_task.done():
            self._outage_task = None
            return
        await self._cancel_outage()
        await self._come_back()

    @web.middleware
    async def _outage_gate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.outage_mode == "hang" and not request.path.startswith("/admin/"):
            await self._up.wait()  # bounded: every outage ends (or stop() sets the event)
        return await handler(request)

    def workers(self, endpoint: str) -> list[EmulatedWorker]:
        return list(self._workers.get(endpoint, []))

    def all_workers(self) -> list[EmulatedWorker]:
        return [w for ws in self._workers.values() for w in ws]

    def worker_by_id(self, worker_id: int) -> EmulatedWorker | None:
        return next((w for w in self.all_workers() if w.id == worker_id), None)

    def rotate_key(self, endpoint: str, new_key: str | None = None) -> str:
        """Give ``endpoint`` a new route key (``new_key``, else a generated one) and return
        it: from now on only that key routes to it (its old key and the global keys get
        401), and the console listing shows it. KeyError for an endpoint not served."""
        if endpoint not in self.autoscaler.book.endpoints:
            raise KeyError(endpoint)
        self.accounts.ensure(endpoint, self.config.endpoints.get(endpoint))
        key = self.accounts.rotate(endpoint, new_key)
        self.console.stats.key_rotations += 1
        log.info("emulator.endpoint_key_rotated", endpoint=endpoint)
        return key

    async def add_worker(self, endpoint: str, **overrides: Any) -> EmulatedWorker:
        """Add (and start) a worker; ``overrides`` are EmulatedEndpoint fields."""
        base = self.config.endpoints.get(endpoint, EmulatedEndpoint())
        settings = base.with_overrides({"workers": 1, **overrides})
        worker = self._create_worker(endpoint, settings)
        if self._started:
            await worker.start()
        return worker

    def register_external_worker(
        self,
        endpoint: str,
        worker_id: int,
        url: str | None = None,
        perf: float | None = None,
        *,
        stale_after_s: float = EXTERNAL_STALE_AFTER_S,
    ) -> None:
        """Accept ``/worker_status/`` and ``/delete_requests/`` from a worker process the
        emulator does not run (e.g. the official Vast worker, whose id is its
        ``CONTAINER_ID``), and route ``endpoint`` to it once it reports ready (``loadtime``
        > 0, empty ``error_msg``). ``url``: where to route instead of the URL it reports;
        ``perf``: cost units/s for queue-time balancing instead of its reported
        ``max_perf``; it is Stopped after ``stale_after_s`` without a report. Every report
        is kept: ``self.autoscaler.book.reports(worker_id)``.
        """
        if not endpoint:
            raise ValueError("endpoint must be a non-empty string")
        settings = self.config.endpoints.get(endpoint, EmulatedEndpoint())
        self.autoscaler.book.register_external(
            worker_id,
            endpoint,
            url=url,
            perf=perf,
            stale_after_s=stale_after_s,
            queue_limit_s=settings.max_queue_time_s,
        )
        log.info("emulator.external_worker_registered", endpoint=endpoint, worker_id=worker_id)

    def _create_worker(self, endpoint: str, settings: EmulatedEndpoint) -> EmulatedWorker:
        worker_id = next(self._ids)
        while worker_id in self.autoscaler.book.workers:  # taken by an external worker
            worker_id = next(self._ids)
        seed = None if self.config.seed is None else self.config.seed + worker_id
        spec = WorkerSpec(
            worker_id=worker_id,
            endpoint=endpoint,
            settings=settings,
            autoscaler_url=self.autoscaler_url,
            status_interval_s=self.config.status_interval_s,
            session_reap_interval_s=self.config.session_reap_interval_s,
            seed=seed,
        )
        worker = EmulatedWorker(spec)
        self.autoscaler.book.register(
            worker_id,
            endpoint,
            legacy=settings.mode == "legacy",
            queue_limit_s=settings.max_queue_time_s,
        )
        self._workers.setdefault(endpoint, []).append(worker)
        return worker

    def ready_count(self, endpoint: str) -> int:
        """How many of the endpoint's workers the autoscaler would route to now."""
        book, now = self.autoscaler.book, time.monotonic()
        views = (v for v in book.workers.values() if v.endpoint == endpoint)
        return sum(1 for v in views if v.status(now, book.stale_after_s) == "Ready")

    async def wait_ready(self, endpoint: str, count: int = 1, timeout_s: float = 10.0) -> None:
        """Wait until the autoscaler sees ``count`` ready workers; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        for _ in range(int(timeout_s / _READY_POLL_S) + 1):
            if self.ready_count(endpoint) >= count:
                return
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(_READY_POLL_S)
        raise TimeoutError(f"{endpoint}: fewer than {count} ready workers after {timeout_s} s")

    def billing(self, endpoint: str, now: float | None = None) -> dict[str, Any]:
        """Worker-seconds billed for ``endpoint``'s emulated workers (each from start to stop
        or kill, the running ones up to ``now``), and how many are running."""
        at = time.monotonic() if now is None else now
        workers = self.workers(endpoint)
        return {
            "worker_seconds": round(sum(w.billed_seconds(at) for w in workers), 6),
            "running": sum(1 for w in workers if w.running),
        }

    def route_log(self) -> list[dict[str, Any]]:
        """Time-stamped route calls (bounded), oldest first, for plotting."""
        return list(self.autoscaler.stats.log)

    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot: route counters, faults, workers by endpoint."""
        book, now = self.autoscaler.book, time.monotonic()
        endpoints = {
            name: {
                "status": book.summary(name, now),
                "reqnum": book.reqnums[name],
                "workers": [w.info() for w in self.workers(name)],
                "billing": self.billing(name, now),
            }
            | ({"autoscale": self.scalers[name].stats.snapshot()} if name in self.scalers else {})
            for name in sorted(book.endpoints)
        }
        faults = {f"route_{k}": v for k, v in asdict(self.autoscaler.faults).items()}
        route = self.autoscaler.stats.snapshot()
        outage = {"autoscaler_down": self.outage_mode}
        console = self.console.stats.snapshot()
        return {
            "route": route,
            "faults": faults | outage,
            "endpoints": endpoints,
            "console": console,
        }
