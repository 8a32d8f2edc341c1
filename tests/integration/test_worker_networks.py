"""vast.worker_networks on real sockets: a route answer naming a worker outside the allowed
networks is never used (no job reaches that worker); inside, jobs run as usual."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.integration.harness import (
    daemon_config,
    running_daemon,
    running_emulator,
    wait_for_status,
)
from tests.integration.test_failover import submit


def worker_requests(emulator: Any) -> int:
    return sum(sum(w.counters.by_status.values()) for w in emulator.all_workers())


async def test_workers_outside_the_networks_never_get_jobs(http: aiohttp.ClientSession) -> None:
    async with running_emulator({"echo": {"workers": 2}}) as emulator:
        await emulator.wait_ready("echo", 2)
        config = daemon_config(
            emulator.autoscaler_url,
            {"echo": {"max_attempts": 2}},
            vast={"worker_networks": ["10.0.0.0/8", "fd00::/8", "workers.internal"]},
        )
        async with running_daemon(config) as daemon:
            job_ids = [await submit(http, daemon.url, "echo", timeout_s=1.5) for _ in range(3)]
            jobs = [
                await wait_for_status(http, daemon, i, {"succeeded", "failed", "expired"}, 10)
                for i in job_ids
            ]
            async with http.get(f"{daemon.url}/v1/status") as resp:
                status = await resp.text()
    assert all(job["status"] in ("failed", "expired") for job in jobs), jobs
    assert all(job.get("error") for job in jobs), jobs
    assert worker_requests(emulator) == 0  # no job was ever forwarded
    assert emulator.autoscaler.stats.count("echo", "ready") >= 1  # Vast did answer READY
    assert '"worker_not_allowed"' in status  # counted by kind on /v1/status


async def test_workers_inside_the_networks_get_jobs(http: aiohttp.ClientSession) -> None:
    async with running_emulator({"echo": {"workers": 1}}) as emulator:
        config = daemon_config(
            emulator.autoscaler_url,
            {"echo": {}},
            vast={"worker_networks": ["10.0.0.0/8", "127.0.0.0/8", "::1/128"]},
        )
        async with running_daemon(config) as daemon:
            job_id = await submit(http, daemon.url, "echo", timeout_s=10)
            job = await wait_for_status(http, daemon, job_id, {"succeeded", "failed", "expired"})
    assert job["status"] == "succeeded", job
    assert worker_requests(emulator) == 1
