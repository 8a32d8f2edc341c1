"""The worker client tells a request that never reached the worker (``WorkerGone``: connection
refused) from one whose connection broke after it was sent (``WorkerLost``: the worker read it,
then dropped the connection before answering), over real sockets on 127.0.0.1. The dispatcher
re-runs only the first, or the second on an idempotent endpoint (``core.retry``)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from scheduler.vast.types import Ready, WorkerGone, WorkerLost
from scheduler.vast.worker_client import WorkerClient


def ready(url: str) -> Ready:
    return Ready(url, 1.0, 1, 0, {"url": url, "cost": 1.0, "reqnum": 1})


@asynccontextmanager
async def reads_then_drops() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A server that reads a whole request, then closes the connection without an answer."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))  # fmt: skip
        received.append(await reader.readexactly(length))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.close()
        await server.wait_closed()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def post(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        client = WorkerClient(session, read_timeout_s=5, connect_timeout_s=5)
        async with client.post(ready(url), "/generate", b'{"n": 1}') as resp:
            await resp.read()


async def test_a_refused_connection_never_reached_the_worker() -> None:
    with pytest.raises(WorkerGone) as caught:
        await post(f"http://127.0.0.1:{closed_port()}")
    assert not isinstance(caught.value, WorkerLost)
    assert caught.value.kind == "gone"


async def test_a_connection_dropped_after_the_request_was_sent_is_lost() -> None:
    async with reads_then_drops() as (url, received):
        with pytest.raises(WorkerLost) as caught:
            await post(url)
    assert caught.value.kind == "lost"
    assert len(received) == 1
    assert b'"payload": {"n": 1}' in received[0]
    assert "after the request was sent" in str(caught.value)
