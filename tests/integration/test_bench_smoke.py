"""The benchmark runner runs end to end (scenario (b), quick: direct, official, daemon) and
what it writes is a real result: every job of every system ran and succeeded."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.report import failed_runs

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = {"direct (floor)", "official vastai client", "vast-scheduler (run)"}


def read_results(directory: Path, output: str) -> dict[str, Any]:
    results = list(directory.glob("*-b-quick.json"))
    assert len(results) == 1, (list(directory.iterdir()), output)
    data: dict[str, Any] = json.loads(results[0].read_text())
    return data


@pytest.mark.timeout(150)
async def test_quick_benchmark_writes_results(tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_RESULTS": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench", "--scenario", "b", "--quick", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(140):
            raw, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = raw.decode()[-3000:]
    data = read_results(tmp_path, output)
    assert (data["scenario"], data["quick"]) == ("b", True)
    jobs = data["params"]["jobs"]
    assert jobs > 0
    runs = data["runs"]
    assert sorted(run["system"] for run in runs) == sorted(SYSTEMS), output
    for run in runs:
        counts = (run["jobs"], run["succeeded"], run["failed"])
        assert counts == (jobs, jobs, 0), (run["system"], run["failed_statuses"], output)
        assert run["throughput_jobs_s"] > 0, run["system"]
        latency = run["latency_ms"]
        assert 0 < latency["p50"] <= latency["p99"], (run["system"], latency)
        assert len(run["latencies_ms"]) == jobs
        assert run["route_calls"] >= 1, run["system"]
    assert proc.returncode == 0, output


def test_a_failed_job_makes_the_bench_fail() -> None:
    def run(system: str, failed: int, **extra: Any) -> dict[str, Any]:
        return {"variant": "v", "system": system, "jobs": 10, "failed": failed, **extra}

    assert failed_runs({"runs": [run("direct", 0), run("daemon", 0)]}) == []
    assert failed_runs({"runs": [run("direct", 0), run("daemon", 2)]}) == [
        "v / daemon: 2 of 10 jobs failed"
    ]
    # (e)'s official row fails by design; a row of medians repeats its repetitions' failures.
    designed = run("official", 10, failed_by_design=True)
    assert failed_runs({"runs": [designed, run("daemon", 2, rep="median")]}) == []
