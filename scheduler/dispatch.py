"""The per-endpoint loop that joins the pure core (queue, back-off, classification) to vast/."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import aiohttp
import structlog

from scheduler.config import EndpointConfig
from scheduler.core.queue import JobQueue
from scheduler.core.retry import Outcome, backoff_s, classify_status, worker_error_kind
from scheduler.delivery import CallerGone, ResultTooLarge, StreamBroken
from scheduler.jobs import Job, JobResult, JobStatus
from scheduler.observability.metrics import EndpointGauges, Metrics
from scheduler.vast.types import (
    Ready,
    RouteBadRequest,
    RouteError,
    RouteRateLimited,
    RouteResult,
    RouteUnauthorized,
    WorkerError,
)

log = structlog.get_logger("scheduler.dispatch")
MAX_KNOWN_WORKERS = 1024


class Router(Protocol):
    async def route(
        self, endpoint: str, cost: float, request_idx: int | None = None
    ) -> RouteResult: ...


class Forwarder(Protocol):
    def post(
        self, ready: Ready, route: str, payload: Any, session_id: str | None = None
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]: ...


class JobFailed(Exception):
    """The job cannot succeed; the message is safe to show to the caller."""


class RetryElsewhere(Exception):
    def __init__(self, reason: str, delay_s: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s


FinishHook = Callable[[Job], None]


class EndpointDispatcher:
    """Owns one endpoint's queue and in-flight jobs; ``run()`` is its only loop."""

    def __init__(
        self,
        name: str,
        config: EndpointConfig,
        router: Router,
        forwarder: Forwarder,
        metrics: Metrics,
        on_finish: FinishHook,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        on_task_done: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self.config = config
        self.queue = JobQueue(config.queue.max_depth)
        self._router = router
        self._forwarder = forwarder
        self._metrics = metrics
        self._on_finish = on_finish
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_task_done = on_task_done
        self._jobs: dict[str, Job] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wakeup = asyncio.Event()
        self.known_workers: dict[str, float] = {}
        self.last_route_status: str | None = None

    # intake -----------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job; raises ``QueueFull`` when the endpoint is at ``max_depth``."""
        self.queue.push(job.id, job.priority, job.cost, job.deadline)
        self._jobs[job.id] = job
        self._metrics.jobs_submitted.labels(self.name, job.mode).inc()
        log.info("job.queued", job_id=job.id, endpoint=self.name, cost=job.cost, mode=job.mode)
        self._wakeup.set()

    def cancel(self, job: Job) -> bool:
        if job.finished:
            return False
        job.cancel_requested = True
        if self.queue.remove(job.id):
            self._finish(job, JobStatus.CANCELLED, "cancelled by caller")
        elif (task := self._running.get(job.id)) is not None:
            task.cancel()
        self._wakeup.set()
        return True

    # state ------------------------------------------------------------------------------
    @property
    def inflight(self) -> int:
        return len(self._running)

    @property
    def idle(self) -> bool:
        return not self._running and not len(self.queue)

    def gauges(self) -> EndpointGauges:
        return EndpointGauges(
            self.name, len(self.queue), self.queue.queued_cost, self.inflight,
            len(self.known_workers),
        )  # fmt: skip

    def retry_after_s(self) -> int:
        """A hint for refused callers: roughly how long the backlog takes to halve."""
        return max(1, min(60, len(self.queue) // max(1, self.config.max_concurrency)))

    # the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            self._expire_queued()
            if len(self.queue) and self.inflight < self.config.max_concurrency:
                job_id = self.queue.pop()
                if job_id is not None:
                    self._start(self._jobs[job_id])
                continue
            self._wakeup.clear()
            deadline = self.queue.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    async def abort(self, reason: str) -> None:
        """After the grace period: fail what is queued, cancel what runs, wait for it."""
        while (job_id := self.queue.pop()) is not None:
            self._finish(self._jobs[job_id], JobStatus.FAILED, reason)
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _expire_queued(self) -> None:
        for job_id in self.queue.pop_expired(self._clock()):
            self._finish(self._jobs[job_id], JobStatus.EXPIRED, "deadline passed while queued")

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._run_job(job), name=f"job-{job.id}")
        self._running[job.id] = task

    def _finish(self, job: Job, status: JobStatus, error: str | None = None) -> None:
        now = self._clock()
        if not job.finish(status, now, error):
            return
        self._jobs.pop(job.id, None)
        outcome = str(status)
        self._metrics.jobs_finished.labels(self.name, outcome).inc()
        self._metrics.job_duration.labels(self.name, outcome).observe(now - job.created_mono)
        log.info(
            "job.finished", job_id=job.id, endpoint=self.name, status=outcome,
            attempts=job.attempts, duration_s=round(now - job.created_mono, 6), error=error,
        )  # fmt: skip
        self._on_finish(job)

    # one job ----------------------------------------------------------------------------
    async def _run_job(self, job: Job) -> None:
        job.started_mono = self._clock()
        self._metrics.queue_wait.labels(self.name).observe(job.started_mono - job.created_mono)
        try:
            await self._process(job)
        except asyncio.CancelledError:
            if job.cancel_requested:
                self._finish(job, JobStatus.CANCELLED, "cancelled by caller")
            else:
                self._finish(job, JobStatus.FAILED, "daemon shut down before the job finished")
            raise
        except JobFailed as exc:
            self._finish(job, JobStatus.FAILED, str(exc))
        except Exception:
            log.exception("job.crashed", job_id=job.id, endpoint=self.name)
            self._finish(job, JobStatus.FAILED, "internal error")
        finally:
            self._running.pop(job.id, None)
            self._wakeup.set()
            self._on_task_done()

    async def _process(self, job: Job) -> None:
        while True:
            remaining = job.deadline - self._clock()
            try:
                async with asyncio.timeout(max(0.0, remaining)) as deadline:
                    job.status = JobStatus.ROUTING
                    ready = await self._acquire(job)
                    await self._attempt(job, ready, deadline)
                return
            except TimeoutError:
                self._finish(job, JobStatus.EXPIRED, "deadline passed before a worker answered")
                return
            except RetryElsewhere as retry:
                self._metrics.retries.labels(self.name, retry.reason).inc()
                if job.attempts >= self.config.max_attempts:
                    raise JobFailed(
                        f"gave up after {job.attempts} attempts (last: {retry.reason})"
                    ) from retry
                log.info("job.retry", job_id=job.id, endpoint=self.name, reason=retry.reason,
                         attempt=job.attempts)  # fmt: skip
                await asyncio.sleep(retry.delay_s)

    async def _attempt(self, job: Job, ready: Ready, deadline: asyncio.Timeout) -> None:
        job.attempts += 1
        job.status = JobStatus.RUNNING
        started = self._clock()
        try:
            async with self._forwarder.post(ready, job.route, job.payload) as resp:
                self._metrics.worker_latency.labels(self.name).observe(self._clock() - started)
                outcome = classify_status(resp.status)
                if outcome is Outcome.RETRY_ELSEWHERE:
                    self._worker_trouble(job, worker_error_kind(resp.status))
                    raise RetryElsewhere(worker_error_kind(resp.status), self._retry_delay(job))
                # The answer has started: from here the deadline no longer applies.
                deadline.reschedule(None)
                body = await job.delivery.deliver(resp)
                job.result = JobResult(resp.status, resp.content_type, body)
                if outcome is Outcome.SUCCESS:
                    self._finish(job, JobStatus.SUCCEEDED)
                else:
                    self._worker_trouble(job, worker_error_kind(resp.status))
                    self._finish(job, JobStatus.FAILED, f"worker answered {resp.status}")
        except WorkerError as exc:
            self._worker_trouble(job, exc.kind)
            self.known_workers.pop(ready.url, None)
            raise RetryElsewhere(f"worker_{exc.kind}", self._retry_delay(job)) from exc
        except CallerGone:
            self._finish(job, JobStatus.CANCELLED, "caller went away")
        except (ResultTooLarge, StreamBroken) as exc:
            raise JobFailed(str(exc)) from exc

    def _worker_trouble(self, job: Job, kind: str) -> None:
        self._metrics.worker_errors.labels(self.name, kind).inc()
        log.warning("worker.error", job_id=job.id, endpoint=self.name, kind=kind,
                    attempt=job.attempts)  # fmt: skip

    def _retry_delay(self, job: Job) -> float:
        poll = self.config.poll
        # The first re-route is immediate (another worker is likely ready); later ones back off.
        if job.attempts <= 1:
            return 0.0
        return backoff_s(job.attempts - 1, poll.initial_s, poll.max_s, poll.multiplier,
                         self._rng.random())  # fmt: skip

    async def _acquire(self, job: Job) -> Ready:
        """Route until a worker is ready, keeping ``request_idx`` across WAITING answers."""
        request_idx: int | None = None
        waits = errors = 0
        poll = self.config.poll
        while True:
            try:
                result = await self._route(job, request_idx)
            except RouteRateLimited as exc:
                errors += 1
                await asyncio.sleep(exc.retry_after_s or self._backoff(errors))
                continue
            except (RouteBadRequest, RouteUnauthorized) as exc:
                raise JobFailed(str(exc)) from exc
            except RouteError:
                errors += 1
                await asyncio.sleep(self._backoff(errors))
                continue
            if isinstance(result, Ready):
                self._remember_worker(result.url)
                return result
            request_idx = result.request_idx if result.request_idx is not None else request_idx
            waits += 1
            await asyncio.sleep(
                backoff_s(waits, poll.initial_s, poll.max_s, poll.multiplier, self._rng.random())
            )

    async def _route(self, job: Job, request_idx: int | None) -> RouteResult:
        started = self._clock()
        outcome = "error"
        try:
            result = await self._router.route(self.name, job.cost, request_idx)
            outcome = "ready" if isinstance(result, Ready) else "no_worker"
            if not isinstance(result, Ready):
                self.last_route_status = result.status
            log.debug("route.answered", job_id=job.id, endpoint=self.name, outcome=outcome,
                      request_idx=request_idx)  # fmt: skip
            return result
        except RouteError as exc:
            outcome = "rate_limited" if isinstance(exc, RouteRateLimited) else "error"
            log.warning("route.error", job_id=job.id, endpoint=self.name, kind=exc.kind,
                        error=str(exc))  # fmt: skip
            raise
        finally:
            self._metrics.route_calls.labels(self.name, outcome).inc()
            self._metrics.route_latency.labels(self.name, outcome).observe(self._clock() - started)

    def _backoff(self, errors: int) -> float:
        poll = self.config.poll
        return backoff_s(errors, poll.initial_s, poll.max_s, poll.multiplier, self._rng.random())

    def _remember_worker(self, url: str) -> None:
        self.known_workers[url] = self._clock()
        if len(self.known_workers) > MAX_KNOWN_WORKERS:
            oldest = min(self.known_workers, key=self.known_workers.__getitem__)
            del self.known_workers[oldest]
