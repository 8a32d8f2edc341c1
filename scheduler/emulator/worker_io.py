"""How a worker writes its answers: JSON, SSE streams, and the garbage/trickle faults."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiohttp import web

from scheduler.emulator.processor import Processor
from scheduler.emulator.responses import (
    SSE_DONE,
    Kind,
    chunk_texts,
    completion_body,
    echo_body,
    sse_event,
    stream_chunk,
)
from scheduler.emulator.settings import EmulatedEndpoint
from scheduler.emulator.workload import requested_tokens

GARBAGE_BODY = b"\x89<html>definitely not JSON \xff\xfe"
_TRICKLE_MAX_BYTES = 65_536


class ClientGone(Exception):
    """The client went away mid-answer; ``response`` is the already prepared answer."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("client gone")
        self.response = response


class ResponseWriter:
    """Answer bodies for one worker, with its fault modes (garbage, trickle)."""

    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id
        self.garbage = False
        self.trickle_byte_delay_ms = 0.0

    def restore(self) -> None:
        self.garbage = False
        self.trickle_byte_delay_ms = 0.0

    async def garbage_response(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        return await self.send(request, 200, GARBAGE_BODY, "application/json")

    async def serve(
        self,
        request: web.Request,
        kind: Kind,
        payload: dict[str, Any],
        reqnum: int,
        workload: float,
        processor: Processor,
        settings: EmulatedEndpoint,
    ) -> web.StreamResponse:
        """Spend ``workload`` on the processor and answer; streams pace their chunks."""
        tokens = requested_tokens(payload, settings.default_max_tokens)
        if kind != "echo" and payload.get("stream") is True:
            texts = chunk_texts(tokens, settings.stream_chunks_max)
            return await self._stream(request, kind, payload, texts, workload, processor)
        await processor.run(workload)
        if kind == "echo":
            body: dict[str, Any] = echo_body(payload, self.worker_id, reqnum)
        else:
            body = completion_body(kind, payload, tokens, _ident(kind), int(time.time()))
        return await self.send(request, 200, web.json_response(body).body, "application/json")

    async def send(
        self, request: web.Request, status: int, body: Any, content_type: str
    ) -> web.StreamResponse:
        raw = body if isinstance(body, bytes) else bytes(body or b"")
        if self.trickle_byte_delay_ms <= 0:
            return web.Response(status=status, body=raw, content_type=content_type)
        response = web.StreamResponse(status=status, headers={"Content-Type": content_type})
        response.content_length = len(raw)
        await response.prepare(request)
        await self._write(response, raw)
        await response.write_eof()
        return response

    async def _stream(
        self,
        request: web.Request,
        kind: Kind,
        payload: dict[str, Any],
        texts: list[str],
        workload: float,
        processor: Processor,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        ident, created = _ident(kind), int(time.time())
        try:
            for i, text in enumerate(texts):
                await processor.run(workload / len(texts))
                last = i == len(texts) - 1
                chunk = stream_chunk(kind, payload, text, ident, created, last)
                await self._write(response, sse_event(chunk))
            await self._write(response, SSE_DONE)
            await response.write_eof()
        except ConnectionError as exc:
            raise ClientGone(response) from exc
        return response

    async def _write(self, response: web.StreamResponse, data: bytes) -> None:
        delay_s = self.trickle_byte_delay_ms / 1000
        if delay_s <= 0:
            await response.write(data)
            return
        for i in range(min(len(data), _TRICKLE_MAX_BYTES)):
            await response.write(data[i : i + 1])
            await asyncio.sleep(delay_s)
        if len(data) > _TRICKLE_MAX_BYTES:
            await response.write(data[_TRICKLE_MAX_BYTES:])


def _ident(kind: Kind) -> str:
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
