"""Hostile input over real sockets: each gets its documented 4xx naming the field, nothing
reaches a worker that should not, and the daemon stays healthy and keeps serving."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from yarl import URL

from scheduler.api.models import check_worker_route
from tests.integration.harness import (
    Daemon,
    daemon_config,
    running_daemon,
    running_emulator,
    wait_all_finished,
)

TOKEN = "hostile-test-token-0123456789"
AUTH = {"tokens": [{"name": "tenant", "token": TOKEN}]}
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 4096


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon() -> AsyncIterator[Daemon]:
    async with running_emulator({"echo": {"workers": 1}}) as emulator:
        config = daemon_config(
            emulator.autoscaler_url, {"echo": {"max_timeout_s": 60, "default_timeout_s": 30}},
            auth=AUTH, server={"max_body_bytes": MAX_BODY, "grace_period_s": 2},
        )  # fmt: skip
        async with running_daemon(config) as daemon:
            yield daemon


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, headers=HEADERS) as session:
        yield session


pytestmark = pytest.mark.asyncio(loop_scope="module")


async def post(
    client: aiohttp.ClientSession, daemon: Daemon, path: str, *, raw: bytes | None = None,
    body: Any = None, headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    url = URL(daemon.url + path, encoded=True)  # sent as written: no client-side clean-up
    data = raw if raw is not None else json.dumps(body).encode()
    async with client.post(url, data=data, headers=headers) as resp:
        document = await resp.json(content_type=None)
        assert resp.headers["X-Request-ID"] == document["request_id"]
        return resp.status, document["error"]


def deep(levels: int) -> bytes:
    return b'{"payload": ' + b'{"a": ' * (levels - 1) + b"1" + b"}" * levels


BODY_PATHS = ["/v1/endpoints/echo/jobs", "/v1/endpoints/echo/run", "/v1/endpoints/echo/sessions",
              "/v1/proxy/echo/generate"]  # fmt: skip


@pytest.mark.parametrize("path", BODY_PATHS)
@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        pytest.param(b'{"payload": {"blob": "' + b"x" * MAX_BODY + b'"}}', 413, "body_too_large",
                     id="oversized"),
        pytest.param(deep(65), 400, "invalid_json", id="deep-65"),
        pytest.param(b"[" * 200_000 + b"]" * 200_000, 413, "body_too_large", id="deep-huge"),
        pytest.param(b"[" * 3000, 400, "invalid_json", id="deep-unclosed"),
        pytest.param(b'{"payload": {"a": "\xff\xfe"}}', 400, "invalid_json", id="bad-utf8"),
        pytest.param(b"\xff\xfe{\x00}\x00", 400, "invalid_json", id="utf16"),
        pytest.param(b'{"payload": {"a": "\xed\xa0\x80"}}', 400, "invalid_json",
                     id="utf8-surrogate"),
        pytest.param(b"", 400, "invalid_json", id="empty"),
        pytest.param(b"{not json", 400, "invalid_json", id="not-json"),
    ],
)  # fmt: skip
async def test_unreadable_bodies_get_400_or_413_naming_body(
    daemon: Daemon, client: aiohttp.ClientSession, path: str, raw: bytes, status: int, code: str
) -> None:
    got, error = await post(client, daemon, path, raw=raw)
    assert (got, error["code"], error["field"]) == (status, code, "body")


async def test_nesting_up_to_the_limit_is_accepted(
    daemon: Daemon, client: aiohttp.ClientSession
) -> None:
    async with client.post(f"{daemon.url}/v1/endpoints/echo/jobs", data=deep(64)) as resp:
        assert resp.status == 202


ROUTE_TRICKS = [
    "/../admin", "/a/../../b", "/./x", "/a/.", "/..", "//evil.com/x", "http://evil.com/x",
    "evil.com", "", " /x", "/x\x00", "/x\r\nHost: evil.com", "/x\t", "/%2e%2e/x", "/a%2F..",
    "/a?x=1", "/a#frag", "\\\\evil.com\\x", "/x\\..\\y", "/" + "a" * 600, "/caf\u00e9", "/\u202e",
]  # fmt: skip


@pytest.mark.parametrize("route", ROUTE_TRICKS)
async def test_path_tricks_in_the_route_field_get_422(
    daemon: Daemon, client: aiohttp.ClientSession, route: str
) -> None:
    for path in ("/v1/endpoints/echo/jobs", "/v1/endpoints/echo/run"):
        status, error = await post(client, daemon, path, body={"payload": {}, "route": route})
        assert (status, error["field"]) == (422, "route"), (path, error)


PROXY_TRICKS = [
    "%2e%2e/x", "a/%2e%2e/%2e%2e/v1/jobs", "a/../../../v1/status", "/evil.com/x",
    "%2F%2Fevil.com/x", "%00x", "a%0d%0aHost:%20evil", "a%2F..%2F..%2Fb", "a%25", "a%5cb",
    ".", "./generate", "generate/..", "a" * 600, "%FF%FE", "%C3%A9", "a%09b",
]  # fmt: skip


@pytest.mark.parametrize("tail", PROXY_TRICKS)
async def test_path_tricks_in_proxy_urls_get_422_naming_the_route(
    daemon: Daemon, client: aiohttp.ClientSession, tail: str
) -> None:
    status, error = await post(client, daemon, f"/v1/proxy/echo/{tail}", body={})
    assert (status, error["field"]) == (422, "route"), error


async def test_a_scheme_inside_a_proxy_path_stays_a_path_on_the_worker(
    daemon: Daemon, client: aiohttp.ClientSession
) -> None:
    """``/v1/proxy/echo/http:%2F%2Fevil.com`` is the route ``/http://evil.com``: the worker's
    own path, appended to its URL, so the request goes to the worker (which answers 404)."""
    url = URL(f"{daemon.url}/v1/proxy/echo/http:%2F%2Fevil.com", encoded=True)
    async with client.post(url, json={}) as resp:
        assert resp.status == 404
        job = daemon.service.get(resp.headers["X-Job-Id"])
    assert job is not None
    assert job.route == "/http://evil.com"
    assert job.error == "worker answered 404"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cost": 1e10}, "cost"), ({"cost": 1.7e308}, "cost"), ({"cost": -1}, "cost"),
        ({"cost": "5"}, "cost"), ({"cost": True}, "cost"),
        ({"priority": 10**30}, "priority"), ({"priority": -1}, "priority"),
        ({"priority": 5.5}, "priority"), ({"priority": "9"}, "priority"),
        ({"timeout_s": -1}, "timeout_s"), ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": -0.0}, "timeout_s"), ({"timeout_s": 61}, "timeout_s"),
        ({"timeout_s": 1e300}, "timeout_s"), ({"timeout_s": "10"}, "timeout_s"),
        ({"payload": "x"}, "payload"), ({"payload": [1]}, "payload"),
        ({"payload": None}, "payload"),
        ({"idempotency_key": "k" * 300}, "idempotency_key"), ({"session": ""}, "session"),
        ({"webhook": {"url": "http://169.254.169.254/latest"}}, "webhook.url"),
        ({"extra": 1}, "extra"),
    ],
)  # fmt: skip
async def test_out_of_range_fields_get_422_naming_the_field(
    daemon: Daemon, client: aiohttp.ClientSession, fields: dict[str, Any], field: str
) -> None:
    body = {"payload": {}, **fields}
    status, error = await post(client, daemon, "/v1/endpoints/echo/jobs", body=body)
    assert (status, error["field"]) == (422, field), error


@pytest.mark.parametrize(
    ("raw", "field"),
    [(b'{"payload": {}, "cost": 1e999}', "cost"), (b'{"payload": {}, "cost": NaN}', "cost"),
     (b'{"payload": {}, "timeout_s": -Infinity}', "timeout_s"),
     (b'{"payload": {}, "timeout_s": Infinity}', "timeout_s")],
)  # fmt: skip
async def test_non_finite_numbers_get_422(
    daemon: Daemon, client: aiohttp.ClientSession, raw: bytes, field: str
) -> None:
    status, error = await post(client, daemon, "/v1/endpoints/echo/jobs", raw=raw)
    assert (status, error["field"]) == (422, field), error


@pytest.mark.parametrize(
    ("header", "value", "field"),
    [("X-Job-Cost", "1e999", "cost"), ("X-Job-Cost", "nan", "cost"), ("X-Job-Cost", "-1", "cost"),
     ("X-Job-Timeout", "-5", "timeout_s"), ("X-Job-Timeout", "0", "timeout_s"),
     ("X-Job-Timeout", "inf", "timeout_s"), ("X-Job-Priority", "99", "priority"),
     ("X-Job-Priority", "high", "priority")],
)  # fmt: skip
async def test_hostile_proxy_job_headers_get_422(
    daemon: Daemon, client: aiohttp.ClientSession, header: str, value: str, field: str
) -> None:
    status, error = await post(client, daemon, "/v1/proxy/echo/generate", body={},
                               headers={header: value})  # fmt: skip
    assert (status, error["field"]) == (422, field), error


@pytest.mark.parametrize(
    ("path", "status", "field"),
    [("/v1/endpoints/nope/jobs", 404, "endpoint"), ("/v1/endpoints/nope/run", 404, "endpoint"),
     ("/v1/proxy/nope/generate", 404, "endpoint"),
     ("/v1/endpoints/nope/sessions", 404, "endpoint"),
     ("/v1/endpoints/..%2Fecho/jobs", 404, None), ("/v1/endpoints/-echo/jobs", 404, None),
     ("/v1/endpoints/" + "e" * 200 + "/jobs", 404, None),
     ("/v1/endpoints/ech%00o/jobs", 404, None)],
)  # fmt: skip
async def test_unknown_or_malformed_endpoints_get_404(
    daemon: Daemon, client: aiohttp.ClientSession, path: str, status: int, field: str | None
) -> None:
    got, error = await post(client, daemon, path, body={"payload": {}, "cost": 1})
    assert (got, error.get("field")) == (status, field), error


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer " + "x" * 5000},
    ],
    ids=["missing", "wrong", "no-scheme", "longer", "shorter", "basic", "huge"],
)
async def test_missing_or_wrong_tokens_get_401(daemon: Daemon, headers: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as anonymous:
        for path in ("/v1/endpoints/echo/jobs", "/v1/proxy/echo/generate"):
            status, error = await post(anonymous, daemon, path, body={"payload": {}},
                                       headers=headers)  # fmt: skip
            assert (status, error["field"]) == (401, "Authorization")


async def test_odd_but_valid_input_is_served(daemon: Daemon, client: aiohttp.ClientSession) -> None:
    """Lone surrogates in JSON escapes, odd request ids, and the header X-Tenant naming the
    caller's own tenant all pass through without a crash."""
    body = b'{"payload": {"s": "\\ud800", "t": "\\u0000"}}'
    headers = {"X-Request-ID": "bad id with spaces and " + "x" * 200, "X-Tenant": "tenant"}
    async with client.post(f"{daemon.url}/v1/endpoints/echo/run", data=body,
                           headers=headers) as resp:  # fmt: skip
        assert resp.status == 200
        assert resp.headers["X-Request-ID"] != headers["X-Request-ID"]
        assert (await resp.json())["echo"] == {"s": "\ud800", "t": "\x00"}


async def test_daemon_stays_healthy_and_never_answered_500(
    daemon: Daemon, client: aiohttp.ClientSession
) -> None:
    """Runs last in this module: after everything above, the daemon still serves."""
    async with client.get(f"{daemon.url}/healthz") as resp:
        assert resp.status == 200
    async with client.get(f"{daemon.url}/readyz") as resp:
        assert resp.status == 200
    async with client.post(f"{daemon.url}/v1/endpoints/echo/run", json={"payload": {"ok": 1}}) as r:
        assert r.status == 200
        assert (await r.json())["echo"] == {"ok": 1}
    codes = {
        sample.labels["code"]
        for metric in daemon.service.metrics.http_requests.collect()
        for sample in metric.samples
    }
    assert not {code for code in codes if code.startswith("5")}, codes
    for job_id in daemon.service.store.ids():  # no admitted job has a route a worker should not see
        job = daemon.service.get(job_id)
        assert job is not None
        check_worker_route(job.route)
    await wait_all_finished(daemon, daemon.service.store.ids(), timeout_s=20)
