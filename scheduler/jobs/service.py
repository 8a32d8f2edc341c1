"""The scheduler as the API sees it: admission, lookup, cancellation, drain."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from scheduler.config import AppConfig, EndpointConfig
from scheduler.core.queue import QueueFull
from scheduler.dispatch import EndpointDispatcher
from scheduler.dispatch.feeder import CLAIM_BLOCK_S, StoreFeeder
from scheduler.dispatch.pinned import SessionNotFound
from scheduler.dispatch.seams import Forwarder, Router
from scheduler.jobs import SHUTDOWN_REASON, Job, JobMode
from scheduler.jobs.admission import (
    NotAccepting,
    Overloaded,
    Submission,
    UnknownEndpoint,
    check_cost,
    limits,
    new_job,
)
from scheduler.jobs.webhooks import WebhookSender
from scheduler.observability.metrics import EndpointGauges, Metrics
from scheduler.store.base import (
    CancelOutcome,
    Enqueued,
    FleetPolling,
    JobStore,
    StoreFull,
    StoreUnavailable,
)
from scheduler.store.memory import MemoryJobStore
from scheduler.tasks import cancel_and_wait, spawn

log = structlog.get_logger("scheduler.jobs.service")
SWEEP_INTERVAL_S = 5.0


class SchedulerService:
    def __init__(
        self,
        config: AppConfig,
        router: Router,
        forwarder: Forwarder,
        metrics: Metrics,
        webhooks: WebhookSender | None,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        store: JobStore | None = None,
        fleet: FleetPolling | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        # Jobs that never enter a shared store (caller sessions, streamed answers) live here;
        # with the memory backend this is the store itself.
        self.local = MemoryJobStore(config.server.job_retention_s, config.server.max_jobs_retained,
                                    clock)  # fmt: skip
        self.store: JobStore = store or self.local
        self.accepting = True
        self._activity = asyncio.Event()
        self._clock = clock
        self._webhooks = webhooks
        self._router = router
        self._forwarder = forwarder
        self._rng = rng
        self._fleet = fleet
        self._local_only: set[str] = set()  # job ids kept out of a shared store
        self._writes: set[asyncio.Task[None]] = set()  # results on their way to the store
        self._tasks: set[asyncio.Task[None]] = set()
        self._feeding: dict[str, asyncio.Task[None]] = {}  # endpoint -> its feeder's task
        self._abandoning = False
        self.dispatchers: dict[str, EndpointDispatcher] = {}
        self.feeders: dict[str, StoreFeeder] = {}
        for name, ep in config.endpoints.items():
            self._add_endpoint(name, ep)
        metrics.watch(self.gauges)

    def _add_endpoint(self, name: str, ep: EndpointConfig) -> EndpointDispatcher:
        shared = self.store.shared
        dispatcher = EndpointDispatcher(
            name, ep, self._router, self._forwarder, self.metrics, self._job_finished,
            self._clock, self._rng, on_task_done=self._activity.set, fleet=self._fleet,
            backlog=self.store.backlog if shared else None,
        )  # fmt: skip
        self.dispatchers[name] = dispatcher
        settings = self.config.store
        visibility_s = settings.redis.visibility_timeout_s
        self.feeders[name] = StoreFeeder(self.store, dispatcher, settings.prefetch, visibility_s,
                                         self._clock)  # fmt: skip
        return dispatcher

    async def start(self) -> None:
        """Connect the store and start every endpoint's loops and the sweeper."""
        await self.store.start(self._cancel_signalled)
        for name in self.dispatchers:
            self._start_endpoint(name)
        self._spawn(self.sweep_forever(), "sweeper")

    def add_endpoint(self, name: str, ep: EndpointConfig) -> EndpointDispatcher:
        """A new endpoint while running (live reload): its loops start at once."""
        dispatcher = self._add_endpoint(name, ep)
        self._start_endpoint(name)
        return dispatcher

    def _start_endpoint(self, name: str) -> None:
        self._spawn(self.dispatchers[name].run(), f"dispatch-{name}")
        self._feeding[name] = self._spawn(self.feeders[name].run(), f"feed-{name}")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return spawn(coro, self._tasks, name, _log_crash)

    async def close(self) -> None:
        """After ``abort_remaining``: stop every loop, let result writes end, close the store."""
        await cancel_and_wait(self._tasks)
        await asyncio.gather(*self._writes, return_exceptions=True)
        await self.store.close()

    def reconfigure(self, config: AppConfig) -> None:
        """Live reload (planned by ``scheduler.config.reload_plan``): new settings for the endpoints
        there are (their jobs stay), loops for the new ones."""
        self.config = config
        for name, ep in config.endpoints.items():
            if name not in self.dispatchers:
                self.add_endpoint(name, ep)
            elif self.dispatchers[name].config != ep:
                self.dispatchers[name].reconfigure(ep)

    def gauges(self) -> list[EndpointGauges]:
        return [d.gauges() for d in self.dispatchers.values()]

    def dispatcher(self, endpoint: str) -> EndpointDispatcher:
        found = self.dispatchers.get(endpoint)
        if found is None:
            raise UnknownEndpoint(endpoint)
        return found

    async def submit(
        self,
        sub: Submission,
        mode: JobMode,
        delivery: Any,
        request_id: str | None,
        stream: bool = False,
    ) -> Enqueued:
        """Admit a job or raise (``UnknownEndpoint``, ``NotAccepting``, ``Overloaded``,
        ``TooCostly``, ``DeadlineUnmeetable``, ``StoreUnavailable``, the pinned-session errors).
        ``stream``: the caller reads the answer as it comes, so the job runs on this replica."""
        dispatcher = self.dispatcher(sub.endpoint)
        if not self.accepting:
            raise NotAccepting()
        job = new_job(dispatcher, sub, mode, delivery, request_id, self._clock())
        if sub.session is not None:
            pinned = dispatcher.sessions.find(sub.session)
            if pinned is not None and pinned.owner not in (None, sub.tenant):
                raise SessionNotFound(sub.session)
            dispatcher.submit_pinned(job, sub.session)
            self._keep_local(job)
        else:
            check_cost(dispatcher, job, sub.quota)
            if stream and self.store.shared:
                self._submit_local(dispatcher, job)
            else:
                try:
                    enqueued = await self.store.enqueue(job, limits(dispatcher, sub.quota))
                except StoreFull as exc:
                    raise Overloaded(exc.reason, str(exc), dispatcher.retry_after_s()) from exc
                if not enqueued.created:
                    return enqueued
        self.metrics.series(self.metrics.jobs_submitted, sub.endpoint, mode).inc()
        self.metrics.series(self.metrics.job_cost, sub.endpoint).observe(job.cost)
        return Enqueued(job, created=True)

    def _keep_local(self, job: Job) -> None:
        self.local.add(job)
        if self.store.shared:
            self._local_only.add(job.id)

    def _submit_local(self, dispatcher: EndpointDispatcher, job: Job) -> None:
        try:
            dispatcher.submit(job)
        except QueueFull as exc:
            raise Overloaded("queue_full", str(exc), dispatcher.retry_after_s()) from exc
        self._keep_local(job)

    def now(self) -> float:
        return self._clock()

    def view(self, job: Job) -> dict[str, Any]:
        return job.public(self._clock())

    def get(self, job_id: str) -> Job | None:
        """A job this replica holds (with the memory store: every job)."""
        return self.local.peek(job_id)

    async def lookup(self, job_id: str) -> Job | None:
        """A job wherever it is: this replica, or the shared store (a snapshot)."""
        job = self.local.peek(job_id)
        if job is None and self.store.shared:
            return await self.store.get(job_id)
        return job

    async def cancel(self, job: Job) -> bool:
        """False if the job had already ended."""
        if job.id in self._local_only:
            return self.dispatcher(job.endpoint).cancel(job)
        outcome = await self.store.cancel(job.id)
        return outcome in (CancelOutcome.CANCELLED, CancelOutcome.SIGNALLED)

    def _cancel_signalled(self, job_id: str) -> None:
        """The store says a claimed job was cancelled: stop it if it is here."""
        for dispatcher in self.dispatchers.values():
            if dispatcher.cancel_by_id(job_id):
                return

    def _job_finished(self, job: Job) -> None:
        now = self._clock()
        if not self.store.shared or job.id in self._local_only:
            self._local_only.discard(job.id)
            self.local.finish_now(job)
        elif self._abandoning and job.error == SHUTDOWN_REASON:
            log.info("job.left_for_others", job_id=job.id)  # its claim lapses: taken over
            return
        else:
            self._record(job)
        if job.webhook_url is not None and self._webhooks is not None:
            task = self._webhooks.send(job.id, job.webhook_url, job.public(now))
            task.add_done_callback(lambda _: self._activity.set())

    def _record(self, job: Job) -> None:
        spawn(self._write_result(job), self._writes, f"result-{job.id}",
              lambda _: self._activity.set())  # fmt: skip

    async def _write_result(self, job: Job) -> None:
        try:
            first = await self.store.finish(job)
        except StoreUnavailable:
            # Its claim stays pending: another replica takes it over and runs it again.
            log.error("store.result_lost", job_id=job.id, endpoint=job.endpoint)
            return
        if not first:
            log.warning("job.duplicate_result", job_id=job.id, endpoint=job.endpoint)

    def idle(self) -> bool:
        webhooks_pending = self._webhooks is not None and bool(self._webhooks.tasks)
        return (
            not webhooks_pending
            and not self._writes
            and all(d.idle for d in self.dispatchers.values())
            and (self.store.shared or not self.local.unfinished)
        )

    def status(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "accepting": self.accepting,
            "store": {"backend": self.config.store.backend, "healthy": self.store.healthy()},
            "endpoints": {name: d.snapshot(now) for name, d in self.dispatchers.items()},
        }

    async def sweep_forever(self) -> None:
        interval_s = min(SWEEP_INTERVAL_S, self.config.server.job_retention_s)
        while True:
            await asyncio.sleep(interval_s)
            self.local.sweep(self._clock())
            for dispatcher in self.dispatchers.values():
                await dispatcher.sessions.close_expired()

    async def drain(self, grace_s: float) -> bool:
        """Stop intake, let queued and running jobs finish for up to ``grace_s``; True if idle."""
        self.accepting = False
        log.info("daemon.draining", grace_period_s=grace_s)
        if self.store.shared:
            await self._give_back()
        try:
            async with asyncio.timeout(grace_s):
                await self._until_idle()
        except TimeoutError:
            return False
        return True

    async def _until_idle(self) -> None:
        while not self.idle():
            self._activity.clear()
            await self._activity.wait()

    async def _give_back(self) -> None:
        """Shared store: stop claiming and return what is queued here to the other replicas."""
        for feeder in self.feeders.values():
            feeder.stop_claiming()
        # A claim cut off mid-read would leave its jobs pending until taken over: let it end.
        feeders = list(self._feeding.values())
        _, late = await asyncio.wait(feeders, timeout=CLAIM_BLOCK_S + 1.0) if feeders else ((), ())
        await cancel_and_wait(late)
        # Only those that ended: one cancel_and_wait gave up on would be waited for for ever.
        await asyncio.gather(*(f for f in feeders if f.done()), return_exceptions=True)
        for feeder in self.feeders.values():
            await feeder.give_back()

    async def abort_remaining(self) -> None:
        """After the grace period. With a shared store what did not finish is not failed but
        left to lapse, so another replica takes it over."""
        self._abandoning = self.store.shared
        for d in self.dispatchers.values():
            await d.abort(SHUTDOWN_REASON)


def _log_crash(task: asyncio.Task[None]) -> None:
    """A background loop must never end by itself: say loudly why one did."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("task.crashed", task=task.get_name(), exc_info=error)
