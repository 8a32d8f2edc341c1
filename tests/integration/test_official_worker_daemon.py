"""The daemon in front of the official Vast worker (PyPI ``vastai``): its reported load never
falls below what the daemon has in flight on it, in session and in sequential reuse."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from official_worker import SKIP_REASON, official_worker, vastai_installed

from tests.integration.harness import (
    Daemon,
    daemon_config,
    run_many,
    running_daemon,
    running_emulator,
)

pytestmark = pytest.mark.skipif(not vastai_installed(), reason=SKIP_REASON)
ENDPOINT = "official"
JOB_COST = 100  # the worker's workload calculator reads payload["cost"]; the estimator matches


async def sample_inflight(daemon: Daemon, url: str, out: list[tuple[float, float]]) -> None:
    """Every 10 ms: the cost the daemon has in flight on the worker at ``url``."""
    dispatcher = daemon.service.dispatchers[ENDPOINT]
    for _ in range(6000):  # bounded: at most 60 s
        cost = sum(lease.inflight_cost for lease in dispatcher.pool if lease.worker_url == url)
        out.append((time.monotonic(), cost))
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("reuse", ["session", "sequential"])
async def test_reported_load_covers_the_daemons_inflight_cost(
    reuse: str, http: aiohttp.ClientSession
) -> None:
    async with running_emulator({}) as emulator, official_worker(emulator, ENDPOINT) as worker:
        endpoint = {
            "reuse": reuse,
            "max_concurrency": 6,
            "batch": {"max_jobs": 3},
            "cost": {"estimator": "field", "field": "cost", "default": JOB_COST},
        }
        config = daemon_config(emulator.autoscaler_url, {ENDPOINT: endpoint})
        async with running_daemon(config) as daemon:
            samples: list[tuple[float, float]] = []
            sampler = asyncio.create_task(sample_inflight(daemon, worker.url, samples))
            body = {"payload": {"cost": JOB_COST, "sleep_s": 1.0}}
            started = time.monotonic()
            try:
                statuses = await run_many(
                    http, f"{daemon.url}/v1/endpoints/{ENDPOINT}/run", 24, 6, body
                )
                await asyncio.sleep(1.5)  # one more status report after the last job
            finally:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
    assert statuses == [200] * 24
    reports = [r for r in worker.reports() if r.at >= started]
    assert len(reports) >= 3
    busy = 0
    for report in reports:
        # What the daemon had in flight through the 500 ms before the report arrived (jobs
        # last 1 s; a report reaches the autoscaler well within 500 ms of its snapshot): all
        # of it was in flight when the worker took its snapshot.
        window = [cost for at, cost in samples if report.at - 0.5 <= at <= report.at]
        if not window:
            continue
        held = min(window)
        busy += held > 0
        assert report.body["cur_load"] >= held - 1e-6, (reuse, report.body, held)
    assert busy >= 2, "no report fell inside a busy stretch: the test checked nothing"
