"""How a worker's answer reaches the caller: buffered into the job, or streamed to a handler."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from scheduler import fastjson


class ResultTooLarge(Exception):
    pass


class MalformedAnswer(Exception):
    """A success answer that says it is JSON and is not: a broken worker, not a result."""


class CallerGone(Exception):
    """The synchronous caller went away while its answer was streaming."""


class StreamBroken(Exception):
    """The worker's answer broke off after part of it reached the caller: it cannot be retried."""


class AnswerCutShort(Exception):
    """The worker broke off its answer before any of it reached the caller. It ran the job, so
    (as after a malformed answer) only an idempotent job may run again."""


def cut_short(exc: BaseException) -> AnswerCutShort:
    return AnswerCutShort(f"worker answer cut short before it reached the caller: "
                          f"{type(exc).__name__}")  # fmt: skip


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
        raw = await self._read_all(resp)
        if 200 <= resp.status < 300 and resp.content_type == "application/json":
            try:
                return fastjson.loads(raw)
            except ValueError as exc:  # UnicodeDecodeError is one too
                raise MalformedAnswer("worker answered 2xx with a body that is not JSON") from exc
        return decode_body(raw, resp.content_type)

    async def _read_all(self, resp: aiohttp.ClientResponse) -> bytes:
        """To its end (``content.read(n)`` would stop at whatever had arrived), bounded."""
        pieces: list[bytes] = []
        size = 0
        try:
            while piece := await resp.content.readany():
                size += len(piece)
                if size > self._max_bytes:
                    raise ResultTooLarge(f"worker answer exceeds {self._max_bytes} bytes")
                pieces.append(piece)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise cut_short(exc) from exc
        return b"".join(pieces)  # one piece: itself, no copy

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


# A worker answer of known length up to this size is read whole before it goes to the caller
# (with its headers, in one write); anything else (chunked, streamed, larger) is piped as it comes.
WHOLE_ANSWER_MAX_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class AnswerStart:
    """What the caller's handler gets: the open response and what was read of it already,
    the whole body (``whole``) or its first bytes."""

    response: aiohttp.ClientResponse
    head: bytes
    whole: bool


async def read_head(resp: aiohttp.ClientResponse) -> AnswerStart:
    """Reads until there is something to send: a small answer of known length whole, any other
    its first bytes. Until then nothing has reached the caller: a worker that breaks off here
    is ``AnswerCutShort``, a failed attempt like any other, not a broken stream."""
    try:
        length = resp.content_length
        if length is not None and length <= WHOLE_ANSWER_MAX_BYTES:
            return AnswerStart(resp, await resp.read(), whole=True)
        first = await resp.content.readany()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise cut_short(exc) from exc
    return AnswerStart(resp, first, whole=not first)  # b"": the answer ended empty


class StreamDelivery:
    """Sync and proxy callers: hand the open response to the waiting handler, which streams it."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.response: asyncio.Future[AnswerStart | None] = loop.create_future()
        self.streamed: asyncio.Future[None] = loop.create_future()

    async def deliver(self, resp: aiohttp.ClientResponse) -> Any:
        if self.response.done():  # the caller is gone already
            raise CallerGone("caller went away before the answer")
        self.response.set_result(await read_head(resp))
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
