"""Three daemon replicas on one Redis queue sharing a small batching fleet.

Each replica learns its own per-worker concurrency limits (``scheduler/core/capacity.py``)
from what it measures, which includes the other replicas' load on the same workers. The fleet:
2 batching workers (``max_batch`` 8, a request alone 100 ms, each slowed 2% per request in the
batch), so it serves up to 2 x 8 / (0.1 x 1.14) = 140 jobs/s with both batches full. A closed
loop of 24 callers (more than the 16 batch slots) runs through one replica, then, on a fresh
emulator, through three (8 callers on each replica's ``run`` API); the window after a warm-up
is measured. Asserted: no job fails, each of the three replicas runs at least 0.2x of the
jobs (its ``jobs_finished`` counter: any replica may run a job another one admitted), and the
three together deliver at least 0.8x of what one replica alone does and at least half the
fleet's full-batch ceiling (70 jobs/s; a limit of one job per worker and replica caps the
three at 2 x 3 / 0.1 s = 60).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import running_emulator
from tests.integration.redis_support import redis_client, redis_prefix  # noqa: F401  (fixtures)
from tests.integration.replicas import Replica, replicas

FLEET = {
    "ep": {
        "workers": 2,
        "service": "batching",
        "max_batch": 8,
        "batch_slowdown": 0.02,
        "perf": 1000,
        "workload_units": 100,  # 100 ms per request alone
    }
}
ENDPOINT = {"ep": {"cost": {"estimator": "constant", "value": 100}}}
CALLERS = 24
WARM_S, MEASURE_S = 3.0, 6.0
CEILING_JOBS_S = 2 * 8 / (0.1 * (1 + 0.02 * 7))  # both batches full: 140 jobs/s
FINISHED = re.compile(
    r'^vast_scheduler_jobs_finished_total\{endpoint="ep",outcome="(\w+)"\} (\S+)$', re.M
)


async def finished(http: aiohttp.ClientSession, replica: Replica) -> Counter[str]:
    async with http.get(f"{replica.url}/metrics") as resp:
        text = await resp.text()
    return Counter({outcome: float(value) for outcome, value in FINISHED.findall(text)})


async def limits(http: aiohttp.ClientSession, replica: Replica) -> list[Any]:
    async with http.get(f"{replica.url}/v1/status") as resp:
        workers = (await resp.json())["endpoints"]["ep"].get("workers") or []
    return sorted((w["limit"], w["phase"]) for w in workers)


async def closed_loop(
    http: aiohttp.ClientSession, fleet: list[Replica]
) -> tuple[float, dict[str, float], Counter[int]]:
    """(jobs/s answered in the window, jobs each replica ran in it, answers by status)."""
    started = time.monotonic()
    start, end = started + WARM_S, started + WARM_S + MEASURE_S
    statuses: Counter[int] = Counter()
    in_window = 0
    marks: dict[str, list[Counter[str]]] = {}

    async def caller(replica: Replica, index: int) -> None:
        nonlocal in_window
        for n in range(100_000):  # bounded; stops at the window's end
            if time.monotonic() >= end:
                return
            body = {"payload": {"caller": index, "n": n}}
            try:
                async with http.post(f"{replica.url}/v1/endpoints/ep/run", json=body) as resp:
                    await resp.read()
                    statuses[resp.status] += 1
                    ok = resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                statuses[0] += 1
                ok = False
            if ok and start <= time.monotonic() < end:
                in_window += 1

    async def mark(name: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        marks[name] = list(await asyncio.gather(*(finished(http, r) for r in fleet)))

    callers = [caller(fleet[i % len(fleet)], i) for i in range(CALLERS)]
    await asyncio.gather(*callers, mark("start", start), mark("end", end))
    ran = {
        r.name: marks["end"][i]["succeeded"] - marks["start"][i]["succeeded"]
        for i, r in enumerate(fleet)
    }
    return in_window / MEASURE_S, ran, statuses


async def measure(
    tmp_path: Path, http: aiohttp.ClientSession, prefix: str, count: int
) -> tuple[float, dict[str, float], Counter[int], list[Any]]:
    directory = tmp_path / f"fleet{count}"
    directory.mkdir()
    async with (
        running_emulator(FLEET) as emulator,
        replicas(directory, count, emulator.autoscaler_url, prefix, ENDPOINT, http) as fleet,
    ):
        rate, ran, statuses = await closed_loop(http, fleet)
        seen = [await limits(http, r) for r in fleet]
    return rate, ran, statuses, seen


@pytest.mark.timeout(120)
async def test_three_replicas_share_a_batching_fleet(
    tmp_path: Path,
    http: aiohttp.ClientSession,
    redis_prefix: str,  # noqa: F811
) -> None:
    alone, _, statuses1, limits1 = await measure(tmp_path, http, redis_prefix + ":one", 1)
    total, ran, statuses3, limits3 = await measure(tmp_path, http, redis_prefix + ":three", 3)
    shares = {name: jobs / max(sum(ran.values()), 1) for name, jobs in ran.items()}
    print(f"\none replica {alone:.1f} jobs/s, limits {limits1}; three {total:.1f} jobs/s, "
          f"shares {shares}, limits {limits3}; answers {dict(statuses1)} / "
          f"{dict(statuses3)}")  # fmt: skip
    assert set(statuses1) == {200}, statuses1
    assert set(statuses3) == {200}, statuses3
    assert min(shares.values()) >= 0.2, shares
    # The bound is the single replica's own figure, measured on the same machine a moment
    # before: a loaded machine slows both alike.
    assert total >= 0.8 * alone, (total, alone)
    # 0.87x the ceiling measured at rest; half of it leaves room for a loaded machine and
    # still fails limits stuck at one job (60 jobs/s at most).
    assert total >= 0.5 * CEILING_JOBS_S, (total, CEILING_JOBS_S)
