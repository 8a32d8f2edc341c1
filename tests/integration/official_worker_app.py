"""The official Vast worker (``vastai`` 1.9.1) over a fake model server, for integration tests.

Run as a subprocess by ``official_worker.py``; never imported by the tests. Its environment
holds the official worker's own variables (``WORKER_PORT``, ``WORKER_HTTP_PORT``,
``VAST_TCP_PORT_<WORKER_PORT>``, ``PUBLIC_IPADDR``, ``CONTAINER_ID``, ``REPORT_ADDR``,
``UNSECURED``, ``USE_SSL``, ``MASTER_TOKEN``); its working directory is a scratch directory
(the worker caches its benchmark result in ``./.has_benchmark``).

The worker serves ``POST /generate`` (plus its own ``/session/*`` routes) on
127.0.0.1:``WORKER_PORT``:

- **workload** of a request (what it adds to the reported ``cur_load``) =
  ``payload["cost"]``, default 100 (the official worker falls back to 100 itself when the
  value is not a finite number >= 0);
- ``allow_parallel_requests=True``; ``max_queue_time`` from ``--max-queue-time-s``
  (``none`` disables the worker's 429 check);
- the fake model server (same process, 127.0.0.1, free port) answers ``POST /generate``
  after sleeping ``payload["sleep_s"]`` (default 0.01 s) with ``{"echo": payload}``, or with
  ``{"error": ...}`` and status ``payload["status"]`` when that is given (a ``500`` is passed
  through by the worker); ``GET /health`` answers 200.

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
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

LOADED_LINE = "fake model loaded"
DEFAULT_SLEEP_S = 0.01
DEFAULT_COST = 100.0
PARENT_POLL_S = 0.5


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


async def _generate(request: web.Request) -> web.Response:
    payload = await request.json()
    await asyncio.sleep(float(payload.get("sleep_s", DEFAULT_SLEEP_S)))
    status = int(payload.get("status", 200))
    if status != 200:
        return web.json_response({"error": f"fake model failed ({status})"}, status=status)
    return web.json_response({"echo": payload})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _start_model_server() -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.add_routes([web.post("/generate", _generate), web.get("/health", _health)])
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
    handler = HandlerConfig(
        route="/generate",
        allow_parallel_requests=True,
        max_queue_time=args.max_queue_time_s,
        benchmark_config=benchmark,
        workload_calculator=workload,
    )
    return WorkerConfig(
        model_server_url="http://127.0.0.1",
        model_server_port=model_port,
        model_log_file=str(model_log),
        model_healthcheck_url="/health",
        handlers=[handler],
        log_action_config=LogActionConfig(on_load=[LOADED_LINE]),
        max_sessions=args.max_sessions,
    )


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
    print(json.dumps({"model_port": model_port, "pid": os.getpid()}), flush=True)
    try:
        await Worker(config).run_async(host="127.0.0.1")
    finally:
        watchdog.cancel()
        await model_runner.cleanup()


def _queue_time(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--max-queue-time-s", type=_queue_time, default=30.0)
    parser.add_argument("--max-sessions", type=int, default=10)
    parser.add_argument("--max-perf", type=float, default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.addaudithook(_loopback_only)
    asyncio.run(main(_parse(sys.argv[1:])))
