"""Scenarios (f)-(h): worker capacity that fits real inference servers.

The emulator's workers follow a service model (``scheduler/emulator/settings.py``): batching
(up to ``max_batch`` requests at once, each slowed by ``1 + batch_slowdown * (n - 1)``), FIFO
(one at a time) or processor sharing. The daemon learns a concurrency limit per worker
(``scheduler/core/capacity.py``); these scenarios compare it, on its default config, with the
official client and the direct floor, and record the limits it reached and how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from bench import procs
from bench.loadgen import Record, closed_loop
from bench.report import medians
from bench.scenarios import (
    DAEMON_ENDPOINTS,
    DIRECT,
    OFFICIAL,
    RUN,
    SWINGING_REPETITIONS,
    VIA,
    Ctx,
    Load,
    Stage,
    _by,
    _repeated,
    emulator_config,
    figure_number,
    no_failed,
    ratio_target,
    ratio_text,
    run_systems,
    target,
    throughput,
)
from bench.screen_stats import ab_order, compare, slow_runs
from bench.systems import Job, System

ENDPOINT = "llm"  # the daemon's bench config estimates its cost from ``max_tokens``
ROUTE = "/v1/completions"
PERF = 200.0  # cost units/s of one request alone: a cost-100 job alone takes 500 ms
MAX_BATCH = 32
BATCH_SLOWDOWN = 0.02
WORKERS = 3
CONCURRENCY = 96
SMALL_COST, LARGE_COST, LARGE_SHARE = 20.0, 400.0, 0.2
STATUS_POLL_S = 0.1
LIMIT_REACHED_SHARE = 0.9  # "reached its batch": the limit at 90% of max_batch
MAX_TRACE = 2000  # limit changes kept per run


# ----------------------------------------------------------------------------- pure helpers
def batching_ceiling_cost_s(
    workers: int, max_batch: int, perf: float, batch_slowdown: float
) -> float:
    """Cost/s the emulator's batching model serves with every worker's batch full:
    ``workers * max_batch`` requests, each at ``perf / (1 + s * (max_batch - 1))``."""
    return workers * max_batch * perf / (1 + batch_slowdown * (max_batch - 1))


def ceiling(costs: Sequence[float], workers: int = WORKERS) -> dict[str, float]:
    """The fleet's full-batch ceiling in cost/s and, for this job mix, jobs/s."""
    cost_s = batching_ceiling_cost_s(workers, MAX_BATCH, PERF, BATCH_SLOWDOWN)
    mean = sum(costs) / len(costs) if costs else 0.0
    return {
        "cost_per_s": round(cost_s, 1),
        "jobs_per_s": round(cost_s / mean, 2) if mean else 0.0,
        "mean_cost": round(mean, 2),
    }


def mixed_costs(count: int, seed: int) -> list[float]:
    """LLM-like sizes: exactly ``round(LARGE_SHARE * count)`` jobs of ``LARGE_COST`` (20x
    larger), the rest ``SMALL_COST``, in a seeded random order."""
    large = round(LARGE_SHARE * count)
    costs = [LARGE_COST] * large + [SMALL_COST] * (count - large)
    random.Random(seed).shuffle(costs)
    return costs


def cost_jobs(costs: Sequence[float]) -> list[Job]:
    """One completion request per cost: ``max_tokens`` is the cost for the emulator (workload
    ``max_tokens``), the daemon (its ``field`` estimator) and the official client alike."""
    return [
        Job(i, ENDPOINT, ROUTE, {"model": "m", "prompt": "hi", "max_tokens": int(c)}, float(c))
        for i, c in enumerate(costs)
    ]


@dataclass
class LimitWatch:
    """Per-worker limits seen in ``/v1/status`` over a run: the changes (bounded), the last
    view of each worker, and when each batching worker's limit first reached
    ``LIMIT_REACHED_SHARE`` of its batch (seconds from the first job)."""

    batches: dict[str, int]  # worker URL -> max_batch, for the batching workers
    changes: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)
    reached_s: dict[str, float] = field(default_factory=dict)
    polls: int = 0

    def observe(self, t_s: float, workers: list[dict[str, Any]]) -> None:
        self.polls += 1
        for view in workers:
            url = str(view.get("worker_url"))
            limit, phase = view.get("limit"), view.get("phase")
            before = self.last.get(url)
            changed = before is None or (before["limit"], before["phase"]) != (limit, phase)
            if changed and len(self.changes) < MAX_TRACE:
                self.changes.append(
                    {"t_s": round(t_s, 3), "worker_url": url, "limit": limit, "phase": phase}
                )
            self.last[url] = {"limit": limit, "phase": phase}
            batch = self.batches.get(url)
            if (
                batch is not None
                and url not in self.reached_s
                and limit is not None
                and limit >= LIMIT_REACHED_SHARE * batch
            ):
                self.reached_s[url] = round(t_s, 3)


# ----------------------------------------------------------------------------- the runs
async def _status_workers(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with http.get(url, timeout=timeout, headers=procs.DAEMON_HEADERS) as resp:
        status = await resp.json()
    return list(status["endpoints"][ENDPOINT].get("workers") or [])


async def _poll(st: Stage, watch: LimitWatch, started: float, max_s: float) -> None:
    assert st.daemon is not None
    url = f"{st.daemon.url}/v1/status"
    for _ in range(int(max_s / STATUS_POLL_S) + 1):  # bounded; cancelled when the run ends
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, KeyError, ValueError):
            watch.observe(time.perf_counter() - started, await _status_workers(st.ctx.http, url))
        await asyncio.sleep(STATUS_POLL_S)


def closed_load(jobs: list[Job], concurrency: int, max_s: float) -> Load:
    """A closed loop over ``jobs``; against the daemon, ``/v1/status`` is polled every 100 ms
    and the per-worker limits (their changes, the end state, time to 90% of the batch) kept."""

    async def load(system: System, st: Stage) -> tuple[list[Record], float, dict[str, Any]]:
        fleet = [w for w in await st.workers() if w["endpoint"] == ENDPOINT]
        services = {w["url"]: w.get("service") for w in fleet}
        # Direct weighs workers by what they report (the benchmark's max_perf), as the
        # autoscaler does for the official client: a batching worker's rate alone (perf)
        # would have it send a FIFO worker as much as a batching one in (h).
        st.perfs.update({w["url"]: float(w.get("max_perf") or w["perf"]) for w in fleet})
        if st.daemon is None:
            records, wall = await closed_loop(system, jobs, concurrency, max_s)
            return records, wall, {"fleet": services}
        batches = {
            w["url"]: int(w.get("max_batch") or MAX_BATCH)
            for w in fleet
            if w.get("service") == "batching"
        }
        watch = LimitWatch(batches)
        started = time.perf_counter()
        poller = asyncio.create_task(_poll(st, watch, started, max_s + 30))
        try:
            records, wall = await closed_loop(system, jobs, concurrency, max_s)
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, KeyError, ValueError):
            end = await _status_workers(st.ctx.http, f"{st.daemon.url}/v1/status")
            watch.observe(time.perf_counter() - started, end)
        limits = [
            {"worker_url": url, "service": services.get(url), "max_batch": batches.get(url), **view}
            for url, view in sorted(watch.last.items())
        ]
        extra = {
            "fleet": services,
            "worker_limits_end": limits,
            "limit_reached_90pct_s": {url: watch.reached_s.get(url) for url in batches},
            "limit_changes": watch.changes,
            "status_polls": watch.polls,
        }
        return records, wall, extra

    return load


def limits_text(run: dict[str, Any] | None) -> str:
    """``batching 32 of 32 (steady, 90% at 2.1 s), fifo 1 (steady)``: the daemon's end state."""
    if not run or not run.get("worker_limits_end"):
        return "-"
    reached = run.get("limit_reached_90pct_s") or {}
    parts = []
    for w in run["worker_limits_end"]:
        note = str(w.get("phase"))
        if w["worker_url"] in reached:
            at = reached[w["worker_url"]]
            note += ", 90% never" if at is None else f", 90% at {at:g} s"
        batch = f" of {w['max_batch']}" if w.get("max_batch") else ""
        parts.append(f"{w.get('service')} {w.get('limit')}{batch} ({note})")
    return "; ".join(parts)


def _p50(run: dict[str, Any]) -> float | None:
    return figure_number(run["latency_ms"].get("p50"))


def _p99(run: dict[str, Any]) -> float | None:
    return figure_number(run["latency_ms"].get("p99"))


async def _all_ready(st: Stage) -> None:
    """Every worker of the config ready before the first job (each system alike)."""
    await st.wait_ready(ENDPOINT, WORKERS)


async def _three_systems(
    ctx: Ctx,
    emulator: dict[str, Any],
    variant: str,
    load: Load,
    concurrency: int,
    prepare: Callable[[Stage], Awaitable[None]] = _all_ready,
    warm_jobs: list[Job] | None = None,
    kinds: Sequence[str] = (DIRECT, OFFICIAL, RUN),
) -> list[dict[str, Any]]:
    async def warmup(system: System) -> None:  # not measured, the same for every system
        if warm_jobs:
            await closed_loop(system, warm_jobs, concurrency, 120)

    return await run_systems(
        ctx, list(kinds), emulator, ENDPOINT, WORKERS, concurrency, variant, load,
        prepare, warmup if warm_jobs else None,
    )  # fmt: skip


def _endpoint(service: str, workers: int = WORKERS) -> dict[str, Any]:
    return {
        "workers": workers,
        "perf": PERF,
        "service": service,
        "max_batch": MAX_BATCH,
        "batch_slowdown": BATCH_SLOWDOWN,
        "workload": "max_tokens",
    }


# ------------------------------------------------------------------------------- (f)
def f_costs(ctx: Ctx) -> dict[str, list[float]]:
    """(f)'s job lists, the same for (f) and its screen: "f1" and "f2" (the loads measured)
    and "f1-warm-up" and "f2-warm-up" (run before the warm variants, not counted)."""
    fixed_count, mixed_count = (150, 120) if ctx.quick else (600, 400)
    warm_count = 100 if ctx.quick else 300
    return {
        "f1": [100.0] * fixed_count,
        "f2": mixed_costs(mixed_count, ctx.seed),
        "f1-warm-up": [100.0] * warm_count,
        "f2-warm-up": mixed_costs(warm_count, ctx.seed + 1),
    }


async def scenario_f(ctx: Ctx) -> dict[str, Any]:
    emulator = emulator_config(ctx, {ENDPOINT: _endpoint("batching")})
    costs_of = f_costs(ctx)
    fixed, mixed = costs_of["f1"], costs_of["f2"]
    v1, v2 = f"f1 cost 100, c={CONCURRENCY}", f"f2 cost 20/400, c={CONCURRENCY}"
    # The official client through the daemon's front door runs beside the others here (issue
    # 17): the batching fleet is where the daemon's limits matter most.
    kinds = (DIRECT, OFFICIAL, RUN, VIA)
    w1, w2 = f"{v1}, warm", f"{v2}, warm"

    async def one_repetition() -> list[dict[str, Any]]:
        runs = await _three_systems(
            ctx, emulator, v1, closed_load(cost_jobs(fixed), CONCURRENCY, 120), CONCURRENCY,
            kinds=kinds,
        )  # fmt: skip
        runs += await _three_systems(
            ctx, emulator, v2, closed_load(cost_jobs(mixed), CONCURRENCY, 120), CONCURRENCY,
            kinds=kinds,
        )  # fmt: skip
        # The same loads after a warm-up that is not counted (as in (a)): a long-running
        # daemon's steady state, its limits learnt; the cold runs above include its ramp.
        for variant, costs, warm_costs in (
            (w1, fixed, costs_of["f1-warm-up"]),
            (w2, mixed, costs_of["f2-warm-up"]),
        ):
            load = closed_load(cost_jobs(costs), CONCURRENCY, 120)
            runs += await _three_systems(
                ctx, emulator, variant, load, CONCURRENCY, warm_jobs=cost_jobs(warm_costs),
                kinds=kinds,
            )  # fmt: skip
        return runs

    reps = 1 if ctx.quick else SWINGING_REPETITIONS
    runs = await _repeated(reps, one_repetition)
    if reps > 1:
        runs += medians(runs)
    ceilings = {v1: ceiling(fixed), v2: ceiling(mixed), w1: ceiling(fixed), w2: ceiling(mixed)}
    for run in runs:
        top = ceilings[run["variant"]]["jobs_per_s"]
        run["share_of_ceiling"] = round(run["throughput_jobs_s"] / top, 3) if top else None
    out = _f_targets(runs, v1, v2, ceilings) + _f_targets(runs, w1, w2, ceilings)
    out.append(no_failed("(f)", runs))
    return {
        "params": {
            "concurrency": CONCURRENCY,
            "workers": WORKERS,
            "worker": _endpoint("batching"),
            "jobs": {v1: len(fixed), v2: len(mixed), "warm-up": len(costs_of["f1-warm-up"])},
            "repetitions": reps,
            "mix": {"small": SMALL_COST, "large": LARGE_COST, "large_share": LARGE_SHARE},
            "ceiling": ceilings,
        },
        "runs": runs,
        "targets": out,
        "notes": [
            f"{v}: full-batch ceiling {c['cost_per_s']:,} cost/s = {c['jobs_per_s']} jobs/s "
            f"(mean cost {c['mean_cost']})"
            for v, c in ceilings.items()
        ]
        + _limit_notes(runs),
    }


# ------------------------------------------------------------------- (f) screened alone
# One (f) variant through the daemon's run API alone, many times: to compare two copies of the
# daemon (BENCH_SCHEDULER_SRC) on what swings most, about 8 s a cold run. Not in "all".
SCREEN_VARIANTS = ("f1-cold", "f1-warm", "f2-cold", "f2-warm")
SCREEN_VARIANT = os.environ.get("BENCH_F_VARIANT") or "f2-cold"
SCREEN_RUNS = int(os.environ.get("BENCH_F_RUNS") or 12)
# Through which door the daemon is screened: its run API, or the official client pointed at its
# front door ("via").
SCREEN_SYSTEMS = {"run": RUN, "via": VIA}
SCREEN_SYSTEM = os.environ.get("BENCH_F_SYSTEM") or "run"
# BENCH_SCHEDULER_SRC_B: a second copy of the scheduler package, screened side by side with the
# first (BENCH_SCHEDULER_SRC, or this repository): BENCH_F_RUNS runs of each, in pairs whose
# order alternates, so that the machine's drift over the screen falls on both alike; the two
# are then compared (``bench.screen_stats.compare``).
_SRC_B = os.environ.get("BENCH_SCHEDULER_SRC_B")
SCREEN_SRC_B = Path(_SRC_B).resolve() if _SRC_B else None
# Below this share of the full-batch ceiling a run is slow: (f)'s fast runs give 0.75-0.85x of it,
# its slow ones (a worker left below its batch, or a tail queued behind one) under 0.62x.
SLOW_SHARE = 0.65


def screen_summary(rates: Sequence[float], slow_below: float) -> dict[str, Any]:
    """Jobs/s of the screened runs: sorted, their median and mean, and how many fell below
    ``slow_below`` (the (f) runs swing between two modes, so the slow count says more than
    the median)."""
    ordered = sorted(rates)
    return {
        "jobs_per_s": ordered,
        "median": round(statistics.median(ordered), 1) if ordered else None,
        "mean": round(statistics.fmean(ordered), 1) if ordered else None,
        "slow_below": slow_below,
        "slow": slow_runs(ordered, slow_below),
    }


async def scenario_f_screen(ctx: Ctx) -> dict[str, Any]:
    if SCREEN_VARIANT not in SCREEN_VARIANTS:
        raise ValueError(f"BENCH_F_VARIANT must be one of {', '.join(SCREEN_VARIANTS)}")
    if SCREEN_SYSTEM not in SCREEN_SYSTEMS:
        raise ValueError(f"BENCH_F_SYSTEM must be one of {', '.join(SCREEN_SYSTEMS)}")
    mix, start = SCREEN_VARIANT.split("-")
    costs_of = f_costs(ctx)
    costs, warm_costs = costs_of[mix], costs_of[f"{mix}-warm-up"]
    variant = f"{SCREEN_VARIANT}, c={CONCURRENCY}"
    emulator = emulator_config(ctx, {ENDPOINT: _endpoint("batching")})
    count = 1 if ctx.quick else SCREEN_RUNS
    sources = {"A": procs.SCHEDULER_SRC}
    if SCREEN_SRC_B:
        sources["B"] = SCREEN_SRC_B
    order = ab_order(count) if SCREEN_SRC_B else ["A"] * count
    runs: list[dict[str, Any]] = []
    for copy in order:
        with procs.scheduler_source(sources[copy]):
            got = await _three_systems(
                ctx, emulator, variant, closed_load(cost_jobs(costs), CONCURRENCY, 120),
                CONCURRENCY, warm_jobs=cost_jobs(warm_costs) if start == "warm" else None,
                kinds=(SCREEN_SYSTEMS[SCREEN_SYSTEM],),
            )  # fmt: skip
        runs += [{**run, "copy": copy, "scheduler_src": str(sources[copy])} for run in got]
    top = ceiling(costs)["jobs_per_s"]
    slow_below = round(SLOW_SHARE * top, 1)
    by_copy = {c: [r for r in runs if r["copy"] == c] for c in sources}
    rates = {c: [r["throughput_jobs_s"] for r in mine] for c, mine in by_copy.items()}
    summary: dict[str, Any] = {}
    for copy, mine in by_copy.items():
        summary[copy] = screen_summary(rates[copy], slow_below)
        summary[copy]["jobs_s_to_90pct"] = sorted(r["jobs_s_to_90pct"] or 0.0 for r in mine)
        summary[copy]["scheduler_src"] = str(sources[copy])
        print(f"  screened {variant} ({copy}: {sources[copy]}): {summary[copy]}", flush=True)
    notes = [f"{c}: jobs/s {s['jobs_per_s']}; slow (< {SLOW_SHARE}x ceiling): {s['slow']}"
             for c, s in summary.items()]  # fmt: skip
    if SCREEN_SRC_B:
        summary["B_against_A"] = compare(rates["A"], rates["B"], slow_below)
        print(f"  B against A: {summary['B_against_A']}", flush=True)
        notes.append(f"B against A: {summary['B_against_A']}")
    return {
        "params": {
            "variant": variant,
            "runs": len(runs),
            "ceiling_jobs_per_s": top,
            "order": order,
        },
        "runs": runs,
        "screen": summary,
        "targets": [no_failed("(f screen)", runs)],
        "notes": notes,
    }


def _f_targets(
    runs: list[dict[str, Any]], v1: str, v2: str, ceilings: dict[str, dict[str, float]]
) -> list[dict[str, Any]]:
    warm = ", warm" if v1.endswith("warm") else ""
    out: list[dict[str, Any]] = []
    run1, off1 = _by(runs, v1, "vast-scheduler (run)"), _by(runs, v1, "official")
    out += ratio_target("(f1) throughput >= 1.0x official", run1, off1, throughput, 1.0, True,
                         "jobs/s")  # fmt: skip
    if run1:
        top = ceilings[v1]["jobs_per_s"]
        share = run1["throughput_jobs_s"] / top
        out.append(
            target(
                "(f1) throughput >= 0.9x the full-batch ceiling",
                f"{ratio_text(share, 0.9)}x ({run1['throughput_jobs_s']} vs {top} jobs/s)",
                share >= 0.9,
            )
        )
    out += ratio_target("(f1) p99 <= 1.0x official", run1, off1, _p99, 1.0, False, "ms")
    run2, off2 = _by(runs, v2, "vast-scheduler (run)"), _by(runs, v2, "official")
    out += ratio_target("(f2) throughput >= 1.0x official", run2, off2, throughput, 1.0, True,
                         "jobs/s")  # fmt: skip
    out += ratio_target("(f2) p50 <= 1.0x official", run2, off2, _p50, 1.0, False, "ms")
    out += ratio_target("(f2) p99 <= 1.0x official", run2, off2, _p99, 1.0, False, "ms")
    for variant, label in ((v1, "(f1)"), (v2, "(f2)")):
        via, run = (
            _by(runs, variant, "vast-scheduler (official"),
            _by(runs, variant, "vast-scheduler (run)"),
        )
        out += ratio_target(f"{label} official client through the daemon >= 0.9x the run API",
                             via, run, throughput, 0.9, True, "jobs/s")  # fmt: skip
    for item in out:
        item["target"] = item["target"].replace(")", f"{warm})", 1)
    return out


def _limit_notes(runs: list[dict[str, Any]]) -> list[str]:
    return [
        f"{r['variant']}: daemon's worker limits at the end: {limits_text(r)}"
        for r in runs
        if r.get("worker_limits_end")
    ]


# ------------------------------------------------------------------------------- (g)
async def scenario_g(ctx: Ctx) -> dict[str, Any]:
    # FIFO: 3 x 200 cost/s over a mean cost of 96 is 6.25 jobs/s; 300 jobs take ~48 s.
    count, concurrency = (30, 24) if ctx.quick else (300, CONCURRENCY)
    emulator = emulator_config(ctx, {ENDPOINT: _endpoint("fifo")})
    costs = mixed_costs(count, ctx.seed)
    variant = f"fifo cost 20/400, c={concurrency}"
    runs = await _three_systems(
        ctx, emulator, variant, closed_load(cost_jobs(costs), concurrency, 180), concurrency
    )
    run, off = _by(runs, variant, "vast-scheduler (run)"), _by(runs, variant, "official")
    out = ratio_target("(g) p99 <= 1.0x official", run, off, _p99, 1.0, False, "ms")
    out += ratio_target("(g) throughput >= 0.95x official", run, off, throughput, 0.95, True,
                         "jobs/s")  # fmt: skip
    out.append(no_failed("(g)", runs))
    fleet_cost_s = WORKERS * PERF
    return {
        "params": {
            "concurrency": concurrency,
            "jobs": count,
            "workers": WORKERS,
            "worker": _endpoint("fifo"),
            "mix": {"small": SMALL_COST, "large": LARGE_COST, "large_share": LARGE_SHARE},
            "ceiling_jobs_per_s": round(fleet_cost_s / (sum(costs) / len(costs)), 2),
        },
        "runs": runs,
        "targets": out,
        "notes": _limit_notes(runs),
    }


# ------------------------------------------------------------------------------- (h)
MIXED_FLEET = ("batching", "fifo", "processor_sharing")


async def scenario_h(ctx: Ctx) -> dict[str, Any]:
    count = 120 if ctx.quick else 600
    emulator = emulator_config(ctx, {ENDPOINT: _endpoint("batching", workers=0)})
    costs = mixed_costs(count, ctx.seed)
    variant = f"mixed fleet cost 20/400, c={CONCURRENCY}"

    async def prepare(st: Stage) -> None:
        for service in MIXED_FLEET:
            await st.add_worker(ENDPOINT, service=service, perf=PERF, workload="max_tokens")
        await st.wait_ready(ENDPOINT, len(MIXED_FLEET))

    runs = await _three_systems(
        ctx, emulator, variant, closed_load(cost_jobs(costs), CONCURRENCY, 120), CONCURRENCY,
        prepare,
    )  # fmt: skip
    run, off = _by(runs, variant, "vast-scheduler (run)"), _by(runs, variant, "official")
    out = ratio_target("(h) throughput >= 1.0x official", run, off, throughput, 1.0, True,
                        "jobs/s")  # fmt: skip
    out.append(no_failed("(h)", runs))
    mean = sum(costs) / len(costs)
    top = batching_ceiling_cost_s(1, MAX_BATCH, PERF, BATCH_SLOWDOWN) + 2 * PERF
    return {
        "params": {
            "concurrency": CONCURRENCY,
            "jobs": count,
            "fleet": list(MIXED_FLEET),
            "worker": _endpoint("batching", workers=1),
            "mix": {"small": SMALL_COST, "large": LARGE_COST, "large_share": LARGE_SHARE},
            "ceiling": {"cost_per_s": round(top, 1), "jobs_per_s": round(top / mean, 2)},
        },
        "runs": runs,
        "targets": out,
        "notes": _limit_notes(runs),
    }


# ------------------------------------------------------------------------------- (l)
# An endpoint on unlike GPUs: Vast fills a worker group from a search that matches several
# offers, and a vLLM server's batch is bounded by its GPU's memory for the KV cache.
UNLIKE_BATCHES = (8, 8, 64)


async def scenario_l(ctx: Ctx) -> dict[str, Any]:
    count = 400 if ctx.quick else 2000
    emulator = emulator_config(ctx, {ENDPOINT: _endpoint("batching", workers=0)})
    variant = f"batches {'/'.join(map(str, UNLIKE_BATCHES))}, cost 100, c={CONCURRENCY}"

    async def prepare(st: Stage) -> None:
        for max_batch in UNLIKE_BATCHES:
            await st.add_worker(ENDPOINT, service="batching", max_batch=max_batch, perf=PERF,
                                workload="max_tokens")  # fmt: skip
        await st.wait_ready(ENDPOINT, len(UNLIKE_BATCHES))

    runs = await _three_systems(
        ctx, emulator, variant, closed_load(cost_jobs([100.0] * count), CONCURRENCY, 180),
        CONCURRENCY, prepare,
    )  # fmt: skip
    run, off = _by(runs, variant, "vast-scheduler (run)"), _by(runs, variant, "official")
    out = ratio_target("(l) throughput >= 1.0x official", run, off, throughput, 1.0, True,
                       "jobs/s")  # fmt: skip
    out += ratio_target("(l) p99 <= 1.0x official", run, off, _p99, 1.0, False, "ms")
    out.append(no_failed("(l)", runs))
    # Each batch full: 8 + 8 + 64 of the 96 jobs out (the 16 left wait), per batch size.
    top = sum(
        batching_ceiling_cost_s(1, b, PERF, BATCH_SLOWDOWN) for b in UNLIKE_BATCHES
    )  # fmt: skip
    return {
        "params": {
            "concurrency": CONCURRENCY,
            "jobs": count,
            "batches": list(UNLIKE_BATCHES),
            "worker": _endpoint("batching", workers=1),
            "ceiling": {"cost_per_s": round(top, 1), "jobs_per_s": round(top / 100.0, 2)},
        },
        "runs": runs,
        "targets": out,
        "notes": _limit_notes(runs),
    }


# ------------------------------------------------------------------------------- (m)
# A batch bound by memory as well as by count. A TGI server admits a request only while the
# batch's tokens (each request's input and max_new_tokens) fit its KV cache ("reserve"); a
# vLLM server admits on the prompt and pages the cache as requests grow, preempting the newest
# when it is full ("grow"). With (f2)'s 20/400 mix, 3,200 units hold 160 small jobs (64 by
# count), 8 large ones, or any mix between: no count of jobs fits the worker.
MEMORY_BATCH, MEMORY_BATCH_COST = 64, 3200.0
MEMORY_MODELS = {"reserve": "TGI-like, reserved", "grow": "vLLM-like, paged"}


def memory_capped_endpoints() -> dict[str, Any]:
    """The bench daemon's endpoints, the bench endpoint told its workers' memory."""
    endpoints = deepcopy(DAEMON_ENDPOINTS)
    endpoints[ENDPOINT]["capacity"] = {"max_worker_cost": MEMORY_BATCH_COST}
    return endpoints


async def scenario_m(ctx: Ctx) -> dict[str, Any]:
    count = 240 if ctx.quick else 1200
    costs = mixed_costs(count, ctx.seed)
    worker = {**_endpoint("batching"), "max_batch": MEMORY_BATCH,
              "max_batch_cost": MEMORY_BATCH_COST}  # fmt: skip
    # The daemon told the workers' memory (capacity.max_worker_cost): what the setting gives on
    # the same jobs, beside the default config.
    told = replace(ctx, daemon_endpoints=memory_capped_endpoints())
    runs: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for memory, model in MEMORY_MODELS.items():
        emulator = emulator_config(ctx, {ENDPOINT: {**worker, "batch_memory": memory}})
        load = closed_load(cost_jobs(costs), CONCURRENCY, 180)
        variant = f"memory-bound batches ({model}) cost 20/400, c={CONCURRENCY}"
        told_variant = f"{variant}, max_worker_cost {MEMORY_BATCH_COST:.0f}"
        got = await _three_systems(ctx, emulator, variant, load, CONCURRENCY)
        got += await _three_systems(told, emulator, told_variant, load, CONCURRENCY, kinds=(RUN,))
        runs += got
        off = _by(got, variant, "official")
        name = f"(m, {memory})"
        for label, run in ((name, _by(got, variant, "vast-scheduler (run)")),
                           (f"{name} max_worker_cost",
                            _by(got, told_variant, "vast-scheduler (run)"))):  # fmt: skip
            out += ratio_target(f"{label} throughput >= 1.0x official", run, off, throughput,
                                1.0, True, "jobs/s")  # fmt: skip
            out += ratio_target(f"{label} p99 <= 1.0x official", run, off, _p99, 1.0, False,
                                "ms")  # fmt: skip
        out.append(no_failed(name, got))
    return {
        "params": {
            "concurrency": CONCURRENCY,
            "jobs": count,
            "worker": worker,
            "batch_memory": MEMORY_MODELS,
            "mix": {"small": SMALL_COST, "large": LARGE_COST, "large_share": LARGE_SHARE},
        },
        "runs": runs,
        "targets": out,
        "notes": _limit_notes(runs),
    }


SCENARIOS: dict[str, tuple[str, Callable[[Ctx], Awaitable[dict[str, Any]]]]] = {
    "f": (
        "batching workers (max_batch 32): fixed cost 100 and 20/400 mix at concurrency 96",
        scenario_f,
    ),
    "g": ("FIFO workers, 20/400 cost mix: what waits at a worker only waits", scenario_g),
    "h": ("mixed fleet: one batching, one FIFO, one processor-sharing worker", scenario_h),
    "l": ("unlike GPUs: batching workers of batch 8, 8 and 64", scenario_l),
    "m": ("memory-bound batches, 64 jobs and 3,200 units: TGI-like and vLLM-like", scenario_m),
    "f-screen": (
        "one (f) variant through the daemon alone, many runs (BENCH_F_VARIANT, BENCH_F_RUNS)",
        scenario_f_screen,
    ),
}
ON_DEMAND = frozenset({"f-screen"})  # not part of "all"
