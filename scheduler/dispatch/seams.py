"""The dispatcher's seams to the outside: small protocols a test can fake in a few lines."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

import aiohttp

from scheduler.vast.types import Ready, RouteResult


class Router(Protocol):
    async def route(
        self, endpoint: str, cost: float, request_idx: int | None = None
    ) -> RouteResult: ...


class Forwarder(Protocol):
    def post(
        self, ready: Ready, route: str, payload_json: bytes, session_id: str | None = None
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]: ...

    async def create_session(self, ready: Ready, lifetime_s: float) -> str: ...

    async def end_session(self, ready: Ready, session_id: str) -> None: ...
