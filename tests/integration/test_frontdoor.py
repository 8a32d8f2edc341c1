"""The Vast-compatible front door with the real official client (``vastai`` 1.9.1, its own code
path; only its SSL-certificate download replaced, as the bench does) against the daemon on the
emulator, over real sockets on 127.0.0.1."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from harness import Daemon, daemon_config, running_daemon, running_emulator
from vastai.serverless.client.client import CoroutineServerless

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
}


@dataclass
class Setup:
    emulator: Emulator
    daemon: Daemon
    http: aiohttp.ClientSession

    def route_calls(self) -> int:
        return int(self.emulator.stats()["route"]["total"])


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
    emulated = emulated or {"echo": {"workers": 1}, "llm": {"workers": 1, "workload": "max_tokens"}}
    async with running_emulator(emulated) as emulator:
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
