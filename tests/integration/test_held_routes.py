"""While every worker is at its learnt limit and jobs wait, the daemon still routes now and
then (Vast should see the demand, new workers should be found), but backs off while the
answers only name workers already at their limit. What those calls declare (the demand) and
what the sessions they open declare (what their worker will hold) are kept apart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from scheduler.emulator.emulator import Emulator
from tests.integration.harness import (
    Daemon,
    daemon_config,
    running_daemon,
    running_emulator,
    submit_many,
    wait_all_finished,
    wait_until,
)

HELD_INTERVAL_S = 0.25
WATCH_S = 3.0


@asynccontextmanager
async def one_fifo_worker(perf: float) -> AsyncIterator[tuple[Emulator, Daemon]]:
    """An emulated FIFO worker of ``perf`` (cost 100 a job) and a daemon in front of it whose
    held route calls start at ``HELD_INTERVAL_S``."""
    emulated = {"slow": {"workers": 1, "perf": perf, "service": "fifo"}}
    endpoint = {
        "default_route": "/generate",
        "cost": {"estimator": "constant", "value": 100},
        "placement": {"held_route_interval_s": HELD_INTERVAL_S},
    }
    async with running_emulator(emulated) as emulator:
        await emulator.wait_ready("slow", 1)
        config = daemon_config(
            emulator.autoscaler_url, {"slow": endpoint}, server={"grace_period_s": 0.5}
        )
        async with running_daemon(config) as daemon:
            yield emulator, daemon


async def test_held_route_calls_back_off_while_answers_name_saturated_workers(
    http: aiohttp.ClientSession,
) -> None:
    """One FIFO worker (1 s a job, limit 1-2) and 20 queued jobs for 3 s. At a fixed 0.25 s
    the held route calls would be about 12; doubling from 0.25 s (0.25, 0.5, 1, 2) they are
    4 or 5, plus the call that opened the first lease."""
    async with one_fifo_worker(100.0) as (emulator, d):
        await submit_many(http, f"{d.url}/v1/endpoints/slow/jobs", 20)
        before = len(emulator.route_log())
        await asyncio.sleep(WATCH_S)
        held_calls = len(emulator.route_log()) - before
    assert 1 <= held_calls <= 7, held_calls  # a fixed interval: ~12


async def test_held_route_calls_keep_their_beat_while_jobs_pile_up(
    http: aiohttp.ClientSession,
) -> None:
    """The same worker, but 10 jobs a second arrive for 3 s (it serves one): the jobs waiting
    here grow between held route calls, which are all Vast hears of that demand, so they stay
    at 0.25 s (about 12) instead of doubling away (4 or 5, as above)."""
    async with one_fifo_worker(100.0) as (emulator, d):
        await submit_many(http, f"{d.url}/v1/endpoints/slow/jobs", 2)
        await asyncio.sleep(0.5)  # the first lease is open
        before = len(emulator.route_log())
        for _ in range(int(WATCH_S * 10)):
            await submit_many(http, f"{d.url}/v1/endpoints/slow/jobs", 1)
            await asyncio.sleep(0.1)
        held_calls = len(emulator.route_log()) - before
    assert held_calls >= 9, held_calls  # doubling: 4 or 5


def session_workloads(emulator: Emulator) -> dict[str, float]:
    """Session id -> declared cost, for every session open on the emulator's workers now."""
    return {
        session_id: session.entry.workload
        for worker in emulator.all_workers()
        for session_id, session in worker.sessions.table.sessions.items()
    }


async def max_session_workload(
    emulator: Emulator, watch_s: float, older: frozenset[str] = frozenset()
) -> float:
    """The largest workload of a session (not among ``older``) seen on any worker over
    ``watch_s`` (bounded sampling)."""
    seen = 0.0
    for _ in range(int(watch_s / 0.05)):
        now = [cost for sid, cost in session_workloads(emulator).items() if sid not in older]
        seen = max([seen, *now])
        await asyncio.sleep(0.05)
    return seen


async def test_a_settled_fifo_worker_gets_sessions_sized_to_its_limit_and_vast_the_demand(
    http: aiohttp.ClientSession,
) -> None:
    """A session declares its route answer's cost on the worker for its whole life (the
    worker reports it as load). Once a FIFO worker's limit is learnt (1-2 jobs), new sessions
    declare that many jobs, not the 16 of a batch (8x what runs). The 40 jobs that then
    wait here are still declared to Vast, by the held route calls (the official client would
    have routed each of them): without that, the autoscaler never hears of them."""
    async with one_fifo_worker(1000.0) as (emulator, d):
        leasing = d.service.dispatchers["slow"].leasing
        capacity = leasing.pool.capacity
        assert capacity is not None

        def settled() -> bool:
            states = [capacity.state(url) for url in leasing.pool.workers()]
            return any(s is not None and str(s.phase) != "startup" for s in states)

        first = await submit_many(http, f"{d.url}/v1/endpoints/slow/jobs", 40)
        await wait_until(settled, timeout_s=20)
        await wait_all_finished(d, first, timeout_s=30)
        before = len(emulator.route_log())
        opened_before = frozenset(session_workloads(emulator))  # sized before it settled
        await submit_many(http, f"{d.url}/v1/endpoints/slow/jobs", 40)
        largest_session = await max_session_workload(emulator, WATCH_S, opened_before)
        costs = [e["cost"] for e in emulator.route_log()[before:]]
    assert costs, "held route calls while the worker was at its limit"
    assert largest_session <= 3 * 100, largest_session  # a limit of 1-2, or a probe above
    assert max(costs) >= 20 * 100, costs  # the waiting jobs' cost (at most 300 without)


async def test_the_poller_declares_the_backlog_but_the_first_session_only_its_batch(
    http: aiohttp.ClientSession,
) -> None:
    """No worker for a second while 100 jobs wait: the poller declares their whole cost
    (10,000), which Vast scales for. The session the first worker gets declares a batch
    (at most 32 jobs: 3,200), not the backlog: it is load the worker reports for the
    session's whole life (10,000 without the second call). No call after it declares the
    backlog again."""
    emulated = {"slow": {"workers": 0, "perf": 1000.0, "service": "fifo"}}
    endpoint = {"default_route": "/generate", "cost": {"estimator": "constant", "value": 100}}
    async with running_emulator(emulated) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"slow": endpoint},
                               server={"grace_period_s": 0.5})  # fmt: skip
        async with running_daemon(config) as d:
            await submit_many(http, f"{d.url}/v1/endpoints/slow/jobs", 100)
            await asyncio.sleep(1.0)
            await emulator.add_worker("slow")
            largest_session = await max_session_workload(emulator, WATCH_S)
        costs = [e["cost"] for e in emulator.route_log()]
    assert max(costs) >= 100 * 100 * 0.9, costs  # the backlog, minus what a lease took
    assert 0 < largest_session <= 32 * 100, largest_session
    # The backlog the poller declared holds every job here: no demand call declares them
    # again (6,800 of them were, a second time, before the poller marked them declared).
    after_poll = costs[len(costs) - costs[::-1].index(max(costs)) :]
    assert after_poll, costs
    assert max(after_poll) <= 32 * 100, costs


async def test_held_route_calls_keep_pace_with_a_backlog_the_workers_clear_in_seconds(
    http: aiohttp.ClientSession,
) -> None:
    """20 jobs on one FIFO worker of 0.2 s a job: about 4 s of backlog, no new arrivals.
    Doubling from 0.25 s, the held calls would be 3 in the first 3 s (0.25, 0.75, 1.75); held
    to a quarter of the backlog's drain time they keep coming (6-8): a worker Vast starts
    meanwhile is found while the backlog lasts (its jobs would otherwise wait for it)."""
    async with one_fifo_worker(500.0) as (emulator, d):
        await submit_many(http, f"{d.url}/v1/endpoints/slow/jobs", 20)
        await asyncio.sleep(0.2)  # the first leases are open: what follows is held calls
        before = len(emulator.route_log())
        await asyncio.sleep(WATCH_S - 0.2)
        held_calls = len(emulator.route_log()) - before
    assert held_calls >= 5, held_calls  # doubling: 3


async def closed_loop(
    http: aiohttp.ClientSession, url: str, callers: int, stop: asyncio.Event
) -> int:
    """``callers`` synchronous runs at a time through ``url`` until ``stop`` (at most 5,000
    runs); returns how many answered 200."""
    answered = [0]
    budget = iter(range(5_000))

    async def caller() -> None:
        for _ in budget:
            if stop.is_set():
                return
            async with http.post(url, json={"payload": {}}) as resp:
                await resp.read()
                answered[0] += resp.status == 200

    await asyncio.gather(*(caller() for _ in range(callers)))
    return answered[0]


@pytest.mark.timeout(60)
async def test_a_worker_vast_adds_to_a_busy_fleet_is_found_before_the_next_held_call(
    http: aiohttp.ClientSession,
) -> None:
    """A fast batching worker (4 jobs at once, 25 ms each: about 160 jobs a second) kept busy
    by 16 callers: the held route calls' answers name it, at its limit, and they back off to
    16 x 0.25 s = 4 s. A burst of 40 more jobs is held and cleared in about a quarter second (a
    held call declares it, and the back-off goes on: fewer wait afterwards). Then Vast adds a
    second worker. A probe (one job's cost, once 100 jobs were sent) finds it and the next held
    call opens it at once: it is leased within 2 s of being ready, where the next held call
    was more than 3 s away."""
    emulated = {"llm": {"workers": 1, "service": "batching", "max_batch": 4, "perf": 4000}}
    endpoint = {
        "default_route": "/generate",
        "cost": {"estimator": "constant", "value": 100},
        "placement": {"held_route_interval_s": HELD_INTERVAL_S},
        # no session renewal in the test's 550+ jobs (its route call would find the worker)
        "lease": {"session_end_bound_s": 1e7},
    }
    async with running_emulator(emulated) as emulator:
        await emulator.wait_ready("llm", 1)
        config = daemon_config(emulator.autoscaler_url, {"llm": endpoint})
        async with running_daemon(config) as d:
            dispatcher = d.service.dispatchers["llm"]
            url = f"{d.url}/v1/endpoints/llm"
            stop = asyncio.Event()
            load = asyncio.create_task(closed_loop(http, f"{url}/run", 16, stop))
            await asyncio.sleep(4.5)  # the held calls' interval has doubled to 4 s
            burst = await submit_many(http, f"{url}/jobs", 40)
            await wait_all_finished(d, burst, timeout_s=10)
            await wait_until(lambda: len(dispatcher.queue) <= 16, timeout_s=5)
            held_at = max(e["t_s"] for e in emulator.route_log() if e["cost"] > 150)
            newcomer = await emulator.add_worker("llm")
            await emulator.wait_ready("llm", 2)
            added = asyncio.get_running_loop().time()
            since_held_s = time.monotonic() - emulator.autoscaler.stats.started_at - held_at
            await wait_until(lambda: newcomer.url in dispatcher.leasing.pool.workers(), 8)
            found_s = asyncio.get_running_loop().time() - added
            stop.set()
            answered = await load
    assert answered > 100
    assert since_held_s < 1.0, since_held_s  # the next held call was 3+ s away
    assert found_s < 2.0, found_s


async def test_each_new_worker_named_brings_the_next_route_call_forward(
    http: aiohttp.ClientSession,
) -> None:
    """Three ready batching workers (2 s a job) and a cold daemon whose held route calls go every
    20 s: jobs wait here for the workers found first (each at its first limit), so every
    route call after the first two is a held one. An answer naming a worker not leased yet
    means Vast may hold more with room (it names the least loaded first): the next call goes
    at once, and all three are leased before the first job ends. On the held beat alone the
    third waited for the next beat or the first completion (the (f2) cold start found it a
    start-up round late, and its ramp trailed the others' by a round)."""
    emulated = {"llm": {"workers": 3, "perf": 50.0, "service": "batching"}}
    endpoint = {
        "default_route": "/generate",
        "cost": {"estimator": "constant", "value": 100},
        "placement": {"held_route_interval_s": 20.0},
    }
    async with running_emulator(emulated) as emulator:
        await emulator.wait_ready("llm", 3)
        config = daemon_config(emulator.autoscaler_url, {"llm": endpoint},
                               server={"grace_period_s": 0.5})  # fmt: skip
        async with running_daemon(config) as d:
            job_ids = await submit_many(http, f"{d.url}/v1/endpoints/llm/jobs", 60)
            pool = d.service.dispatchers["llm"].leasing.pool

            def one_ended() -> bool:
                return any((job := d.service.get(i)) is not None and job.finished
                           for i in job_ids)  # fmt: skip

            await wait_until(lambda: len(pool.workers()) == 3 or one_ended(), timeout_s=30)
            leased, ended = len(pool.workers()), one_ended()
    assert (leased, ended) == (3, False), (leased, ended)
