"""Cold start, worker death, full queues, deadlines and cancellation on the real emulator."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import (
    daemon_config,
    running_daemon,
    running_emulator,
    wait_for_status,
    wait_until,
)


async def submit(http: aiohttp.ClientSession, url: str, endpoint: str, **body: object) -> str:
    async with http.post(
        f"{url}/v1/endpoints/{endpoint}/jobs", json={"payload": {}, **body}
    ) as resp:
        assert resp.status == 202, await resp.text()
        job_id: str = (await resp.json())["id"]
        return job_id


async def test_cold_start_waits_then_completes(http: aiohttp.ClientSession) -> None:
    async with running_emulator({"cold": {"workers": 1, "cold_start_s": 1.0}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"cold": {}})
        async with running_daemon(config) as daemon:
            started = time.monotonic()
            async with http.post(
                f"{daemon.url}/v1/endpoints/cold/run", json={"payload": {"x": 1}}
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["echo"] == {"x": 1}
            assert time.monotonic() - started >= 0.9
    waits = emulator.autoscaler.stats.count("cold", "waiting")
    assert waits >= 1
    assert emulator.autoscaler.stats.count("cold", "ready") == 1


async def test_a_stopped_worker_vast_still_names_does_not_use_up_a_jobs_attempts(
    http: aiohttp.ClientSession,
) -> None:
    """Vast's view of a worker lags its stop (here 2 s of stale reports): it goes on naming
    the worker, whose address refuses connections. The job spends one attempt on it, then
    waits (route calls 0.5 s apart) instead of spending all five within milliseconds and
    failing; the worker comes back at the same address and the job succeeds on it."""
    async with running_emulator({"echo": {"workers": 1}}, stale_after_s=2.0) as emulator:
        await emulator.wait_ready("echo", 1)
        (worker,) = emulator.workers("echo")
        await worker.stop()
        config = daemon_config(emulator.autoscaler_url, {"echo": {}})
        async with running_daemon(config) as daemon:
            job_id = await submit(http, daemon.url, "echo")
            await asyncio.sleep(1.0)
            await worker.restore()  # a cold start, same address
            job = await wait_for_status(http, daemon, job_id, {"succeeded", "failed"}, 15)
    assert job["status"] == "succeeded", job
    assert job["attempts"] <= 2, job


@pytest.mark.parametrize("idempotent", [True, False])
async def test_worker_killed_mid_job_runs_again_only_when_idempotent(
    http: aiohttp.ClientSession, idempotent: bool
) -> None:
    """The request was sent when the worker died: an idempotent job completes on the other
    worker; any other ends failed, the other worker never saw it (at most once)."""
    # cost 100 at 100 units/s: one second of work, long enough to kill the worker mid-way.
    async with running_emulator({"slow": {"workers": 2, "perf": 100}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"slow": {"idempotent": idempotent}})
        async with running_daemon(config) as daemon:
            job_id = await submit(http, daemon.url, "slow")
            workers = emulator.workers("slow")

            def busy_workers() -> list[object]:
                return [w for w in workers if w.metrics.requests_working]

            await wait_until(lambda: bool(busy_workers()), timeout_s=5)
            victim = busy_workers()[0]
            await victim.kill()  # type: ignore[attr-defined]
            job = await wait_for_status(http, daemon, job_id, {"succeeded", "failed"}, 10)
            survivor = next(w for w in workers if w is not victim)
            seen = sum(survivor.counters.reqnums_seen.values())
    assert job["history"] == ["reroute_gone:lost"], job
    if idempotent:
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 2
        assert job["result"]["body"]["worker_id"] != victim.id  # type: ignore[attr-defined]
        assert seen == 1
    else:
        assert job["status"] == "failed", job
        assert job["attempts"] == 1
        assert "lost after the request was sent" in job["error"]
        assert seen == 0


async def test_full_queue_answers_429_with_retry_after(http: aiohttp.ClientSession) -> None:
    async with running_emulator({"slow": {"workers": 1, "perf": 50}}) as emulator:
        endpoint = {"queue": {"max_depth": 2}, "max_concurrency": 1}
        config = daemon_config(emulator.autoscaler_url, {"slow": endpoint})
        async with running_daemon(config) as daemon:
            first = await submit(http, daemon.url, "slow")
            await wait_for_status(http, daemon, first, {"running", "routing"})
            await submit(http, daemon.url, "slow")
            await submit(http, daemon.url, "slow")
            async with http.post(
                f"{daemon.url}/v1/endpoints/slow/jobs", json={"payload": {}}
            ) as resp:
                assert resp.status == 429
                assert int(resp.headers["Retry-After"]) >= 1
                assert (await resp.json())["error"]["code"] == "queue_full"
            for job_id in [first]:
                async with http.delete(f"{daemon.url}/v1/jobs/{job_id}") as resp:
                    assert resp.status == 202


async def test_deadline_expires_async_and_sync_jobs(http: aiohttp.ClientSession) -> None:
    async with running_emulator({"never": {"workers": 1, "cold_start_s": 60}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"never": {}})
        async with running_daemon(config) as daemon:
            job_id = await submit(http, daemon.url, "never", timeout_s=0.4)
            async with http.post(
                f"{daemon.url}/v1/endpoints/never/run", json={"payload": {}, "timeout_s": 0.4}
            ) as resp:
                assert resp.status == 504
                error = (await resp.json())["error"]
            job = await wait_for_status(http, daemon, job_id, {"expired", "failed", "succeeded"})
    assert error["code"] == "expired"
    assert job["status"] == "expired"
    assert job["timings"]["total_s"] >= 0.4


async def test_deadline_expires_while_queued(http: aiohttp.ClientSession) -> None:
    async with running_emulator({"slow": {"workers": 1, "perf": 50}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"slow": {"max_concurrency": 1}})
        async with running_daemon(config) as daemon:
            await submit(http, daemon.url, "slow")
            queued = await submit(http, daemon.url, "slow", timeout_s=0.3)
            job = await wait_for_status(http, daemon, queued, {"expired", "succeeded"}, 5)
    assert job["status"] == "expired"
    assert job["attempts"] == 0
    assert "queued" in job["error"]


async def test_cancel_queued_running_and_finished_jobs(http: aiohttp.ClientSession) -> None:
    async with running_emulator({"slow": {"workers": 1, "perf": 50}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"slow": {"max_concurrency": 1}})
        async with running_daemon(config) as daemon:
            sync_call = asyncio.create_task(
                http.post(f"{daemon.url}/v1/endpoints/slow/run", json={"payload": {}})
            )
            await wait_until(lambda: daemon.service.dispatchers["slow"].inflight == 1)
            queued = await submit(http, daemon.url, "slow")
            async with http.delete(f"{daemon.url}/v1/jobs/{queued}") as resp:
                assert resp.status == 202
            job = await wait_for_status(http, daemon, queued, {"cancelled"})
            assert job["attempts"] == 0
            running_id = next(iter(daemon.service.dispatchers["slow"]._running))
            async with http.delete(f"{daemon.url}/v1/jobs/{running_id}") as resp:
                assert resp.status == 202
            sync_resp = await sync_call
            assert sync_resp.status == 409
            assert (await sync_resp.json())["error"]["code"] == "cancelled"
            sync_resp.release()
            await wait_for_status(http, daemon, running_id, {"cancelled"})
            async with http.delete(f"{daemon.url}/v1/jobs/{queued}") as resp:
                assert resp.status == 409


async def test_a_job_cancelled_the_moment_it_starts_ends_cancelled_and_frees_its_worker(
    http: aiohttp.ClientSession,
) -> None:
    """A cancel that reaches a job after its task was created but before the task's first step
    (the API fuzzer's DELETE right after a POST did) never ran the task's body, whose cleanup
    releases the lease and finishes the job: the job stayed running for good and its worker's
    slot with it. Here the cancel is sent in that very turn of the loop, for the first job: it
    ends cancelled, its worker holds nothing, and the next job runs."""
    async with running_emulator({"one": {"workers": 1, "perf": 1000}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"one": {}})
        async with running_daemon(config) as daemon:
            dispatcher = daemon.service.dispatchers["one"]
            start = dispatcher._start
            cancelled: list[str] = []

            def start_then_cancel(job: Any, lease: Any) -> None:
                start(job, lease)
                if not cancelled:
                    cancelled.append(job.id)
                    dispatcher.cancel(job)  # the same turn: the task has not run a step yet

            # both ways in: a lease with room, and a route answer placing its batch
            dispatcher._start = start_then_cancel  # type: ignore[method-assign]
            dispatcher.routing._start_job = start_then_cancel
            first = await submit(http, daemon.url, "one")
            job = await wait_for_status(http, daemon, first, {"cancelled", "failed", "succeeded"})
            second = await submit(http, daemon.url, "one")
            after = await wait_for_status(http, daemon, second, {"succeeded", "failed"})
            loads = dispatcher.leasing.pool.loads()
    assert cancelled == [first]
    assert job["status"] == "cancelled", job
    assert after["status"] == "succeeded", after
    assert not loads, loads  # nothing left in flight on any worker


async def test_sync_caller_going_away_cancels_its_job() -> None:
    async with running_emulator({"slow": {"workers": 1, "perf": 50}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"slow": {}})
        async with running_daemon(config) as daemon:
            impatient = aiohttp.ClientTimeout(total=0.3)
            async with aiohttp.ClientSession(timeout=impatient) as http:
                try:
                    async with http.post(
                        f"{daemon.url}/v1/endpoints/slow/run", json={"payload": {}}
                    ) as resp:
                        await resp.read()
                except TimeoutError:
                    pass
            cancelled = daemon.service.metrics.jobs_finished.labels("slow", "cancelled")
            await wait_until(lambda: cancelled._value.get() == 1, timeout_s=5)
            assert daemon.service.dispatchers["slow"].inflight == 0
    # The worker saw the request start and then lose its caller (499 in the official worker).
    assert emulator.workers("slow")[0].counters.by_status.get(200, 0) == 0
