"""One emulated Vast worker: its own aiohttp server on 127.0.0.1, reporting over HTTP.

It behaves like the official worker (vastai 1.9.1 ``serverless/server``): envelope
``{"auth_data", "session_id", "payload"}``; 422 bad JSON / missing field; 410 unknown
session; 401 bad signature or no key yet; 429 past ``max_queue_time_s``; in-flight entries
keyed by ``reqnum``. ``mode: legacy`` behaves like vast-ai/pyworker instead: whole-auth_data
signature, replays refused with 401, no sessions.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

from scheduler.emulator.envelope import Envelope, EnvelopeError, ReplayGuard, parse_envelope
from scheduler.emulator.listener import Listener
from scheduler.emulator.processor import Processor
from scheduler.emulator.responses import Kind
from scheduler.emulator.sessions import Session, SessionHandlers, SessionTable
from scheduler.emulator.settings import EmulatedEndpoint
from scheduler.emulator.signing import (
    load_public_key,
    verify_legacy_signature,
    verify_url_signature,
)
from scheduler.emulator.worker_io import ClientGone, ResponseWriter
from scheduler.emulator.worker_state import RequestEntry, WorkerCounters, WorkerMetrics
from scheduler.emulator.workload import benchmark_perf, workload_of

log = structlog.get_logger(__name__)

WorkerState = Literal["created", "loading", "ready", "errored", "stopped", "killed"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBKEY_ATTEMPTS = 5
_SHUTDOWN_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class WorkerSpec:
    worker_id: int
    endpoint: str
    settings: EmulatedEndpoint
    autoscaler_url: str
    status_interval_s: float = 1.0
    session_reap_interval_s: float = 5.0
    seed: int | None = None


class EmulatedWorker:
    """A worker process in miniature. ``start``/``stop``/``kill``/``restore`` drive it."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.counters = WorkerCounters()
        self.state: WorkerState = "created"
        self.port = 0
        self._rng = random.Random(spec.seed)
        self._listener = Listener()
        self._http: ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._key: Any = None
        self.writer = ResponseWriter(worker_id=spec.worker_id)
        self.billed_s = 0.0  # worker-seconds of finished runs (start to stop or kill)
        self._running_since: float | None = None
        self._fresh_state()

    @property
    def id(self) -> int:
        return self.spec.worker_id

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def legacy(self) -> bool:
        return self.spec.settings.mode == "legacy"

    def _fresh_state(self) -> None:
        settings = self.spec.settings
        self.metrics = WorkerMetrics()
        self.processor = Processor(settings)
        self.sessions = SessionHandlers(
            SessionTable(settings.max_sessions, self._rng), self.metrics, self._on_session_close
        )
        self.replay_guard = ReplayGuard()
        self._key = None
        self._started_at = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Listen, then fetch the key, report, and become ready after the cold start."""
        if self.state in ("loading", "ready", "errored"):
            return
        self._fresh_state()
        self.writer.restore()
        self._running_since = time.monotonic()
        self._http = ClientSession(
            timeout=ClientTimeout(total=5, connect=2), connector=TCPConnector(limit=4)
        )
        await self._listen()
        self.state = "loading"
        self._spawn(self._load(), "load")
        self._spawn(self._report_loop(), "report")
        if not self.legacy:
            self._spawn(self._reap_loop(), "reap")
        log.info("emulator.worker_started", worker_id=self.id, url=self.url)

    async def stop(self) -> None:
        """Graceful: stop listening (connections refused), let in-flight work end briefly."""
        await self._shutdown("stopped")

    async def kill(self) -> None:
        """Abrupt: stop listening, reset every open connection (in flight or idle) at once."""
        await self._shutdown("killed")

    async def restore(self) -> None:
        """Clear fault modes; a stopped or killed worker restarts (cold start again)."""
        self.processor.set_slow_factor(1.0)
        self.writer.restore()
        if self.state in ("stopped", "killed", "created"):
            await self.start()

    def slow(self, factor: float) -> None:
        """Serve ``factor`` times slower (factor > 0; 1 = normal)."""
        self.processor.set_slow_factor(factor)

    async def _listen(self) -> None:
        app = web.Application(client_max_size=0)  # as the official worker: no body cap
        app.add_routes(self._routes())
        self.port = await self._listener.start(
            app, "127.0.0.1", self.port, handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S, access_log=None,
        )  # fmt: skip

    async def _shutdown(self, state: WorkerState) -> None:
        if self._running_since is not None:
            self.billed_s += time.monotonic() - self._running_since
            self._running_since = None
        if not self._listener.open:
            self.state = state
            return
        # Stop accepting (and, killed, reset connections) before anything else yields.
        await self._listener.close(abort=state == "killed")
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.processor.close()
        if self._http is not None:
            await self._http.close()
            self._http = None
        self.state = state
        log.info("emulator.worker_stopped", worker_id=self.id, state=state)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(f"emulator-worker-{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _routes(self) -> list[web.RouteDef]:
        routes = [
            web.post("/generate", self._route_handler("echo")),
            web.post("/v1/completions", self._route_handler("completion")),
            web.post("/v1/chat/completions", self._route_handler("chat")),
        ]
        return routes if self.legacy else routes + self.sessions.routes()

    # ------------------------------------------------------------------ loading and reports
    async def _load(self) -> None:
        if not await self._fetch_pubkey():
            self.metrics.error_msg = "Failed to get Serverless public key after all retry attempts"
            self.state = "errored"
            await self._report_status()
            return
        remaining = self.spec.settings.cold_start_s - (time.monotonic() - self._started_at)
        await asyncio.sleep(max(remaining, 0.0))
        self.metrics.loadtime_s = max(time.monotonic() - self._started_at, 1e-3)
        self.metrics.max_perf = benchmark_perf(self.spec.settings)
        self.state = "ready"
        log.info("emulator.worker_ready", worker_id=self.id, loadtime_s=self.metrics.loadtime_s)
        await self._report_status()

    async def _fetch_pubkey(self) -> bool:
        assert self._http is not None
        for attempt in range(PUBKEY_ATTEMPTS):
            try:
                async with self._http.get(f"{self.spec.autoscaler_url}/pubkey/") as resp:
                    resp.raise_for_status()
                    self._key = load_public_key(await resp.text())
                    return True
            except (ClientError, TimeoutError, ValueError) as exc:
                log.debug("emulator.pubkey_failed", worker_id=self.id, error=repr(exc))
            await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
        return False

    async def _report_loop(self) -> None:
        await self._report_status()
        while True:
            await asyncio.sleep(self.spec.status_interval_s)
            await self._report_status()
            await self._report_finished()

    async def _post(self, path: str, body: dict[str, Any]) -> bool:
        if self._http is None:
            return False
        try:
            async with self._http.post(f"{self.spec.autoscaler_url}{path}", json=body) as resp:
                return resp.status < 300
        except (ClientError, TimeoutError) as exc:
            log.debug("emulator.report_failed", worker_id=self.id, path=path, error=repr(exc))
            return False

    async def _report_status(self) -> None:
        if await self._post("/worker_status/", self.metrics.status_report(self.id, self.url)):
            self.metrics.reset_after_report()

    async def _report_finished(self) -> None:
        finished = self.metrics.take_finished()
        if not finished:
            return
        body = {
            "worker_id": self.id,
            "mtoken": "",
            "requests": [e.finished_report() for e in finished],
        }
        if not await self._post("/delete_requests/", body):
            self.metrics.requests_deleting[:0] = finished

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.spec.session_reap_interval_s)
            await self.sessions.reap()

    async def _on_session_close(self, session: Session) -> None:
        if not session.on_close_route or self._http is None:
            return
        body = dict(session.on_close_payload) if isinstance(session.on_close_payload, dict) else {}
        body.setdefault("session_id", session.session_id)
        try:
            async with self._http.post(session.on_close_route, json=body) as resp:
                await resp.read()
        except (ClientError, TimeoutError, ValueError) as exc:
            log.debug("emulator.on_close_failed", worker_id=self.id, error=repr(exc))

    # ------------------------------------------------------------------ requests
    def _route_handler(self, kind: Kind) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            status = 499
            try:
                response = await self._handle_work(request, kind)
                status = response.status
                return response
            finally:
                self.counters.by_status[status] += 1

        return handle

    async def _handle_work(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        if self.writer.garbage:
            return await self.writer.garbage_response(request)
        try:
            env = parse_envelope(await request.read(), legacy=self.legacy)
        except EnvelopeError as exc:
            return web.json_response(exc.body, status=422)
        session = self._session_for(env, request)
        if env.session_id is not None and not self.legacy and session is None:
            return web.json_response({"error": "invalid session"}, status=410)
        entry = RequestEntry(
            request_idx=env.request_idx,
            reqnum=env.reqnum,
            workload=workload_of(env.payload, self.spec.settings),
            entered_queue_at=time.time(),
            in_session=session is not None,
        )
        try:
            return await self._admit_and_serve(request, kind, env, entry)
        finally:
            if session is not None and isinstance(request.transport, asyncio.Transport):
                session.transports.discard(request.transport)

    def _session_for(self, env: Envelope, request: web.Request) -> Session | None:
        if env.session_id is None or self.legacy:
            return None
        session = self.sessions.table.sessions.get(env.session_id)
        if session is None:
            return None
        session.expires_at += session.lifetime_s
        session.session_reqnum += 1
        if isinstance(request.transport, asyncio.Transport):
            session.transports.add(request.transport)
        return session

    async def _admit_and_serve(
        self,
        request: web.Request,
        kind: Kind,
        env: Envelope,
        entry: RequestEntry,
    ) -> web.StreamResponse:
        if not self._check_signature(env.auth_data):
            self.metrics.reject(entry)
            return web.Response(status=401)
        if self.metrics.wait_time_s > self.spec.settings.max_queue_time_s:
            self.metrics.reject(entry)
            return web.Response(status=429)
        self.metrics.start(entry)
        self.counters.saw_request(entry.reqnum, env.payload)
        try:
            entry.work_started_at = time.time()
            response = await self.writer.serve(
                request,
                kind,
                env.payload,
                env.reqnum,
                entry.workload,
                self.processor,
                self.spec.settings,
            )
            self.metrics.succeed(entry, time.time())
            return response
        except asyncio.CancelledError:
            self.metrics.cancel(entry)
            raise
        except ClientGone as exc:
            self.metrics.cancel(entry)
            return exc.response
        finally:
            self.metrics.end(entry)

    def _check_signature(self, auth_data: dict[str, Any]) -> bool:
        if self._key is None:
            return False
        if not self.legacy:
            return verify_url_signature(self._key, auth_data)
        if self.replay_guard.is_replay(auth_data):
            return False
        if not verify_legacy_signature(self._key, auth_data):
            return False
        self.replay_guard.admit(auth_data)
        return True

    def billed_seconds(self, now: float) -> float:
        """Worker-seconds billed so far: finished runs plus the current one."""
        running = now - self._running_since if self._running_since is not None else 0.0
        return self.billed_s + running

    @property
    def running(self) -> bool:
        """Started and not stopped (loading, ready or errored): billed."""
        return self._running_since is not None

    @property
    def busy(self) -> bool:
        """A request or a session in flight."""
        return bool(self.metrics.requests_working or self.sessions.table.sessions)

    def info(self) -> dict[str, Any]:
        """A JSON-able summary for the admin API and stats."""
        return {
            "id": self.id,
            "endpoint": self.spec.endpoint,
            "url": self.url,
            "state": self.state,
            "mode": self.spec.settings.mode,
            "perf": self.spec.settings.perf,
            "service": self.spec.settings.service,
            "max_batch": self.spec.settings.max_batch,
            "max_batch_cost": self.spec.settings.max_batch_cost,
            "max_perf": self.metrics.max_perf,
            "slow_factor": self.processor.slow_factor,
            "preemptions": self.processor.preemptions,
            "garbage": self.writer.garbage,
            "trickle_byte_delay_ms": self.writer.trickle_byte_delay_ms,
            "cur_load": self.metrics.cur_load,
            "num_requests_working": len(self.metrics.requests_working),
            "sessions": len(self.sessions.table.sessions),
            "billed_s": round(self.billed_seconds(time.monotonic()), 6),
            "counters": self.counters.snapshot(),
        }
