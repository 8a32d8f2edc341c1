"""The Vast-compatible front door with the real official client (``vastai`` 1.9.1, its own code
path; only its SSL-certificate download replaced, as the bench does) against the daemon on the
emulator, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from harness import Daemon, daemon_config, running_daemon, running_emulator
from vastai.serverless.client.client import CoroutineServerless

from scheduler.api.context import METRICS
from scheduler.core.frontdoor_sign import TicketSigner
from scheduler.emulator.emulator import Emulator

ALPHA = "alpha-token-0123456789abcdef"
BETA = "beta-token-0123456789abcdef"
AUTH = {
    "tokens": [
        {"name": "alpha", "token": ALPHA},
        {"name": "beta", "token": BETA, "endpoints": ["llm"]},
    ]
}
ENDPOINTS: dict[str, Any] = {
    "echo": {"default_route": "/generate"},
    "llm": {"default_route": "/v1/chat/completions"},
    "cold": {"default_route": "/generate", "queue": {"max_depth": 1}},
}
EMULATED: dict[str, Any] = {
    "echo": {"workers": 2},
    "llm": {"workers": 1, "workload": "max_tokens"},
    "cold": {"workers": 0},
}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "count"}], "max_tokens": 12}


@dataclass
class Setup:
    emulator: Emulator
    daemon: Daemon
    http: aiohttp.ClientSession

    def route_calls(self) -> int:
        """Route calls that reached the (emulated) Vast autoscaler."""
        return int(self.emulator.stats()["route"]["total"])

    def sample(self, name: str, **labels: str) -> float:
        value = self.daemon.app[METRICS].registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def front_routes(self) -> float:
        """``/route/`` calls the official client made to the daemon."""
        return self.sample("vast_scheduler_http_requests_total", handler="vast_route", code="200")

    def refusals(self, reason: str) -> float:
        return self.sample("vast_scheduler_frontdoor_refusals_total", reason=reason)

    def jobs_submitted(self, endpoint: str = "echo") -> float:
        return self.sample("vast_scheduler_jobs_submitted_total", endpoint=endpoint, mode="proxy")

    async def ticket(self, token: str = ALPHA, endpoint: str = "echo") -> dict[str, Any]:
        body = {"endpoint": endpoint, "api_key": token, "cost": 5, "request_idx": 0}
        async with self.http.post(f"{self.daemon.url}/route/", json=body,
                                  headers=bearer(token)) as resp:  # fmt: skip
            assert resp.status == 200, await resp.text()
            answer: dict[str, Any] = await resp.json()
            return answer

    async def envelope(
        self, auth_data: Any, token: str = ALPHA, endpoint: str = "echo", **extra: Any
    ) -> tuple[int, bytes]:
        body = {"auth_data": auth_data, "payload": {"n": 1}, "session_id": None, **extra}
        url = f"{self.daemon.url}/vast/{endpoint}/generate"
        async with self.http.post(url, json=body, headers=bearer(token)) as resp:
            return resp.status, await resp.read()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def official(daemon: Daemon, token: str = ALPHA) -> CoroutineServerless:
    """The official client with both URLs pointed at the daemon, nothing else changed."""
    logging.getLogger().addHandler(logging.NullHandler())
    client = CoroutineServerless(api_key=token, autoscaler_url=daemon.url, webserver_url=daemon.url)
    client._ssl_context = ssl.create_default_context()  # offline: no certificate download
    return client


@asynccontextmanager
async def running(
    emulated: dict[str, Any] | None = None, endpoints: dict[str, Any] | None = None
) -> AsyncIterator[Setup]:
    async with running_emulator(emulated or EMULATED) as emulator:
        config = daemon_config(
            emulator.autoscaler_url, endpoints or ENDPOINTS, auth=AUTH,
            server={"grace_period_s": 0.2},
        )  # fmt: skip
        async with running_daemon(config) as daemon, aiohttp.ClientSession() as http:
            yield Setup(emulator, daemon, http)


async def test_one_request_through_the_official_client() -> None:
    async with running() as s:
        async with official(s.daemon) as client:
            endpoint = await client.get_endpoint("echo")
            result = await endpoint.request("/generate", {"hello": "world"}, cost=10)
        assert result["ok"] is True
        assert result["status"] == 200
        assert result["response"]["echo"] == {"hello": "world"}
        assert result["url"] == f"{s.daemon.url}/vast/echo"


async def test_500_concurrent_requests_all_answered_with_few_route_calls_and_no_polling() -> None:
    async with running() as s:
        async with official(s.daemon) as client:
            endpoint = await client.get_endpoint("echo")
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(endpoint.request("/generate", {"i": i}, cost=1) for i in range(500))
                ),
                timeout=120,
            )
        assert [r["status"] for r in results] == [200] * 500
        assert sorted(r["response"]["echo"]["i"] for r in results) == list(range(500))
        assert s.front_routes() == 500  # one /route/ per request: never "waiting", no polls
        assert s.route_calls() <= 0.05 * 500, s.route_calls()


async def test_a_streamed_request_streams_the_workers_chunks() -> None:
    async with running() as s, official(s.daemon) as client:
        endpoint = await client.get_endpoint("llm")
        result = await endpoint.request("/v1/chat/completions", {**CHAT, "stream": True},
                                        stream=True)  # fmt: skip
        assert result["status"] == 200
        chunks = [chunk async for chunk in result["response"]]
        assert len(chunks) >= 4
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}


async def test_a_session_create_request_get_end() -> None:
    async with running() as s, official(s.daemon) as client:
        endpoint = await client.get_endpoint("echo")
        session = await endpoint.session(cost=10, lifetime=30)
        pinned = s.daemon.service.dispatcher("echo").sessions.find(session.session_id)
        assert pinned is not None
        assert pinned.owner == "alpha"
        answer = await session.request("/generate", {"in": "session"})
        assert answer["status"] == 200
        assert answer["response"]["echo"] == {"in": "session"}
        assert await session.is_open() is True  # /session/get with the session's ticket
        again = await endpoint.get_session(session.session_id, session.auth_data)
        assert again.session_id == session.session_id
        await session.close()  # /session/end
        assert s.daemon.service.dispatcher("echo").sessions.find(session.session_id) is None
        status, _ = await s.envelope(session.auth_data, session_id=session.session_id)
        assert status == 410  # the official worker's answer for a gone session
        with pytest.raises(Exception, match="does not exist"):
            await endpoint.get_session(session.session_id, session.auth_data)


async def test_a_session_refuses_another_ticket() -> None:
    async with running() as s, official(s.daemon) as client:
        endpoint = await client.get_endpoint("echo")
        session = await endpoint.session(cost=10, lifetime=30)
        other = await s.ticket()
        status, _ = await s.envelope(other, session_id=session.session_id)
        assert status == 401
        url = f"{session.url}/session/end"
        body = {"session_id": session.session_id, "session_auth": other}
        async with s.http.post(url, json=body) as resp:
            assert resp.status == 401
        await session.close()


async def test_a_full_queue_answers_429_and_the_client_retries_until_it_has_room() -> None:
    async with running() as s, official(s.daemon) as client:
        url = f"{s.daemon.url}/v1/endpoints/cold/jobs"
        statuses = []
        for _ in range(5):  # no worker: jobs stay; the queue (max_depth 1) fills up
            async with s.http.post(url, json={"payload": {}}, headers=bearer(ALPHA)) as resp:
                statuses.append(resp.status)
            if resp.status == 429:
                break
        assert statuses[-1] == 429, statuses
        status, body = await s.envelope(await s.ticket(endpoint="cold"), endpoint="cold")
        assert (status, body) == (429, b"")  # as the official worker past max_queue_time
        endpoint = await client.get_endpoint("cold")
        task = asyncio.create_task(endpoint.request("/generate", {"late": True}, cost=1))
        before = s.front_routes()
        deadline = time.monotonic() + 20
        while s.front_routes() < before + 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert s.front_routes() >= before + 2  # refused, routed again: the client's retry
        await s.emulator.add_worker("cold")
        result = await asyncio.wait_for(task, timeout=30)
        assert result["status"] == 200
        assert result["response"]["echo"] == {"late": True}


async def test_a_wrong_token_is_401_everywhere() -> None:
    async with running() as s:
        async with official(s.daemon, token="not-a-token-0123456789") as client:
            with pytest.raises(Exception, match="HTTP 401"):
                await client.get_endpoint("echo")
        ticket = await s.ticket()
        body = {"endpoint": "echo", "api_key": "nope", "cost": 1}
        async with s.http.post(f"{s.daemon.url}/route/", json=body,
                               headers=bearer("nope-0123456789")) as resp:  # fmt: skip
            assert resp.status == 401
        assert (await s.envelope(ticket, token="nope-0123456789"))[0] == 401
        assert s.jobs_submitted() == 0


async def test_a_tokens_endpoint_rights_apply_to_the_listing_and_route() -> None:
    async with running() as s, official(s.daemon, token=BETA) as client:
        assert [e.name for e in await client.get_endpoints()] == ["llm"]
        body = {"endpoint": "echo", "api_key": BETA, "cost": 1}
        async with s.http.post(f"{s.daemon.url}/route/", json=body, headers=bearer(BETA)) as resp:
            assert resp.status == 403


async def test_forged_tampered_replayed_and_borrowed_tickets_are_401_run_nothing_counted() -> None:
    async with running() as s:
        real = await s.ticket()
        forged = TicketSigner(secrets.token_bytes(32)).issue(
            real["url"], "echo", 5, "alpha", time.time()
        )
        tampered = {**real, "cost": 1}
        beta_ticket_for_alpha = {**await s.ticket(token=BETA, endpoint="llm")}
        assert (await s.envelope(forged))[0] == 401
        assert (await s.envelope(tampered))[0] == 401
        assert (await s.envelope({"url": real["url"]}))[0] == 401
        assert (await s.envelope(beta_ticket_for_alpha, endpoint="llm"))[0] == 401
        assert s.jobs_submitted() == 0
        assert s.jobs_submitted("llm") == 0
        assert (await s.envelope(real))[0] == 200
        assert s.jobs_submitted() == 1
        assert (await s.envelope(real))[0] == 401  # replayed
        assert s.jobs_submitted() == 1
        assert s.refusals("bad_signature") == 2
        assert s.refusals("malformed") == 1
        assert s.refusals("mismatch") == 1
        assert s.refusals("replayed") == 1
