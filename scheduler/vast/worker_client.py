"""Sending a job to a worker: ``POST {url}{route}`` with the protocol's envelope."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from scheduler.vast.types import (
    Ready,
    SessionRefused,
    WorkerError,
    WorkerGone,
    WorkerTimeout,
    WorkerTLSError,
)

SESSION_CALL_TIMEOUT_S = 10.0


def make_ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """Trust the system roots plus Vast's own root CA (or whatever bundle is configured)."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


def envelope_head(ready: Ready, session_id: str | None) -> bytes:
    """The envelope up to the payload: the same for every job on one lease."""
    # The route answer goes verbatim: the worker checks the signature over its url and keys
    # its bookkeeping by reqnum, so nothing in it may be rewritten.
    head = json.dumps({"auth_data": ready.auth_data, "session_id": session_id})
    return head[:-1].encode() + b', "payload": '


MAX_CACHED_HEADS = 1024  # leases are few: a full cache holds old answers, and starts again


JSON_HEADERS = {"Content-Type": "application/json"}


@contextmanager
def translated_errors() -> Iterator[None]:
    """aiohttp's errors at the worker boundary become the protocol's typed errors."""
    try:
        yield
    except TimeoutError as exc:
        raise WorkerTimeout("worker did not answer in time") from exc
    except aiohttp.ClientSSLError as exc:
        raise WorkerTLSError(f"TLS with the worker failed: {type(exc).__name__}") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise WorkerGone(f"worker connection failed: {type(exc).__name__}") from exc


class WorkerClient:
    """Opens a streamed response; connection failures become ``WorkerGone``/``WorkerTimeout``."""

    def __init__(
        self, session: aiohttp.ClientSession, read_timeout_s: float, connect_timeout_s: float = 10.0
    ) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        # Envelope heads by (answer, session), encoded once per lease rather than per job; an
        # entry holds its answer, so the answer's id cannot be reused by another meanwhile.
        self._heads: dict[tuple[int, str | None], tuple[Ready, bytes]] = {}

    @asynccontextmanager
    async def post(
        self, ready: Ready, route: str, payload_json: bytes, session_id: str | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        with translated_errors():
            async with self._session.post(
                f"{ready.url}{route}",
                data=self._envelope(ready, payload_json, session_id),
                headers=JSON_HEADERS,
                timeout=self._timeout,
            ) as resp:
                yield resp

    def _envelope(self, ready: Ready, payload_json: bytes, session_id: str | None) -> bytes:
        """``{"auth_data", "session_id", "payload"}`` as JSON bytes, the payload spliced in as
        it was encoded at admission (a queued job keeps bytes, not a parsed tree)."""
        return self._head(ready, session_id) + payload_json + b"}"

    def _head(self, ready: Ready, session_id: str | None) -> bytes:
        key = (id(ready), session_id)
        cached = self._heads.get(key)
        if cached is not None and cached[0] is ready:
            return cached[1]
        if len(self._heads) >= MAX_CACHED_HEADS:
            self._heads.clear()
        head = envelope_head(ready, session_id)
        self._heads[key] = (ready, head)
        return head

    async def create_session(self, ready: Ready, lifetime_s: float) -> str:
        """Open a Vast session on the answer's worker, accounted by it at the answer's cost."""
        body = {"auth_data": ready.auth_data, "payload": {"lifetime": lifetime_s}}
        status, answer = await self._session_call(ready, "/session/create", body)
        if status == 201 and isinstance(answer, dict) and isinstance(answer.get("session_id"), str):
            return str(answer["session_id"])
        if status in (404, 405, 429):
            raise SessionRefused(f"worker refused a session ({status})", status)
        raise WorkerError(f"session create answered {status}")

    async def end_session(self, ready: Ready, session_id: str) -> None:
        body = {"session_id": session_id, "session_auth": ready.auth_data}
        await self._session_call(ready, "/session/end", body)

    async def _session_call(self, ready: Ready, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=SESSION_CALL_TIMEOUT_S)
        with translated_errors():
            async with self._session.post(f"{ready.url}{path}", json=body, timeout=timeout) as resp:
                raw = await resp.content.read(64 * 1024)
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, None
