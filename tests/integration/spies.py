"""Scripted stand-ins for the autoscaler and a worker that record exactly what they received."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

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


class Handles(Protocol):
    url: str

    async def handle(self, request: web.Request) -> web.StreamResponse: ...


S = TypeVar("S", bound=Handles)


@dataclass
class BreakingWorker:
    """A worker whose first ``breaks`` answers break off: it sends its headers (``Content-Length``
    claims ``declared_length`` bytes when set, else chunked) and ``chunks``, waits for ``release``
    when ``hold`` is set (the test has seen what it waits for), then drops the connection
    (transport abort). Later requests get the whole answer (``sound``, else the chunks). With
    ``endless``, it instead keeps sending chunks until its connection is closed under it (the
    caller is gone), noted in ``outcomes`` and ``connection_lost``."""

    chunks: list[bytes]
    content_type: str = "text/event-stream"
    declared_length: int | None = None
    breaks: int = 1
    hold: bool = False
    endless: bool = False
    sound: list[bytes] | None = None
    received: list[Recorded] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)  # per request: aborted | finished | lost
    release: asyncio.Event = field(default_factory=asyncio.Event)
    connection_lost: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.received.append(Recorded(dict(request.headers), json.loads(raw or b"null"),
                                      time.monotonic()))  # fmt: skip
        breaking = len(self.received) <= self.breaks
        resp = web.StreamResponse(headers={"Content-Type": self.content_type})
        if self.declared_length is not None:
            resp.content_length = self.declared_length
        await resp.prepare(request)
        async with asyncio.timeout(30):  # bounded: a test that forgets to release still ends
            if self.endless and breaking:
                return await self._until_lost(resp)
            for chunk in self.chunks if breaking else self.whole():
                await resp.write(chunk)
            if not breaking:
                await resp.write_eof()
                self.outcomes.append("finished")
                return resp
            if self.hold:
                await self.release.wait()
        assert request.transport is not None
        request.transport.abort()
        self.outcomes.append("aborted")
        return resp

    def whole(self) -> list[bytes]:
        """What a sound answer carries: the chunks, padded to the declared length if any."""
        body = b"".join(self.chunks if self.sound is None else self.sound)
        if self.declared_length is not None:
            body = body.ljust(self.declared_length, b" ")
        return [body]

    async def _until_lost(self, resp: web.StreamResponse) -> web.StreamResponse:
        try:
            for index in range(10_000):
                await resp.write(self.chunks[index % len(self.chunks)])
                await asyncio.sleep(0.01)  # a token every 10 ms, like a model
        except ConnectionError:
            self.outcomes.append("lost")
            self.connection_lost.set()
        return resp


@asynccontextmanager
async def serving(spy: S, path: str) -> AsyncIterator[S]:
    async with serving_routes(spy, {path: spy.handle}):
        yield spy


class HasUrl(Protocol):
    url: str


@asynccontextmanager
async def serving_routes(
    server: HasUrl, routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]
) -> AsyncIterator[None]:
    """``server``'s POST ``routes`` on a port of 127.0.0.1 (its ``url`` set) while inside."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner, port = await listen(app, "127.0.0.1", 0, access_log=None)
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield
    finally:
        await runner.cleanup()


@dataclass
class SessionWorker:
    """A worker that opens sessions and answers its jobs by script (the last repeats), each
    after ``delay_s``; ``answered`` lists the statuses it gave, in order."""

    script: list[int]
    delay_s: float = 0.0
    answered: list[int] = field(default_factory=list)
    url: str = ""

    async def create(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"session_id": f"s{len(self.answered)}"}, status=201)

    async def end(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    async def generate(self, request: web.Request) -> web.Response:
        await request.read()
        status = self.script[min(len(self.answered), len(self.script) - 1)]
        self.answered.append(status)
        await asyncio.sleep(self.delay_s)
        return web.json_response({"n": len(self.answered)}, status=status)


@asynccontextmanager
async def serving_worker(worker: SessionWorker) -> AsyncIterator[SessionWorker]:
    routes = {"/session/create": worker.create, "/session/end": worker.end,
              "/generate": worker.generate}  # fmt: skip
    async with serving_routes(worker, routes):
        yield worker


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
