"""The key each endpoint routes with, learnt from the account's listing and kept fresh.

Without an account key the keys come from the config alone. With one, the listing is read at
start (an endpoint the account lacks stops the start; an unreachable console is retried with
capped back-off while ``/readyz`` says why), again every ``vast.key_refresh_interval_s``, and at
once when a route call is refused (401), at most once per ``vast.key_refresh_min_interval_s``:
one listing call however many route calls were refused together. A failed refresh keeps the
keys there are.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from pydantic import SecretStr

from scheduler.config.daemon import VastConfig
from scheduler.config.endpoint import EndpointConfig
from scheduler.core.endpoint_keys import KeySource, choose_keys, may_refresh
from scheduler.core.retry import backoff_s
from scheduler.vast.console import ConsoleClient, ConsoleError, EndpointsMissing, VastEndpoint
from scheduler.vast.types import RouteKeyUnknown

log = structlog.get_logger("scheduler.vast.endpoint_keys")
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 60.0
START_WAIT_S = 5.0  # the start waits this long for the first listing, then serves not ready


class EndpointKeys:
    """``key(endpoint)`` for the route client; ``unauthorized`` when Vast refused one."""

    def __init__(
        self,
        vast: VastConfig,
        endpoints: Mapping[str, EndpointConfig],
        console: ConsoleClient | None,
        clock: Callable[[], float],
        on_secrets: Callable[[list[str]], None] = lambda _: None,
        rng: random.Random | None = None,
    ) -> None:
        self._vast = vast
        self._console = console
        self._clock = clock
        self._on_secrets = on_secrets
        self._rng = rng or random.Random()
        self._endpoints: dict[str, EndpointConfig] = dict(endpoints)
        self._listing: dict[str, VastEndpoint] | None = None
        self._keys: dict[str, SecretStr] = {}
        self._sources: dict[str, KeySource] = {}
        self.missing: list[str] = []
        self._refreshing: asyncio.Task[ConsoleError | None] | None = None
        self._last_401_refresh_at: float | None = None  # the start's listing is not one
        self._listed_at: float | None = None
        self.listings = 0  # listing calls made
        self.refreshes_after_401 = 0
        self.last_error: str | None = None
        self._choose()

    @property
    def account(self) -> bool:
        return self._console is not None

    def endpoint_names(self) -> list[str]:
        return list(self._endpoints)

    def key(self, endpoint: str) -> SecretStr | None:
        return self._keys.get(endpoint)

    def source(self, endpoint: str) -> KeySource | None:
        return self._sources.get(endpoint)

    def listed(self, endpoint: str) -> VastEndpoint | None:
        return None if self._listing is None else self._listing.get(endpoint)

    def not_ready_reason(self) -> str | None:
        """Why routing cannot start yet: the listing was never read (``/readyz`` says this)."""
        if self.account and self._listing is None:
            why = self.last_error or "not answered yet"
            return f"waiting for the Vast account's endpoint listing: {why}"
        return None

    def reconfigure(self, endpoints: Mapping[str, EndpointConfig]) -> None:
        """Live reload: new endpoints, changed ``api_key``s."""
        self._endpoints = dict(endpoints)
        self._choose()
        if self.missing:  # no key, so never routed: the log says why
            log.error("vast.endpoints_missing", endpoints=self.missing, reason="reload")

    async def start(self, wait_s: float = START_WAIT_S) -> None:
        """One listing read, waited for ``wait_s`` at most (a silent console must not keep
        the daemon from listening, and ``/readyz`` from saying why); ``EndpointsMissing``
        stops the start, other errors and a read still under way are left to ``run``."""
        if not self.account:
            return
        try:
            async with asyncio.timeout(wait_s):
                error = await self.refresh("start")
        except TimeoutError:  # the read goes on (shielded); run() picks it up
            log.warning("vast.listing_slow", waited_s=wait_s)
            return
        if isinstance(error, EndpointsMissing):
            raise error

    async def run(self) -> None:
        """Background: retry until the listing is read, then refresh it on schedule."""
        if not self.account:
            return
        failures = 0 if self._listing is not None else 1
        if self._refreshing is not None and not self._refreshing.done():  # the start's read
            failures = 0 if await self.refresh("start") is None else 1
        while True:
            await asyncio.sleep(self._next_delay_s(failures))
            reason = "schedule" if self._listing is not None else "start"
            failures = 0 if await self.refresh(reason) is None else failures + 1

    def _next_delay_s(self, failures: int) -> float:
        if failures == 0:
            return self._vast.key_refresh_interval_s
        retry_s = backoff_s(failures, RETRY_INITIAL_S, RETRY_MAX_S, 2.0, self._rng.random())
        return min(retry_s, self._vast.key_refresh_interval_s)

    async def unauthorized(self, endpoint: str, used: SecretStr) -> SecretStr | None:
        """Vast refused ``used`` for ``endpoint``: the key to retry with; None when there is
        no other (a configured key, or a fresh listing gives the same one). RouteKeyUnknown
        (retried later, no job fails) while the listing cannot tell: read too lately to be
        read again, or failing."""
        current = self._keys.get(endpoint)
        if current is not None and current.get_secret_value() != used.get_secret_value():
            return current  # refreshed since the call began
        if self._sources.get(endpoint) != KeySource.ACCOUNT:
            return None  # a configured key: only the config can change it
        running = self._refreshing is not None and not self._refreshing.done()
        now = self._clock()
        min_interval_s = self._vast.key_refresh_min_interval_s
        if not running and not may_refresh(now, self._last_401_refresh_at, min_interval_s):
            raise RouteKeyUnknown(f"endpoint {endpoint}: key refused; the account listing is "
                                  f"read again at most every {min_interval_s:g} s")  # fmt: skip
        if not running:
            self._last_401_refresh_at = now
            self.refreshes_after_401 += 1
            log.warning("vast.endpoint_key_refused", endpoint=endpoint)
        error = await self.refresh("unauthorized")
        fresh = self._keys.get(endpoint)
        if fresh is not None and fresh.get_secret_value() != used.get_secret_value():
            return fresh
        if error is not None:  # the console failed, or the endpoint left the account
            raise RouteKeyUnknown(f"endpoint {endpoint}: key refused and {error}")
        return None

    async def refresh(self, reason: str) -> ConsoleError | None:
        """Read the listing (one call for every caller at once); the error, or None."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._read_listing(reason))
        return await asyncio.shield(self._refreshing)

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refreshing

    async def _read_listing(self, reason: str) -> ConsoleError | None:
        assert self._console is not None
        self.listings += 1
        try:
            listing = await self._console.list_endpoints()
        except ConsoleError as exc:
            self.last_error = str(exc)
            log.error("vast.listing_failed", reason=reason, error=str(exc), kind=exc.kind)
            return exc
        self._on_secrets([e.api_key.get_secret_value() for e in listing.endpoints])
        before = dict(self._keys)
        self._listing = listing.by_name()
        self._listed_at = self._clock()
        self.last_error = None
        self._choose()
        changed = sorted(n for n, k in self._keys.items() if n in before and k != before[n])
        log.info("vast.endpoints_listed", reason=reason, endpoints=len(listing.endpoints),
                 skipped=listing.skipped, keys_changed=changed)  # fmt: skip
        if self.missing:
            error = EndpointsMissing(self.missing, sorted(self._listing))
            log.error("vast.endpoints_missing", endpoints=self.missing, error=str(error))
            return error
        return None

    def _choose(self) -> None:
        explicit = {n: ep.api_key.get_secret_value() for n, ep in self._endpoints.items()
                    if ep.api_key is not None}  # fmt: skip
        listed = None if self._listing is None else {
            name: ep.api_key.get_secret_value() for name, ep in self._listing.items()
        }  # fmt: skip
        shared = self._vast.api_key.get_secret_value()
        choices = choose_keys(self._endpoints, explicit, listed, shared, account=self.account)
        self._keys = {name: SecretStr(c.key) for name, c in choices.keys.items()}
        self._sources = {name: c.source for name, c in choices.keys.items()}
        self.missing = choices.missing

    def status(self) -> dict[str, Any]:
        """The account's part of ``/v1/status``: no key, only where keys come from."""
        now = self._clock()
        return {
            "account_key": self.account,
            "listed": self._listing is not None,
            "listing_age_s": None if self._listed_at is None else now - self._listed_at,
            "listings": self.listings,
            "refreshes_after_401": self.refreshes_after_401,
            "missing_endpoints": list(self.missing),
            "last_error": self.last_error,
        }

    def endpoint_view(self, endpoint: str) -> dict[str, Any]:
        """One endpoint's settings on Vast (from the listing) and where its key comes from."""
        source = self._sources.get(endpoint)
        listed = self.listed(endpoint)
        return {
            "key_source": None if source is None else str(source),
            **(listed.settings() if listed is not None else {"id": None}),
        }
