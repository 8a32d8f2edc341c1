"""The route calls whose answers open nothing: probes (one job's cost, while held calls are
backed off: they find a worker Vast added to a busy fleet) and demand calls (the cost that
arrived here and no call declared yet, after a held call that opened nothing). Their cost is
not what a session should declare, so an answer naming a worker with room brings the next held
call forward instead (``HeldRoutes.room_named``), which opens it. A failed call needs nothing
more: ``RouteCalls.route`` has set the back-off."""

from __future__ import annotations

import asyncio

from scheduler.dispatch.answer_check import AnswerCheck
from scheduler.dispatch.context import EndpointContext
from scheduler.dispatch.held_routes import HeldRoutes
from scheduler.dispatch.route_calls import RouteCalls
from scheduler.tasks import spawn
from scheduler.vast.types import Ready, RouteError, Waiting


class SideCalls:
    def __init__(
        self,
        ctx: EndpointContext,
        calls: RouteCalls,
        held: HeldRoutes,
        answers: AnswerCheck,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self._ctx = ctx
        self._calls = calls
        self._held = held
        self._answers = answers
        self._tasks = tasks  # the routing's: a probe out counts as a route call in flight

    def maybe_probe(self, now: float) -> None:
        if self._held.probe_due(now) and self._calls.bucket.try_take(now):
            self._held.probed(now)
            spawn(self._probe(), self._tasks, f"probe-{self._ctx.name}",
                  lambda _: self._ctx.wakeup.set())  # fmt: skip

    async def _probe(self) -> None:
        """A route call for one job's cost while held calls are backed off: finds a worker
        Vast added to a busy fleet without declaring a batch no worker takes. A WAITING answer
        is left: held calls still tell Vast of the jobs waiting here."""
        queue = self._ctx.queue
        cost = queue.queued_cost / len(queue) if len(queue) else 1.0
        try:
            result = await self._calls.route(cost, None)
        except RouteError:
            return
        self._take_note(result, cost)

    async def declare_demand(self, declared: float) -> None:
        """A route call for the cost that arrived here while jobs waited and that no call
        declared yet (``DemandLedger``), after a held call that declared ``declared`` and
        opened nothing: the official client routes every job, so Vast scales on its arrival
        rate; the daemon's batches and sessions declare what the workers will hold (a
        session's cost is its load on the worker for its whole life), and this call the rest.
        Only while the cost waiting here grew since the last held call (demand the fleet does
        not absorb), and only what exceeds the call just made."""
        now = self._ctx.clock()
        cost = self._held.demand_due(now, declared)
        if cost is None or not self._calls.bucket.try_take(now):
            return
        self._held.demand_declared(now)
        try:
            result = await self._calls.route(min(cost, self._ctx.config.poll.max_cost), None)
        except RouteError:
            return
        head = self._ctx.queue.peek()
        if head is not None:
            self._take_note(result, head[1])

    def _take_note(self, result: Ready | Waiting, job_cost: float) -> None:
        """The answer named a worker with room for jobs of ``job_cost``: the next held call
        goes at once to open it."""
        now = self._ctx.clock()
        if isinstance(result, Ready) and not self._answers.unusable(result.url, now, job_cost):
            self._held.room_named(now)
            self._ctx.wakeup.set()
