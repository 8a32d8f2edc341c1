"""Start-up, SIGTERM drain, no orphan tasks, and refusing a broken config: real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

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


async def wait_healthy(http: aiohttp.ClientSession, url: str, timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                async with http.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)


SLOW_CONFIG = """
server: {{host: 127.0.0.1, port: {port}, grace_period_s: 10}}
auth: {{enabled: false}}
vast: {{autoscaler_url: embedded}}
logging: {{format: json, level: info}}
emulator:
  status_interval_s: 0.2
  endpoints:
    slow: {{workers: 1, perf: 100}}
endpoints:
  slow: {{}}
"""


async def test_sigterm_drains_in_flight_job_and_exits_zero(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    config = tmp_path / "daemon.yaml"
    config.write_text(SLOW_CONFIG.format(port=port))
    url = f"http://127.0.0.1:{port}"
    proc = await start_process("run", "--config", str(config))
    try:
        await wait_healthy(http, url)
        # One second of work (cost 100 at 100 units/s), then SIGTERM while it runs.
        in_flight = asyncio.create_task(
            http.post(f"{url}/v1/endpoints/slow/run", json={"payload": {"n": 1}})
        )
        await asyncio.sleep(0.4)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        async with http.post(f"{url}/v1/endpoints/slow/jobs", json={"payload": {}}) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "draining"
        async with http.get(f"{url}/readyz") as resp:
            assert resp.status == 503
        resp = await in_flight
        assert resp.status == 200
        assert (await resp.json())["echo"] == {"n": 1}
        resp.release()
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
    assert '"event": "daemon.stopped"' in stderr


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
    assert b"vast.api_key: environment variable VAST_API_KEY is not set" in stderr
    secrets = {"VAST_API_KEY": "k-123456", "VAST_SCHEDULER_WEBHOOK_SECRET": "s-123456"}
    code, stdout, stderr = await check(production, **secrets)
    assert code == 0, stderr
    assert b"k-123456" not in stdout + stderr
