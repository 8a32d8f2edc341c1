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


async def test_a_worker_is_funded_for_its_next_step_only_once_it_has_shown_no_queueing(
    http: aiohttp.ClientSession,
) -> None:
    """Before any worker settles, a worker's sessions are sized for its next start-up step
    (up to 4x its limit), but only once a round has shown it serves jobs side by side. A FIFO
    worker (1 s a job) in its first round holds 4 jobs (its first limit) and 8 more wait here:
    the held route calls' answers name it, at its limit, and open nothing more (what it holds
    is a limit's worth), until that round shows it queueing. Sized for 4x its first limit
    from the start, it got a session for the 8 waiting jobs too (1,200 declared where 400 ran,
    load its worker reports for the session's life). A batching worker gets its step's
    sessions after its first round (the test above, and (f2)'s screens)."""
    emulated = {"slow": {"workers": 1, "perf": 100.0, "service": "fifo"}}
    lease = {"idle_close_s": 5.0}
    async with running_emulator(emulated) as emulator:
        await emulator.wait_ready("slow", 1)
        worker = emulator.all_workers()[0].url
        config_endpoint = {**endpoint(lease), "placement": {"held_route_interval_s": 0.25}}
        config = daemon_config(emulator.autoscaler_url, {"slow": config_endpoint},
                               server={"grace_period_s": 0.5})  # fmt: skip
        async with running_daemon(config) as d:
            jobs = f"{d.url}/v1/endpoints/slow/jobs"
            first = await submit_many(http, jobs, 4, concurrency=4)
            await wait_until(lambda: session_load_by_worker(emulator).get(worker, 0.0) > 0, 5)
            await submit_many(http, jobs, 8)
            calls_before = len(emulator.route_log())

            def one_ended() -> bool:
                return any((job := d.service.get(i)) is not None and job.finished for i in first)

            peak = 0.0
            for _ in range(200):  # bounded: the first job ends after about 1 s
                if one_ended():
                    break
                peak = max(peak, session_load_by_worker(emulator).get(worker, 0.0))
                await asyncio.sleep(0.01)
            held_calls = len(emulator.route_log()) - calls_before
    assert held_calls >= 1, "no held route call named the worker while it was at its limit"
    assert 4 * COST <= peak <= 5 * COST, peak


async def test_a_batching_worker_past_its_first_round_is_funded_for_its_next_step(
    http: aiohttp.ClientSession,
) -> None:
    """A batching worker (1 s a job) serves 4 jobs side by side in its first round (a session
    of 400) while 4 more wait here: its limit doubles to 8 and no worker has settled. The next
    session opened on it declares its next step, 4x its limit (32 jobs: 3,200), not its limit
    (8: 800): sized for its limit, a worker's step outgrew its sessions while no answer named
    it (in (f2)'s cold starts it held 6 large jobs of its 32 for the load's first second).
    The first round steps at all only because a worker at its limit whose only session is
    full is told it held the waiting jobs back (it was not, and stayed at 4)."""
    emulated = {"llm": {"workers": 1, "perf": 100.0, "service": "batching"}}
    lease = {"idle_close_s": 5.0}
    async with running_emulator(emulated) as emulator:
        await emulator.wait_ready("llm", 1)
        worker = emulator.all_workers()[0].url
        config = daemon_config(emulator.autoscaler_url, {"llm": endpoint(lease)},
                               server={"grace_period_s": 0.5})  # fmt: skip
        async with running_daemon(config) as d:
            capacity = d.service.dispatchers["llm"].leasing.pool.capacity
            assert capacity is not None
            jobs = f"{d.url}/v1/endpoints/llm/jobs"
            first = await submit_many(http, jobs, 4, concurrency=4)
            await wait_until(lambda: session_load_by_worker(emulator).get(worker, 0.0) > 0, 5)
            first_round = session_load_by_worker(emulator)[worker]
            held = await submit_many(http, jobs, 4)  # wait here: the worker is at its limit
            await wait_all_finished(d, first, timeout_s=10)
            limit = capacity.limit(worker)
            waiting = await submit_many(http, jobs, 8)
            peak = await peak_on(emulator, worker, 1.0)
            await wait_all_finished(d, held + waiting, timeout_s=10)
    assert first_round <= 4 * COST, first_round
    assert limit == 8, limit
    assert peak >= first_round + 32 * COST, peak
