"""Sending a job to a worker: ``POST {url}{route}`` with the protocol's envelope."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from scheduler.vast.route_client import read_capped
from scheduler.vast.tls import WorkerTrust
from scheduler.vast.types import (
    Ready,
    SessionRefused,
    VastRootUnavailable,
    WorkerError,
    WorkerGone,
    WorkerLost,
    WorkerTimeout,
    WorkerTLSError,
)

SESSION_CALL_TIMEOUT_S = 10.0


def make_ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """Python's default context, plus ``ca_bundle`` when given. Not for workers: their
    connections trust Vast's root through ``scheduler.vast.tls``."""
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
    """aiohttp's errors at the worker boundary become the protocol's typed errors. Failures
    before the request left (connect refused or timed out, DNS, TLS handshake: aiohttp's
    ``ClientConnectorError`` family) are ``WorkerGone``; a connection that broke once the
    request may have been sent is ``WorkerLost``: the worker may have run it."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:  # connect timeout: nothing was sent
        raise WorkerGone("worker connection timed out before the request was sent") from exc
    except TimeoutError as exc:
        raise WorkerTimeout("worker did not answer in time") from exc
    except aiohttp.ClientConnectorCertificateError as exc:
        reason = getattr(exc.certificate_error, "verify_message", None) or "unknown reason"
        raise WorkerTLSError(f"the worker's certificate did not verify: {reason}") from exc
    except aiohttp.ClientSSLError as exc:
        raise WorkerTLSError(f"TLS with the worker failed: {type(exc).__name__}") from exc
    except aiohttp.ClientConnectorError as exc:
        raise WorkerGone(f"worker connection failed: {type(exc).__name__}") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise WorkerLost(
            f"worker connection lost after the request was sent: {type(exc).__name__}"
        ) from exc


class WorkerClient:
    """Opens a streamed response; connection failures become ``WorkerGone``/``WorkerTimeout``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        read_timeout_s: float,
        connect_timeout_s: float = 10.0,
        trust: WorkerTrust | None = None,
    ) -> None:
        self._session = session
        self._trust = trust  # None: an https worker gets aiohttp's default (system roots)
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
            async with (
                self._tls(ready.url) as tls,
                self._session.post(
                    f"{ready.url}{route}",
                    data=self._envelope(ready, payload_json, session_id),
                    headers=JSON_HEADERS,
                    timeout=self._timeout,
                    **tls,
                ) as resp,
            ):
                yield resp

    @asynccontextmanager
    async def _tls(self, url: str, wait_s: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """The request's ``ssl`` argument: Vast's root for an https worker (waiting for its
        fetch up to ``wait_s``, None: as long as the caller's deadline), nothing for http.
        A certificate that fails verification refetches the root before the error goes on."""
        if self._trust is None or not url.startswith("https:"):
            yield {}
            return
        try:
            async with asyncio.timeout(wait_s):
                context = await self._trust.context()
        except TimeoutError as exc:
            raise VastRootUnavailable("Vast's root certificate is not fetched yet") from exc
        try:
            yield {"ssl": context}
        except aiohttp.ClientConnectorCertificateError:
            await self._trust.verification_failed(context)
            raise

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
        """Ends the session; a 4xx (unknown, already ended, not ours) is final, a 5xx is a
        ``WorkerError`` worth another try."""
        body = {"session_id": session_id, "session_auth": ready.auth_data}
        status, _ = await self._session_call(ready, "/session/end", body)
        if status >= 500:
            raise WorkerError(f"session end answered {status}")

    async def _session_call(self, ready: Ready, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=SESSION_CALL_TIMEOUT_S)
        url = f"{ready.url}{path}"
        with translated_errors():
            async with (
                self._tls(url, SESSION_CALL_TIMEOUT_S) as tls,
                self._session.post(url, json=body, timeout=timeout, **tls) as resp,
            ):
                raw = await read_capped(resp, 64 * 1024)
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, None
