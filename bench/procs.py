"""Child processes of the bench: the emulator and the daemon, on 127.0.0.1, always terminated.

Each is started with the venv's interpreter, waited for (bounded), watched for CPU and RSS
(psutil) and stopped with SIGTERM, then SIGKILL after a bounded wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

API_KEY = "bench-emulator-key-0123456789"
# The daemon's bearer token when its config has an ``auth`` section (hardening work); the load
# generator sends it on every daemon call either way (ignored by a daemon without auth).
DAEMON_TOKEN = "bench-daemon-token-0123456789abcdef"
DAEMON_HEADERS = {"Authorization": f"Bearer {DAEMON_TOKEN}"}
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
# A port free_port() found may be taken by another socket before the child binds it: such a
# child is started again on new ports, at most this many times in all.
PORT_TRIES = 3
STOP_TIMEOUT_S = 20.0
SAMPLE_INTERVAL_S = 0.05
REPO = Path(__file__).resolve().parent.parent
# BENCH_SCHEDULER_SRC: a directory holding another copy of the ``scheduler`` package (e.g.
# ``git archive HEAD scheduler | tar -x -C DIR``) to run the emulator and daemon from, so a
# half-edited working tree does not break or skew a run. Default: this repository.
SCHEDULER_SRC = Path(os.environ.get("BENCH_SCHEDULER_SRC") or REPO).resolve()
# BENCH_KEEP_DIR: keep every run's working directory (configs and the emulator's and daemon's
# logs) under this directory instead of a temporary one. BENCH_DAEMON_LOG: the daemon's log
# level (default warning: per-job info events cost CPU on the hot path), e.g. info to read
# its route calls and leases after a run kept with BENCH_KEEP_DIR.
KEEP_DIR = os.environ.get("BENCH_KEEP_DIR")
DAEMON_LOG_LEVEL = os.environ.get("BENCH_DAEMON_LOG") or "warning"


@contextlib.contextmanager
def scheduler_source(src: Path) -> Iterator[None]:
    """The emulators and daemons started inside run the ``scheduler`` package in ``src``
    instead of ``SCHEDULER_SRC`` (a screen of two copies side by side)."""
    global SCHEDULER_SRC  # read by _spawn and source_info at each start
    saved, SCHEDULER_SRC = SCHEDULER_SRC, src.resolve()
    try:
        yield
    finally:
        SCHEDULER_SRC = saved


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Monitor:
    """Samples a process's RSS in a thread (the event loop may be saturated) and reads its CPU
    time at ``mark()``; ``peak_rss_mb`` covers everything since ``reset_peak()``."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"monitor-{pid}")
        self._thread.start()

    def _loop(self) -> None:
        # Bounded: one sample per interval for at most a day.
        for _ in range(int(86_400 / SAMPLE_INTERVAL_S)):
            if self._stop.wait(SAMPLE_INTERVAL_S):
                return
            with contextlib.suppress(psutil.Error):
                self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)

    def rss(self) -> int:
        try:
            return int(self.proc.memory_info().rss)
        except psutil.Error:
            return 0

    def cpu_s(self) -> float:
        try:
            times = self.proc.cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    def reset_peak(self) -> None:
        self.peak_rss = self.rss()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    url: str
    log_path: Path
    monitor: Monitor
    extra: dict[str, Any] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _spawn(name: str, args: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child's lifetime
    # ``python -m`` puts the working directory first on sys.path: run in SCHEDULER_SRC so its
    # ``scheduler`` package is the one imported, with this repository behind it for ``bench``.
    path = os.pathsep.join(dict.fromkeys([str(SCHEDULER_SRC), str(REPO)]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    try:
        return subprocess.Popen(
            [sys.executable, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=SCHEDULER_SRC,
            env=env,
            start_new_session=True,  # our Ctrl-C does not reach it; we stop it ourselves
        )
    finally:
        log.close()


async def _wait_http(http: aiohttp.ClientSession, url: str, child: Child) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited early:\n{child.log_tail()}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{child.name} not up after {START_TIMEOUT_S} s:\n{child.log_tail()}")


async def _started(
    http: aiohttp.ClientSession,
    spawn: Callable[[], Child],
    ready_urls: Callable[[Child], list[str]],
) -> Child:
    """A child from ``spawn`` (which picks its ports) once every one of its ``ready_urls``
    answers 200; started again on new ports when it exited with "address already in use",
    stopped and raised otherwise."""
    for attempt in range(1, PORT_TRIES + 1):
        child = spawn()
        try:
            for url in ready_urls(child):
                await _wait_http(http, url, child)
            return child
        except RuntimeError:
            await stop_child(child)
            if attempt == PORT_TRIES or "address already in use" not in child.log_tail().lower():
                raise
    raise AssertionError("unreachable")


async def stop_child(child: Child) -> None:
    """SIGTERM, wait (bounded), then SIGKILL: the process is gone when this returns."""
    child.monitor.stop()
    if child.alive():
        with contextlib.suppress(ProcessLookupError):
            child.popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(child.popen.wait, STOP_TIMEOUT_S)
    if child.alive():
        with contextlib.suppress(ProcessLookupError):
            child.popen.kill()
    await asyncio.to_thread(child.popen.wait, 5)


@asynccontextmanager
async def emulator_process(
    http: aiohttp.ClientSession, emulator: dict[str, Any], workdir: Path
) -> AsyncIterator[Child]:
    config_path = workdir / "emulator.json"
    config_path.write_text(json.dumps({"api_key": API_KEY, "emulator": emulator}))

    def spawn() -> Child:
        port, log_port = free_port(), free_port()
        args = ["-m", "bench.emulator_proc", "--config", str(config_path)]
        popen = _spawn("emulator", [*args, "--port", str(port), "--log-port", str(log_port)],
                       workdir)  # fmt: skip
        return Child(
            "emulator",
            popen,
            f"http://{HOST}:{port}",
            workdir / "emulator.log",
            Monitor(popen.pid),
            {"log_url": f"http://{HOST}:{log_port}"},
        )

    def ready_urls(child: Child) -> list[str]:
        return [f"{child.url}/admin/stats", f"{child.extra['log_url']}/clock"]

    child = await _started(http, spawn, ready_urls)
    try:
        yield child
    finally:
        await stop_child(child)


def daemon_config(
    autoscaler_url: str,
    port: int,
    endpoints: dict[str, Any],
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"host": HOST, "port": port, "grace_period_s": 2, "max_jobs_retained": 200_000},
        "vast": {"autoscaler_url": autoscaler_url, "api_key": API_KEY},
        # Per-job info events cost CPU on every job; a production deployment under load would
        # log at warning too. Metrics stay on (their cost is part of the hot path).
        "logging": {"level": DAEMON_LOG_LEVEL, "format": "json", "access_log": False},
        "endpoint_defaults": defaults or {},
        "endpoints": endpoints,
    }
    if _daemon_has_auth():
        config["auth"] = {"tokens": [{"name": "bench", "token": DAEMON_TOKEN}]}
    return config


def _daemon_has_auth() -> bool:
    """Whether the daemon that will run has the hardening work's ``auth`` config section (read
    from its source: the bench process may import a different copy of the package)."""
    package = SCHEDULER_SRC / "scheduler"
    for source in (package / "config.py", package / "config" / "daemon.py"):  # before/after split
        with contextlib.suppress(OSError):
            text = source.read_text(encoding="utf-8")
            if "class AuthConfig" in text and "auth: AuthConfig" in text:
                return True
    return False


def source_info() -> dict[str, Any]:
    """Which scheduler code ran: its directory and, for a git checkout, commit and dirtiness."""
    info: dict[str, Any] = {"scheduler_src": str(SCHEDULER_SRC)}
    if SCHEDULER_SRC == REPO:
        git = ["git", "-C", str(REPO)]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            info["commit"] = subprocess.run(
                [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            dirty = subprocess.run(
                [*git, "status", "--porcelain", "scheduler"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            info["scheduler_dirty"] = bool(dirty.strip())
    return info


@asynccontextmanager
async def daemon_process(
    http: aiohttp.ClientSession, config: dict[str, Any], workdir: Path
) -> AsyncIterator[Child]:
    config_path = workdir / "daemon.yaml"

    def args(port: int) -> list[str]:
        listening = {**config, "server": {**config["server"], "port": port}}
        config_path.write_text(yaml.safe_dump(listening, sort_keys=False))
        return ["-m", "scheduler", "run", "--config", str(config_path)]

    async with _healthz_process(http, "daemon", args, workdir) as child:
        yield child


@asynccontextmanager
async def relay_process(
    http: aiohttp.ClientSession, autoscaler_url: str, endpoint: str, workers: int, workdir: Path
) -> AsyncIterator[Child]:
    def args(port: int) -> list[str]:
        return ["-m", "bench.relay_proc", "--autoscaler", autoscaler_url, "--endpoint",
                endpoint, "--workers", str(workers), "--port", str(port)]  # fmt: skip

    async with _healthz_process(http, "relay", args, workdir) as child:
        yield child


@asynccontextmanager
async def _healthz_process(
    http: aiohttp.ClientSession,
    name: str,
    args: Callable[[int], list[str]],
    workdir: Path,
) -> AsyncIterator[Child]:
    """A child serving ``GET /healthz`` on the port given to ``args``: up when that answers,
    always stopped."""

    def spawn() -> Child:
        port = free_port()
        popen = _spawn(name, args(port), workdir)
        url = f"http://{HOST}:{port}"
        return Child(name, popen, url, workdir / f"{name}.log", Monitor(popen.pid))

    child = await _started(http, spawn, lambda child: [f"{child.url}/healthz"])
    try:
        yield child
    finally:
        await stop_child(child)


@contextlib.contextmanager
def work_root() -> Iterator[str]:
    """The directory the runs' working directories go under: ``BENCH_KEEP_DIR`` (kept), else
    a temporary one (removed at the end)."""
    if KEEP_DIR:
        Path(KEEP_DIR).mkdir(parents=True, exist_ok=True)
        yield KEEP_DIR
        return
    with tempfile.TemporaryDirectory(prefix="vast-bench-") as root:
        yield root
