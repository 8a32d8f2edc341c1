"""Bearer-token auth: 401/403, open paths, the tenant from the token, tenant isolation, quotas
and endpoint limits answering 429 with Retry-After, and the constant-time token lookup."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from pydantic import SecretStr
from structlog.testing import capture_logs

from scheduler.api.auth import Principal, TokenTable, bearer_token
from scheduler.app import create_app
from scheduler.config import TokenConfig, load_config
from tests.integration.harness import (
    Daemon,
    daemon_config,
    running_daemon,
    running_emulator,
    wait_for_status,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
ALPHA = "alpha-token-0123456789abcdef"
BETA = "beta-token-0123456789abcdef"
LIMITED = "limited-token-0123456789abcdef"
AUTH = {
    "tokens": [
        {"name": "alpha", "token": ALPHA},
        {"name": "beta", "token": BETA, "max_queued_jobs": 3, "max_queued_cost": 1000},
        {"name": "limited", "token": LIMITED, "endpoints": ["echo"]},
    ],
}
ENDPOINTS = {
    "echo": {},
    "cold": {"queue": {"max_depth": 50, "max_cost": 2500}},  # no worker: jobs stay queued
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    async with running_emulator({"echo": {"workers": 1}, "cold": {"workers": 0}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, ENDPOINTS, auth=AUTH,
                               server={"grace_period_s": 0.2})  # fmt: skip
        async with running_daemon(config) as daemon:
            yield daemon


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await resp.json()
    assert body["request_id"] == resp.headers["X-Request-ID"]
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        pytest.param({}, 'Bearer realm="vast-scheduler"', id="missing"),
        pytest.param(bearer("wrong-token-0123456789abcdef"),
                     'Bearer realm="vast-scheduler", error="invalid_token"', id="wrong"),
        pytest.param(bearer(ALPHA[:-1]), 'Bearer realm="vast-scheduler", error="invalid_token"',
                     id="prefix"),
        pytest.param({"Authorization": f"Basic {ALPHA}"}, 'Bearer realm="vast-scheduler"',
                     id="other-scheme"),
        pytest.param({"Authorization": "Bearer"}, 'Bearer realm="vast-scheduler"', id="empty"),
    ],
)  # fmt: skip
async def test_missing_or_wrong_token_is_401_with_a_bearer_challenge(
    daemon: Daemon, http: aiohttp.ClientSession, headers: dict[str, str], challenge: str
) -> None:
    for method, path in [("POST", "/v1/endpoints/echo/jobs"), ("GET", "/v1/jobs/job_x"),
                         ("GET", "/v1/status"), ("GET", "/openapi.json"), ("GET", "/nowhere"),
                         ("POST", "/v1/proxy/echo/generate")]:  # fmt: skip
        async with http.request(method, f"{daemon.url}{path}", json={"payload": {}},
                                headers=headers) as resp:  # fmt: skip
            assert resp.status == 401, path
            assert resp.headers["WWW-Authenticate"] == challenge
            error = await error_of(resp)
        assert error["code"] == "unauthorized"
        assert error["field"] == "Authorization"
    assert daemon.service.store.ids() == []  # nothing was admitted


async def test_token_limited_to_some_endpoints_gets_403_elsewhere(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    for path in ["/v1/endpoints/cold/jobs", "/v1/endpoints/cold/run", "/v1/proxy/cold/generate",
                 "/v1/endpoints/cold/sessions"]:  # fmt: skip
        async with http.post(f"{daemon.url}{path}", json={"payload": {}, "cost": 1},
                             headers=bearer(LIMITED)) as resp:  # fmt: skip
            assert resp.status == 403, path
            error = await error_of(resp)
        assert error == {"code": "forbidden", "field": "endpoint",
                         "message": "this token may not use endpoint cold"}  # fmt: skip
    # Unknown endpoints are forbidden too: a limited token learns nothing about other names.
    async with http.post(f"{daemon.url}/v1/endpoints/nope/jobs", json={"payload": {}},
                         headers=bearer(LIMITED)) as resp:  # fmt: skip
        assert resp.status == 403
    async with http.post(f"{daemon.url}/v1/endpoints/echo/run", json={"payload": {}},
                         headers=bearer(LIMITED)) as resp:  # fmt: skip
        assert resp.status == 200


async def test_default_open_paths_answer_without_a_token(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        async with http.get(f"{daemon.url}{path}") as resp:
            assert resp.status == 200, path
    for path in ("/", "/v1/status", "/openapi.json"):
        async with http.get(f"{daemon.url}{path}") as resp:
            assert resp.status == 401, path
        async with http.get(f"{daemon.url}{path}", headers=bearer(BETA)) as resp:
            assert resp.status == 200, path


async def test_open_paths_are_configurable(http: aiohttp.ClientSession) -> None:
    auth = {**AUTH, "open_paths": ["/", "/v1/status", "/healthz"]}
    async with running_emulator({"echo": {"workers": 1}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"echo": {}}, auth=auth)
        async with running_daemon(config) as daemon:
            for path, status in [("/", 200), ("/v1/status", 200), ("/healthz", 200),
                                 ("/readyz", 401), ("/metrics", 401)]:  # fmt: skip
                async with http.get(f"{daemon.url}{path}") as resp:
                    assert resp.status == status, path


async def test_tenant_is_the_tokens_name_and_x_tenant_cannot_change_it(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    url = f"{daemon.url}/v1/endpoints/echo/jobs"
    async with http.post(url, json={"payload": {}}, headers=bearer(ALPHA)) as resp:
        job_id = (await resp.json())["id"]
    async with http.get(f"{daemon.url}/v1/jobs/{job_id}", headers=bearer(ALPHA)) as resp:
        assert (await resp.json())["tenant"] == "alpha"
    headers = {**bearer(ALPHA), "X-Tenant": "beta"}
    async with http.post(url, json={"payload": {}}, headers=headers) as resp:
        assert resp.status == 403
        assert (await error_of(resp))["field"] == "X-Tenant"
    headers = {**bearer(ALPHA), "X-Tenant": "alpha"}  # naming its own tenant is fine
    async with http.post(url, json={"payload": {}}, headers=headers) as resp:
        assert resp.status == 202


async def test_tenants_cannot_see_each_others_jobs_keys_or_sessions(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    url = f"{daemon.url}/v1/endpoints/echo/jobs"
    body = {"payload": {"secret": 1}, "idempotency_key": "shared-key"}
    async with http.post(url, json=body, headers=bearer(ALPHA)) as resp:
        alpha_job = (await resp.json())["id"]
    for method in ("GET", "DELETE"):
        async with http.request(method, f"{daemon.url}/v1/jobs/{alpha_job}",
                                headers=bearer(BETA)) as resp:  # fmt: skip
            assert resp.status == 404
            assert (await error_of(resp))["code"] == "unknown_job"
    # The same idempotency key from another tenant makes that tenant's own job.
    async with http.post(url, json=body, headers=bearer(BETA)) as resp:
        assert resp.status == 202
        assert (await resp.json())["id"] != alpha_job
    async with http.post(url, json=body, headers=bearer(ALPHA)) as resp:
        assert resp.status == 200
        assert (await resp.json())["id"] == alpha_job
    sessions = f"{daemon.url}/v1/endpoints/echo/sessions"
    async with http.post(sessions, json={"cost": 100}, headers=bearer(ALPHA)) as resp:
        assert resp.status == 201, await resp.text()
        session_id = (await resp.json())["id"]
    run = f"{daemon.url}/v1/endpoints/echo/run"
    async with http.post(run, json={"payload": {}, "session": session_id},
                         headers=bearer(BETA)) as resp:  # fmt: skip
        assert resp.status == 404
        assert (await error_of(resp))["field"] == "session"
    for method in ("GET", "DELETE"):
        async with http.request(method, f"{sessions}/{session_id}", headers=bearer(BETA)) as resp:
            assert resp.status == 404
    async with http.post(run, json={"payload": {}, "session": session_id},
                         headers=bearer(ALPHA)) as resp:  # fmt: skip
        assert resp.status == 200
    async with http.delete(f"{sessions}/{session_id}", headers=bearer(ALPHA)) as resp:
        assert resp.status == 200
    async with aiohttp.ClientSession(headers=bearer(ALPHA)) as alpha:
        await wait_for_status(alpha, daemon, alpha_job, {"succeeded"})


async def submit(
    http: aiohttp.ClientSession, daemon: Daemon, token: str, body: dict[str, Any]
) -> aiohttp.ClientResponse:
    """Queue a job on ``cold`` (no worker: it stays queued while one poller asks Vast)."""
    queue = daemon.service.dispatcher("cold").queue
    before = len(queue)
    async with http.post(f"{daemon.url}/v1/endpoints/cold/jobs", json=body,
                         headers=bearer(token)) as resp:  # fmt: skip
        await resp.read()
    if resp.status == 202:  # back in the queue once its route call answered "no worker"
        await wait_until(lambda: len(queue) == before + 1, timeout_s=5)
    return resp


async def test_tenant_job_and_cost_quotas_answer_429_with_retry_after(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    for _ in range(3):  # beta: at most 3 jobs queued
        assert (await submit(http, daemon, BETA, {"payload": {}, "cost": 10})).status == 202
    resp = await submit(http, daemon, BETA, {"payload": {}, "cost": 10})
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await error_of(resp))["code"] == "tenant_jobs_quota"
    # alpha has no quota of its own and is not held back by beta's
    assert (await submit(http, daemon, ALPHA, {"payload": {}, "cost": 10})).status == 202
    # cancelling frees beta's room
    job_id = next(j for j in daemon.service.store.ids()
                  if daemon.service.get(j).tenant == "beta")  # type: ignore[union-attr]  # fmt: skip
    async with http.delete(f"{daemon.url}/v1/jobs/{job_id}", headers=bearer(BETA)) as r:
        assert r.status == 202
    await wait_until(lambda: len(daemon.service.dispatcher("cold").queue) == 3)
    # beta's queued cost is 20 of 1000: 990 more does not fit, 980 does
    resp = await submit(http, daemon, BETA, {"payload": {}, "cost": 990})
    assert resp.status == 429
    assert (await error_of(resp))["code"] == "tenant_cost_quota"
    assert "Retry-After" in resp.headers
    assert (await submit(http, daemon, BETA, {"payload": {}, "cost": 980})).status == 202
    # a job that could never fit the quota is a bad request, not a "retry later"
    resp = await submit(http, daemon, BETA, {"payload": {}, "cost": 1001})
    assert resp.status == 422
    assert (await error_of(resp))["field"] == "cost"
    rejected = daemon.service.metrics.jobs_rejected
    assert rejected.labels("cold", "tenant_jobs_quota")._value.get() == 1
    assert rejected.labels("cold", "tenant_cost_quota")._value.get() == 1


async def test_endpoint_queued_cost_limit_answers_429_with_retry_after(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    for _ in range(2):  # cold: at most 2500 cost units queued
        assert (await submit(http, daemon, ALPHA, {"payload": {}, "cost": 1000})).status == 202
    resp = await submit(http, daemon, ALPHA, {"payload": {}, "cost": 1000})
    assert resp.status == 429
    assert (await error_of(resp))["code"] == "queue_cost_full"
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await submit(http, daemon, ALPHA, {"payload": {}, "cost": 500})).status == 202
    resp = await submit(http, daemon, ALPHA, {"payload": {}, "cost": 3000})
    assert resp.status == 422
    assert (await error_of(resp))["field"] == "cost"


def token(name: str, secret: str) -> TokenConfig:
    return TokenConfig(name=name, token=SecretStr(secret))


def test_lookup_compares_with_every_token_whichever_matches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secrets = [f"token-number-{i:02d}-0123456789" for i in range(8)]
    table = TokenTable([token(f"t{i}", s) for i, s in enumerate(secrets)])
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("scheduler.api.auth.hmac.compare_digest", counting)
    for presented, expected in [(secrets[0], "t0"), (secrets[-1], "t7"), ("nope", None),
                                (secrets[3] + "x", None), ("", None)]:  # fmt: skip
        calls.clear()
        found = table.lookup(presented)
        assert (found.name if found else None) == expected
        assert len(calls) == len(secrets)  # no early exit on a match or a miss
        assert {len(a) for a, _ in calls} == {len(b) for _, b in calls} == {32}  # digests only


def test_token_table_skips_unset_tokens_and_keeps_limits() -> None:
    table = TokenTable([
        TokenConfig(name="off", token=None),
        TokenConfig(name="on", token=SecretStr(ALPHA), endpoints=("echo",), max_queued_jobs=5),
    ])  # fmt: skip
    assert len(table) == 1
    assert table.lookup(ALPHA) == Principal("on", frozenset({"echo"}), 5, None)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("BEARER abc", "abc"), ("Basic abc", None),
     ("Bearer", None), ("", None), ("Bearer " + "x" * 5000, None)],
)  # fmt: skip
def test_bearer_token_parsing(header: str, expected: str | None) -> None:
    request = make_mocked_request("GET", "/v1/status", headers={"Authorization": header})
    assert bearer_token(request) == expected


def test_auth_off_is_explicit_and_logged_and_on_without_tokens_is_logged() -> None:
    with capture_logs() as logs:
        create_app(daemon_config("http://127.0.0.1:9", {}, auth={"enabled": False}))
    assert any(e["event"] == "auth.disabled" and e["log_level"] == "warning" for e in logs)
    with capture_logs() as logs:
        create_app(daemon_config("http://127.0.0.1:9", {}, auth={}))  # on by default
    assert any(e["event"] == "auth.no_tokens" and e["log_level"] == "error" for e in logs)
    assert not any(e["event"] == "auth.disabled" for e in logs)


async def test_auth_on_without_tokens_denies_everything_but_open_paths(
    http: aiohttp.ClientSession,
) -> None:
    async with running_emulator({"echo": {"workers": 1}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"echo": {}}, auth={})
        async with running_daemon(config) as daemon:
            async with http.post(f"{daemon.url}/v1/endpoints/echo/run",
                                 json={"payload": {}}) as resp:  # fmt: skip
                assert resp.status == 401
            async with http.get(f"{daemon.url}/healthz") as resp:
                assert resp.status == 200


def test_shipped_configs_local_disables_auth_explicitly_and_production_enables_it() -> None:
    env = {"VAST_API_KEY": "k", "VAST_SCHEDULER_TOKEN": "production-token-0123456789"}
    local = load_config(REPO / "config" / "local.yaml", env=env)
    assert local.auth.enabled is False
    assert "enabled: false" in (REPO / "config" / "local.yaml").read_text()
    production = load_config(REPO / "config" / "production.yaml", env=env)
    assert production.auth.enabled is True
    assert [t.name for t in production.auth.tokens if t.token is not None]


async def test_auth_off_takes_the_tenant_from_x_tenant(http: aiohttp.ClientSession) -> None:
    async with running_emulator({"echo": {"workers": 1}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"echo": {}}, auth={"enabled": False})
        async with running_daemon(config) as daemon:
            url = f"{daemon.url}/v1/endpoints/echo/jobs"
            async with http.post(url, json={"payload": {}}, headers={"X-Tenant": "t1"}) as resp:
                job_id = (await resp.json())["id"]
            assert daemon.service.get(job_id).tenant == "t1"  # type: ignore[union-attr]
            for bad in ("", "a b", "x" * 65, "ünï"):
                async with http.post(url, json={"payload": {}}, headers={"X-Tenant": bad}) as resp:
                    assert resp.status == 422, bad
                    assert (await error_of(resp))["field"] == "X-Tenant"
