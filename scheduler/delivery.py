"""How a worker's answer reaches the caller: buffered into the job, or streamed to a handler."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import aiohttp

from scheduler import fastjson
from scheduler.vast.types import WorkerGone


class ResultTooLarge(Exception):
    pass


class MalformedAnswer(Exception):
    """A success answer that says it is JSON and is not: a broken worker, not a result."""


class CallerGone(Exception):
    """The synchronous caller went away while its answer was streaming."""


class StreamBroken(Exception):
    """The worker's answer broke off after part of it reached the caller: it cannot be retried."""


class Delivery(Protocol):
    async def deliver(self, resp: aiohttp.ClientResponse) -> Any:
        """Consume the worker's answer; returns what the job keeps as its result body."""

    def close(self) -> None:
        """The job ended: release anybody still waiting for an answer."""


class BufferedDelivery:
    """Async jobs: read the answer (bounded) so it can be fetched later."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes

    async def deliver(self, resp: aiohttp.ClientResponse) -> Any:
        try:
            raw = await resp.content.read(self._max_bytes + 1)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise WorkerGone("worker connection lost while reading its answer") from exc
        if len(raw) > self._max_bytes:
            raise ResultTooLarge(f"worker answer exceeds {self._max_bytes} bytes")
        if 200 <= resp.status < 300 and resp.content_type == "application/json":
            try:
                return fastjson.loads(raw)
            except ValueError as exc:  # UnicodeDecodeError is one too
                raise MalformedAnswer("worker answered 2xx with a body that is not JSON") from exc
        return decode_body(raw, resp.content_type)

    def close(self) -> None:
        return None


def decode_body(raw: bytes, content_type: str) -> Any:
    if content_type == "application/json":
        try:
            return fastjson.loads(raw)
        except ValueError:
            pass
    return raw.decode("utf-8", "replace")


class ClosedDelivery:
    """What a finished job keeps instead of its delivery: the live one holds the worker's
    response and its connection graph, which a retained job must not keep alive (memory, and
    every full collection of the garbage collector would walk it)."""

    async def deliver(self, resp: aiohttp.ClientResponse) -> Any:
        raise CallerGone("the job has ended")

    def close(self) -> None:
        return None


CLOSED = ClosedDelivery()


class StreamDelivery:
    """Sync and proxy callers: hand the open response to the waiting handler, which streams it."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.response: asyncio.Future[aiohttp.ClientResponse | None] = loop.create_future()
        self.streamed: asyncio.Future[None] = loop.create_future()

    async def deliver(self, resp: aiohttp.ClientResponse) -> Any:
        if self.response.done():  # the caller is gone already
            raise CallerGone("caller went away before the answer")
        self.response.set_result(resp)
        # Shielded so that a cancelled job does not tear the stream away from the caller mid-way.
        await asyncio.shield(self.streamed)
        return None

    def stream_finished(self, error: BaseException | None = None) -> None:
        if self.streamed.done():
            return
        if error is None:
            self.streamed.set_result(None)
        else:
            self.streamed.set_exception(error)

    def close(self) -> None:
        if not self.response.done():
            self.response.set_result(None)
        if not self.streamed.done():
            self.streamed.cancel()
