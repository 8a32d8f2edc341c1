"""Scripted stand-ins for the autoscaler and a worker that record exactly what they received."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from scheduler.listen import listen


@dataclass
class Recorded:
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class SpyServer:
    """Answers each request with the next scripted ``(status, body, headers)``; the last repeats."""

    script: list[tuple[int, Any, dict[str, str]]]
    received: list[Recorded] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.received.append(Recorded(dict(request.headers), json.loads(raw or b"null"),
                                      time.monotonic()))  # fmt: skip
        status, body, headers = self.script[min(len(self.received), len(self.script)) - 1]
        if isinstance(body, str):
            return web.Response(status=status, text=body, headers=headers)
        return web.json_response(body, status=status, headers=headers)


@asynccontextmanager
async def serving(spy: SpyServer, path: str) -> AsyncIterator[SpyServer]:
    app = web.Application()
    app.router.add_post(path, spy.handle)
    runner, port = await listen(app, "127.0.0.1", 0, access_log=None)
    spy.url = f"http://127.0.0.1:{port}"
    try:
        yield spy
    finally:
        await runner.cleanup()


def ready_answer(worker_url: str, reqnum: int = 1, request_idx: int = 0) -> dict[str, Any]:
    return {
        "endpoint": "spy",
        "url": worker_url,
        "cost": 100.5,
        "reqnum": reqnum,
        "signature": "c2lnbmF0dXJl",
        "request_idx": request_idx,
        "__request_id": "abc-123",
    }


def waiting_answer(request_idx: int) -> dict[str, Any]:
    return {"endpoint": "spy", "status": "Loading: 1, Ready: 0", "request_idx": request_idx,
            "__request_id": "w-1"}  # fmt: skip
