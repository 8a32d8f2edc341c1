"""Learnt per-worker concurrency limits, as an operator sees them: ``GET /v1/status`` lists the
leased worker with its limit, and ``/metrics`` counts the limit's changes, after real jobs ran
over real sockets on an emulated batching worker (vLLM-like: 32 requests progress at once, each
barely slower than alone, so the controller's start-up doubles the limit while it pays)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import daemon_config, run_many, running_daemon, running_emulator

# 100 units at 400 units/s: a quarter second a job alone, 32 of them in about 0.4 s.
EMULATED = {"llm": {"workers": 1, "service": "batching", "perf": 400}}
CLIENTS = 48  # concurrent callers: enough to hold the worker at limits of 1, 2, 4, ... 32
JOBS = 400


async def get_json(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def samples(http: aiohttp.ClientSession, url: str, name: str) -> dict[str, float]:
    """The daemon's ``/metrics`` samples called ``name``, by their label values."""
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return {
        ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


@pytest.mark.timeout(60)
async def test_status_shows_a_learnt_limit_that_grew_under_load(
    http: aiohttp.ClientSession,
) -> None:
    async with running_emulator(EMULATED) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"llm": {}})
        async with running_daemon(config) as daemon:
            url = daemon.url
            statuses = await run_many(http, f"{url}/v1/endpoints/llm/run", JOBS, CLIENTS)
            assert statuses == [200] * JOBS
            status = await get_json(http, f"{url}/v1/status")
            changes = await samples(http, url, "vast_scheduler_worker_limit_changes_total")
            gauge = await samples(http, url, "vast_scheduler_concurrency_limit")

    llm = status["endpoints"]["llm"]
    assert llm["max_concurrency"] is None  # no endpoint cap: the worker's limit bounds it
    (worker,) = llm["workers"]
    assert worker["worker_url"] == emulator.workers("llm")[0].url
    assert worker["phase"] in ("startup", "steady", "probing")
    assert worker["limit"] >= 4, worker  # start-up doubled it: the batching worker paid
    assert worker["inflight_jobs"] == 0  # every run answered
    assert worker["throughput_cost_per_s"] > 400  # more than one job at a time delivers
    assert 0 < worker["latency_floor_s_per_cost"] < 0.1
    # The limit changes counted, at least one start-up doubling among them.
    assert sum(changes.values()) > 0, changes
    assert changes.get("endpoint=llm,reason=startup", 0) > 0, changes
    assert gauge == {"endpoint=llm": worker["limit"]}


async def newcomer_limits(
    http: aiohttp.ClientSession, url: str, worker_url: str, seen: list[int], stop: asyncio.Event
) -> None:
    """Every distinct limit ``/v1/status`` shows for ``worker_url``, in order, until stopped
    (every 30 ms: a limit lasts a round, 0.25 s or more here)."""
    for _ in range(2_000):
        if stop.is_set():
            return
        status = await get_json(http, f"{url}/v1/status")
        for worker in status["endpoints"]["llm"]["workers"]:
            if worker["worker_url"] == worker_url and (not seen or seen[-1] != worker["limit"]):
                seen.append(worker["limit"])
        await asyncio.sleep(0.03)


@pytest.mark.timeout(90)
async def test_a_worker_joining_settled_peers_goes_to_their_limit_after_one_round(
    http: aiohttp.ClientSession,
) -> None:
    """A batching worker settles at its batch; Vast adds a second one (the same server) while
    jobs wait. The newcomer starts at 4 and, after one round without queueing, goes to its
    peer's limit at once, where doubling would have stepped 4 -> 8 -> 32."""
    async with running_emulator(EMULATED) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"llm": {}})
        async with running_daemon(config) as daemon:
            url = daemon.url
            # Twice its batch of callers: its start-up's step to 64 is filled and found
            # unpaid, and it settles at 32 (at 48 callers it may stay in start-up at 32).
            statuses = await run_many(http, f"{url}/v1/endpoints/llm/run", 2 * JOBS, 2 * CLIENTS)
            assert statuses == [200] * (2 * JOBS)
            (peer,) = (await get_json(http, f"{url}/v1/status"))["endpoints"]["llm"]["workers"]
            assert peer["phase"] != "startup", peer
            # Settled at its batch of 32, or a probe or two past it: up probes are kept at a
            # third of the proportional gain, and on a loaded 2-core machine one round's noise
            # kept 40 -> 50 once (a CI run, session 21). What is tested is the newcomer's jump.
            assert 29 <= peer["limit"] <= 64, peer

            newcomer = await emulator.add_worker("llm")
            seen: list[int] = []
            stop = asyncio.Event()
            watch = asyncio.create_task(newcomer_limits(http, url, newcomer.url, seen, stop))
            statuses = await run_many(http, f"{url}/v1/endpoints/llm/run", JOBS, 2 * CLIENTS)
            stop.set()
            await watch
            assert statuses == [200] * JOBS
            changes = await samples(http, url, "vast_scheduler_worker_limit_changes_total")

    assert seen, "the newcomer was never leased"
    assert seen[0] == 4, seen
    assert seen[1] >= 29, seen  # its peer's limit (about 32), not the doubling to 8
    assert changes.get("endpoint=llm,reason=startup_peers") == 1, changes
