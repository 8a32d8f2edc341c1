"""Start-up, SIGTERM drain (in-flight and queued jobs), no orphan tasks, and refusing a broken
config: real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.integration.harness import (
    daemon_config,
    running_daemon,
    running_emulator,
    wait_for_status,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


SECRET_VARS = ("VAST_API_KEY", "VAST_SCHEDULER_WEBHOOK_SECRET")


async def start_process(*args: str, **extra_env: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
    env.update(PYTHONPATH=str(ROOT), **extra_env)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scheduler", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=1)


async def wait_healthy(
    http: aiohttp.ClientSession,
    url: str,
    timeout_s: float = 20,
    proc: asyncio.subprocess.Process | None = None,
) -> bool:
    """Waits until ``url`` answers /healthz (True), or ``proc`` has exited (False);
    TimeoutError after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while proc is None or proc.returncode is None:
            try:
                async with http.get(f"{url}/healthz", timeout=HEALTH_TIMEOUT) as resp:
                    if resp.status == 200:
                        return True
            except (aiohttp.ClientConnectionError, TimeoutError):
                pass  # not listening yet, or another socket holds the port
            await asyncio.sleep(0.1)
    return False


def write(path: Path, raw: dict[str, Any] | str) -> None:
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))


class DaemonProcess:
    """A daemon process (``python -m scheduler run``) whose JSON log goes to a file (a pipe
    nobody reads while it runs would fill up and block the daemon)."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path, url: str) -> None:
        self.proc, self.log, self.url = proc, log, url

    def all_events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found

    def events(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.all_events() if event.get("event") == name]

    async def sighup_and_wait(self, event: str) -> dict[str, Any]:
        before = len(self.events(event))
        self.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: len(self.events(event)) > before, timeout_s=10)
        return self.events(event)[-1]

    async def sigterm_and_see_it_drain(self, http: aiohttp.ClientSession, endpoint: str) -> None:
        """SIGTERM, then: ``/readyz`` turns 503 (polled, bounded) and a new job gets 503
        ``draining`` as JSON on both the async and the sync path."""
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            while True:
                async with http.get(f"{self.url}/readyz") as resp:
                    if resp.status == 503:
                        assert (await resp.json())["status"] == "draining"
                        break
                    assert resp.status == 200
                await asyncio.sleep(0.02)
        for path in ("jobs", "run"):
            url = f"{self.url}/v1/endpoints/{endpoint}/{path}"
            async with http.post(url, json={"payload": {"late": True}}) as resp:
                assert resp.status == 503
                assert resp.content_type == "application/json"
                assert (await resp.json())["error"]["code"] == "draining"

    async def exit_code(self, timeout_s: float = 15) -> int:
        async with asyncio.timeout(timeout_s):
            return await self.proc.wait()


PORT_TRIES = 3


async def started(http: aiohttp.ClientSession, daemon: DaemonProcess) -> bool:
    """Waits until the daemon answers /healthz (True); False if it exited because its port was
    taken meanwhile (``free_port`` closes the port before the daemon binds it, and the kernel
    may give it to another socket in between). Any other failure to start is raised with the
    daemon's log."""
    try:
        if await wait_healthy(http, daemon.url, proc=daemon.proc):
            return True
    except TimeoutError:
        if daemon.proc.returncode is None:
            daemon.proc.kill()
        await daemon.proc.wait()
        raise AssertionError(f"not healthy in 20 s: {daemon.log.read_text()[-2000:]}") from None
    await daemon.proc.wait()
    text = daemon.log.read_text()
    if "address already in use" in text.lower():
        return False
    raise AssertionError(f"exited {daemon.proc.returncode} before healthy: {text[-2000:]}")


@asynccontextmanager
async def launched(
    tmp_path: Path, http: aiohttp.ClientSession, raw: dict[str, Any]
) -> AsyncIterator[tuple[DaemonProcess, Path]]:
    """``python -m scheduler run`` on ``raw`` (its ``server.port`` set to a free port),
    healthy; one still running at the end gets SIGTERM and must exit 0."""
    config, log = tmp_path / "daemon.yaml", tmp_path / "daemon.log"
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
    for _ in range(PORT_TRIES):
        port = free_port()
        server = {**raw.get("server", {}), "host": "127.0.0.1", "port": port}
        write(config, {**raw, "server": server})
        with log.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "scheduler", "run", "--config", str(config), cwd=ROOT,
                env={**env, "PYTHONPATH": str(ROOT)}, stdout=sink, stderr=sink,
            )  # fmt: skip
        daemon = DaemonProcess(proc, log, f"http://127.0.0.1:{port}")
        if await started(http, daemon):
            break
    else:
        raise AssertionError(f"the port was taken {PORT_TRIES} times: {log.read_text()[-2000:]}")
    try:
        yield daemon, config
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            assert await daemon.exit_code() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def endpoint_status(http: aiohttp.ClientSession, url: str, endpoint: str) -> dict[str, Any]:
    async with http.get(f"{url}/v1/status") as resp:
        assert resp.status == 200
        found: dict[str, Any] = (await resp.json())["endpoints"][endpoint]
        return found


def slow_process(perf: float, grace_period_s: float, **endpoint: Any) -> dict[str, Any]:
    """An embedded emulator with two workers of ``perf`` units/s (a job costs 100)."""
    return {
        "server": {"grace_period_s": grace_period_s},
        "auth": {"enabled": False},
        "vast": {"autoscaler_url": "embedded"},
        "logging": {"format": "json", "level": "info", "access_log": False},
        "emulator": {"status_interval_s": 0.2,
                     "endpoints": {"slow": {"workers": 2, "perf": perf}}},
        "endpoint_defaults": {"poll": {"initial_s": 0.05, "max_s": 0.2}},
        "endpoints": {"slow": endpoint},
    }  # fmt: skip


async def test_sigterm_drains_in_flight_job_and_exits_zero(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # Two seconds of work (cost 100 at 50 units/s): SIGTERM lands once it runs.
    async with launched(tmp_path, http, slow_process(50, 10)) as (daemon, _):
        in_flight = asyncio.create_task(
            http.post(f"{daemon.url}/v1/endpoints/slow/run", json={"payload": {"n": 1}})
        )
        async with asyncio.timeout(10):
            while (await endpoint_status(http, daemon.url, "slow"))["inflight"] != 1:
                await asyncio.sleep(0.02)
        await daemon.sigterm_and_see_it_drain(http, "slow")
        resp = await in_flight
        assert resp.status == 200
        assert (await resp.json())["echo"] == {"n": 1}
        resp.release()
        assert await daemon.exit_code() == 0
    assert [e["status"] for e in daemon.events("job.finished")] == ["succeeded"]
    assert daemon.events("daemon.stopped")


async def test_sigterm_runs_every_queued_and_running_job_then_exits_zero(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Memory store: SIGTERM stops intake, and what was admitted, queued or running, still
    runs to success within the grace period (README: "lets queued and in-flight jobs
    finish"); sync callers get their answers; then the process exits 0."""
    # 0.4 s a job alone, two at a time: 14 jobs are ~3 s of work against a 30 s grace period.
    raw = slow_process(250, 30, max_concurrency=2)
    async with launched(tmp_path, http, raw) as (daemon, _):
        url = f"{daemon.url}/v1/endpoints/slow"
        sync_callers = [
            asyncio.create_task(http.post(f"{url}/run", json={"payload": {"sync": n}}))
            for n in range(7)
        ]
        async_ids = []
        for n in range(7):
            async with http.post(f"{url}/jobs", json={"payload": {"async": n}}) as resp:
                assert resp.status == 202
                async_ids.append((await resp.json())["id"])
        await wait_until(lambda: len(daemon.events("job.queued")) == 14, timeout_s=10)
        before = await endpoint_status(http, daemon.url, "slow")
        assert before["inflight"] >= 1, before
        assert before["queue_depth"] >= 4, before
        await daemon.sigterm_and_see_it_drain(http, "slow")
        during = await endpoint_status(http, daemon.url, "slow")
        assert during["queue_depth"] > 0, during  # drain began with jobs still queued
        answers = []
        for caller in sync_callers:
            resp = await caller
            answers.append((resp.status, (await resp.json())["echo"]))
            resp.release()
        assert answers == [(200, {"sync": n}) for n in range(7)]
        assert await daemon.exit_code() == 0
    events = daemon.all_events()
    names = [event.get("event") for event in events]
    finished = [e for e in events if e.get("event") == "job.finished"]
    assert [e["status"] for e in finished] == ["succeeded"] * 14
    assert set(async_ids) <= {e["job_id"] for e in finished}
    draining = names.index("daemon.draining")
    after_sigterm = names[draining:].count("job.finished")
    assert after_sigterm >= during["queue_depth"]  # the queued ones ran after SIGTERM
    assert "daemon.grace_period_over" not in names
    assert names.index("daemon.stopped") > max(
        i for i, n in enumerate(names) if n == "job.finished"
    )


async def test_shutdown_leaves_no_tasks_behind(http: aiohttp.ClientSession) -> None:
    before = asyncio.all_tasks()
    async with running_emulator({"echo": {"workers": 1}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"echo": {}})
        async with running_daemon(config) as daemon:
            for _ in range(3):
                async with http.post(
                    f"{daemon.url}/v1/endpoints/echo/run", json={"payload": {}}
                ) as resp:
                    assert resp.status == 200
            async with http.post(
                f"{daemon.url}/v1/endpoints/echo/jobs", json={"payload": {}}
            ) as resp:
                job_id = (await resp.json())["id"]
            await wait_for_status(http, daemon, job_id, {"succeeded"})
    await asyncio.sleep(0)
    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leftover == []


async def test_grace_period_over_fails_what_remains(http: aiohttp.ClientSession) -> None:
    async with running_emulator({"slow": {"workers": 1, "perf": 20}}) as emulator:
        config = daemon_config(
            emulator.autoscaler_url, {"slow": {"max_concurrency": 1}},
            server={"grace_period_s": 0.3},
        )  # fmt: skip
        async with running_daemon(config) as daemon:
            service = daemon.service
            async with http.post(
                f"{daemon.url}/v1/endpoints/slow/jobs", json={"payload": {}}
            ) as resp:
                running = (await resp.json())["id"]
            async with http.post(
                f"{daemon.url}/v1/endpoints/slow/jobs", json={"payload": {}}
            ) as resp:
                queued = (await resp.json())["id"]
            await wait_until(lambda: service.dispatchers["slow"].inflight == 1)
    for job_id in (running, queued):
        job = service.get(job_id)
        assert job is not None
        assert str(job.status) == "failed"
        assert job.error == "daemon shut down before the job finished"


BROKEN_CONFIG = """
server: {port: 99999}
vast: {autoscaler_url: "ftp://nowhere", api_key: "${MISSING_KEY_FOR_TEST}"}
endpoints:
  llm:
    queue: {max_depth: 0}
    bogus: 1
"""
EXPECTED_PROBLEMS = [
    "server.port: must be <= 65535",
    "vast.autoscaler_url: must be 'embedded' or an http(s) URL",
    "vast.api_key: environment variable MISSING_KEY_FOR_TEST is not set",
    "endpoints.llm.queue.max_depth: must be > 0",
    "endpoints.llm.bogus: unknown field",
]


@pytest.mark.parametrize("command", ["check-config", "run"])
async def test_invalid_config_is_refused_with_every_path(tmp_path: Path, command: str) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(BROKEN_CONFIG)
    args = [command, str(config)] if command == "check-config" else ["run", "--config", str(config)]
    proc = await start_process(*args)
    async with asyncio.timeout(20):
        stdout, stderr = await proc.communicate()
    assert proc.returncode == 1
    lines = stderr.decode().splitlines()
    for problem in EXPECTED_PROBLEMS:
        assert problem in lines
    assert stdout == b""


async def check(path: Path, **env: str) -> tuple[int | None, bytes, bytes]:
    proc = await start_process("check-config", str(path), **env)
    async with asyncio.timeout(20):
        stdout, stderr = await proc.communicate()
    return proc.returncode, stdout, stderr


async def test_check_config_accepts_the_bundled_files() -> None:
    code, stdout, stderr = await check(ROOT / "config" / "local.yaml")
    assert code == 0, stderr
    assert b": ok (2 endpoints)" in stdout
    production = ROOT / "config" / "production.yaml"
    code, _, stderr = await check(production)
    assert code == 1  # it takes its secrets from the environment
    assert b"vast.account_api_key: environment variable VAST_API_KEY is not set" in stderr
    secrets = {"VAST_API_KEY": "k-123456", "VAST_SCHEDULER_WEBHOOK_SECRET": "s-123456"}
    code, stdout, stderr = await check(production, **secrets)
    assert code == 0, stderr
    assert b"k-123456" not in stdout + stderr
