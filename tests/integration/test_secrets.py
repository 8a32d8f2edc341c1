"""Known secrets never appear in logs, metrics, or any answer, with every error path forced.

The secrets: the Vast API key (a wrong one, so the route call is rejected), the webhook
secret (the webhook's receiver is down), every configured auth token, and tokens callers
got wrong (a near miss of a real one, a real one with a suffix, one far too long). The
daemon runs as its own process: everything it writes (structlog and stdlib logging,
access log included) is captured from its stdout and stderr.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.integration.harness import API_KEY, running_emulator
from tests.integration.test_lifecycle import ROOT, free_port, wait_healthy

WRONG_KEY = "sk-known-secret-key-0123456789"
WEBHOOK_SECRET = "whsec-known-secret-abcdef"
TOKEN_ALPHA = "tok-alpha-5d41402abc4b2a76b9719d91"
TOKEN_BETA = "tok-beta-7e240de74fb1ed08fa08d38063"
TOKEN_OPS = "tok-ops-8f14e45fceea167a5a36dedd4b"
TOKEN_NEW = "tok-new-c9f0f895fb98ab9159f51fd0297"  # written into the file before a reload
NEAR_MISS = TOKEN_ALPHA[:-1] + ("0" if TOKEN_ALPHA[-1] != "0" else "1")  # one char off
WITH_SUFFIX = TOKEN_BETA + "x"
TOO_LONG = TOKEN_OPS + "z" * 5000  # over the 4096-character limit: not even compared
SECRETS = (WRONG_KEY, WEBHOOK_SECRET, TOKEN_ALPHA, TOKEN_BETA, TOKEN_OPS, TOKEN_NEW, NEAR_MISS,
           WITH_SUFFIX)  # fmt: skip

CONFIG = """
server:
  host: 127.0.0.1
  port: {port}
  grace_period_s: 2
  webhook: {{secret: "${{HOOK_SECRET}}", allowed_hosts: [127.0.0.1], max_attempts: 2,
            backoff_initial_s: 0.05}}
auth:
  enabled: true
  open_paths: [/healthz, /readyz, /metrics]
  tokens:
    - {{name: alpha, token: "${{TOKEN_ALPHA}}"}}
    - {{name: beta, token: "${{TOKEN_BETA}}", endpoints: [held], max_queued_jobs: 1}}
    - {{name: ops, token: "{ops_token}", admin: true}}
vast:
  autoscaler_url: {autoscaler}
  api_key: "${{TEST_VAST_KEY}}"
logging: {{format: json, level: debug}}
endpoints:
  echo: {{max_attempts: 2}}
  other: {{max_attempts: 2}}
  # Beta's first job lingers here (no route call for 10 s), so it is still queued when beta's
  # second comes: its quota is what refuses that one, however slow the machine (on echo the
  # first job failed at its route call, and freed the quota, before the second on a busy day).
  held: {{max_attempts: 2, batch: {{linger_ms: 10000}}}}
"""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Answers:
    bodies: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    async def add(self, resp: aiohttp.ClientResponse) -> None:
        self.statuses.append(resp.status)
        self.bodies.append(f"{resp.status} {dict(resp.headers)} {await resp.text()}")


async def exercise(
    http: aiohttp.ClientSession, url: str, hook_port: int, config: Path, ops_token: str
) -> Answers:
    """Forces the error paths, with good and bad tokens; keeps every answer."""
    answers = Answers()
    alpha, beta, ops = bearer(TOKEN_ALPHA), bearer(TOKEN_BETA), bearer(ops_token)
    hook = {"url": f"http://127.0.0.1:{hook_port}/hook"}
    requests = [
        ("POST", "/v1/endpoints/echo/run", {"payload": {"x": 1}}, alpha),  # route 401
        ("POST", "/v1/endpoints/echo/jobs", {"payload": {}, "webhook": hook}, alpha),
        ("POST", "/v1/endpoints/held/jobs", {"payload": {}}, beta),
        ("POST", "/v1/endpoints/held/jobs", {"payload": {}}, beta),  # over beta's quota: 429
        ("POST", "/v1/endpoints/other/jobs", {"payload": {}}, beta),  # not beta's: 403
        ("POST", "/v1/endpoints/echo/jobs", {"payload": {}, "cost": -1}, alpha),
        ("POST", "/v1/endpoints/nope/jobs", {"payload": {}}, alpha),
        ("POST", "/v1/proxy/echo/../etc", {}, alpha),
        ("GET", "/v1/jobs/job_unknown", None, alpha),
        ("POST", "/v1/endpoints/echo/jobs", {"payload": {}}, bearer(NEAR_MISS)),  # 401
        ("POST", "/v1/endpoints/echo/run", {"payload": {}}, bearer(WITH_SUFFIX)),  # 401
        ("GET", "/v1/status", None, bearer(TOO_LONG)),  # 401
        ("GET", "/v1/status", None, {"Authorization": f"Token {TOKEN_ALPHA}"}),  # 401
        ("GET", "/v1/status", None, {"X-Api-Key": TOKEN_ALPHA}),  # 401
        ("POST", "/v1/admin/reload", None, alpha),  # not an admin token: 403
        ("GET", "/v1/status", None, alpha),
        ("GET", "/", None, alpha),  # the status page
        ("GET", "/metrics", None, {}),
        ("GET", "/readyz", None, {}),
        ("GET", "/openapi.json", None, alpha),
    ]  # fmt: skip
    for method, path, body, headers in requests:
        async with http.request(method, f"{url}{path}", json=body, headers=headers) as resp:
            await answers.add(resp)
    # A live reload that swaps the admin token: the old and new values must stay unseen.
    await asyncio.to_thread(swap_token, config, ops_token, TOKEN_NEW)
    async with http.post(f"{url}/v1/admin/reload", headers=ops) as resp:
        await answers.add(resp)
    for headers in (ops, bearer(TOKEN_NEW)):  # the old admin token is now refused
        async with http.get(f"{url}/v1/status", headers=headers) as resp:
            await answers.add(resp)
    await asyncio.sleep(1.0)  # the webhook retries against a closed port, then gives up
    for path in ("/metrics", "/v1/status", "/"):
        async with http.get(f"{url}{path}", headers=bearer(TOKEN_NEW)) as resp:
            await answers.add(resp)
    return answers


def swap_token(config: Path, old: str, new: str) -> None:
    config.write_text(config.read_text().replace(old, new))


async def run_daemon(
    http: aiohttp.ClientSession, tmp_path: Path, autoscaler_url: str
) -> tuple[Answers, str]:
    port, hook_port = free_port(), free_port()
    config = tmp_path / "daemon.yaml"
    # The ops token is written into the file itself (not via ${ENV}), as a reload rewrites it.
    config.write_text(CONFIG.format(port=port, autoscaler=autoscaler_url, ops_token=TOKEN_OPS))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TEST_VAST_KEY": WRONG_KEY,
           "HOOK_SECRET": WEBHOOK_SECRET, "TOKEN_ALPHA": TOKEN_ALPHA,
           "TOKEN_BETA": TOKEN_BETA}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scheduler", "run", "--config", str(config), cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_healthy(http, f"http://127.0.0.1:{port}")
        answers = await exercise(http, f"http://127.0.0.1:{port}", hook_port, config, TOKEN_OPS)
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            stdout, stderr = await proc.communicate()
    return answers, (stdout + stderr).decode()


async def test_known_secrets_never_leak(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with running_emulator({"echo": {"workers": 1}}) as emulator:
        answers, logs = await run_daemon(http, tmp_path, emulator.autoscaler_url)
    # The error paths really ran.
    assert '"event": "route.error"' in logs  # the rejected Vast key
    assert '"event": "webhook.abandoned"' in logs  # the webhook failure
    assert '"event": "config.reloaded"' in logs  # the live reload with new tokens
    assert '"POST /v1/admin/reload HTTP/1.1\\" 403' in logs  # stdlib access log captured too
    assert "unauthorized" in answers.bodies[0]
    assert answers.statuses[3] == 429  # beta's quota
    assert answers.statuses[4] == 403  # beta may not use "other"
    assert answers.statuses[9:14] == [401] * 5  # near miss, suffix, too long, scheme, header
    assert answers.statuses[14] == 403  # reload without an admin token
    assert answers.statuses[15:17] == [200, 200]  # /v1/status and the status page
    assert answers.statuses[-6:-3] == [200, 401, 200]  # reload; old admin token; new one
    for secret in (*SECRETS, TOO_LONG[:64]):
        tail = secret[-16:]  # a token's distinctive end: catches a truncated leak too
        assert secret not in logs, secret
        assert tail not in logs, secret
        for body in answers.bodies:
            assert secret not in body, (secret, body[:300])
            assert tail not in body, (secret, body[:300])


ACCOUNT_KEY = "acct-known-secret-9b2f4e1c7d"
ECHO_KEY = "echo-known-secret-3a8d6f0b52"
ROTATED_KEY = "rotated-known-secret-c41e97"  # learnt from the listing at runtime only
ACCOUNT_CONFIG = """
server: {{host: 127.0.0.1, port: {port}, grace_period_s: 2}}
auth: {{enabled: false}}
vast: {{autoscaler_url: {url}, console_url: {url}, account_api_key: "${{VAST_API_KEY}}",
       key_refresh_min_interval_s: 0}}
logging: {{format: json, level: debug}}
endpoint_defaults: {{max_attempts: 2, reuse: never}}  # every job routes: meets the 401
endpoints: {{echo: {{}}, other: {{}}}}
"""


async def test_account_and_endpoint_keys_never_leak(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The account key, an endpoint key from the listing, the same endpoint's key after a
    rotation (learnt at runtime), and the shared key the listing shows for another endpoint:
    none in the logs, /metrics, /v1/status, the status page, /readyz or an error."""
    emulated = {"echo": {"workers": 1, "api_key": ECHO_KEY}, "other": {"workers": 1}}
    async with running_emulator(emulated, account_api_key=ACCOUNT_KEY) as emulator:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config = tmp_path / "account.yaml"
        config.write_text(ACCOUNT_CONFIG.format(port=port, url=emulator.autoscaler_url))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "VAST_API_KEY": ACCOUNT_KEY}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scheduler", "run", "--config", str(config), cwd=ROOT,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        answers = Answers()
        try:
            await wait_healthy(http, url)
            for endpoint in ("echo", "other"):
                async with http.post(f"{url}/v1/endpoints/{endpoint}/run",
                                     json={"payload": {}}) as resp:  # fmt: skip
                    await answers.add(resp)
            emulator.rotate_key("echo", ROTATED_KEY)
            emulator.rotate_key("other", "other-" + ROTATED_KEY)
            for endpoint in ("echo", "other"):
                async with http.post(f"{url}/v1/endpoints/{endpoint}/run",
                                     json={"payload": {}, "timeout_s": 10}) as resp:  # fmt: skip
                    await answers.add(resp)
            for path in ("/v1/status", "/", "/metrics", "/readyz", "/v1/jobs/job_unknown"):
                async with http.get(f"{url}{path}") as resp:
                    await answers.add(resp)
        finally:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                stdout, stderr = await proc.communicate()
        listings = emulator.stats()["console"]["totals"]["endpoints_list"]
    logs = (stdout + stderr).decode()
    assert '"event": "vast.endpoints_listed"' in logs
    assert listings == 2  # one refresh at runtime brought both rotated keys
    assert set(answers.statuses[:4]) == {200}, answers.bodies
    for secret in (ACCOUNT_KEY, ECHO_KEY, ROTATED_KEY, "other-" + ROTATED_KEY, API_KEY):
        assert secret not in logs, secret
        for body in answers.bodies:
            assert secret not in body, (secret, body[:300])
