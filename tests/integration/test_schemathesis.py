"""schemathesis against /openapi.json on a live daemon (in-process, on the emulator), once
with auth on (a valid token on every request) and once with auth off (the spec then has
X-Tenant instead of the bearer scheme).

A few thousand generated requests in total (examples, coverage, fuzzing and stateful phases;
positive and negative data) must find no unexpected 5xx (``schemathesis_hooks``), and every
answer must conform to the spec: status, content type, headers, body schema; schema-violating
requests are refused with a 4xx; requests without or with a wrong token get 401. Afterwards
the daemon is healthy, never answered 500, and every job it admitted ends.

``positive_data_acceptance`` is left out: whether a schema-valid body is accepted depends on
things a schema cannot say: the endpoint's ``max_timeout_s``, the webhook allow-list, queue and
tenant limits (429), a session id that exists, a worker route the worker serves.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.integration.harness import (
    Daemon,
    daemon_config,
    running_daemon,
    running_emulator,
    wait_all_finished,
)

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "schemathesis-token-0123456789abcdef"
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "100"))
MIN_CASES = 1200  # per run; about 1,500 at 100 examples per operation
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261125")
RUN_TIMEOUT_S = 150

# Constant workload: fast. Processor sharing and no hold by Vast: a caller session the fuzzer
# opens with an absurd cost (1e9) puts its worker past max_queue_time for as long as it
# lives, and Vast (the emulator too) then holds every route call: /sessions and /run answer
# 503 no_worker_ready while two workers are Ready. Real, and reported, but not this test's
# subject (the API's contract under any input).
_WORKER = {"workers": 2, "service": "processor_sharing", "max_queue_time_s": 1e12}
EMULATED = {"echo": _WORKER, "llm": _WORKER}
ENDPOINTS = {
    "echo": {"default_route": "/generate", "queue": {"max_depth": 500, "max_cost": 1e10}},
    "llm": {
        "default_route": "/v1/chat/completions",
        "cost": {"estimator": "llm_tokens", "max": 1e6},  # hostile payloads into the estimator
        "max_timeout_s": 30,
        "default_timeout_s": 10,
    },
}
AUTH = {
    "tokens": [
        {"name": "fuzzer", "token": TOKEN, "max_queued_jobs": 200, "max_queued_cost": 1e10},
    ],
}
SERVER = {
    "grace_period_s": 5,
    "webhook": {"secret": "schemathesis-hook-secret", "allowed_hosts": ["127.0.0.1"]},
}


async def run_schemathesis(url: str, workdir: Path, auth: bool) -> tuple[int | None, str]:
    args = [
        "run", f"{url}/openapi.json",
        *(["--header", f"Authorization: Bearer {TOKEN}"] if auth else []),
        "--checks", "all",
        "--exclude-checks", "not_a_server_error,positive_data_acceptance",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", SEED,
        "--workers", "1",  # CPython 3.11's ast.parse is not safe in hypothesis' threads
        "--request-timeout", "10",
        "--max-response-time", "8",  # a hung request fails the run rather than the clock
        "--generation-database", "none",
        "--no-color",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks"}  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", *args, cwd=workdir, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        return None, output.decode(errors="replace")
    return process.returncode, output.decode(errors="replace")


def generated_cases(output: str) -> int:
    for line in output.splitlines():
        if line.strip().endswith("generated") or " generated," in line:
            return int(line.split()[0])
    return 0


def server_errors(daemon: Daemon) -> float:
    family = daemon.service.metrics.http_requests
    return sum(
        sample.value
        for metric in family.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("code", "").startswith("5")
        and sample.labels["code"] != "504"
    )  # fmt: skip


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
@pytest.mark.parametrize("auth", [True, False], ids=["auth-on", "auth-off"])
async def test_schemathesis_finds_nothing(
    tmp_path: Path, http: aiohttp.ClientSession, auth: bool
) -> None:
    async with running_emulator(EMULATED) as emulator:
        config = daemon_config(
            emulator.autoscaler_url, ENDPOINTS, auth=AUTH if auth else {"enabled": False},
            server=SERVER,
        )  # fmt: skip
        async with running_daemon(config) as daemon:
            code, output = await run_schemathesis(daemon.url, tmp_path, auth)
            tail = output[-12_000:]
            assert code == 0, tail
            assert generated_cases(output) >= MIN_CASES, tail
            async with http.get(f"{daemon.url}/healthz") as resp:
                assert resp.status == 200
            assert server_errors(daemon) == 0
            await wait_all_finished(daemon, daemon.service.store.ids(), timeout_s=40)
