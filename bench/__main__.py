"""``python -m bench --scenario a|b|c|d|e|f|g|h|i|j|k|f-screen|all [--quick] [--seed N]``

Runs each scenario with every system (direct floor, official vastai client, vast-scheduler
through ``run`` and the proxy) against its own emulator process, the daemon as its own
process, and writes ``bench/results/<date>-<scenario>.json``, ``<date>-summary.md`` and PNG
plots (when matplotlib is importable). All traffic stays on 127.0.0.1.

Exits 1 when a job failed in any run of any scenario (all scenarios still run and are
written), so a broken system cannot pass for a slow one.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path

import aiohttp

from bench import procs, report
from bench.bill import SCENARIOS as BILL_SCENARIOS
from bench.capacity import ON_DEMAND
from bench.capacity import SCENARIOS as CAPACITY_SCENARIOS
from bench.joining import SCENARIOS as JOINING_SCENARIOS
from bench.replicas import SCENARIOS as REPLICA_SCENARIOS
from bench.scenarios import SCENARIOS as BASE_SCENARIOS
from bench.scenarios import Ctx

SCENARIOS = {
    **BASE_SCENARIOS,
    **CAPACITY_SCENARIOS,
    **JOINING_SCENARIOS,
    **REPLICA_SCENARIOS,
    **BILL_SCENARIOS,
}


def scenario_names(choice: str) -> list[str]:
    """The scenarios ``--scenario`` names: one, or for "all" every one but those run on demand
    only (``ON_DEMAND``)."""
    return [name for name in SCENARIOS if name not in ON_DEMAND] if choice == "all" else [choice]


async def main(names: list[str], quick: bool, seed: int) -> int:
    # SIGTERM cancels the run like Ctrl-C does, so every child process is still stopped.
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    report.SUFFIX["value"] = "-quick" if quick else ""
    machine = {**report.machine(), **procs.source_info()}
    print(f"machine: {machine}", flush=True)
    timeout = aiohttp.ClientTimeout(total=60)
    failures: list[str] = []
    with procs.work_root() as root:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for name in names:
                title, fn = SCENARIOS[name]
                print(f"scenario {name}: {title}{' (quick)' if quick else ''}", flush=True)
                started = time.monotonic()
                started_at, load_before = report.now_utc(), report.load_average()
                data = await fn(Ctx(http, quick, seed, Path(root)))
                data = {
                    "scenario": name,
                    "title": title,
                    "quick": quick,
                    "seed": seed,
                    "date": report.today(),
                    "machine": machine,
                    "duration_s": round(time.monotonic() - started, 1),
                    "started_at": started_at,
                    "load_average": {"start": load_before, "end": report.load_average()},
                    **data,
                }
                print(f"  wrote {report.write_json(name, data)}", flush=True)
                for path in report.plots(name, data):
                    print(f"  wrote {path}", flush=True)
                for t in data.get("targets", []):
                    print(f"  target {t['target']}: {t['measured']} -> met={t['met']}")
                failures += [f"({name}) {line}" for line in report.failed_runs(data)]
    print(f"summary: {report.write_summary(report.today())}", flush=True)
    for line in failures:
        print(f"FAILED JOBS {line}", flush=True)
    return 1 if failures else 0


def run() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenario", default="all", choices=[*SCENARIOS, "all"])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    names = scenario_names(args.scenario)
    runner_kwargs = {}
    try:
        import uvloop

        runner_kwargs["loop_factory"] = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(**runner_kwargs) as runner:
        return runner.run(main(names, args.quick, args.seed))


if __name__ == "__main__":
    sys.exit(run())
