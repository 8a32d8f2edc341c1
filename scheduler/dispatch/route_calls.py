"""One endpoint's route calls, one at a time: each measured, logged and remembered for the
status page; the token bucket that spaces them; the back-off after a failed one (Vast's
refusals block every call, other failures hold new batches back); the workers they named.
What the calls are for (batches, the poller, demand) is ``routing``."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass

from scheduler.config import EndpointConfig
from scheduler.config.endpoint import BackoffConfig
from scheduler.core.backoff import Backoff, RouteTrouble, route_failed, route_refusal_delay_s
from scheduler.core.ratelimit import TokenBucket
from scheduler.dispatch.context import MAX_REMEMBERED_WORKERS, EndpointContext, log
from scheduler.dispatch.leasing import Leasing
from scheduler.dispatch.seams import Router
from scheduler.store.base import FleetPolling
from scheduler.vast.types import (
    Ready,
    RouteBadRequest,
    RouteError,
    RouteRateLimited,
    RouteResult,
    RouteUnauthorized,
    Waiting,
)

MAX_TOKEN_WAITS = 10_000  # a bound, not a limit reached in practice: each wait is until a token
RECENT_ROUTES = 20  # route answers kept for the status page


@dataclass(frozen=True, slots=True)
class RouteRecord:
    """One route call as the status page shows it; ``detail``: worker URL, status or error."""

    at: float  # clock time the call started
    outcome: str  # ready | no_worker | rate_limited | error
    cost: float
    latency_s: float
    detail: str


class RouteCalls:
    def __init__(
        self, ctx: EndpointContext, router: Router, leasing: Leasing, fleet: FleetPolling
    ) -> None:
        self._ctx = ctx
        self._router = router
        self._leasing = leasing
        self._fleet = fleet
        now = ctx.clock()
        self.bucket = TokenBucket(ctx.config.route_rate_per_s, ctx.config.route_burst, now)
        self._errors = 0  # route errors in a row
        self.retry_at = now  # no new batch's call before this (back-off after errors, 429s)
        self.known_workers: dict[str, float] = {}
        self.last_waiting: Waiting | None = None
        self.recent: deque[RouteRecord] = deque(maxlen=RECENT_ROUTES)
        self.error_counts: Counter[str] = Counter()
        self.trouble: RouteTrouble | None = None  # route calls failing in a row, if any

    def reconfigure(self, config: EndpointConfig) -> None:
        self.bucket.set_rate(config.route_rate_per_s, config.route_burst, self._ctx.clock())

    def delay_until(self, until: float) -> None:
        """No new batch's route call before ``until``."""
        self.retry_at = max(self.retry_at, until)

    async def route(self, cost: float, request_idx: int | None) -> RouteResult:
        """One route call, measured, logged and remembered for the status page."""
        ctx = self._ctx
        started = ctx.clock()
        outcome = "error"
        detail = "interrupted"  # cancelled or an unexpected exception
        try:
            result = await self._router.route(ctx.name, cost, request_idx)
            self._errors, self.trouble = 0, None
            outcome = "ready" if isinstance(result, Ready) else "no_worker"
            detail = result.url if isinstance(result, Ready) else result.status
            ctx.metrics.route_batch_cost.labels(ctx.name).observe(cost)
            if isinstance(result, Waiting):
                await self._no_worker(result, cost)
            else:
                await self._ready(result, cost, started)
            return result
        except RouteError as exc:
            outcome = "rate_limited" if isinstance(exc, RouteRateLimited) else "error"
            detail = exc.kind
            self.error_counts[exc.kind] += 1
            self._backed_off(exc)
            log.warning("route.error", endpoint=ctx.name, kind=exc.kind, error=str(exc),
                        streak=self._errors)  # fmt: skip
            raise
        finally:
            latency_s = ctx.clock() - started
            ctx.metrics.route_calls.labels(ctx.name, outcome).inc()
            ctx.metrics.route_latency.labels(ctx.name, outcome).observe(latency_s)
            self.recent.append(RouteRecord(started, outcome, cost, latency_s, detail))

    async def _no_worker(self, result: Waiting, cost: float) -> None:
        ctx = self._ctx
        await self._fleet.no_worker(ctx.name)
        self.last_waiting = result
        ctx.metrics.no_worker.labels(ctx.name).inc()
        log.info("route.no_worker", endpoint=ctx.name, cost=cost,
                 request_idx=result.request_idx, status=result.status)  # fmt: skip

    async def _ready(self, result: Ready, cost: float, started: float) -> None:
        ctx = self._ctx
        if not len(self._leasing.pool):
            await self._fleet.got_worker(ctx.name, ctx.config.lease.ttl_s)
        if len(self.known_workers) >= MAX_REMEMBERED_WORKERS:
            self.known_workers.pop(next(iter(self.known_workers)))
        self.known_workers[result.url] = ctx.clock()
        log.info("route.ready", endpoint=ctx.name, cost=cost, worker=result.url,
                 reqnum=result.reqnum,
                 latency_s=round(ctx.clock() - started, 6))  # fmt: skip

    async def route_with_token(self, cost: float, request_idx: int | None) -> RouteResult:
        await self.wait_for_token()
        return await self.route(cost, request_idx)

    async def wait_for_token(self) -> None:
        for _ in range(MAX_TOKEN_WAITS):
            now = self._ctx.clock()
            if self.bucket.try_take(now):
                return
            await asyncio.sleep(max(0.001, self.bucket.ready_at(now) - now))

    def _backed_off(self, exc: RouteError) -> None:
        """No route call for a while after a failed one. Refusals (429, 400, 401) block every
        route call (batches, the poller, caller sessions): Vast's ``Retry-After`` if it sent
        one (capped), else a back-off doubling up to ``route_backoff.max_s``. Other failures
        (5xx, timeouts) hold new batches back for the poll back-off."""
        ctx = self._ctx
        now = ctx.clock()
        self._errors += 1
        if isinstance(exc, RouteRateLimited | RouteBadRequest | RouteUnauthorized):
            rb = ctx.config.route_backoff
            retry_after = exc.retry_after_s if isinstance(exc, RouteRateLimited) else None
            delay = route_refusal_delay_s(backoff_policy(rb), self._errors, retry_after,
                                          rb.max_retry_after_s, ctx.rng.random())  # fmt: skip
            self.bucket.block_until(now + delay)
        else:
            delay = ctx.backoff(self._errors)
            self.retry_at = now + delay
        self.trouble = route_failed(self.trouble, exc.kind, now, now + delay)


def backoff_policy(config: BackoffConfig) -> Backoff:
    return Backoff(config.initial_s, config.max_s, config.multiplier)
