"""The official Vast worker (``vastai`` 1.9.1) over a fake model server, for integration tests.

Run as a subprocess by ``official_worker.py``; never imported by the tests. Its environment
holds the official worker's own variables (``WORKER_PORT``, ``WORKER_HTTP_PORT``,
``VAST_TCP_PORT_<WORKER_PORT>``, ``PUBLIC_IPADDR``, ``CONTAINER_ID``, ``REPORT_ADDR``,
``UNSECURED``, ``USE_SSL``, ``MASTER_TOKEN``); its working directory is a scratch directory
(the worker caches its benchmark result in ``./.has_benchmark``).

The worker serves five handlers (plus its own ``/session/*`` routes) on
127.0.0.1:``WORKER_PORT``; the **workload** of a request (what it adds to the reported
``cur_load``) is ``payload["cost"]``, default 100 (the official worker falls back to 100
itself when the value is not a finite number >= 0):

- ``POST /generate``: ``allow_parallel_requests=True``, ``max_queue_time`` from
  ``--max-queue-time-s`` (``none`` disables the worker's 429 check); the benchmark's handler;
- ``POST /fifo``: ``allow_parallel_requests=False`` (the worker's FIFO queue, one request
  at a time), ``max_queue_time`` from ``--fifo-max-queue-time-s``; same model route;
- ``POST /stream``: a streamed answer, passed through by the worker's default response
  generator (it streams when the model answers ``application/x-ndjson``);
- ``POST /batch``: ``allow_parallel_requests=True`` in front of the batching model route,
  no 429 check (how a vLLM endpoint is set up);
- ``POST /batch_fifo``: ``allow_parallel_requests=False`` (the worker's FIFO queue) in
  front of the same batching model, no 429 check.

The fake model server (same process, 127.0.0.1, free port) answers:

- ``POST /generate`` and ``POST /fifo``: after sleeping ``payload["sleep_s"]`` (default
  0.01 s), or until ``POST /release {"key": payload["hold"]}`` when ``hold`` is given (a
  released key stays released: one key per test), with
  ``{"echo": payload}``, or with ``{"error": ...}`` and status ``payload["status"]`` when
  that is given (a ``500`` is passed through by the worker);
- ``POST /batch`` and ``POST /batch_fifo``: a batching server (vLLM-like) shared by both
  routes: up to ``BATCH_SIZE`` (16) calls in progress at once, each taking
  ``payload["cost"] / BATCH_PERF`` seconds (default cost 100 at 500 units/s: 0.2 s) however
  many run beside it; more wait for a slot in arrival order; answers ``{"echo": payload}``;
- ``POST /stream``: ``payload["chunks"]`` (default 3) JSON lines ``{"i", "produced_at"}``
  (``produced_at``: ``time.monotonic()``, comparable with the test process's on Linux); with
  ``hold``, the last line only after that key is released;
- ``GET /records``: ``{"model": [...], "worker": [...]}``: each model call (``route``,
  ``n`` = ``payload["n"]``, ``start``, ``end``), and each request as the official worker
  received it (``route``, ``reqnum``, ``request_idx``, ``session_id``, ``n``, ``status``,
  ``start``, ``end``; monotonic times), oldest first;
- ``GET /health``: 200.

Its address is written to ``./model.json`` (``{"model_port", "pid"}``) before the worker
starts.

Readiness, fast and offline: the model log file holds the "loaded" line before the worker
starts; the benchmark is one request with no warm-up (or none at all when ``--max-perf``
seeds the worker's benchmark cache, so it reports exactly that ``max_perf``); the
healthcheck URL answers at once; the public key comes from ``REPORT_ADDR/pubkey/``.

Nothing leaves 127.0.0.1: an audit hook refuses any socket connection to a non-loopback
address (and any name lookup other than ``localhost``). A watchdog exits the process when
its parent dies, so a killed test run leaves no orphan.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

LOADED_LINE = "fake model loaded"
DEFAULT_SLEEP_S = 0.01
DEFAULT_COST = 100.0
DEFAULT_CHUNKS = 3
BATCH_SIZE = 16  # the batching model's slots
BATCH_PERF = 500.0  # cost units per second of one call, alone or in a full batch
PARENT_POLL_S = 0.5
HOLD_LIMIT_S = 30.0  # a held model call answers anyway after this: nothing waits for ever
MAX_RECORDS = 10_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MODEL_RECORDS: list[dict[str, Any]] = []
WORKER_RECORDS: list[dict[str, Any]] = []
RELEASED: dict[str, asyncio.Event] = {}
BATCH_SLOTS = asyncio.Semaphore(BATCH_SIZE)  # binds to the running loop at first use


def _is_local(host: object) -> bool:
    if host is None:  # a passive lookup (binding), not a remote name
        return True
    name = host.decode() if isinstance(host, bytes) else str(host)
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return name == "localhost"


def _loopback_only(event: str, args: tuple[Any, ...]) -> None:
    """Audit hook: refuse network access beyond 127.0.0.1 (raises at the call site)."""
    if event == "socket.getaddrinfo" and not _is_local(args[0]):
        raise PermissionError(f"offline test worker: name lookup of {args[0]!r} refused")
    if event == "socket.connect":
        sock, address = args[0], args[1]
        inet = sock.family in (socket.AF_INET, socket.AF_INET6)
        if inet and not _is_local(address[0]):
            raise PermissionError(f"offline test worker: connection to {address!r} refused")


def workload(payload: dict[str, Any]) -> float:
    """The worker's workload calculator: the payload's ``cost``, default 100."""
    return float(payload.get("cost", DEFAULT_COST))


def _record(records: list[dict[str, Any]], entry: dict[str, Any]) -> dict[str, Any]:
    if len(records) < MAX_RECORDS:
        records.append(entry)
    return entry


def _released(key: str) -> asyncio.Event:
    return RELEASED.setdefault(key, asyncio.Event())


async def _hold(payload: dict[str, Any]) -> None:
    """Until the payload's ``hold`` key is released (at most HOLD_LIMIT_S), if it has one."""
    key = payload.get("hold")
    if key is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HOLD_LIMIT_S):
                await _released(str(key)).wait()


def _model_call(request: web.Request, payload: dict[str, Any]) -> dict[str, Any]:
    return _record(MODEL_RECORDS, {"route": request.path, "n": payload.get("n"),
                                   "start": time.monotonic(), "end": None})  # fmt: skip


async def _generate(request: web.Request) -> web.Response:
    payload = await request.json()
    entry = _model_call(request, payload)
    try:
        await asyncio.sleep(float(payload.get("sleep_s", DEFAULT_SLEEP_S)))
        await _hold(payload)
    finally:
        entry["end"] = time.monotonic()
    status = int(payload.get("status", 200))
    if status != 200:
        return web.json_response({"error": f"fake model failed ({status})"}, status=status)
    return web.json_response({"echo": payload})


async def _batch(request: web.Request) -> web.Response:
    """The batching model: a slot (FIFO wait), then cost / BATCH_PERF seconds in it."""
    payload = await request.json()
    async with BATCH_SLOTS:
        entry = _model_call(request, payload)  # recorded once in the batch, not while waiting
        try:
            await asyncio.sleep(workload(payload) / BATCH_PERF)
        finally:
            entry["end"] = time.monotonic()
    return web.json_response({"echo": payload})


async def _stream(request: web.Request) -> web.StreamResponse:
    payload = await request.json()
    chunks = int(payload.get("chunks", DEFAULT_CHUNKS))
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for i in range(chunks):
        if i == chunks - 1:
            await _hold(payload)
        line = {"i": i, "produced_at": time.monotonic()}
        await response.write(json.dumps(line).encode() + b"\n")
    await response.write_eof()
    return response


async def _release(request: web.Request) -> web.Response:
    _released(str((await request.json())["key"])).set()
    return web.json_response({"released": True})


async def _records(request: web.Request) -> web.Response:
    return web.json_response({"model": MODEL_RECORDS, "worker": WORKER_RECORDS})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _start_model_server() -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.add_routes(
        [
            web.post("/generate", _generate),
            web.post("/fifo", _generate),
            web.post("/stream", _stream),
            web.post("/batch", _batch),
            web.post("/batch_fifo", _batch),
            web.post("/release", _release),
            web.get("/records", _records),
            web.get("/health", _health),
        ]
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


async def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        await asyncio.sleep(PARENT_POLL_S)
    os._exit(0)


def _worker_config(args: argparse.Namespace, model_port: int, model_log: Path) -> Any:
    from vastai.serverless.server.worker import (
        BenchmarkConfig,
        HandlerConfig,
        LogActionConfig,
        WorkerConfig,
    )

    # One benchmark request, no warm-up: readiness in milliseconds, not minutes.
    benchmark = BenchmarkConfig(
        dataset=[{"cost": DEFAULT_COST, "sleep_s": 0}], runs=1, concurrency=1, do_warmup=False
    )
    handlers = [
        HandlerConfig(
            route="/generate",
            allow_parallel_requests=True,
            max_queue_time=args.max_queue_time_s,
            benchmark_config=benchmark,
            workload_calculator=workload,
        ),
        HandlerConfig(
            route="/fifo",
            allow_parallel_requests=False,
            max_queue_time=args.fifo_max_queue_time_s,
            workload_calculator=workload,
        ),
        HandlerConfig(
            route="/stream",
            allow_parallel_requests=True,
            max_queue_time=None,
            workload_calculator=workload,
        ),
        HandlerConfig(
            route="/batch",
            allow_parallel_requests=True,
            max_queue_time=None,
            workload_calculator=workload,
        ),
        HandlerConfig(
            route="/batch_fifo",
            allow_parallel_requests=False,
            max_queue_time=None,
            workload_calculator=workload,
        ),
    ]
    return WorkerConfig(
        model_server_url="http://127.0.0.1",
        model_server_port=model_port,
        model_log_file=str(model_log),
        model_healthcheck_url="/health",
        handlers=handlers,
        log_action_config=LogActionConfig(on_load=[LOADED_LINE]),
        max_sessions=args.max_sessions,
    )


def _recorded(handler: Handler) -> Handler:
    """The worker's handler, recording each request as received and the status it answered."""

    async def recording(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()  # aiohttp keeps the bytes: the worker reads them again
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else {}
        auth = body.get("auth_data") if isinstance(body.get("auth_data"), dict) else {}
        payload = body.get("payload") if isinstance(body.get("payload"), dict) else {}
        entry = _record(WORKER_RECORDS, {
            "route": request.path, "reqnum": auth.get("reqnum"),
            "request_idx": auth.get("request_idx"), "session_id": body.get("session_id"),
            "n": payload.get("n"), "status": None, "start": time.monotonic(), "end": None,
        })  # fmt: skip
        try:
            response = await handler(request)
            entry["status"] = response.status
            return response
        finally:
            entry["end"] = time.monotonic()

    return recording


def _write_address(model_port: int) -> str:
    address = json.dumps({"model_port": model_port, "pid": os.getpid()})
    Path("model.json").write_text(address)
    return address


def _prepare_workdir(max_perf: float | None) -> Path:
    """The model log, already holding the "loaded" line; the benchmark cache if seeded."""
    if max_perf is not None:
        Path(".has_benchmark").write_text(str(max_perf))  # the worker's own result cache
    model_log = Path("model.log").resolve()
    model_log.write_text(f"{LOADED_LINE}\n")
    return model_log


async def main(args: argparse.Namespace) -> None:
    watchdog = asyncio.create_task(_exit_with_parent(args.parent_pid))
    model_runner, model_port = await _start_model_server()
    model_log = _prepare_workdir(args.max_perf)
    from vastai.serverless.server.worker import Worker

    config = _worker_config(args, model_port, model_log)
    print(_write_address(model_port), flush=True)
    worker = Worker(config)
    worker.routes = [web.post(r.path, _recorded(r.handler)) for r in worker.routes]
    try:
        await worker.run_async(host="127.0.0.1")
    finally:
        watchdog.cancel()
        await model_runner.cleanup()


def _queue_time(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--max-queue-time-s", type=_queue_time, default=30.0)
    parser.add_argument("--fifo-max-queue-time-s", type=_queue_time, default=30.0)
    parser.add_argument("--max-sessions", type=int, default=10)
    parser.add_argument("--max-perf", type=float, default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.addaudithook(_loopback_only)
    asyncio.run(main(_parse(sys.argv[1:])))
