"""The emulator as its own process, for the benchmark.

``python -m bench.emulator_proc --config FILE.json --port N --log-port M``

It runs the project's emulator exactly as ``python -m scheduler emulate`` does (same
``Emulator`` class, uvloop when present), plus a second tiny HTTP server on ``--log-port``
that serves what ``scheduler emulate`` keeps in memory only: the autoscaler's time-stamped
route log (``GET /route_log``) and its clock (``GET /clock``), so the bench can count route
calls inside the cold-start window and plot them over time. The emulator's own admin API
(kill/add workers, stats) stays on ``--port``.

FILE.json: ``{"api_key": "...", "emulator": {<EmulatorConfig fields>}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from scheduler.emulator.emulator import Emulator
from scheduler.emulator.settings import EmulatorConfig


def _quiet_logs() -> None:
    import structlog

    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


async def _serve_log(emulator: Emulator, port: int) -> web.AppRunner:
    started = emulator.autoscaler.stats.started_at

    async def route_log(_: web.Request) -> web.Response:
        return web.json_response({"now_s": time.monotonic() - started, "log": emulator.route_log()})

    async def clock(_: web.Request) -> web.Response:
        return web.json_response({"now_s": time.monotonic() - started})

    app = web.Application()
    app.add_routes([web.get("/route_log", route_log), web.get("/clock", clock)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def until_terminated() -> None:
    """Until SIGTERM or SIGINT (how the bench stops its children)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def main(raw: dict[str, Any], port: int, log_port: int) -> None:
    config = EmulatorConfig.model_validate({**raw["emulator"], "host": "127.0.0.1", "port": port})
    emulator = Emulator(config, [raw["api_key"]])
    await emulator.start()
    log_runner = await _serve_log(emulator, log_port)
    print(json.dumps({"event": "bench_emulator_ready", "url": emulator.autoscaler_url}), flush=True)
    try:
        await until_terminated()
    finally:
        await log_runner.cleanup()
        await emulator.stop()


GC_GEN0_THRESHOLD = 50_000


def run() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.emulator_proc")
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-port", type=int, required=True)
    args = parser.parse_args()
    _quiet_logs()
    raw = json.loads(Path(args.config).read_text(encoding="utf-8"))
    run_like_the_daemon(main(raw, args.port, args.log_port))


def run_like_the_daemon(coro: Coroutine[Any, Any, None]) -> None:
    """Runs a bench child (emulator, relay) with the daemon's collector settings and uvloop.

    The settings (``scheduler.__main__.tune_gc``) are written out here so an older scheduler
    copy (BENCH_SCHEDULER_SRC) still runs: the emulator serves every system alike, and its full
    collections (50-80 ms at default settings) were latency spikes common to all of them,
    noise in the latency added over direct."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    try:
        import uvloop
    except ImportError:  # same fallback as the daemon's CLI
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


if __name__ == "__main__":
    run()
