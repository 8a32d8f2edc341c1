"""(f)'s load on one event loop: the emulator, the daemon and the callers in one process, over
real sockets on 127.0.0.1, repeated many times. Between the fleet simulation (exact, but it
does not reproduce (f2)'s slow warm runs) and the benchmark (three runs a variant, 16 min):
about 7 s a cold run and 12 s a warm one, so two variants of the daemon can be compared over a
dozen runs each in minutes. The shared loop makes it slower than the benchmark (65-95 jobs/s
where the benchmark gives 70-100), and bimodal like it. Each run's limit changes are recorded
with the deciding round's figures; ``--trace-below`` prints those of the runs slower than it.

    cd /tmp && PYTHONPATH=/tmp/candidate:$REPO $REPO/.venv/bin/python -m bench.inprocess --runs 12

(``PYTHONPATH`` picks another copy of the ``scheduler`` package, as ``BENCH_SCHEDULER_SRC``
does for the benchmark; run from outside the repository, since ``-m`` puts the working
directory first. The summary line names the copy used.) Not written to ``results/``: a
tool to compare, not a measure.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import time
from typing import Any

import aiohttp
import structlog

import scheduler
from scheduler.core import capacity as capacity_module
from scheduler.core.capacity_state import Change, WorkerState
from tests.integration.harness import daemon_config, running_daemon, running_emulator

CONCURRENCY = 96
EMULATED = {
    "llm": {"workers": 3, "service": "batching", "perf": 200, "max_batch": 32,
            "batch_slowdown": 0.02, "workload": "max_tokens"},
}  # fmt: skip
ENDPOINT = {
    "default_route": "/v1/completions",
    "cost": {"estimator": "field", "field": "max_tokens", "default": 256, "min": 1,
             "max": 100_000},
}  # fmt: skip
MAX_RUNS = 100

Record = tuple[float, str, int, int, str, float | None, float | None]
RECORDS: list[Record] = []
_changed = capacity_module.Capacity._changed


def _recording(worker: str, state: WorkerState, old: int, reason: str,
               measured: tuple[float, float, float, float] | None = None) -> Change:  # fmt: skip
    change = _changed(worker, state, old, reason, measured)
    RECORDS.append((time.perf_counter(), worker[-5:], old, change.new, reason, change.rate,
                    change.held))  # fmt: skip
    return change


capacity_module.Capacity._changed = staticmethod(_recording)  # type: ignore[method-assign]


def job_costs(mix: str, count: int, seed: int) -> list[int]:
    """(f1): cost 100; (f2): 20% cost 400, the rest 20, in a seeded order."""
    if mix == "f1":
        return [100] * count
    large = round(0.2 * count)
    costs = [400] * large + [20] * (count - large)
    random.Random(seed).shuffle(costs)
    return costs


async def closed_loop(http: aiohttp.ClientSession, url: str, costs: list[int]) -> float:
    """Runs every job, ``CONCURRENCY`` at a time; returns jobs per second."""
    pending = iter(costs)

    async def caller() -> None:
        for cost in pending:
            body = {"payload": {"model": "m", "prompt": "hi", "max_tokens": cost}}
            async with http.post(url, json=body) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"job answered {resp.status}")

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return len(costs) / (time.perf_counter() - started)


async def one_run(mix: str, warm: bool, seed: int) -> tuple[float, float]:
    """One run on a fresh emulator and daemon; returns (jobs per second, when it started)."""
    count = 600 if mix == "f1" else 400
    async with aiohttp.ClientSession() as http, running_emulator(EMULATED) as emulator:
        await emulator.wait_ready("llm", 3)
        config = daemon_config(emulator.autoscaler_url, {"llm": ENDPOINT})
        async with running_daemon(config) as daemon:
            url = f"{daemon.url}/v1/endpoints/llm/run"
            RECORDS.clear()
            if warm:
                await closed_loop(http, url, job_costs(mix, 300, seed + 100))
                await asyncio.sleep(0.3)
            started = time.perf_counter()
            return await closed_loop(http, url, job_costs(mix, count, seed)), started


async def main(args: Any) -> None:
    rates: list[float] = []
    for run in range(min(args.runs, MAX_RUNS)):
        rate, started = await one_run(args.mix, args.variant == "warm", args.seed + run)
        rates.append(rate)
        print(f"run {run}: {rate:.1f} jobs/s", flush=True)
        if rate < args.trace_below:
            for at, worker, old, new, reason, rate_seen, held in RECORDS:
                figures = f"rate {rate_seen:.0f} held {held:.1f}" if rate_seen and held else ""
                print(f"    {at - started:+7.3f} s {worker} {old} -> {new} {reason} {figures}")
    print(f"{scheduler.__file__} {args.mix} {args.variant}: {sorted(round(r, 1) for r in rates)}"
          f" median {statistics.median(rates):.1f}")  # fmt: skip


if __name__ == "__main__":
    # the daemon's and the emulator's events would bury the figures
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mix", choices=["f1", "f2"], default="f2")
    parser.add_argument("--variant", choices=["cold", "warm"], default="warm")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--trace-below", type=float, default=0.0)
    asyncio.run(main(parser.parse_args()))
