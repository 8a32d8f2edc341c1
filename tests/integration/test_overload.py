"""Overload at about 10x capacity: the queue's cost and depth limits hold, every refused job
gets 429 with a Retry-After taken from the drain rate, every admitted job completes, nothing
is kept for refused jobs, and the process's RSS grows by less than ``RSS_GROWTH_BOUND``."""

from __future__ import annotations

import asyncio
import os
import statistics
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import (
    Daemon,
    daemon_config,
    running_daemon,
    running_emulator,
    wait_all_finished,
)

PERF = 1000.0  # the worker's cost units per second
COST = 100.0  # per job: capacity is PERF / COST = 10 jobs/s
OFFERED_PER_S = 100  # 10x capacity
DURATION_S = 4.0
MAX_QUEUED_COST = 2000.0  # 20 jobs, 2 s of work
RSS_GROWTH_BOUND = 64 * 1024 * 1024  # bytes, for the daemon, emulator and client together


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def offer_load(http: aiohttp.ClientSession, daemon: Daemon) -> list[tuple[int, Any, str]]:
    """OFFERED_PER_S submissions a second for DURATION_S; (status, body, Retry-After) each."""
    url = f"{daemon.url}/v1/endpoints/busy/jobs"
    answers: list[tuple[int, Any, str]] = []

    async def one(index: int) -> None:
        tenant = "a" if index % 2 else "b"
        async with http.post(url, json={"payload": {"i": index}},
                             headers={"X-Tenant": tenant}) as resp:  # fmt: skip
            answers.append((resp.status, await resp.json(), resp.headers.get("Retry-After", "")))

    tasks = []
    interval_s = 1 / OFFERED_PER_S
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index in range(int(OFFERED_PER_S * DURATION_S)):
        tasks.append(asyncio.create_task(one(index)))
        await asyncio.sleep(max(0.0, start + (index + 1) * interval_s - loop.time()))
    await asyncio.gather(*tasks)
    return answers


@pytest.mark.timeout(60)
async def test_ten_times_capacity_admits_what_fits_and_refuses_the_rest_with_retry_after(
    http: aiohttp.ClientSession,
) -> None:
    emulated = {"busy": {"workers": 1, "perf": PERF, "workload_units": COST}}
    endpoint = {
        "cost": {"estimator": "constant", "value": COST},
        "queue": {"max_depth": 1000, "max_cost": MAX_QUEUED_COST},
        "max_concurrency": 8,
        "default_timeout_s": 60,
    }
    async with running_emulator(emulated) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"busy": endpoint},
                               logging={"level": "warning"})  # fmt: skip
        async with running_daemon(config) as daemon:
            rss_before = rss_bytes()
            answers = await offer_load(http, daemon)
            admitted = [body["id"] for status, body, _ in answers if status == 202]
            refused = [(body, retry) for status, body, retry in answers if status == 429]
            assert len(admitted) + len(refused) == len(answers), {s for s, _, _ in answers}
            # About capacity x duration plus one full queue got in; most of the load did not.
            assert 20 <= len(admitted) <= 0.3 * len(answers), len(admitted)
            assert {body["error"]["code"] for body, _ in refused} == {"queue_cost_full"}
            retry_after = [int(retry) for _, retry in refused]
            assert min(retry_after) >= 1
            # The drain rate: a full queue (MAX_QUEUED_COST) at PERF units/s is about 2 s away.
            late = retry_after[len(retry_after) // 2 :]
            assert 1 <= statistics.median(late) <= 5, late
            dispatcher = daemon.service.dispatcher("busy")
            assert dispatcher.settling.completions.cost_per_s > 0
            assert dispatcher.queue.queued_cost <= MAX_QUEUED_COST
            # Nothing is kept for refused jobs: only the admitted ones are in the store.
            assert len(daemon.service.store) == len(admitted)
            await wait_all_finished(daemon, admitted, timeout_s=30)
            statuses = {str(daemon.service.get(job_id).status) for job_id in admitted}  # type: ignore[union-attr]
            assert statuses == {"succeeded"}
            growth = rss_bytes() - rss_before
            assert growth < RSS_GROWTH_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB"
            rejected = daemon.service.metrics.jobs_rejected.labels("busy", "queue_cost_full")
            assert rejected._value.get() == len(refused)
