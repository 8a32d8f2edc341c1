"""Redis lost mid-run and back: the daemon answers 503 meanwhile, counts it, and loses nothing.

A private ``redis-server`` (Debian's, the one the machine runs) on a free port, with an
append-only file so a restart keeps what was admitted, is killed with SIGKILL and started
again on the same port and directory.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.integration.harness import daemon_config, running_daemon, running_emulator
from tests.integration.test_lifecycle import free_port
from tests.integration.test_redis_daemon import redis_store

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@asynccontextmanager
async def private_redis(directory: Path, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
        "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(10):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                await writer.wait_closed()
                break
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def ready_status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}/readyz") as resp:
        return resp.status


async def wait_ready(http: aiohttp.ClientSession, url: str, wanted: int, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while await ready_status(http, url) != wanted:
            await asyncio.sleep(0.1)


@pytest.mark.timeout(120)
async def test_redis_killed_and_restarted_nothing_admitted_is_lost(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    store = redis_store("outage", "solo", f"redis://127.0.0.1:{port}/0", retries=1,
                        connect_timeout_s=0.3, socket_timeout_s=2.0)  # fmt: skip
    async with running_emulator({"ep": {"workers": 0}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"ep": {}}, store=store)
        async with private_redis(tmp_path, port) as redis, running_daemon(config) as daemon:
            url = f"{daemon.url}/v1/endpoints/ep/jobs"
            job_ids = []
            for n in range(30):  # no worker yet: they wait in Redis
                async with http.post(url, json={"payload": {"n": n}}) as resp:
                    assert resp.status == 202, await resp.text()
                    job_ids.append((await resp.json())["id"])
            redis.kill()
            await redis.wait()
            await wait_ready(http, daemon.url, 503, timeout_s=15)
            async with http.post(url, json={"payload": {}}) as resp:
                assert resp.status == 503
                assert (await resp.json())["error"]["code"] == "store_unavailable"
            async with http.get(f"{daemon.url}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"{daemon.url}/metrics") as resp:
                assert "vast_scheduler_store_errors_total" in await resp.text()
            async with private_redis(tmp_path, port):
                await wait_ready(http, daemon.url, 200, timeout_s=20)
                await emulator.add_worker("ep")
                async with asyncio.timeout(40):
                    while True:
                        views = []
                        for job_id in job_ids:
                            async with http.get(f"{daemon.url}/v1/jobs/{job_id}") as resp:
                                views.append((await resp.json())["status"])
                        if all(v == "succeeded" for v in views):
                            break
                        await asyncio.sleep(0.3)
