"""The console client and the key registry against scripted servers on 127.0.0.1: what goes
on the wire, how each failure is typed, one listing call for many refused route calls, and the
route call retried with the new key."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from scheduler.config import AppConfig
from scheduler.listen import listen
from scheduler.vast.console import (
    MAX_LISTING_BYTES,
    ConsoleClient,
    ConsoleError,
    ConsoleMalformed,
    ConsoleServerError,
    ConsoleUnauthorized,
    ConsoleUnavailable,
)
from scheduler.vast.endpoint_keys import EndpointKeys
from scheduler.vast.route_client import RouteClient
from scheduler.vast.types import Ready, RouteKeyUnknown, RouteUnauthorized
from tests.integration.harness import wait_until
from tests.integration.spies import SpyServer, ready_answer, serving
from tests.integration.test_lifecycle import free_port

ACCOUNT = "acct-spy-0123456789abcdef"
OLD, NEW = "old-endpoint-key-0123456", "new-endpoint-key-6543210"


def listing(key: str) -> dict[str, Any]:
    return {"success": True, "results": [
        {"id": 42, "endpoint_name": "spy", "api_key": key, "endpoint_state": "active",
         "max_queue_time": 30.0, "target_queue_time": 10.0, "max_workers": 5},
    ]}  # fmt: skip


@dataclass
class Console:
    """Answers the listing with ``answers`` in turn (the last repeats), after ``delay_s``."""

    answers: list[tuple[int, Any]]
    delay_s: float = 0.0
    requests: list[web.Request] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        self.bodies.append(await request.json() if request.can_read_body else None)
        await asyncio.sleep(self.delay_s)
        status, body = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(body, bytes):
            return web.Response(status=status, body=body)
        return web.json_response(body, status=status)


@asynccontextmanager
async def console_at(console: Console) -> AsyncIterator[Console]:
    app = web.Application()
    app.router.add_get("/api/v0/endptjobs/", console.handle)
    app.router.add_post("/get_endpoint_workers/", console.handle)
    runner, port = await listen(app, "127.0.0.1", 0, access_log=None)
    console.url = f"http://127.0.0.1:{port}"
    try:
        yield console
    finally:
        await runner.cleanup()


def client(http: aiohttp.ClientSession, url: str, timeout_s: float = 5) -> ConsoleClient:
    return ConsoleClient(http, url, url, SecretStr(ACCOUNT), timeout_s)


async def test_listing_request_carries_the_key_as_bearer_only(
    http: aiohttp.ClientSession,
) -> None:
    async with console_at(Console([(200, listing(OLD))])) as console:
        found = await client(http, console.url).list_endpoints()
    (request,) = console.requests
    assert request.headers["Authorization"] == f"Bearer {ACCOUNT}"
    assert dict(request.query) == {"client_id": "me"}  # no ?api_key=: it would reach logs
    assert [(e.id, e.name, e.api_key.get_secret_value()) for e in found.endpoints] == [
        (42, "spy", OLD)
    ]


@pytest.mark.parametrize(
    ("answer", "error", "words"),
    [
        ((401, {"success": False, "msg": ACCOUNT}), ConsoleUnauthorized, "refused (401)"),
        ((403, {}), ConsoleUnauthorized, "refused (403)"),
        ((500, {"msg": ACCOUNT}), ConsoleServerError, "answered 500"),
        ((200, b"not json " + ACCOUNT.encode()), ConsoleMalformed, "not JSON"),
        ((200, b" " * (MAX_LISTING_BYTES + 1)), ConsoleMalformed, "larger than"),
        ((200, {"success": True, "results": "x"}), ConsoleMalformed, "no results list"),
    ],
)
async def test_listing_failures_are_typed_and_say_nothing_of_the_answer(
    http: aiohttp.ClientSession, answer: tuple[int, Any], error: type[ConsoleError], words: str
) -> None:
    async with console_at(Console([answer])) as console:
        with pytest.raises(error) as raised:
            await client(http, console.url).list_endpoints()
    assert words in str(raised.value)
    assert ACCOUNT not in str(raised.value)


async def test_unreachable_and_silent_consoles_are_unavailable(
    http: aiohttp.ClientSession,
) -> None:
    with pytest.raises(ConsoleUnavailable):
        await client(http, f"http://127.0.0.1:{free_port()}").list_endpoints()
    async with console_at(Console([(200, listing(OLD))], delay_s=2)) as console:
        with pytest.raises(ConsoleUnavailable, match="timed out"):
            await client(http, console.url, timeout_s=0.2).list_endpoints()


async def test_endpoint_workers_posts_id_and_account_key(http: aiohttp.ClientSession) -> None:
    rows = [{"id": 9, "status": "loading", "measured_perf": 0, "reqs_working": 0}]
    answers = [(200, rows), (200, {"error_msg": "not ready"})]
    async with console_at(Console(answers)) as console:
        seen = await client(http, console.url).endpoint_workers(42)
        unavailable = await client(http, console.url).endpoint_workers(42)
    assert console.bodies[0] == {"id": 42, "api_key": ACCOUNT}
    assert [(w.id, w.status) for w in seen.workers] == [(9, "loading")]
    assert (unavailable.workers, unavailable.unavailable) == ((), "not ready")


def registry(url: str, http: aiohttp.ClientSession, min_interval_s: float = 30) -> EndpointKeys:
    config = AppConfig.model_validate({
        "vast": {"autoscaler_url": url, "account_api_key": ACCOUNT,
                 "key_refresh_min_interval_s": min_interval_s},
        "endpoints": {"spy": {}},
    })  # fmt: skip
    loop = asyncio.get_running_loop()
    return EndpointKeys(config.vast, config.endpoints, client(http, url), loop.time)


async def test_many_refused_calls_make_one_listing_call(http: aiohttp.ClientSession) -> None:
    console = Console([(200, listing(OLD)), (200, listing(NEW))], delay_s=0.1)
    async with console_at(console):
        keys = registry(console.url, http)
        await keys.start()
        assert keys.key("spy") == SecretStr(OLD)
        fresh = await asyncio.gather(*(keys.unauthorized("spy", SecretStr(OLD))
                                       for _ in range(10)))  # fmt: skip
        assert {k.get_secret_value() if k else None for k in fresh} == {NEW}
        assert len(console.requests) == 2  # start + one refresh for all ten
        # the new key refused too, within the min interval: no listing; wait, do not fail
        with pytest.raises(RouteKeyUnknown, match="at most every 30 s"):
            await keys.unauthorized("spy", SecretStr(NEW))
        assert len(console.requests) == 2
        assert keys.status()["refreshes_after_401"] == 1
        await keys.close()


async def test_a_refused_route_call_is_retried_with_the_new_key(
    http: aiohttp.ClientSession,
) -> None:
    console = Console([(200, listing(OLD)), (200, listing(NEW))])
    script = [(401, {"error": "bad key"}, {}), (200, ready_answer("http://127.0.0.1:9"), {})]
    async with console_at(console), serving(SpyServer(script), "/route/") as autoscaler:
        keys = registry(console.url, http)
        await keys.start()
        router = RouteClient(http, autoscaler.url, keys, 5, 60)
        result = await router.route("spy", 100)
        await keys.close()
    assert isinstance(result, Ready)
    assert result.url == "http://127.0.0.1:9"
    sent = [(r.headers["Authorization"], r.body["api_key"]) for r in autoscaler.received]
    assert sent == [(f"Bearer {OLD}", OLD), (f"Bearer {NEW}", NEW)]


async def test_a_refused_key_the_listing_cannot_replace_waits_or_fails(
    http: aiohttp.ClientSession,
) -> None:
    """The console refusing the account key after start: the call is retried later (no job
    fails); a fresh listing with the very same key: the refusal stands."""
    console = Console([(200, listing(OLD)), (401, {"msg": "revoked"}), (200, listing(OLD))])
    script = [(401, {"error": "bad key"}, {})]
    async with console_at(console), serving(SpyServer(script), "/route/") as autoscaler:
        keys = registry(console.url, http, min_interval_s=0)
        await keys.start()
        router = RouteClient(http, autoscaler.url, keys, 5, 60)
        with pytest.raises(RouteKeyUnknown, match=r"refused \(401\)"):
            await router.route("spy", 100)
        with pytest.raises(RouteUnauthorized):
            await router.route("spy", 100)
        assert keys.key("spy") == SecretStr(OLD)  # kept through the failed refresh
        await keys.close()
    assert len(console.requests) == 3


async def in_pieces(request: web.Request) -> web.StreamResponse:
    """A JSON answer sent in two pieces, a moment apart (as a slow link would deliver it)."""
    await request.read()
    if request.path.startswith("/api/"):
        body = json.dumps(listing(OLD)).encode()
    else:
        body = json.dumps(ready_answer("http://127.0.0.1:9")).encode()
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await resp.write(body[:20])
    await asyncio.sleep(0.05)
    await resp.write(body[20:])
    await resp.write_eof()
    return resp


async def test_answers_that_come_in_pieces_are_read_whole(http: aiohttp.ClientSession) -> None:
    app = web.Application()
    app.router.add_get("/api/v0/endptjobs/", in_pieces)
    app.router.add_post("/route/", in_pieces)
    runner, port = await listen(app, "127.0.0.1", 0, access_log=None)
    url = f"http://127.0.0.1:{port}"
    try:
        found = await client(http, url).list_endpoints()
        result = await RouteClient(http, url, SecretStr(OLD), 5, 60).route("spy", 100)
    finally:
        await runner.cleanup()
    assert [e.name for e in found.endpoints] == ["spy"]
    assert isinstance(result, Ready)


async def test_a_silent_console_does_not_hold_the_start(http: aiohttp.ClientSession) -> None:
    console = Console([(200, listing(OLD))], delay_s=0.5)
    async with console_at(console):
        keys = registry(console.url, http)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await keys.start(wait_s=0.05)
        assert loop.time() - began < 0.4  # not the console's half second
        reason = keys.not_ready_reason()
        assert reason is not None
        assert "not answered yet" in reason
        runner = asyncio.create_task(keys.run())
        await wait_until(lambda: keys.not_ready_reason() is None, timeout_s=5)
        await asyncio.sleep(1.1)  # past the longest first retry: none is made
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await keys.close()
    assert keys.key("spy") == SecretStr(OLD)
    assert len(console.requests) == 1  # the read begun at start was the one that answered
