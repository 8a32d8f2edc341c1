"""The emulated worker's service models, timed through its HTTP API over real sockets.

One request alone takes COST / PERF = 0.25 s of model time on every model; then 8 are sent
together. Model time is a floor (a loaded machine only adds to it), so lower bounds are
absolute and upper bounds are ratios to the request alone, measured in the same test.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
import pytest
from emulator_fixtures import call_worker, config, ready_answer, running

from scheduler.emulator.emulator import Emulator

PERF = 400.0
COST = 100.0  # the constant workload of a request (workload_units)
ALONE_S = COST / PERF
N = 8


async def _timed(http: aiohttp.ClientSession, answer: dict[str, Any], started: float) -> float:
    status, body = await call_worker(http, answer, {"n": answer["reqnum"]})
    assert status == 200, body
    return asyncio.get_running_loop().time() - started


async def signature(
    http: aiohttp.ClientSession, emu: Emulator, endpoint: str = "echo"
) -> tuple[float, list[float]]:
    """The time of one request alone, then the finish times of N sent together, sorted."""
    loop = asyncio.get_running_loop()
    alone = await _timed(http, await ready_answer(http, emu, endpoint, COST), loop.time())
    answers = [await ready_answer(http, emu, endpoint, COST) for _ in range(N)]
    started = loop.time()
    finishes = await asyncio.gather(*(_timed(http, a, started) for a in answers))
    return alone, sorted(finishes)


def _endpoint(service: str, **extra: Any) -> dict[str, Any]:
    return {"workers": 1, "perf": PERF, "workload_units": COST, "service": service, **extra}


async def test_batching_serves_eight_together_in_about_the_time_of_one() -> None:
    async with running(config(echo=_endpoint("batching")), wait_for={"echo": 1}) as (emu, http):
        alone, finishes = await signature(http, emu)
    assert alone >= ALONE_S * 0.95
    # Model time: 0.25 s * (1 + 0.02 * 7) = 0.285 s for all eight.
    assert finishes[0] >= ALONE_S * (1 + 0.02 * (N - 1)) * 0.95
    assert finishes[-1] < 3 * alone, (alone, finishes)


async def test_a_memory_bound_batch_serves_eight_two_at_a_time() -> None:
    """``max_batch_cost`` of two requests' workload (a KV cache full at two): the eight are
    served in four batches of two, each in about the time of one request alone."""
    endpoint = _endpoint("batching", max_batch_cost=2 * COST)
    async with running(config(echo=endpoint), wait_for={"echo": 1}) as (emu, http):
        alone, finishes = await signature(http, emu)
    pair_s = ALONE_S * 1.02  # two together: 0.255 s of model time
    for k, finish in enumerate(finishes):
        assert finish >= (k // 2 + 1) * pair_s * 0.95, finishes
    assert finishes[1] < 3 * alone, (alone, finishes)  # the first two did not wait
    assert finishes[-1] >= 3.5 * ALONE_S, finishes


async def test_a_paged_batch_preempts_the_newest_request_when_its_memory_is_full() -> None:
    """``batch_memory: grow`` (vLLM): two requests join on their prompts (a tenth of their
    workload each), grow until the batch holds 1.5 requests' workload, and the newer one is
    preempted: it starts again once the older has finished, so it ends after two request times
    (0.5 s of model time), and the admin API counts the preemption."""
    endpoint = _endpoint("batching", max_batch_cost=1.5 * COST, batch_memory="grow")
    async with running(config(echo=endpoint), wait_for={"echo": 1}) as (emu, http):
        loop = asyncio.get_running_loop()
        answers = [await ready_answer(http, emu, "echo", COST) for _ in range(2)]
        started = loop.time()
        finishes = sorted(await asyncio.gather(*(_timed(http, a, started) for a in answers)))
        async with http.get(f"{emu.autoscaler_url}/admin/workers") as resp:
            (worker,) = await resp.json()
    assert worker["preemptions"] == 1, worker
    assert finishes[1] >= 2 * ALONE_S * 0.95, finishes


async def test_processor_sharing_splits_the_rate_between_eight() -> None:
    cfg = config(echo=_endpoint("processor_sharing"))
    async with running(cfg, wait_for={"echo": 1}) as (emu, http):
        alone, finishes = await signature(http, emu)
    # Each progresses at PERF / 8: none ends before 8x the time alone (2 s).
    assert finishes[0] >= N * ALONE_S * 0.95, finishes
    assert finishes[-1] >= 4 * alone, (alone, finishes)


async def test_fifo_serves_eight_one_after_the_other() -> None:
    async with running(config(echo=_endpoint("fifo")), wait_for={"echo": 1}) as (emu, http):
        alone, finishes = await signature(http, emu)
    # The k-th ends k * 0.25 s in, at the earliest; consecutive ends a service time apart.
    for k, finish in enumerate(finishes, start=1):
        assert finish >= k * ALONE_S * 0.95, finishes
    gaps = [b - a for a, b in itertools.pairwise(finishes)]
    assert min(gaps) >= ALONE_S * 0.9, gaps
    assert finishes[0] < 3 * alone, (alone, finishes)  # the first one did not wait
    assert finishes[-1] >= 4 * alone, (alone, finishes)


async def test_batching_worker_reports_its_benchmark_throughput_and_429s_by_it() -> None:
    """max_perf is the throughput at the official benchmark's concurrency (10 together:
    10 * 100 / 1.18 = 847 units/s, not 100), and the worker's 429 check divides the
    in-flight workload by it: with max_queue_time_s 0.4 it takes 4 requests of 100 units
    (400 / 847 = 0.47 s > 0.4 refuses the 5th), where a processor-sharing worker of the
    same perf (max_perf 100) takes 1."""
    slow = {"perf": 100.0, "workload_units": 100.0, "max_queue_time_s": 0.4, "workers": 1}
    cfg = config(llm={**slow, "service": "batching"}, ps={**slow, "service": "processor_sharing"})
    async with running(cfg, wait_for={"llm": 1, "ps": 1}) as (emu, http):
        batching, sharing = emu.workers("llm")[0], emu.workers("ps")[0]
        assert batching.metrics.max_perf == pytest.approx(1000 / 1.18)
        assert sharing.metrics.max_perf == pytest.approx(100)
        report = emu.autoscaler.book.workers[batching.id].report or {}
        assert report["max_perf"] == pytest.approx(1000 / 1.18)
        for endpoint, admitted in (("llm", 4), ("ps", 1)):
            answers = [await ready_answer(http, emu, endpoint) for _ in range(6)]
            results = await asyncio.gather(*(call_worker(http, a) for a in answers))
            statuses = sorted(status for status, _ in results)
            assert statuses == [200] * admitted + [429] * (6 - admitted), endpoint


async def test_admin_adds_a_batching_worker_to_a_fifo_endpoint() -> None:
    cfg = config(echo=_endpoint("fifo", workers=0))
    async with running(cfg) as (emu, http):
        url = f"{emu.autoscaler_url}/admin/endpoints/echo/workers"
        async with http.post(url, json={"service": "batching", "max_batch": 8}) as resp:
            assert resp.status == 201, await resp.text()
            added = await resp.json()
        assert (added["service"], added["max_batch"]) == ("batching", 8)
        await emu.wait_ready("echo", 1, timeout_s=10)
        assert emu.workers("echo")[0].spec.settings.max_batch == 8
        alone, finishes = await signature(http, emu)
        async with http.post(url, json={"service": "batching", "parallel": True}) as resp:
            assert resp.status == 400, await resp.text()
    assert finishes[-1] < 3 * alone, (alone, finishes)
