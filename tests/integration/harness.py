"""Starting the emulator and the daemon as separate servers on 127.0.0.1 for tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from scheduler.api.context import SERVICE
from scheduler.app import create_app
from scheduler.config import AppConfig
from scheduler.emulator.emulator import Emulator
from scheduler.emulator.settings import EmulatorConfig
from scheduler.jobs.service import SchedulerService
from scheduler.serve import bound, shutdown, start_runner

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
        "auth": {"enabled": False},  # explicitly off unless a test passes its own auth section
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


async def run_many(
    http: aiohttp.ClientSession,
    url: str,
    count: int,
    concurrency: int,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> list[int]:
    """``count`` synchronous runs through ``url`` with at most ``concurrency`` at a time."""
    statuses: list[int] = []
    next_index = iter(range(count))

    async def client() -> None:
        for _ in next_index:
            async with http.post(url, json=body or {"payload": {}}, headers=headers) as resp:
                await resp.read()
                statuses.append(resp.status)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return statuses


async def submit_many(
    http: aiohttp.ClientSession,
    url: str,
    count: int,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    concurrency: int = 16,
) -> list[str]:
    """``count`` async jobs queued through ``url``; returns their ids in submission order."""
    ids: list[str | None] = [None] * count
    next_index = iter(range(count))

    async def client() -> None:
        for index in next_index:
            async with http.post(url, json=body or {"payload": {}}, headers=headers) as resp:
                assert resp.status == 202, await resp.text()
                ids[index] = (await resp.json())["id"]

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return [job_id for job_id in ids if job_id is not None]


async def wait_all_finished(daemon: Daemon, job_ids: list[str], timeout_s: float = 60) -> None:
    """Waits (bounded) until every job has reached a terminal state, read from the service."""

    def all_done() -> bool:
        return all((job := daemon.service.get(i)) is not None and job.finished for i in job_ids)

    await wait_until(all_done, timeout_s=timeout_s, interval_s=0.05)


async def metric(http: aiohttp.ClientSession, daemon: Daemon, name: str, **labels: str) -> float:
    """One sample of the daemon's ``GET /metrics`` (0 when absent)."""
    async with http.get(f"{daemon.url}/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
