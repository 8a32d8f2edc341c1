"""Sending a job to a worker: ``POST {url}{route}`` with the protocol's envelope."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from scheduler.vast.types import Ready, WorkerGone, WorkerTimeout, WorkerTLSError


def make_ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """Trust the system roots plus Vast's own root CA (or whatever bundle is configured)."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


def envelope(ready: Ready, payload: Any, session_id: str | None = None) -> dict[str, Any]:
    # The route answer goes verbatim: the worker checks the signature over its url and keys
    # its bookkeeping by reqnum, so nothing in it may be rewritten.
    return {"auth_data": ready.auth_data, "session_id": session_id, "payload": payload}


class WorkerClient:
    """Opens a streamed response; connection failures become ``WorkerGone``/``WorkerTimeout``."""

    def __init__(self, session: aiohttp.ClientSession, read_timeout_s: float) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10.0, sock_read=read_timeout_s
        )

    @asynccontextmanager
    async def post(
        self, ready: Ready, route: str, payload: Any, session_id: str | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            async with self._session.post(
                f"{ready.url}{route}",
                json=envelope(ready, payload, session_id),
                timeout=self._timeout,
            ) as resp:
                yield resp
        except TimeoutError as exc:
            raise WorkerTimeout("worker did not answer in time") from exc
        except aiohttp.ClientSSLError as exc:
            raise WorkerTLSError(f"TLS with the worker failed: {type(exc).__name__}") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise WorkerGone(f"worker connection failed: {type(exc).__name__}") from exc
