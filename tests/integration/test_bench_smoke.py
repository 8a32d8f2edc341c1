"""The benchmark runner still runs end to end (a quick scenario: direct, official, daemon)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def read_results(directory: Path) -> str:
    results = list(directory.glob("*-b*.json"))
    assert results, list(directory.iterdir())
    return json.dumps(json.loads(results[0].read_text()))


@pytest.mark.timeout(150)
async def test_quick_benchmark_writes_results(tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_RESULTS": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench", "--scenario", "b", "--quick", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(140):
            output, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, output.decode()[-3000:]
    text = read_results(tmp_path)
    for system in ("direct", "official", "vast-scheduler"):
        assert system in text
