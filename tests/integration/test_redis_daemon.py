"""Two in-process daemons on one Redis prefix: any replica answers for any job, and a lost
Redis shows in /readyz, in the answer and in the metrics, never as a crash."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp

from scheduler.dispatch.feeder import CLAIM_BLOCK_S
from tests.integration.harness import (
    Daemon,
    daemon_config,
    running_daemon,
    running_emulator,
    wait_until,
)
from tests.integration.redis_support import REDIS_URL, redis_client, redis_prefix  # noqa: F401
from tests.integration.test_lifecycle import free_port


def redis_store(prefix: str, replica: str, url: str = REDIS_URL, **redis: Any) -> dict[str, Any]:
    return {
        "backend": "redis",
        "replica_id": replica,
        "redis": {"url": url, "key_prefix": prefix, "visibility_timeout_s": 2.0, **redis},
    }


@asynccontextmanager
async def two_replicas(
    autoscaler_url: str, prefix: str, endpoints: dict[str, Any]
) -> AsyncIterator[tuple[Daemon, Daemon]]:
    async with AsyncExitStack() as stack:
        daemons = [
            await stack.enter_async_context(running_daemon(daemon_config(
                autoscaler_url, endpoints, store=redis_store(prefix, name))))
            for name in ("a", "b")
        ]  # fmt: skip
        yield daemons[0], daemons[1]


async def job_view(http: aiohttp.ClientSession, daemon: Daemon, job_id: str) -> dict[str, Any]:
    async with http.get(f"{daemon.url}/v1/jobs/{job_id}") as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def test_job_submitted_on_one_replica_is_seen_and_cancelled_on_the_other(
    http: aiohttp.ClientSession,
    redis_prefix: str,  # noqa: F811
) -> None:
    cold = {"never": {"workers": 1, "cold_start_s": 60}}
    async with (
        running_emulator(cold) as emulator,
        two_replicas(emulator.autoscaler_url, redis_prefix, {"never": {}}) as (a, b),
    ):
        body = {"payload": {"n": 1}, "idempotency_key": "k-1"}
        async with http.post(f"{a.url}/v1/endpoints/never/jobs", json=body) as resp:
            assert resp.status == 202
            job_id = (await resp.json())["id"]
        # The same key on the other replica: the same job, not a second one.
        async with http.post(f"{b.url}/v1/endpoints/never/jobs", json=body) as resp:
            assert resp.status == 200
            assert resp.headers["Idempotent-Replayed"] == "true"
            assert (await resp.json())["id"] == job_id
        assert (await job_view(http, b, job_id))["status"] in ("queued", "running")
        async with http.get(f"{b.url}/v1/status") as resp:
            status = await resp.json()
        assert status["store"] == {"backend": "redis", "healthy": True}
        assert status["endpoints"]["never"]["fleet"]["unfinished_jobs"] == 1
        async with http.delete(f"{b.url}/v1/jobs/{job_id}") as resp:
            assert resp.status == 202

        async with asyncio.timeout(20):  # the replica holding it hears within a few polls
            while (await job_view(http, a, job_id))["status"] != "cancelled":
                await asyncio.sleep(0.05)
        async with http.delete(f"{a.url}/v1/jobs/{job_id}") as resp:
            assert resp.status == 409


async def test_sync_run_on_one_replica_answered_from_another(
    http: aiohttp.ClientSession,
    redis_prefix: str,  # noqa: F811
) -> None:
    async with (
        running_emulator({"echo": {"workers": 2}}) as emulator,
        two_replicas(emulator.autoscaler_url, redis_prefix, {"echo": {}}) as (a, b),
    ):
        # Every request goes to a, which claims nothing: b runs them, a answers.
        for feeder in a.service.feeders.values():
            feeder.stop_claiming()
        feeding = list(a.service._feeding.values())  # the test reaches in: no public handle
        assert feeding
        # A feeder's loop ends once its last blocking claim returned (empty: nothing queued).
        await wait_until(lambda: all(task.done() for task in feeding), timeout_s=10 * CLAIM_BLOCK_S)
        results = await asyncio.gather(*(
            http.post(f"{a.url}/v1/endpoints/echo/run", json={"payload": {"i": i}})
            for i in range(40)
        ))  # fmt: skip
        for i, resp in enumerate(results):
            async with resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["echo"] == {"i": i}
                assert resp.headers["X-Job-Id"].startswith("job_")
        ran = [d.service.metrics.jobs_finished.labels("echo", "succeeded")._value.get()
               for d in (a, b)]  # fmt: skip
        assert ran == [0, 40]


async def test_unreachable_redis_is_a_503_not_a_crash(http: aiohttp.ClientSession) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    store = redis_store("unreachable", "lonely", dead, retries=0, connect_timeout_s=0.2)
    config = daemon_config("http://127.0.0.1:9", {"echo": {}}, store=store)
    async with running_daemon(config) as daemon:
        async with http.post(f"{daemon.url}/v1/endpoints/echo/jobs", json={"payload": {}}) as resp:
            assert resp.status == 503
            error = (await resp.json())["error"]
            assert error["code"] == "store_unavailable"
            assert "redis://" not in error["message"]
        async with http.get(f"{daemon.url}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["status"] == "store_unavailable"
        async with http.get(f"{daemon.url}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{daemon.url}/metrics") as resp:
            text = await resp.text()
        assert 'vast_scheduler_store_errors_total{op="enqueue"}' in text

        def claims_failed() -> bool:
            family = daemon.service.metrics.store_errors
            return any(s.labels.get("op") == "claim" and s.value > 0
                       for m in family.collect() for s in m.samples)  # fmt: skip

        await wait_until(claims_failed, timeout_s=10)
