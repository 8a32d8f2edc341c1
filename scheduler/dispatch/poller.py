"""The endpoint's one poller while Vast has no worker ready: it carries the WAITING answer's
``request_idx`` and declares the whole backlog's cost (every replica's on a shared store) so
that the autoscaler scales for all of it; on a shared store one replica polls for the fleet
and the others wait for its worker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from scheduler.core.demand import DemandLedger
from scheduler.dispatch.context import EndpointContext
from scheduler.dispatch.leasing import Leasing
from scheduler.dispatch.route_calls import RouteCalls
from scheduler.dispatch.session_sizing import SessionSizing
from scheduler.store.base import FleetPolling
from scheduler.tasks import cancel_and_wait
from scheduler.vast.types import Ready, RouteError, Waiting

FOLLOWER_CHECK_S = 0.2  # a replica waiting on another's poller looks this often for a worker
FleetBacklog = Callable[[str], Awaitable[tuple[int, float]]]


class Poller:
    def __init__(
        self,
        ctx: EndpointContext,
        calls: RouteCalls,
        leasing: Leasing,
        sizing: SessionSizing,
        demand: DemandLedger,
        fleet: FleetPolling,
        fleet_backlog: FleetBacklog | None,
    ) -> None:
        self._ctx = ctx
        self._calls = calls
        self._leasing = leasing
        self._sizing = sizing
        self._demand = demand
        self._fleet = fleet
        self._fleet_backlog = fleet_backlog
        self._task: asyncio.Task[None] | None = None

    @property
    def polling(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])

    def start(self, request_idx: int | None) -> None:
        if not self.polling:
            name = f"poll-{self._ctx.name}"
            self._task = asyncio.create_task(self._poll(request_idx), name=name)
            self._task.add_done_callback(lambda _: self._ctx.wakeup.set())

    async def _poll(self, request_idx: int | None) -> None:
        """The endpoint's one poller while Vast has no worker ready: it carries ``request_idx``
        and declares the whole backlog's cost (capped) so the autoscaler scales for all of it."""
        ctx = self._ctx
        waits = 0
        following = False
        while len(ctx.queue) and not self._head_fits_a_lease():
            waits += 1
            poll = ctx.config.poll
            delay = ctx.backoff(waits)
            await asyncio.sleep(min(delay, FOLLOWER_CHECK_S) if following else delay)
            if not len(ctx.queue):
                break  # the backlog went while it slept: no call for nothing
            following = not await self._fleet.may_route(ctx.name, self.ttl_s())
            if following:
                continue  # another replica polls for the fleet: wait for its worker
            await self._calls.wait_for_token()
            cost = min(max(await self._backlog_cost(), 1.0), poll.max_cost)
            try:
                result = await self._calls.route(cost, request_idx)
                self._demand.declared()  # the backlog holds every arrival here
                own = self._sizing.head_session_cost()
                if isinstance(result, Ready) and len(ctx.queue) and cost > own + 1e-9:
                    # Vast heard the backlog. A session's load on its worker is its answer's
                    # cost for its whole life: it opens on one that declares what it holds.
                    result = await self._calls.route_with_token(own, None)
            except RouteError:
                continue  # ``route`` has set the back-off
            if isinstance(result, Waiting):
                request_idx = result.request_idx if result.request_idx is not None else request_idx
                continue
            await self._leasing.open(result)
            return
        await self._fleet.release(ctx.name)  # the backlog is gone or has room: nothing to poll for

    def ttl_s(self) -> float:
        """The fleet's poll lease outlives the longest wait between two polls."""
        return 3 * self._ctx.config.poll.max_s + 5.0

    async def _backlog_cost(self) -> float:
        """What the autoscaler should scale for: every replica's unfinished jobs if shared."""
        fleet_cost = (
            0.0 if self._fleet_backlog is None else (await self._fleet_backlog(self._ctx.name))[1]
        )
        return max(self._ctx.queue.queued_cost, fleet_cost)

    def _head_fits_a_lease(self) -> bool:
        head = self._ctx.queue.peek()
        now = self._ctx.clock()
        return head is not None and self._leasing.pool.pick(head[1], now, self._ctx.rng) is not None
