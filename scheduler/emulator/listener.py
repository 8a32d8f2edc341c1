"""A worker's listening socket, owned by the emulator so that shutdown stops accepting first.

Why not ``scheduler.listen``: on CPython 3.11, a connection the event loop has already
accepted but whose transport is not built yet is dropped without being closed when the
server closes in between (``asyncio.Server._attach`` asserts inside the transport's
constructor and ``_accept_connection2`` swallows the error): the server-side socket stays
open until garbage collection (``ResourceWarning: unclosed transport``). aiohttp closes the
server first thing in ``AppRunner.cleanup()``, so every connection arriving while a worker
was stopped or killed could leak one. Here the listening socket's reader is removed first,
the connections already accepted are given a few loop iterations to get their transports
and reach aiohttp, and only then is the server closed (``kill`` also resets every one).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp import web

# Loop iterations for an accepted connection to get its transport (1) and reach aiohttp's
# connection table through ``connection_made`` (2), with one to spare.
ACCEPT_SETTLE_ITERATIONS = 3
BACKLOG = 128


def bind_socket(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket (SO_REUSEADDR: a restart reuses its port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Listener:
    """One aiohttp app served on a socket this object owns; ``close`` drains accepts first."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None

    @property
    def open(self) -> bool:
        return self._runner is not None

    async def start(self, app: web.Application, host: str, port: int, **options: Any) -> int:
        """Listen on ``host:port`` (0: any free port); returns the bound port."""
        if self._runner is not None:
            raise RuntimeError("already listening")
        sock = bind_socket(host, port)
        runner = web.AppRunner(app, **options)
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner, self._sock = runner, sock
        return int(sock.getsockname()[1])

    async def close(self, *, abort: bool) -> None:
        """Stop accepting, let accepted connections settle, then shut the server down.

        ``abort``: reset every open connection (in flight or idle) before the shutdown;
        otherwise in-flight requests get aiohttp's graceful shutdown timeout.
        """
        runner, sock = self._runner, self._sock
        self._runner = self._sock = None
        if runner is None or sock is None:
            return
        if sock.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(sock.fileno())
        for _ in range(ACCEPT_SETTLE_ITERATIONS):
            await asyncio.sleep(0)
        if abort:
            abort_connections(runner)
        await runner.cleanup()


def abort_connections(runner: web.AppRunner) -> None:
    server = runner.server
    for handler in server.connections if server is not None else []:
        transport = handler.transport
        if transport is not None:
            transport.abort()
