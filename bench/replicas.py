"""Scenario (i): several daemon replicas on one Redis queue sharing one batching fleet.

Each replica places jobs on the same workers through its own leases and its own per-worker
concurrency controller (``scheduler/core/capacity.py``), so what one replica measures includes
the others' load. The scenario runs (i1) one replica alone and (i3) three replicas on one Redis
key prefix, each against a fresh emulator with the (f) fleet (3 batching workers, ``max_batch``
32, a cost-100 request alone in 500 ms), as a closed loop of cost-100 jobs at concurrency 96 in
total (split evenly over the replicas' ``run`` APIs) for a warm-up that is not counted and then
a measured window. Figures: total throughput in the window, each replica's share of the jobs
it ran (its ``jobs_finished`` counter over the window: any replica may run a job another one
admitted), failed jobs over the whole run, and each replica's per-worker limits at the end and
their changes (``/v1/status`` polled).

Target (the issue): three replicas reach >= 0.9x one replica's throughput alone, no replica
runs less than 0.2x of the total, no job fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import procs
from bench.capacity import (
    BATCH_SLOWDOWN,
    CONCURRENCY,
    ENDPOINT,
    MAX_BATCH,
    PERF,
    WORKERS,
    LimitWatch,
    batching_ceiling_cost_s,
    cost_jobs,
)
from bench.loadgen import Record
from bench.report import latency_figures, stored_latencies
from bench.scenarios import DAEMON_ENDPOINTS, Ctx, _status_counts, emulator_config, target
from bench.systems import DaemonRun, Job

REDIS_URL = os.environ.get("BENCH_REDIS_URL") or "redis://127.0.0.1:6379/0"
# BENCH_DAEMON_LOG=info keeps the replicas' ``worker.limit_changed`` events (with their
# reason) in the results, at the cost of the per-job info events' CPU.
LOG_LEVEL = os.environ.get("BENCH_DAEMON_LOG") or "warning"
POLL_S = 0.25
COST = 100.0
MAX_LOG_EVENTS = 400  # limit changes kept per replica from its log
FINISHED = re.compile(
    r'^vast_scheduler_jobs_finished_total\{endpoint="' + ENDPOINT + r'",outcome="(\w+)"\} (\S+)$',
    re.M,
)


@dataclass
class Replica:
    name: str
    child: procs.Child
    watch: LimitWatch
    system: DaemonRun | None = None
    records: list[Record] = field(default_factory=list)
    finished_at: dict[str, dict[str, float]] = field(default_factory=dict)  # mark -> outcomes


def replica_config(autoscaler_url: str, name: str, prefix: str) -> dict[str, Any]:
    config = procs.daemon_config(autoscaler_url, 0, DAEMON_ENDPOINTS)
    config["logging"] = {**config["logging"], "level": LOG_LEVEL}
    config["store"] = {
        "backend": "redis",
        "replica_id": name,
        "redis": {"url": REDIS_URL, "key_prefix": prefix},
    }
    return config


async def _drop_prefix(prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


@asynccontextmanager
async def fleet(
    ctx: Ctx, emulator: dict[str, Any], count: int
) -> AsyncIterator[tuple[procs.Child, list[Replica]]]:
    """A fresh emulator with every worker ready and ``count`` replicas on a new key prefix."""
    workdir = Path(ctx.workroot) / f"run-{time.monotonic_ns()}"
    workdir.mkdir(parents=True)
    prefix = f"bench-i-{uuid.uuid4().hex[:12]}"
    async with AsyncExitStack() as stack:
        stack.push_async_callback(_drop_prefix, prefix)
        emu = await stack.enter_async_context(procs.emulator_process(ctx.http, emulator, workdir))
        await _wait_ready(ctx.http, emu.url, WORKERS)
        async with ctx.http.get(f"{emu.url}/admin/workers") as resp:
            batches = {w["url"]: MAX_BATCH for w in await resp.json()}
        replicas = []
        for index in range(1, count + 1):
            name = f"r{index}"
            directory = workdir / name
            directory.mkdir()
            config = replica_config(emu.url, name, prefix)
            child = await stack.enter_async_context(
                procs.daemon_process(ctx.http, config, directory)
            )
            replicas.append(Replica(name, child, LimitWatch(dict(batches))))
        yield emu, replicas


async def _wait_ready(http: aiohttp.ClientSession, emu_url: str, count: int) -> None:
    for _ in range(600):  # 30 s
        async with http.get(f"{emu_url}/admin/stats") as resp:
            status = (await resp.json())["endpoints"].get(ENDPOINT, {}).get("status", "")
        found = re.search(r"Ready: (\d+)", status)
        if found and int(found.group(1)) >= count:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{count} workers not ready after 30 s")


async def _get(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    timeout = aiohttp.ClientTimeout(total=5)
    return await http.get(url, timeout=timeout, headers=procs.DAEMON_HEADERS)


async def finished_counts(http: aiohttp.ClientSession, replica: Replica) -> dict[str, float]:
    """The replica's ``jobs_finished`` counters by outcome (the jobs it ran to an end)."""
    async with await _get(http, f"{replica.child.url}/metrics") as resp:
        text = await resp.text()
    return {outcome: float(value) for outcome, value in FINISHED.findall(text)}


async def _poll(http: aiohttp.ClientSession, replica: Replica, started: float, max_s: float):
    url = f"{replica.child.url}/v1/status"
    for _ in range(int(max_s / POLL_S) + 1):  # bounded; cancelled when the run ends
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, KeyError, ValueError):
            async with await _get(http, url) as resp:
                status = await resp.json()
            workers = list(status["endpoints"][ENDPOINT].get("workers") or [])
            replica.watch.observe(time.perf_counter() - started, workers)
        await asyncio.sleep(POLL_S)


async def end_status(http: aiohttp.ClientSession, replica: Replica) -> dict[str, Any]:
    """The replica's view at the end: each worker's limit and phase, and its leases (a worker
    whose only lease has no room is never told it held a job back)."""
    async with await _get(http, f"{replica.child.url}/v1/status") as resp:
        status = (await resp.json())["endpoints"][ENDPOINT]
    workers = sorted(status.get("workers") or [], key=lambda w: w["worker_url"])
    lease_keys = ("worker_url", "mode", "session", "capacity", "budget", "inflight_jobs",
                  "completed", "retired")  # fmt: skip
    leases = [{k: lease.get(k) for k in lease_keys} for lease in status.get("lease_details") or []]
    return {"workers": workers, "leases": sorted(leases, key=lambda x: str(x["worker_url"]))[:50]}


def limit_events(replica: Replica) -> list[dict[str, Any]]:
    """``worker.limit_changed`` events from the replica's log (at ``BENCH_DAEMON_LOG=info``)."""
    import json

    events = []
    with contextlib.suppress(OSError):
        for line in replica.child.log_path.read_text(errors="replace").splitlines():
            if "worker.limit_changed" not in line:
                continue
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                events.append({k: event.get(k) for k in
                               ("timestamp", "old", "new", "reason", "lease_id")})  # fmt: skip
    return events[:MAX_LOG_EVENTS]


def endless_jobs() -> Iterator[Job]:
    """Cost-100 jobs, numbered, for as long as the loop asks."""
    one = cost_jobs([COST])[0]
    return (Job(i, one.endpoint, one.route, one.payload, one.cost) for i in itertools.count())


async def timed_loop(
    http: aiohttp.ClientSession, replicas: list[Replica], concurrency: int, warm_s: float,
    measure_s: float,
) -> tuple[float, float]:  # fmt: skip
    """A closed loop of ``concurrency`` clients split evenly over the replicas' ``run`` APIs
    until ``warm_s + measure_s``; the jobs counters are read at the window's two ends.
    Returns the window (perf_counter start and end)."""
    feed = endless_jobs()
    started = time.perf_counter()
    window = (started + warm_s, started + warm_s + measure_s)

    async def client(replica: Replica) -> None:
        assert replica.system is not None
        for job in feed:
            t0 = time.perf_counter()
            if t0 >= window[1]:
                return
            ok, status = await replica.system.call(job)
            replica.records.append(Record(job.index, t0, time.perf_counter(), ok, status))

    async def mark(name: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        counts = await asyncio.gather(*(finished_counts(http, r) for r in replicas))
        for replica, count in zip(replicas, counts, strict=True):
            replica.finished_at[name] = count

    clients = [client(replicas[i % len(replicas)]) for i in range(concurrency)]
    marks = [mark("start", window[0]), mark("end", window[1])]
    pollers = [
        asyncio.create_task(_poll(http, r, started, warm_s + measure_s + 130)) for r in replicas
    ]
    try:
        await asyncio.gather(*clients, *marks)
    finally:
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
    return window


async def run_fleet(ctx: Ctx, count: int, warm_s: float, measure_s: float) -> dict[str, Any]:
    emulator = emulator_config(ctx, {ENDPOINT: _batching_endpoint()})
    variant = f"{count} replica{'s' if count > 1 else ''}, c={CONCURRENCY}"
    async with fleet(ctx, emulator, count) as (_emu, replicas):
        per_replica = CONCURRENCY // count + 1
        for replica in replicas:
            replica.system = DaemonRun(replica.child.url, per_replica)
        try:
            window = await timed_loop(ctx.http, replicas, CONCURRENCY, warm_s, measure_s)
            ends = await asyncio.gather(*(end_status(ctx.http, r) for r in replicas))
        finally:
            for replica in replicas:
                if replica.system is not None:
                    await replica.system.close()
        return summarize(variant, replicas, window, ends)


def summarize(
    variant: str, replicas: list[Replica], window: tuple[float, float],
    ends: list[dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    measure_s = window[1] - window[0]
    records = [r for replica in replicas for r in replica.records]
    in_window = [r for r in records if r.ok and window[0] <= r.end_s < window[1]]
    ran = {
        replica.name: replica.finished_at["end"].get("succeeded", 0.0)
        - replica.finished_at["start"].get("succeeded", 0.0)
        for replica in replicas
    }
    total_ran = sum(ran.values())
    failed = sum(1 for r in records if not r.ok)
    failed_ran = sum(
        replica.finished_at["end"].get(o, 0.0)
        for replica in replicas
        for o in ("failed", "expired", "cancelled")
    )
    run: dict[str, Any] = {
        "variant": variant,
        "system": "vast-scheduler (run)",
        "replicas": len(replicas),
        "jobs": len(records),
        "succeeded": len(records) - failed,
        "failed": failed,
        "failed_statuses": _status_counts(records),
        "failed_in_daemons": failed_ran,
        "window_s": round(measure_s, 3),
        "jobs_in_window": len(in_window),
        "throughput_jobs_s": round(len(in_window) / measure_s, 1),
        "latency_ms": latency_figures(in_window),
        "latencies_ms": stored_latencies(in_window),
        "per_replica": [
            {
                "replica": replica.name,
                "jobs_run_in_window": ran[replica.name],
                "share_of_run": round(ran[replica.name] / total_ran, 3) if total_ran else None,
                "jobs_answered_in_window": sum(
                    1 for r in replica.records if r.ok and window[0] <= r.end_s < window[1]
                ),
                "worker_limits_end": end["workers"],
                "leases_end": end["leases"],
                "limit_changes": replica.watch.changes,
                "limit_changed_events": limit_events(replica),
            }
            for replica, end in zip(replicas, ends, strict=True)
        ],
    }
    shares = ", ".join(f"{p['replica']} {p['share_of_run']}" for p in run["per_replica"])
    limits = "; ".join(
        f"{p['replica']} " + "/".join(str(w["limit"]) for w in p["worker_limits_end"])
        for p in run["per_replica"]
    )
    print(
        f"  {variant:<24} jobs={len(records)} failed={failed} {run['throughput_jobs_s']} jobs/s "
        f"(window {measure_s:.1f} s) p50={run['latency_ms']['p50']} p99={run['latency_ms']['p99']}"
        f" ms; shares {shares}; limits {limits}",
        flush=True,
    )
    return run


def _batching_endpoint() -> dict[str, Any]:
    return {
        "workers": WORKERS,
        "perf": PERF,
        "service": "batching",
        "max_batch": MAX_BATCH,
        "batch_slowdown": BATCH_SLOWDOWN,
        "workload": "max_tokens",
    }


def targets_i(alone: dict[str, Any], three: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    one, total = alone["throughput_jobs_s"], three["throughput_jobs_s"]
    ratio = total / one if one else 0.0
    out.append(
        target(
            "(i) 3 replicas: total throughput >= 0.9x one replica alone",
            f"{ratio:.2f}x ({total} vs {one} jobs/s)",
            ratio >= 0.9,
        )
    )
    shares = [p["share_of_run"] or 0.0 for p in three["per_replica"]]
    out.append(
        target(
            "(i) no replica below 0.2x of the total",
            ", ".join(f"{s:.2f}" for s in shares),
            min(shares) >= 0.2,
        )
    )
    failed = alone["failed"] + three["failed"]
    out.append(target("(i) no failed job", str(failed), failed == 0))
    return out


async def scenario_i(ctx: Ctx) -> dict[str, Any]:
    warm_s, measure_s = (2.0, 6.0) if ctx.quick else (5.0, 20.0)
    alone = await run_fleet(ctx, 1, warm_s, measure_s)
    three = await run_fleet(ctx, 3, warm_s, measure_s)
    cost_s = batching_ceiling_cost_s(WORKERS, MAX_BATCH, PERF, BATCH_SLOWDOWN)
    top = round(cost_s / COST, 2)
    for run in (alone, three):
        run["share_of_ceiling"] = round(run["throughput_jobs_s"] / top, 3)
    notes = [f"full-batch ceiling {cost_s:,.0f} cost/s = {top} jobs/s at cost {COST:g}"]
    for run in (alone, three):
        for p in run["per_replica"]:
            limits = ", ".join(f"{w['limit']} ({w['phase']})" for w in p["worker_limits_end"])
            notes.append(
                f"{run['variant']}: {p['replica']} ran {p['jobs_run_in_window']:.0f} jobs in the "
                f"window (share {p['share_of_run']}); its limits at the end: {limits}"
            )
    return {
        "params": {
            "concurrency": CONCURRENCY,
            "warmup_s": warm_s,
            "measured_s": measure_s,
            "worker": _batching_endpoint(),
            "cost": COST,
            "ceiling_jobs_per_s": top,
            "store": "redis, one key prefix per run",
            "daemon_log_level": LOG_LEVEL,
        },
        "runs": [alone, three],
        "targets": targets_i(alone, three),
        "notes": notes,
    }


SCENARIOS = {
    "i": (
        "3 replicas on Redis sharing the (f) batching fleet against one alone, c=96",
        scenario_i,
    ),
}
