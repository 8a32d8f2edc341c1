"""A worker that answers 2xx with a body that says JSON and is not: an error, never a result."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.integration.harness import (
    daemon_config,
    running_daemon,
    running_emulator,
    wait_for_status,
)
from tests.integration.test_chaos import admin
from tests.integration.test_failover import submit


def worker_errors(daemon: Any, kind: str) -> float:
    family = daemon.service.metrics.worker_errors
    return sum(s.value for m in family.collect() for s in m.samples
               if s.name.endswith("_total") and s.labels.get("kind") == kind)  # fmt: skip


async def test_garbage_fails_a_job_that_may_not_run_twice(http: aiohttp.ClientSession) -> None:
    async with running_emulator({"echo": {"workers": 1}}) as emulator:
        await emulator.wait_ready("echo", 1)
        worker = emulator.workers("echo")[0]
        await admin(http, emulator, f"workers/{worker.id}/garbage")
        config = daemon_config(emulator.autoscaler_url, {"echo": {}})  # not idempotent
        async with running_daemon(config) as daemon:
            job_id = await submit(http, daemon.url, "echo")
            job = await wait_for_status(http, daemon, job_id, {"succeeded", "failed"})
            assert job["status"] == "failed"
            assert job["error"] == "worker answered 2xx with a body that is not JSON"
            assert "result" not in job
            assert job["attempts"] == 1
            assert worker_errors(daemon, "malformed") == 1


async def test_garbage_is_retried_on_a_sound_worker_when_idempotent(
    http: aiohttp.ClientSession,
) -> None:
    async with running_emulator({"echo": {"workers": 2}}) as emulator:
        await emulator.wait_ready("echo", 2)
        bad, _ = emulator.workers("echo")
        await admin(http, emulator, f"workers/{bad.id}/garbage")
        # Leases stay open (session reuse): once the garbage worker is ejected its retries go
        # to the sound worker's lease.
        endpoint = {"idempotent": True, "max_attempts": 10,
                    "retry_budget": {"ratio": 1.0, "min_retries": 100}}  # fmt: skip
        config = daemon_config(emulator.autoscaler_url, {"echo": endpoint})
        async with running_daemon(config) as daemon:
            job_ids = [await submit(http, daemon.url, "echo", payload={"n": n}) for n in range(8)]
            jobs = [await wait_for_status(http, daemon, j, {"succeeded", "failed"}, timeout_s=20)
                    for j in job_ids]  # fmt: skip
        assert [j["status"] for j in jobs] == ["succeeded"] * 8, jobs
        assert all(j["result"]["body"]["echo"] == {"n": n} for n, j in enumerate(jobs))
        assert bad.counters.by_status.get(200, 0) >= 1  # some did meet the garbage worker
        assert any("retry:malformed" in j.get("history", []) for j in jobs)
