"""Cost-aware scheduling on the emulator: counts of route calls, shares, fairness, failover."""

from __future__ import annotations

import statistics
import time
from contextlib import AsyncExitStack

import aiohttp

from tests.integration.harness import (
    daemon_config,
    run_many,
    running_daemon,
    running_emulator,
    submit_many,
    wait_all_finished,
)
from tests.integration.spies import SpyServer, ready_answer, serving


async def test_steady_load_makes_few_route_calls(http: aiohttp.ClientSession) -> None:
    echo = {"workers": 3, "perf": 50_000, "service": "processor_sharing"}  # figures assume it
    async with running_emulator({"echo": echo}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"echo": {"max_concurrency": 64}})
        async with running_daemon(config) as daemon:
            statuses = await run_many(
                http, f"{daemon.url}/v1/endpoints/echo/run", 2000, concurrency=64
            )
    assert statuses == [200] * 2000
    route_calls = emulator.autoscaler.stats.count("echo")
    assert route_calls <= 100, f"{route_calls} route calls for 2000 jobs"
    served = [w.counters.by_status.get(200, 0) for w in emulator.workers("echo")]
    assert sum(served) == 2000
    assert min(served) > 0, f"a worker got nothing: {served}"


async def test_cold_start_one_poller_carries_the_backlog(http: aiohttp.ClientSession) -> None:
    async with running_emulator({"cold": {"workers": 2, "cold_start_s": 5.0}}) as emulator:
        endpoint = {"poll": {"initial_s": 0.25, "max_s": 1.0, "max_cost": 40_000}}
        config = daemon_config(emulator.autoscaler_url, {"cold": endpoint})
        async with running_daemon(config) as daemon:
            started = time.monotonic()
            ids = await submit_many(http, f"{daemon.url}/v1/endpoints/cold/jobs", 500)
            await emulator.wait_ready("cold", count=1, timeout_s=10)
            waited_s = time.monotonic() - started
            await wait_all_finished(daemon, ids)
            statuses = {str(daemon.service.get(i).status) for i in ids}  # type: ignore[union-attr]
    assert statuses == {"succeeded"}
    log = emulator.route_log()
    waiting = [e for e in log if e["result"] == "waiting"]
    assert len(waiting) <= 2 * waited_s + 1, f"{len(waiting)} polls in {waited_s:.1f}s"
    # After the first batch learns that no worker is ready, the poller declares the backlog
    # as it grows while the 500 jobs arrive (50,000 units), capped at poll.max_cost. Once a
    # worker is ready, other calls (a probe, a held call) may be told WAITING too, for what
    # they carry: the poller's sequence is the calls before the first READY answer.
    first_ready = next(i for i, e in enumerate(log) if e["result"] == "ready")
    costs = [e["cost"] for e in log[:first_ready] if e["result"] == "waiting"]
    assert costs[1:] == sorted(costs[1:]), costs
    assert costs[-1] == 40_000, costs


async def test_completed_cost_follows_worker_perf(http: aiohttp.ClientSession) -> None:
    # Jobs of 300 units (37-150 ms of service): the daemon's own time between a job's answer and
    # the next job's send stays a small share even on the fastest worker, held at a job or two.
    async with running_emulator(
        {"mixed": {"workers": 0, "workload_units": 300, "service": "processor_sharing"}}
    ) as emulator:
        workers = [await emulator.add_worker("mixed", perf=p) for p in (2000, 4000, 8000)]
        await emulator.wait_ready("mixed", count=3, timeout_s=10)
        # Timeouts to match the jobs: a Vast session is opened to cover the jobs' deadlines and
        # each job start adds that lifetime to its expiry, so with the default 300 s a session
        # would carry only ~5 starts before its renewal (lease.session_end_bound_s) and
        # placement would follow the route answers more than the workers' measured rates.
        endpoint = {"max_concurrency": 48, "batch": {"max_jobs": 8}, "cost": {"value": 300},
                    "default_timeout_s": 10}  # fmt: skip
        config = daemon_config(emulator.autoscaler_url, {"mixed": endpoint})
        async with running_daemon(config) as daemon:
            statuses = await run_many(
                http, f"{daemon.url}/v1/endpoints/mixed/run", 700, concurrency=48
            )
    assert statuses == [200] * 700
    served = [w.counters.by_status.get(200, 0) for w in workers]
    shares = [s / sum(served) for s in served]
    for share, perf_share in zip(shares, (1 / 7, 2 / 7, 4 / 7), strict=True):
        assert abs(share - perf_share) <= 0.2 * perf_share, (served, shares)


async def test_legacy_workers_detected_once_then_one_route_per_job(
    http: aiohttp.ClientSession,
) -> None:
    async with running_emulator({"old": {"workers": 1, "mode": "legacy"}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"old": {"reuse": "auto"}})
        async with running_daemon(config) as daemon:
            statuses = await run_many(http, f"{daemon.url}/v1/endpoints/old/run", 30, concurrency=1)
            status = daemon.service.status()["endpoints"]["old"]
    assert statuses == [200] * 30
    assert status["reuse"] == "never"
    assert status["legacy_detected"] is True
    rejected = sum(w.counters.by_status.get(401, 0) for w in emulator.workers("old"))
    assert rejected == 1
    # Job 1 routes; job 2 reuses that answer, gets the one 401 and routes; then one per job.
    assert emulator.autoscaler.stats.count("old", "ready") == 30


async def test_route_rate_limit_is_never_tripped(http: aiohttp.ClientSession) -> None:
    # reuse: never makes every job a route call, so the daemon's token bucket (10/s, burst 1)
    # is what spaces them; the emulator refuses calls closer than 25 ms (a 4x margin).
    jobs, rate_per_s, burst = 30, 10, 1
    async with running_emulator(
        {"echo": {"workers": 1, "perf": 100_000}}, route_min_interval_ms=25
    ) as emulator:
        endpoint = {"reuse": "never", "route_rate_per_s": rate_per_s, "route_burst": burst}
        config = daemon_config(emulator.autoscaler_url, {"echo": endpoint})
        async with running_daemon(config) as daemon:
            ids = await submit_many(http, f"{daemon.url}/v1/endpoints/echo/jobs", jobs)
            await wait_all_finished(daemon, ids, timeout_s=30)
            statuses = {str(daemon.service.get(i).status) for i in ids}  # type: ignore[union-attr]
    assert statuses == {"succeeded"}
    assert emulator.autoscaler.stats.count("echo", "429") == 0
    times = [e["t_s"] for e in emulator.route_log() if e["endpoint"] == "echo"]
    assert len(times) >= jobs, f"{len(times)} route calls for {jobs} jobs"
    # Between any two calls the bucket earned at most rate x elapsed tokens on top of its
    # burst; one more call of slack for the time between the daemon's send and the emulator.
    for i, first in enumerate(times):
        for j in range(i + 1, len(times)):
            calls, elapsed = j - i, times[j] - first
            assert calls <= burst + rate_per_s * elapsed + 1, (i, j, elapsed, times)


OVERLOADABLE = {"workers": 2, "perf": 5000, "parallel": False, "max_queue_time_s": 0.05}


async def test_overloaded_worker_gets_its_budget_cut_and_no_job_fails(
    http: aiohttp.ClientSession,
) -> None:
    # Sequential answers on a slow FIFO worker with a tiny max_queue_time: it answers 429. The
    # daemon's per-worker limits would keep it under that (next test): they are off here, as
    # when other clients fill the worker.
    async with running_emulator({"busy": OVERLOADABLE}) as emulator:
        endpoint = {"reuse": "sequential", "max_attempts": 50, "max_concurrency": 16,
                    "capacity": {"enabled": False}}  # fmt: skip
        config = daemon_config(emulator.autoscaler_url, {"busy": endpoint})
        async with running_daemon(config) as daemon:
            statuses = await run_many(
                http, f"{daemon.url}/v1/endpoints/busy/run", 200, concurrency=16
            )
            overloaded = daemon.service.metrics.worker_errors.labels("busy", "overloaded")
            assert overloaded._value.get() > 0
    assert statuses == [200] * 200
    assert sum(w.counters.by_status.get(429, 0) for w in emulator.workers("busy")) > 0


async def test_worker_limits_keep_a_fifo_worker_under_its_queue_time(
    http: aiohttp.ClientSession,
) -> None:
    """The same overloadable workers with the limits on (the default): each holds a job or two,
    so the worker's queue stays under max_queue_time. Only the first contact may be refused:
    a worker starts at 4 jobs (a batching server is a doubling further on), and this FIFO one,
    with a queue limit of about two jobs, refuses the rest of those four (re-placed, no job
    lost) before its first round shows the jobs queueing; with the limits off (above) it is
    refused throughout. A limit read while it is being probed may be one step (to 3) above
    the settled one."""
    async with running_emulator({"busy": OVERLOADABLE}) as emulator:
        endpoint = {"reuse": "sequential", "max_attempts": 50}
        config = daemon_config(emulator.autoscaler_url, {"busy": endpoint})
        async with running_daemon(config) as daemon:
            statuses = await run_many(
                http, f"{daemon.url}/v1/endpoints/busy/run", 200, concurrency=16
            )
            workers = daemon.service.status()["endpoints"]["busy"]["workers"]
            limits = [(w["limit"], w["phase"]) for w in workers]
    assert statuses == [200] * 200
    refused = [w.counters.by_status.get(429, 0) for w in emulator.workers("busy")]
    assert all(count <= 3 for count in refused), refused
    assert limits, "no leased worker"
    assert all(limit <= (3 if phase == "probing" else 2) for limit, phase in limits), limits


async def test_worker_killed_mid_run_loses_no_job(http: aiohttp.ClientSession) -> None:
    # idempotent: jobs cut mid-request run again (otherwise they fail: at most once)
    async with running_emulator({"echo": {"workers": 3, "perf": 20_000}}) as emulator:
        endpoint = {"max_concurrency": 32, "idempotent": True}
        config = daemon_config(emulator.autoscaler_url, {"echo": endpoint})
        async with running_daemon(config) as daemon:
            ids = await submit_many(http, f"{daemon.url}/v1/endpoints/echo/jobs", 600)
            victim = emulator.workers("echo")[0]
            await victim.kill()
            await wait_all_finished(daemon, ids)
            statuses = {str(daemon.service.get(i).status) for i in ids}  # type: ignore[union-attr]
    assert statuses == {"succeeded"}


async def test_failing_endpoint_fails_jobs_without_a_retry_storm(
    http: aiohttp.ClientSession,
) -> None:
    broken = [(500, {"error": "backend down"}, {})]
    async with AsyncExitStack() as stack:
        workers = [
            await stack.enter_async_context(serving(SpyServer(list(broken)), "/generate"))
            for _ in range(2)
        ]
        script = [(200, ready_answer(w.url, i + 1), {}) for i, w in enumerate(workers)] * 500
        autoscaler = await stack.enter_async_context(serving(SpyServer(script), "/route/"))
        endpoint = {
            "idempotent": True,
            "max_attempts": 5,
            "retry_budget": {"ratio": 0.2, "min_retries": 5, "window_s": 60},
        }
        daemon = await stack.enter_async_context(
            running_daemon(daemon_config(autoscaler.url, {"spy": endpoint}))
        )
        statuses = await run_many(http, f"{daemon.url}/v1/endpoints/spy/run", 50, concurrency=8)
    assert statuses == [500] * 50
    worker_calls = sum(len(w.received) for w in workers)
    # 50 first tries plus at most 5 + 20% of them retried: no storm.
    assert worker_calls <= 50 + 5 + 0.2 * worker_calls + 1, worker_calls
    assert len(autoscaler.received) <= worker_calls


async def test_flooding_tenant_does_not_starve_another(http: aiohttp.ClientSession) -> None:
    # 100 jobs/s: slower than the flood arrives even on a busy machine, so A's backlog is real.
    async with running_emulator({"echo": {"workers": 1, "perf": 10_000}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"echo": {"max_concurrency": 4}})
        async with running_daemon(config) as daemon:
            url = f"{daemon.url}/v1/endpoints/echo/jobs"
            flood = await submit_many(http, url, 1000, headers={"X-Tenant": "a"})
            polite = await submit_many(http, url, 20, headers={"X-Tenant": "b"})
            await wait_all_finished(daemon, flood + polite, timeout_s=90)
            waits = {
                tenant: statistics.median(
                    daemon.service.get(i).public(0)["timings"]["queued_s"]  # type: ignore[union-attr]
                    for i in ids
                )
                for tenant, ids in (("a", flood), ("b", polite))
            }
    assert waits["b"] < 0.1 * waits["a"], waits
