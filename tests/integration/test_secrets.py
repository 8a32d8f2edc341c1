"""A known API key and webhook secret never appear in logs, metrics, or any answer, with every
error path forced: a rejected key, an unreachable webhook, bad input, a dead worker."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from tests.integration.harness import running_emulator
from tests.integration.test_lifecycle import ROOT, free_port, wait_healthy

WRONG_KEY = "sk-known-secret-key-0123456789"
WEBHOOK_SECRET = "whsec-known-secret-abcdef"

CONFIG = """
server:
  host: 127.0.0.1
  port: {port}
  grace_period_s: 2
  webhook: {{secret: "${{HOOK_SECRET}}", allowed_hosts: [127.0.0.1], max_attempts: 2,
            backoff_initial_s: 0.05}}
auth: {{enabled: false}}
vast:
  autoscaler_url: {autoscaler}
  api_key: "${{TEST_VAST_KEY}}"
logging: {{format: json, level: debug}}
endpoints:
  echo: {{max_attempts: 2}}
"""


async def exercise(http: aiohttp.ClientSession, url: str, hook_port: int) -> list[str]:
    """Forces the error paths; returns every answer body it got."""
    bodies: list[str] = []
    requests = [
        ("POST", "/v1/endpoints/echo/run", {"payload": {"x": 1}}),  # route 401: wrong key
        ("POST", "/v1/endpoints/echo/jobs",
         {"payload": {}, "webhook": {"url": f"http://127.0.0.1:{hook_port}/hook"}}),
        ("POST", "/v1/endpoints/echo/jobs", {"payload": {}, "cost": -1}),
        ("POST", "/v1/endpoints/nope/jobs", {"payload": {}}),
        ("POST", "/v1/proxy/echo/../etc", {}),
        ("GET", "/v1/jobs/job_unknown", None),
        ("GET", "/v1/status", None),
        ("GET", "/metrics", None),
        ("GET", "/readyz", None),
    ]  # fmt: skip
    for method, path, body in requests:
        async with http.request(method, f"{url}{path}", json=body) as resp:
            bodies.append(f"{resp.status} {dict(resp.headers)} {await resp.text()}")
    await asyncio.sleep(1.0)  # the webhook retries against a closed port, then gives up
    async with http.get(f"{url}/metrics") as resp:
        bodies.append(await resp.text())
    return bodies


async def test_known_secrets_never_leak(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with running_emulator({"echo": {"workers": 1}}) as emulator:
        port, hook_port = free_port(), free_port()
        config = tmp_path / "daemon.yaml"
        config.write_text(CONFIG.format(port=port, autoscaler=emulator.autoscaler_url))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TEST_VAST_KEY": WRONG_KEY,
               "HOOK_SECRET": WEBHOOK_SECRET}  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scheduler", "run", "--config", str(config), cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await wait_healthy(http, f"http://127.0.0.1:{port}")
            bodies = await exercise(http, f"http://127.0.0.1:{port}", hook_port)
        finally:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                stdout, stderr = await proc.communicate()
    logs = (stdout + stderr).decode()
    assert '"event": "route.error"' in logs  # the rejected-key path really ran
    assert '"event": "webhook.abandoned"' in logs  # and the webhook failure path
    assert "unauthorized" in bodies[0]
    for secret in (WRONG_KEY, WEBHOOK_SECRET):
        assert secret not in logs
        for body in bodies:
            assert secret not in body
