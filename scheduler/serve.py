"""Running the daemon: listen, reload the config on SIGHUP, wait for SIGTERM/SIGINT, drain
within the grace period, exit."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

import structlog
from aiohttp import web

from scheduler.api.context import SERVICE
from scheduler.api.reload import CONFIG_PATH, reload_on_signal
from scheduler.app import create_app
from scheduler.config import AppConfig
from scheduler.listen import listen
from scheduler.tasks import cancel_and_wait

log = structlog.get_logger("scheduler.serve")
# Handlers still open once the jobs have drained (rare: a stream mid-way) get this long.
HANDLER_SHUTDOWN_S = 2.0


async def serve(
    config: AppConfig,
    stop: asyncio.Event | None = None,
    config_path: str | Path | None = None,
    on_stopped: Callable[[], None] | None = None,
) -> None:
    """``config_path``: the file ``config`` came from, read again on SIGHUP (see ``reload``);
    ``on_stopped``: called once the shutdown is complete."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = create_app(config)
    if config_path is not None:
        app[CONFIG_PATH] = Path(config_path)
    runner = await start_runner(app, config.server.host, config.server.port,
                                access_log=config.logging.access_log)  # fmt: skip
    reloads: set[asyncio.Task[None]] = set()
    loop.add_signal_handler(signal.SIGHUP, start_reload, app, reloads)
    try:
        log.info("daemon.started", addresses=[f"http://{h}:{p}" for h, p in bound(runner)],
                 endpoints=sorted(config.endpoints))  # fmt: skip
        await stop.wait()
        log.info("daemon.stopping")
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        await cancel_and_wait(reloads)
        await shutdown(app, runner, config.server.grace_period_s)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("daemon.stopped")
    if on_stopped is not None:
        on_stopped()


def start_reload(app: web.Application, reloads: set[asyncio.Task[None]]) -> None:
    """SIGHUP: reload the config file in a task kept in ``reloads``."""
    task = asyncio.create_task(reload_on_signal(app), name="config-reload")
    reloads.add(task)
    task.add_done_callback(reloads.discard)


async def shutdown(app: web.Application, runner: web.AppRunner, grace_s: float) -> None:
    """Stop intake, let in-flight work finish within ``grace_s``, then cancel the rest."""
    service = app.get(SERVICE)
    if service is not None and not await service.drain(grace_s):
        log.warning("daemon.grace_period_over", remaining=service.status()["endpoints"])
    await runner.cleanup()


async def start_runner(
    app: web.Application, host: str, port: int, access_log: bool = True
) -> web.AppRunner:
    """Start listening; handlers are cancelled when their caller disconnects."""
    runner, _ = await listen(
        app, host, port, handler_cancellation=True, shutdown_timeout=HANDLER_SHUTDOWN_S,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
    )  # fmt: skip
    return runner


def bound(runner: web.AppRunner) -> list[tuple[str, int]]:
    found = []
    for address in runner.addresses:
        if isinstance(address, tuple):
            found.append((str(address[0]), int(address[1])))
    return found
