"""Scenario (k): a batching worker joins a busy fleet (Vast scaled up an LLM endpoint).

Two batching workers of (f) serve a warm-up that is not counted (the daemon's limits settle at
their batch of 32); then a third, the same server, is added and becomes ready, and the (f1)
load runs at concurrency 96 on the three. The official client's route calls reach the new
worker at once; the daemon has to find it (a route call when jobs wait for its leased
workers) and learn its limit. Reported: throughput and p50/p99 against the official client,
and when the newcomer's limit first reached 90% of its batch. Direct is not run: it holds one
answer per worker it met before the load, and would never use the newcomer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bench.capacity import (
    CONCURRENCY,
    ENDPOINT,
    MAX_BATCH,
    PERF,
    WORKERS,
    _endpoint,
    _limit_notes,
    _p99,
    closed_load,
    cost_jobs,
)
from bench.loadgen import Record, closed_loop
from bench.report import medians
from bench.scenarios import (
    OFFICIAL,
    RUN,
    SWINGING_REPETITIONS,
    Ctx,
    Load,
    Stage,
    _by,
    _repeated,
    emulator_config,
    no_failed,
    ratio_target,
    run_systems,
    throughput,
)
from bench.systems import System


def joining_load(count: int) -> Load:
    """(f1)'s closed loop, once a third worker was added and is ready."""
    inner = closed_load(cost_jobs([100.0] * count), CONCURRENCY, 120)

    async def load(system: System, st: Stage) -> tuple[list[Record], float, dict[str, Any]]:
        worker = _endpoint("batching", workers=1)
        await st.add_worker(ENDPOINT, **{k: v for k, v in worker.items() if k != "workers"})
        await st.wait_ready(ENDPOINT, WORKERS)
        return await inner(system, st)

    return load


async def scenario_k(ctx: Ctx) -> dict[str, Any]:
    count, warm_count = (150, 100) if ctx.quick else (600, 300)
    emulator = emulator_config(ctx, {ENDPOINT: _endpoint("batching", workers=WORKERS - 1)})
    variant = f"k cost 100, c={CONCURRENCY}, a third worker joins"

    async def prepare(st: Stage) -> None:
        await st.wait_ready(ENDPOINT, WORKERS - 1)

    async def warmup(system: System) -> None:  # on the two workers, not measured
        await closed_loop(system, cost_jobs([100.0] * warm_count), CONCURRENCY, 120)

    async def one_repetition() -> list[dict[str, Any]]:
        return await run_systems(
            ctx, [OFFICIAL, RUN], emulator, ENDPOINT, WORKERS - 1, CONCURRENCY, variant,
            joining_load(count), prepare, warmup,
        )  # fmt: skip

    reps = 1 if ctx.quick else SWINGING_REPETITIONS
    runs = await _repeated(reps, one_repetition)
    if reps > 1:
        runs += medians(runs)
    run, off = _by(runs, variant, "vast-scheduler (run)"), _by(runs, variant, "official")
    out = ratio_target("(k) throughput vs official (no target)", run, off, throughput, 1.0,
                       True, "jobs/s")  # fmt: skip
    out += ratio_target("(k) p99 vs official (no target)", run, off, _p99, 1.0, False, "ms")
    out.append(no_failed("(k)", runs))
    return {
        "params": {
            "concurrency": CONCURRENCY,
            "jobs": count,
            "warm-up": warm_count,
            "workers": f"{WORKERS - 1}, then {WORKERS}",
            "worker": _endpoint("batching", workers=1),
            "max_batch": MAX_BATCH,
            "perf": PERF,
            "repetitions": reps,
        },
        "runs": runs,
        "targets": out,
        "notes": _limit_notes(runs),
    }


SCENARIOS: dict[str, tuple[str, Callable[[Ctx], Awaitable[dict[str, Any]]]]] = {
    "k": ("a batching worker joins a busy batching fleet", scenario_k),
}
