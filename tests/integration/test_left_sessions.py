"""Sessions a killed daemon left open, against the official worker (``vastai`` 1.9.1): the
next start (the memory store's journal file) or another replica (Redis) ends them within
seconds, where the worker alone would hold each (a session slot and its declared load) until
its expiry, which every request start moves one lifetime on (``core.sessions``).

The daemon runs as a process of its own and is killed with SIGKILL: no shutdown runs, no
``/session/end`` goes out. The leases stay open (``idle_close_s`` 120 s), so the sessions are
open when it dies, and their expiry is ~15 minutes ahead (a 150 s lifetime, 6 starts)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from official_worker import SKIP_REASON, OfficialWorker, official_workers, vastai_installed
from redis.asyncio import Redis

from scheduler.store.keys import Keys
from scheduler.store.session_journal import read_journal
from tests.integration.harness import running_emulator
from tests.integration.redis_support import redis_client, redis_prefix  # noqa: F401  (fixtures)
from tests.integration.replicas import Replica, start_replica, stop
from tests.integration.test_official_worker_sessions import REPORT_S, SLACK_S, idle_since

pytestmark = pytest.mark.skipif(not vastai_installed(), reason=SKIP_REASON)
ENDPOINT = "official"
JOBS = 6
LIFETIME_S = 150.0  # > idle_close_s; each start moves the expiry 150 s on
ENDPOINTS = {
    ENDPOINT: {
        "cost": {"estimator": "field", "field": "cost", "default": 100},
        "max_concurrency": 1,
        "lease": {"session_lifetime_s": LIFETIME_S, "idle_close_s": 120,
                  "session_end_bound_s": 3600},
    }
}  # fmt: skip


def session_load(worker: OfficialWorker) -> Any:
    reports = worker.reports()
    return reports[-1].body.get("num_requests_working") if reports else None


async def run_jobs(http: aiohttp.ClientSession, replica: Replica) -> None:
    for n in range(JOBS):  # one after the other, each a start on the lease's session
        body = {"payload": {"cost": 100, "n": n}, "timeout_s": 20}
        async with http.post(f"{replica.url}/v1/endpoints/{ENDPOINT}/run", json=body) as resp:
            assert resp.status == 200, await resp.text()


async def kill_with_sessions_open(replica: Replica, worker: OfficialWorker) -> float:
    """SIGKILL; then the worker still reports the session for two report intervals (it was
    left open, not ended on the way out). Returns when it was killed."""
    assert await stop(replica, signal.SIGKILL) == -signal.SIGKILL
    killed = time.monotonic()
    await asyncio.sleep(2 * REPORT_S + 0.5)
    assert session_load(worker), "the killed daemon's session is open on the worker"
    return killed


async def wait_idle_after(worker: OfficialWorker, after: float, timeout_s: float) -> float:
    async with asyncio.timeout(timeout_s):
        while (since := idle_since(worker, after)) is None:
            await asyncio.sleep(0.1)
    return since


@pytest.mark.timeout(120)
async def test_the_next_start_ends_the_sessions_a_killed_daemon_left(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    journal = tmp_path / "state" / "sessions.jsonl"
    store = {"backend": "memory", "session_journal": str(journal)}
    async with (
        running_emulator({}) as emulator,
        official_workers(emulator, 1, ENDPOINT) as (worker,),
    ):
        first = await start_replica(tmp_path, "first", emulator.autoscaler_url, "unused",
                                    ENDPOINTS, http, **store)  # fmt: skip
        try:
            await run_jobs(http, first)
            await kill_with_sessions_open(first, worker)
            assert journal.read_text().strip(), "the open session is in the journal"
            second = await start_replica(tmp_path, "second", emulator.autoscaler_url, "unused",
                                         ENDPOINTS, http, **store)  # fmt: skip
            healthy = time.monotonic()
            idle_at = await wait_idle_after(worker, healthy - 1.0, timeout_s=30)
            assert idle_at - healthy <= REPORT_S + SLACK_S, idle_at - healthy
            ended = [e for e in second.logs() if e.get("event") == "session.left_ended"]
            assert [e["outcome"] for e in ended] == ["ended"], ended
            await stop(second)
        finally:
            for replica in (first, locals().get("second")):
                if isinstance(replica, Replica) and replica.process.returncode is None:
                    replica.process.kill()
                    await replica.process.wait()
    assert read_journal(journal) == {}, "the ended session is struck off"


@pytest.mark.timeout(120)
async def test_a_replica_ends_the_sessions_a_killed_replica_left(
    http: aiohttp.ClientSession,
    tmp_path: Path,
    redis_client: Redis,  # noqa: F811
    redis_prefix: str,  # noqa: F811
) -> None:
    """On Redis: r1 runs the jobs; r2, started beside it, leaves r1's live sessions alone;
    r1 is killed, and r2 takes its sessions over once r1's heartbeat (visibility_timeout_s,
    2 s here) lapses, and ends them."""
    keys = Keys(redis_prefix)
    heartbeat_s, look_s = 2.0, 0.5  # visibility_timeout_s, and a look every 1/4 of it
    async with (
        running_emulator({}) as emulator,
        official_workers(emulator, 1, ENDPOINT) as (worker,),
    ):
        fleet: list[Replica] = []
        try:
            for name in ("r1", "r2"):  # r2 after the jobs: all of them run on r1
                fleet.append(await start_replica(tmp_path, name, emulator.autoscaler_url,
                                                 redis_prefix, ENDPOINTS, http))  # fmt: skip
                if name == "r1":
                    await run_jobs(http, fleet[0])
            r1, r2 = fleet
            await asyncio.sleep(heartbeat_s + 2 * look_s + REPORT_S)
            assert session_load(worker), "r2 took over the sessions of a live replica"
            assert await redis_client.hlen(keys.sessions("r1")) >= 1  # type: ignore[misc]
            assert await stop(r1, signal.SIGKILL) == -signal.SIGKILL
            killed = time.monotonic()
            idle_at = await wait_idle_after(worker, killed, timeout_s=30)
            assert idle_at - killed <= heartbeat_s + look_s + REPORT_S + SLACK_S, idle_at - killed
            assert await redis_client.hlen(keys.sessions("r1")) == 0  # type: ignore[misc]
            assert await redis_client.hlen(keys.sessions("r2")) == 0  # type: ignore[misc]
            owners = await redis_client.smembers(keys.session_owners)  # type: ignore[misc]
            assert "r1" not in owners, owners
            ended = [e for e in r2.logs() if e.get("event") == "session.left_ended"]
            assert [e["outcome"] for e in ended] == ["ended"], ended
            assert await stop(r2) == 0
        finally:
            for replica in fleet:
                if replica.process.returncode is None:
                    replica.process.kill()
                    await replica.process.wait()
