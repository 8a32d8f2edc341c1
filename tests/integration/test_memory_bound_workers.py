"""A worker whose batch is bound by memory (vLLM's paged KV cache, emulated with
``batch_memory: grow``): told the work a worker holds (``capacity.max_worker_cost``), the
daemon never sends it more than fits, so the worker preempts nothing; left to the learnt
limit, whose first round holds four jobs, it preempts. Over real sockets: the daemon, the
emulator and its worker."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.integration.harness import daemon_config, run_many, running_daemon, running_emulator

COST = 100.0  # the emulator's constant workload per request, and the daemon's default estimate
# A request holds a tenth of its workload from its start and grows to 1.1x by its end: three
# fit in 330 units at any time, four (the learnt limit's first round) do not.
EMULATED = {
    "llm": {
        "workers": 1,
        "service": "batching",
        "perf": 400,
        "workload_units": COST,
        "max_batch_cost": 3.3 * COST,
        "batch_memory": "grow",
    }
}
JOBS, CLIENTS = 24, 12


async def preemptions(http: aiohttp.ClientSession, autoscaler_url: str) -> int:
    async with http.get(f"{autoscaler_url}/admin/workers") as resp:
        (worker,) = await resp.json()
    return int(worker["preemptions"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("max_worker_cost", [None, 3 * COST])
async def test_a_worker_told_its_memory_is_sent_no_more_than_fits(
    http: aiohttp.ClientSession, max_worker_cost: float | None
) -> None:
    endpoint: dict[str, Any] = {}
    if max_worker_cost is not None:
        endpoint["capacity"] = {"max_worker_cost": max_worker_cost}
    async with running_emulator(EMULATED) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"llm": endpoint})
        async with running_daemon(config) as daemon:
            statuses = await run_many(http, f"{daemon.url}/v1/endpoints/llm/run", JOBS, CLIENTS)
            async with http.get(f"{daemon.url}/v1/status") as resp:
                status = await resp.json()
        preempted = await preemptions(http, emulator.autoscaler_url)
    assert statuses == [200] * JOBS
    if max_worker_cost is None:
        assert preempted > 0  # four jobs at once outgrow the worker's memory
    else:
        assert preempted == 0
    assert status["endpoints"]["llm"]["max_worker_cost"] == max_worker_cost
