"""Scenario (j): the bill. A day's traffic shape compressed to about two minutes (a quiet
night, a morning ramp, a burst, a busy midday, a quiet hour, a second burst, an evening
ramp down) sent open-loop to an endpoint the emulator's autoscaler model scales from zero
(``autoscale: true``, see ``scheduler/emulator/settings.py``), once per system: the same
jobs at the same times. Reported per system: worker-seconds billed (from each worker's
start to its stop), jobs served, p50/p99, and the idle worker-seconds billed after the last
job (until the model has stopped every worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import Record, open_loop
from bench.scenarios import (
    DIRECT,
    OFFICIAL,
    RUN,
    Ctx,
    Load,
    Stage,
    _by,
    echo_jobs,
    emulator_config,
    run_systems,
    target,
)
from bench.systems import System

ENDPOINT = "echo"  # the daemon's bench config: constant cost 100
PERF = 1000.0  # a job of cost 100 takes 0.1 s: one FIFO worker serves 10 jobs/s
MAX_OUTSTANDING = 5000
DRAIN_S = 180.0
SCALE_DOWN_WAIT_S = 120.0
POLL_S = 0.25
# BENCH_TRACE: a file to which each system's run appends the model's view every TRACE_S s
# (JSON lines), to see where worker-seconds go; with BENCH_KEEP_DIR and BENCH_DAEMON_LOG=info
# (bench/procs.py) the daemon's route calls and leases can be read beside it.
TRACE_PATH = os.environ.get("BENCH_TRACE")
TRACE_S = 0.25
MAX_TRACE_SAMPLES = 4000


@dataclass(frozen=True)
class Phase:
    """``duration_s`` seconds whose arrival rate goes linearly from ``start`` to ``end``
    jobs/s."""

    name: str
    duration_s: float
    start: float
    end: float


DAY: tuple[Phase, ...] = (
    Phase("night", 10, 2, 2),
    Phase("morning ramp", 20, 2, 30),
    Phase("burst", 5, 60, 60),
    Phase("midday", 15, 20, 20),
    Phase("quiet hour", 15, 0, 0),
    Phase("second burst", 5, 50, 50),
    Phase("evening ramp down", 15, 20, 1),
)


def autoscaled(quick: bool) -> dict[str, Any]:
    """The endpoint: no worker at start, FIFO workers (the official default), scaled by the
    model; quicker cold starts and scale-down in quick mode."""
    return {
        "workers": 0, "perf": PERF, "service": "fifo", "autoscale": True,
        "cold_start_s": 1.0 if quick else 3.0, "autoscale_interval_s": 0.5,
        "scale_down_idle_s": 2.0 if quick else 5.0,
        "inactivity_timeout_s": 5.0 if quick else 10.0,
        "target_queue_time_s": 2.0, "load_window_s": 5.0, "max_workers": 8,
    }  # fmt: skip


def arrivals(phases: Sequence[Phase], scale: float = 1.0) -> list[float]:
    """Arrival offsets (s), deterministic: a job whenever the integral of the rate crosses
    the next whole number; ``scale`` shrinks every duration (rates unchanged)."""
    out: list[float] = []
    t0 = 0.0
    carried = 0.0  # area (jobs) since the last arrival, from earlier phases
    for phase in phases:
        duration = phase.duration_s * scale
        slope = (phase.end - phase.start) / duration if duration > 0 else 0.0
        total = (phase.start + phase.end) / 2 * duration
        need = 1.0 - carried  # area into this phase at which the next job arrives
        while need <= total + 1e-9:
            out.append(t0 + _time_of(need, phase.start, slope))
            need += 1.0
        carried = total - (need - 1.0)
        t0 += duration
    return out


def _time_of(area: float, start: float, slope: float) -> float:
    """The t >= 0 at which ``start * t + slope * t**2 / 2`` reaches ``area``."""
    if area <= 0:
        return 0.0
    if abs(slope) < 1e-12:
        return area / start
    disc = start * start + 2 * slope * area
    return (-start + max(disc, 0.0) ** 0.5) / slope


async def _billing(st: Stage) -> dict[str, Any]:
    stats = await st.emulator_stats()
    endpoint: dict[str, Any] = stats["endpoints"].get(ENDPOINT, {})
    return {**endpoint.get("billing", {}), "autoscale": endpoint.get("autoscale", {})}


async def _trace(st: Stage, system: str, path: Path, stop: asyncio.Event) -> None:
    """Appends the model's view every ``TRACE_S`` (its wanted workers, load and backlog, and
    each worker's state, reported load and sessions) as JSON lines to ``path``, until
    ``stop`` (bounded: at most ``MAX_TRACE_SAMPLES``)."""
    started = time.monotonic()
    with path.open("a", encoding="utf-8") as out:
        for _ in range(MAX_TRACE_SAMPLES):
            stats = (await st.emulator_stats())["endpoints"].get(ENDPOINT, {})
            workers = await st.emulator_workers()
            sample = {
                "system": system,
                "t": round(time.monotonic() - started, 3),
                "autoscale": stats.get("autoscale", {}),
                "workers": [
                    {k: w.get(k) for k in ("id", "state", "cur_load", "sessions")}
                    for w in workers
                    if w.get("endpoint") == ENDPOINT and w.get("state") != "stopped"
                ],
            }
            out.write(json.dumps(sample) + "\n")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TRACE_S)
            if stop.is_set():
                return


def bill_load(jobs_at: Sequence[float]) -> Load:
    jobs = echo_jobs(len(jobs_at), ENDPOINT)

    async def load(system: System, st: Stage) -> tuple[list[Record], float, dict[str, Any]]:
        stop = asyncio.Event()
        tracing = (
            asyncio.create_task(_trace(st, system.name, Path(TRACE_PATH), stop))
            if TRACE_PATH
            else None
        )
        try:  # traced until the model has stopped every worker (the idle tail too)
            return await _served_and_billed(system, st)
        finally:
            stop.set()
            if tracing is not None:
                await tracing

    async def _served_and_billed(
        system: System, st: Stage
    ) -> tuple[list[Record], float, dict[str, Any]]:
        records, wall, dropped = await open_loop(system, jobs, jobs_at, MAX_OUTSTANDING, DRAIN_S)
        at_last = await _billing(st)
        last_done = time.monotonic()
        end = at_last
        for _ in range(int(SCALE_DOWN_WAIT_S / POLL_S)):
            if not end.get("running"):
                break
            await asyncio.sleep(POLL_S)
            end = await _billing(st)
        billed = float(end.get("worker_seconds", 0.0))
        return (
            records,
            wall,
            {
                "dropped": dropped,
                "worker_seconds": round(billed, 3),
                "idle_worker_seconds_after_last_job": round(
                    billed - float(at_last.get("worker_seconds", 0.0)), 3
                ),
                "workers_running_at_last_job": at_last.get("running"),
                "workers_still_running": end.get("running"),
                "scale_down_s": round(time.monotonic() - last_done, 3),
                "autoscale": end.get("autoscale"),
            },
        )

    return load


def _figure(name: str) -> Callable[[dict[str, Any]], float | None]:
    def read(run: dict[str, Any]) -> float | None:
        value = run.get(name) if "." not in name else run["latency_ms"].get(name.split(".")[1])
        return None if value is None else float(value)

    return read


def bill_targets(runs: list[dict[str, Any]], variant: str) -> list[dict[str, Any]]:
    """The issue's targets, daemon against the official client, reported as measured."""
    mine, theirs = _by(runs, variant, "vast-scheduler (run)"), _by(runs, variant, "official")
    if mine is None or theirs is None:
        return []
    out = []
    for label, name, unit in (
        ("worker-seconds <= 1.0x official", "worker_seconds", "worker-s"),
        ("p99 <= 1.0x official", "latency_ms.p99", "ms"),
    ):
        a, b = _figure(name)(mine), _figure(name)(theirs)
        if not a or not b:
            out.append(target(f"(j) {label}", f"missing ({a} vs {b})", False))
            continue
        out.append(target(f"(j) {label}", f"{a / b:.2f}x ({a:,.1f} vs {b:,.1f} {unit})", a <= b))
    idle = "idle_worker_seconds_after_last_job"
    a, b = mine[idle], theirs[idle]
    out.append(target("(j) idle worker-seconds after the last job <= official", f"{a} vs {b}",
                      a <= b))  # fmt: skip
    failed = mine["failed"]
    out.append(target("(j) no failed job (vast-scheduler)", str(failed), failed == 0))
    return out


async def scenario_j(ctx: Ctx) -> dict[str, Any]:
    scale = 0.5 if ctx.quick else 1.0
    jobs_at = arrivals(DAY, scale)
    endpoint = autoscaled(ctx.quick)
    emulator = emulator_config(ctx, {ENDPOINT: endpoint})
    variant = f"j day in {sum(p.duration_s for p in DAY) * scale:.0f} s, {len(jobs_at)} jobs"
    runs = await run_systems(
        ctx, [DIRECT, OFFICIAL, RUN], emulator, ENDPOINT, 1, 512, variant, bill_load(jobs_at)
    )
    return {
        "params": {
            "endpoint": endpoint,
            "day": [vars(p) for p in DAY],
            "time_scale": scale,
            "jobs": len(jobs_at),
        },
        "runs": runs,
        "targets": bill_targets(runs, variant),
        "notes": [
            "direct (floor) keeps the workers it met first and finds new ones only when one "
            "fails: it is no floor for the bill, shown for reference",
        ],
    }


SCENARIOS = {"j": ("the bill: a day's traffic compressed, autoscaler model on", scenario_j)}
