"""A session is load on its worker for its whole life: the worker reports its declared cost,
Vast scales on it, and a worker with a session open is not one Vast can stop. So the daemon
opens no more session budget on a worker than its limit can use (parallel route calls after
a worker is found all name it), and an idle worker the load no longer needs (another, used
later, takes it) has its session closed sooner than the idle close."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from scheduler.emulator.emulator import Emulator
from tests.integration.harness import (
    daemon_config,
    running_daemon,
    running_emulator,
    submit_many,
    wait_all_finished,
    wait_until,
)

COST = 100.0


def endpoint(lease: dict[str, Any]) -> dict[str, Any]:
    return {
        "default_route": "/generate",
        "cost": {"estimator": "constant", "value": COST},
        "lease": lease,
    }


def session_load_by_worker(emulator: Emulator) -> dict[str, float]:
    """Per worker URL: the cost its open sessions declare (0 for none)."""
    return {
        worker.url: sum(s.entry.workload for s in worker.sessions.table.sessions.values())
        for worker in emulator.all_workers()
    }


async def peak_on(emulator: Emulator, url: str, watch_s: float) -> float:
    """The most session cost open on the worker at ``url`` over ``watch_s`` (sampled)."""
    peak = 0.0
    for _ in range(int(watch_s / 0.02)):
        peak = max(peak, session_load_by_worker(emulator).get(url, 0.0))
        await asyncio.sleep(0.02)
    return peak


async def test_a_found_worker_gets_the_session_budget_its_limit_uses_not_one_per_route_call(
    http: aiohttp.ClientSession,
) -> None:
    """A FIFO worker (0.1 s a job) settles at a limit of 1-2, then is stopped (scaled down).
    40 jobs wait for a new one; when it comes, the poller's session is sized to the settled
    limit, and the batch route calls that then go out in parallel all name the new worker
    (still in its start-up). Each opened a session of its own before (5-6 on a worker
    settled at one job: 500-700 of declared load); now its sessions hold one job beyond
    the settled limit at most (<= 300; 200 measured)."""
    emulated = {"slow": {"workers": 1, "perf": 1000.0, "service": "fifo"}}
    lease = {"idle_close_s": 0.3, "spare_close_s": 0.3}
    async with running_emulator(emulated) as emulator:
        await emulator.wait_ready("slow", 1)
        config = daemon_config(emulator.autoscaler_url, {"slow": endpoint(lease)},
                               server={"grace_period_s": 0.5})  # fmt: skip
        async with running_daemon(config) as d:
            capacity = d.service.dispatchers["slow"].leasing.pool.capacity
            assert capacity is not None
            first = await submit_many(http, f"{d.url}/v1/endpoints/slow/jobs", 40)
            await wait_all_finished(d, first, timeout_s=30)
            assert capacity.settled_limit() is not None, "the limit settled"
            await wait_until(lambda: not max(session_load_by_worker(emulator).values()), 5)
            await emulator.all_workers()[0].stop()
            waiting = await submit_many(http, f"{d.url}/v1/endpoints/slow/jobs", 40)
            await asyncio.sleep(0.5)
            new = await emulator.add_worker("slow")
            peak = await peak_on(emulator, new.url, 2.0)
            await wait_all_finished(d, waiting, timeout_s=30)
    assert 0 < peak <= 3 * COST, peak


async def test_an_idle_worker_another_covers_closes_its_session_sooner_than_the_idle_close(
    http: aiohttp.ClientSession,
) -> None:
    """Two FIFO workers share 30 jobs, then nothing comes. With a 3 s idle close, both kept
    their sessions (their load, for Vast) for 3 s; now the one not used last is spare and
    closes after 0.5 s, the other keeps its session for the next job until the idle close."""
    emulated = {"pair": {"workers": 2, "perf": 1000.0, "service": "fifo"}}
    lease = {"idle_close_s": 3.0}
    async with running_emulator(emulated) as emulator:
        await emulator.wait_ready("pair", 2)
        config = daemon_config(emulator.autoscaler_url, {"pair": endpoint(lease)},
                               server={"grace_period_s": 0.5})  # fmt: skip
        async with running_daemon(config) as d:
            jobs = asyncio.create_task(submit_many(http, f"{d.url}/v1/endpoints/pair/jobs", 30))

            def both_hold_sessions() -> bool:
                return all(session_load_by_worker(emulator).values())

            await wait_until(both_hold_sessions, timeout_s=10, interval_s=0.01)
            await wait_all_finished(d, await jobs, timeout_s=30)
            await asyncio.sleep(1.5)
            holding_after_lull = sum(1 for v in session_load_by_worker(emulator).values() if v)
            await asyncio.sleep(2.5)
            holding_later = sum(1 for v in session_load_by_worker(emulator).values() if v)
    assert holding_after_lull == 1, holding_after_lull  # 2 with the idle close alone
    assert holding_later == 0, holding_later


async def test_a_worker_at_its_limit_with_small_jobs_gets_a_session_for_the_large_ones(
    http: aiohttp.ClientSession,
) -> None:
    """A batching worker (2 s a small job) and a cold daemon: four small jobs (cost 10) open a
    session of 40 and fill the worker's first limit (4). Eight large jobs (cost 400) then wait
    here, and the held route call's answer names that worker, at its limit. Its sessions hold
    nothing of what its next start-up step will hold of large jobs, so the answer opens a
    session for them at once, while the small ones still run. It went unused before (the
    worker was at its limit): the worker was funded for large jobs only when a small one had
    ended and a route call went for it (in (f2)'s cold starts a worker so capped held 6 large
    jobs of its 32 while another took them past its batch)."""
    emulated = {"llm": {"workers": 1, "perf": 5.0, "service": "batching", "workload": "max_tokens"}}
    config_endpoint = {
        "default_route": "/generate",
        "cost": {"estimator": "field", "field": "max_tokens"},
        "placement": {"held_route_interval_s": 0.25},
    }
    async with running_emulator(emulated) as emulator:
        await emulator.wait_ready("llm", 1)
        worker = emulator.all_workers()[0].url
        config = daemon_config(emulator.autoscaler_url, {"llm": config_endpoint},
                               server={"grace_period_s": 0.5})  # fmt: skip
        async with running_daemon(config) as d:
            jobs = f"{d.url}/v1/endpoints/llm/jobs"
            small = await submit_many(http, jobs, 4, {"payload": {"max_tokens": 10}})
            await wait_until(lambda: session_load_by_worker(emulator).get(worker, 0.0) > 0, 5)
            first_session = session_load_by_worker(emulator)[worker]
            await submit_many(http, jobs, 8, {"payload": {"max_tokens": 400}})

            def funded_for_large() -> bool:
                return session_load_by_worker(emulator).get(worker, 0.0) >= first_session + 400

            def a_small_one_ended() -> bool:
                return any((job := d.service.get(i)) is not None and job.finished for i in small)

            await wait_until(lambda: funded_for_large() or a_small_one_ended(), timeout_s=10)
            funded, ended = funded_for_large(), a_small_one_ended()
    assert first_session <= 4 * 10.0, first_session
    assert (funded, ended) == (True, False), (funded, ended)
