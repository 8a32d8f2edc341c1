"""Vast's root CA for connections to workers, as the official client handles it.

Workers serve HTTPS under Vast's own root (the official worker loads ``/etc/instance.crt``,
issued per instance for its public IP). The official client (``vastai`` 1.9.1,
``serverless/client/client.py``) downloads that root from
``{console}/static/jvastai_root.cer`` on first use, trusts it and clears
``ssl.VERIFY_X509_STRICT`` on that context: the root has a path length constraint without
``keyCertSign`` in its key usage, which OpenSSL 3's strict mode refuses ("Path length given
without key usage keyCertSign"; Python 3.13+ sets the flag in ``create_default_context()``).

Here the same, with these choices:

- the worker context trusts the Vast root ONLY (no system roots), so the one relaxed flag
  applies to nothing else; chain, signature, validity and hostname/IP checks stay on. The
  daemon's other TLS clients (autoscaler, console, webhooks) keep Python's default context;
- ``vast.ca_bundle`` set: that file is the worker trust, read once at start; no fetch;
- not set: fetched lazily, when the first HTTPS worker is met (a daemon whose workers speak
  plain HTTP never asks the console), from the configured console only (never from a URL a
  route answer names), kept in memory (a restart fetches it again: one small GET);
- a fetch that fails is a ``VastRootUnavailable``, retried with back-off while jobs wait for
  it within their deadlines, shown under ``worker_tls`` in ``/v1/status``;
- a worker certificate that fails verification refetches the root, at most once per
  ``REFRESH_MIN_INTERVAL_S`` and one fetch for all the failures meanwhile; the job goes on
  through the normal failover (another route, another attempt) under the new root.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import structlog
from aiohttp import web

from scheduler.core.retry import backoff_s
from scheduler.tasks import cancel_and_wait
from scheduler.vast.route_client import read_capped
from scheduler.vast.types import VastRootUnavailable

log = structlog.get_logger(__name__)

VAST_ROOT_PATH = "/static/jvastai_root.cer"
MAX_ROOT_BYTES = 256 * 1024  # a root certificate is a few kB: anything bigger is not one
FETCH_TIMEOUT_S = 10.0
REFRESH_MIN_INTERVAL_S = 60.0
FETCH_BACKOFF_S = (0.5, 30.0)  # initial, cap
MAX_FETCHES_PER_LOAD = 30  # then waiting callers get the error; the next need starts again
PEM_MARKER = b"-----BEGIN CERTIFICATE-----"


def vast_root_context(
    *, cadata: str | bytes | None = None, cafile: Path | None = None
) -> ssl.SSLContext:
    """A client context trusting only the given root(s), with ``VERIFY_X509_STRICT`` cleared
    (and nothing else changed): Vast's root breaks one strict-mode rule, nothing more."""
    if not cadata and cafile is None:
        # Empty: create_default_context would load the system roots instead.
        raise VastRootUnavailable("empty: not a certificate")
    try:
        context = ssl.create_default_context(
            cafile=None if cafile is None else str(cafile), cadata=cadata
        )
    except (ssl.SSLError, ValueError) as exc:
        raise VastRootUnavailable(f"not a certificate: {type(exc).__name__}") from exc
    if not context.get_ca_certs():
        raise VastRootUnavailable("no CA certificate in it")
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


def cadata_of(body: bytes) -> str | bytes:
    """PEM text as is (``load_verify_locations`` wants str), anything else as DER."""
    if PEM_MARKER in body:
        try:
            return body.decode("ascii")
        except UnicodeDecodeError as exc:
            raise VastRootUnavailable("not a certificate: PEM with non-ASCII bytes") from exc
    return body


def fingerprint(context: ssl.SSLContext) -> str:
    """SHA-256 of the first trusted root's DER, hex: names the root in logs and status."""
    roots = context.get_ca_certs(binary_form=True)
    return hashlib.sha256(roots[0]).hexdigest() if roots else ""


class WorkerTrust(Protocol):
    """What the worker client asks of its TLS trust (an https worker URL only)."""

    async def context(self) -> ssl.SSLContext: ...

    async def verification_failed(self, context: ssl.SSLContext) -> None: ...

    def status(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


WORKER_TLS: web.AppKey[WorkerTrust] = web.AppKey("worker_tls", WorkerTrust)  # for /v1/status


class BundleTrust:
    """``vast.ca_bundle``: the configured file, read once at start; never refreshed."""

    def __init__(self, path: Path) -> None:
        try:
            self._context = vast_root_context(cafile=path)
        except VastRootUnavailable as exc:
            raise VastRootUnavailable(f"vast.ca_bundle {path}: {exc}") from exc

    async def context(self) -> ssl.SSLContext:
        return self._context

    async def verification_failed(self, context: ssl.SSLContext) -> None:
        return None  # the operator's file: nothing to fetch again

    def status(self) -> dict[str, Any]:
        return {"source": "ca_bundle", "loaded": True, "root_sha256": fingerprint(self._context)}

    async def close(self) -> None:
        return None


class ConsoleRoot:
    """Vast's root fetched from ``{console_url}/static/jvastai_root.cer``, lazily, once for
    every caller waiting on it, again after a worker's certificate failed verification."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        console_url: str,
        clock: Callable[[], float],
        rng: random.Random,
        refresh_min_interval_s: float = REFRESH_MIN_INTERVAL_S,
    ) -> None:
        self._session = session
        self._url = f"{console_url.rstrip('/')}{VAST_ROOT_PATH}"
        self._clock = clock
        self._rng = rng
        self._refresh_min_interval_s = refresh_min_interval_s
        self._context: ssl.SSLContext | None = None
        self._loading: asyncio.Task[ssl.SSLContext | VastRootUnavailable] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at: float | None = None
        self.fetches = 0
        self.failures = 0
        self.refreshes = 0
        self.rotations = 0
        self.last_error: str | None = None

    async def context(self) -> ssl.SSLContext:
        """The current root's context; the first call (and every caller meanwhile) waits for
        the fetch. Raises ``VastRootUnavailable`` once a whole load has failed."""
        if self._context is not None:
            return self._context
        if self._loading is None or self._loading.done():
            self._loading = asyncio.create_task(self._load(), name="vast-root-fetch")
        # Shielded: a caller that gives up (its job's deadline) does not stop the others' fetch.
        outcome = await asyncio.shield(self._loading)
        if isinstance(outcome, VastRootUnavailable):
            raise VastRootUnavailable(str(outcome))
        return outcome

    async def _load(self) -> ssl.SSLContext | VastRootUnavailable:
        error = VastRootUnavailable("not fetched")
        for attempt in range(1, MAX_FETCHES_PER_LOAD + 1):
            try:
                context = await self._fetch()
            except VastRootUnavailable as exc:
                error = exc
                retry_in_s = backoff_s(attempt, *FETCH_BACKOFF_S, 2.0, self._rng.random())
                log.warning("tls.vast_root_fetch_failed", error=str(exc), attempt=attempt,
                            retry_in_s=round(retry_in_s, 3))  # fmt: skip
                if attempt < MAX_FETCHES_PER_LOAD:
                    await asyncio.sleep(retry_in_s)
                continue
            self._context = context
            log.info("tls.vast_root_loaded", root_sha256=fingerprint(context))
            return context
        return error

    async def verification_failed(self, context: ssl.SSLContext) -> None:
        """A worker's certificate did not verify under ``context``: fetch the root again
        unless a newer one replaced it already or one was fetched in the last interval;
        callers meanwhile wait for the same fetch. Never raises: the job fails over anyway."""
        if context is not self._context:
            return
        if self._refreshing is None or self._refreshing.done():
            now = self._clock()
            last = self._refreshed_at
            if last is not None and now - last < self._refresh_min_interval_s:
                return
            self._refreshed_at = now
            self._refreshing = asyncio.create_task(self._refresh(), name="vast-root-refresh")
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        self.refreshes += 1
        try:
            context = await self._fetch()
        except VastRootUnavailable as exc:
            log.warning("tls.vast_root_refresh_failed", error=str(exc))
            return  # the root we have stays; the next failure after the interval tries again
        old = "" if self._context is None else fingerprint(self._context)
        new = fingerprint(context)
        if new == old:
            log.info("tls.vast_root_unchanged", root_sha256=new)
            return
        self._context = context
        self.rotations += 1
        log.warning("tls.vast_root_rotated", old_root_sha256=old, root_sha256=new)

    async def _fetch(self) -> ssl.SSLContext:
        self.fetches += 1
        try:
            context = vast_root_context(cadata=cadata_of(await self._download()))
        except VastRootUnavailable as exc:
            self.failures += 1
            self.last_error = str(exc)
            raise
        self.last_error = None
        return context

    async def _download(self) -> bytes:
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
        try:
            async with self._session.get(self._url, timeout=timeout) as resp:
                if resp.status != 200:
                    raise VastRootUnavailable(f"the console answered {resp.status}")
                body = await read_capped(resp, MAX_ROOT_BYTES)
        except TimeoutError as exc:
            raise VastRootUnavailable("the console did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise VastRootUnavailable(f"the console is unreachable: {type(exc).__name__}") from exc
        if len(body) > MAX_ROOT_BYTES:
            raise VastRootUnavailable(f"larger than {MAX_ROOT_BYTES} bytes: not a certificate")
        return body

    def status(self) -> dict[str, Any]:
        context = self._context
        return {
            "source": "console",
            "loaded": context is not None,
            "root_sha256": None if context is None else fingerprint(context),
            "fetches": self.fetches,
            "failures": self.failures,
            "refreshes": self.refreshes,
            "rotations": self.rotations,
            "last_error": self.last_error,
        }

    async def close(self) -> None:
        await cancel_and_wait(t for t in (self._loading, self._refreshing) if t is not None)


def worker_trust(
    ca_bundle: Path | None,
    console_session: aiohttp.ClientSession,
    console_url: str,
    clock: Callable[[], float],
    rng: random.Random,
) -> WorkerTrust:
    """The configured bundle when set, else Vast's root from the console."""
    if ca_bundle is not None:
        return BundleTrust(ca_bundle)
    return ConsoleRoot(console_session, console_url, clock, rng)
