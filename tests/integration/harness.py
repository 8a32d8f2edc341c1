"""Starting the emulator and the daemon as separate servers on 127.0.0.1 for tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from scheduler.api.context import SERVICE
from scheduler.app import create_app
from scheduler.config import AppConfig
from scheduler.emulator.emulator import Emulator
from scheduler.emulator.settings import EmulatorConfig
from scheduler.serve import bound, shutdown, start_runner
from scheduler.service import SchedulerService

API_KEY = "test-vast-key-0123456789"


@dataclass
class Daemon:
    url: str
    app: web.Application
    runner: web.AppRunner
    config: AppConfig

    @property
    def service(self) -> SchedulerService:
        return self.app[SERVICE]


def daemon_config(autoscaler_url: str, endpoints: dict[str, Any], **sections: Any) -> AppConfig:
    raw: dict[str, Any] = {
        "vast": {"autoscaler_url": autoscaler_url, "api_key": API_KEY, **sections.pop("vast", {})},
        "endpoint_defaults": {"poll": {"initial_s": 0.05, "max_s": 0.2}},
        "endpoints": endpoints,
        **sections,
    }
    return AppConfig.model_validate(raw)


@asynccontextmanager
async def running_emulator(endpoints: dict[str, Any], **options: Any) -> AsyncIterator[Emulator]:
    config = EmulatorConfig.model_validate(
        {"status_interval_s": 0.1, "endpoints": endpoints, **options}
    )
    emulator = Emulator(config, [API_KEY])
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


@asynccontextmanager
async def running_daemon(config: AppConfig) -> AsyncIterator[Daemon]:
    app = create_app(config)
    runner = await start_runner(app, "127.0.0.1", 0, access_log=False)
    host, port = bound(runner)[0]
    try:
        yield Daemon(f"http://{host}:{port}", app, runner, config)
    finally:
        await shutdown(app, runner, grace_s=config.server.grace_period_s)


async def wait_for_status(
    http: aiohttp.ClientSession,
    daemon: Daemon,
    job_id: str,
    wanted: set[str],
    timeout_s: float = 10,
) -> dict[str, Any]:
    """Polls GET /v1/jobs/{id} (bounded in time) until its status is one of ``wanted``."""
    async with asyncio.timeout(timeout_s):
        while True:
            async with http.get(f"{daemon.url}/v1/jobs/{job_id}") as resp:
                body: dict[str, Any] = await resp.json()
            if body["status"] in wanted:
                return body
            await asyncio.sleep(0.02)


async def wait_until(predicate: Any, timeout_s: float = 10, interval_s: float = 0.02) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(interval_s)
