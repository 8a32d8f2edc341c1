"""Daemon replicas as real processes on one Redis key prefix, for the scale-out tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.integration.harness import API_KEY
from tests.integration.redis_support import REDIS_URL
from tests.integration.test_lifecycle import ROOT, SECRET_VARS, free_port, wait_healthy

TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


@dataclass
class Replica:
    name: str
    url: str
    process: asyncio.subprocess.Process
    log_path: Path

    def logs(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events


def replica_config(
    name: str, port: int, autoscaler_url: str, prefix: str, endpoints: dict[str, Any],
    **store: Any,
) -> dict[str, Any]:  # fmt: skip
    redis = {"url": REDIS_URL, "key_prefix": prefix, "visibility_timeout_s": 2.0,
             **store.pop("redis", {})}  # fmt: skip
    return {
        "server": {"host": "127.0.0.1", "port": port, "grace_period_s": 10},
        "auth": {"enabled": False},
        "vast": {"autoscaler_url": autoscaler_url, "api_key": API_KEY},
        "logging": {"format": "json", "level": "info", "access_log": False},
        "store": {
            "backend": "redis",
            "replica_id": name,
            "prefetch": 16,
            **store,
            "redis": redis,
        },
        "endpoint_defaults": {"poll": {"initial_s": 0.05, "max_s": 0.2}},
        "endpoints": endpoints,
    }


async def start_replica(
    directory: Path, name: str, autoscaler_url: str, prefix: str, endpoints: dict[str, Any],
    http: aiohttp.ClientSession, **store: Any,
) -> Replica:  # fmt: skip
    port = free_port()
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(replica_config(name, port, autoscaler_url, prefix, endpoints,
                                                  **store)))  # fmt: skip
    log_path = directory / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
    env["PYTHONPATH"] = str(ROOT)
    with log_path.open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scheduler", "run", "--config", str(path), cwd=ROOT, env=env,
            stdout=log_file, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    replica = Replica(name, f"http://127.0.0.1:{port}", process, log_path)
    await wait_healthy(http, replica.url)
    return replica


async def stop(replica: Replica, signum: int = signal.SIGTERM, timeout_s: float = 20) -> int:
    if replica.process.returncode is None:
        replica.process.send_signal(signum)
    async with asyncio.timeout(timeout_s):
        return await replica.process.wait()


@asynccontextmanager
async def replicas(
    directory: Path, count: int, autoscaler_url: str, prefix: str, endpoints: dict[str, Any],
    http: aiohttp.ClientSession, first: int = 1, **store: Any,
) -> AsyncIterator[list[Replica]]:  # fmt: skip
    started: list[Replica] = []
    try:
        for index in range(first, first + count):
            started.append(await start_replica(directory, f"r{index}", autoscaler_url, prefix,
                                               endpoints, http, **store))  # fmt: skip
        yield started
    finally:
        for replica in started:
            if replica.process.returncode is None:
                replica.process.kill()
                await replica.process.wait()


async def submit_spread(
    http: aiohttp.ClientSession, urls: list[str], endpoint: str, count: int,
    concurrency: int = 32, key_prefix: str = "job",
) -> list[str]:  # fmt: skip
    """``count`` async jobs over the replicas in turn, each with an idempotency key; a replica
    that does not answer is skipped and the same key sent to the next (no job twice)."""
    ids: dict[int, str] = {}
    indices = iter(range(count))

    async def client() -> None:
        for index in indices:
            body = {"payload": {"id": index}, "idempotency_key": f"{key_prefix}-{index}"}
            ids[index] = await submit_one(http, urls, index, endpoint, body)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return [ids[i] for i in range(count)]


async def submit_one(
    http: aiohttp.ClientSession, urls: list[str], index: int, endpoint: str, body: dict[str, Any]
) -> str:
    for attempt in range(2 * len(urls)):
        url = urls[(index + attempt) % len(urls)]
        try:
            async with http.post(f"{url}/v1/endpoints/{endpoint}/jobs", json=body) as resp:
                if resp.status in (200, 202):
                    return str((await resp.json())["id"])
        except (aiohttp.ClientConnectionError, TimeoutError):
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"no replica took job {index}")


async def statuses(
    http: aiohttp.ClientSession, urls: list[str], job_ids: list[str], concurrency: int = 32
) -> dict[str, str]:
    """Every job's status read through the replicas in turn (any replica answers for any job)."""
    found: dict[str, str] = {}
    pending = iter(enumerate(job_ids))

    async def reader() -> None:
        for index, job_id in pending:
            for attempt in range(len(urls)):
                url = urls[(index + attempt) % len(urls)]
                try:
                    async with http.get(f"{url}/v1/jobs/{job_id}") as resp:
                        found[job_id] = (await resp.json())["status"] if resp.status == 200 else (
                            f"http_{resp.status}")  # fmt: skip
                        break
                except (aiohttp.ClientConnectionError, TimeoutError):
                    continue

    await asyncio.gather(*(reader() for _ in range(concurrency)))
    return found


async def wait_terminal(
    http: aiohttp.ClientSession, urls: list[str], job_ids: list[str], timeout_s: float
) -> dict[str, str]:
    """Polls (bounded) until every job is terminal; returns the last statuses read."""
    last: dict[str, str] = {}
    remaining = list(job_ids)
    try:
        async with asyncio.timeout(timeout_s):
            while remaining:
                last.update(await statuses(http, urls, remaining))
                remaining = [j for j in remaining if last.get(j) not in TERMINAL]
                if remaining:
                    await asyncio.sleep(0.5)
    except TimeoutError:
        pass
    return last
