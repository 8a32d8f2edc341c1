"""Sampling the daemon with py-spy during a measured run (``BENCH_PYSPY=1``), and reading the
collapsed stacks back: ``python -m bench.profile FILE [N]`` prints the top functions by own
(self) and total samples."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

STOP_TIMEOUT_S = 15.0


def start(pid: int, output: Path, rate_hz: int = 200) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("  py-spy not found: no profile", flush=True)
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    args = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(rate_hz),
        "--format",
        "raw",
        "--output",
        str(output),
        "--nonblocking",
    ]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def package(frame: str) -> str:
    """``"f (aiohttp/client.py:12)"`` -> ``"aiohttp"``; the event loop's own C code (uvloop:
    polling, socket reads and writes) shows up as ``Runner.run`` of asyncio's runners."""
    where = frame.rpartition("(")[2].rstrip(")")
    if where.startswith("asyncio/runners.py"):
        return "event loop (uvloop, syscalls)"
    return where.split("/")[0].split(":")[0] if "/" in where else where.split(":")[0]


def summarise(path: Path, top: int = 25) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] += count
        by_package[package(frames[-1])] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"{samples} samples", "", "own (self) samples by package:"]
    lines += [f"{n / samples:7.1%}  {p}" for p, n in by_package.most_common(12)]
    lines += ["", "own (self) samples:"]
    lines += [f"{n / samples:7.1%}  {f}" for f, n in own.most_common(top)]
    lines += ["", "total (inclusive) samples:"]
    lines += [f"{n / samples:7.1%}  {f}" for f, n in total.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
    time.sleep(0)
