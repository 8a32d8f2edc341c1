"""The embedded store: one process, jobs as live objects; finished jobs kept for a while."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from scheduler.jobs import CANCELLED_BY_CALLER, Job, JobStatus
from scheduler.store.base import (
    Admission,
    CancelListener,
    CancelOutcome,
    Enqueued,
    StoreFull,
    check_admission,
)


@dataclass(slots=True)
class _Backlog:
    jobs: int = 0
    cost: float = 0.0

    def add(self, cost: float, sign: int) -> None:
        self.jobs += sign
        self.cost = max(0.0, self.cost + sign * cost) if self.jobs else 0.0


class MemoryJobStore:
    """Holds every job until ``retention_s`` after it finished (then 404). Nothing survives the
    process, and its one consumer is this process: claims only matter for ``requeue``."""

    shared = False

    def __init__(
        self, retention_s: float, max_retained: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._retention_s = retention_s
        self._max_retained = max_retained
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._idempotency: dict[tuple[str, str, str], str] = {}  # (endpoint, tenant, key)
        self._finished: deque[tuple[float, str]] = deque()
        self._ended: set[str] = set()
        self._unfinished: set[str] = set()  # enqueued, not finished: counted in the backlogs
        self._queued: dict[str, OrderedDict[str, None]] = {}  # endpoint -> ids, oldest first
        self._claims: dict[str, float] = {}  # job id -> when claimed or last touched
        self._endpoints: dict[str, _Backlog] = {}
        self._tenants: dict[str, _Backlog] = {}
        self._arrived: dict[str, asyncio.Event] = {}
        self._takers: dict[str, Callable[[list[Job]], None]] = {}  # endpoint -> push consumer
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._on_cancel: CancelListener = lambda _: None

    def __len__(self) -> int:
        return len(self._jobs)

    async def start(self, on_cancel: CancelListener) -> None:
        self._on_cancel = on_cancel

    async def close(self) -> None:
        for futures in self._waiters.values():
            for future in futures:
                future.cancel()
        self._waiters.clear()

    def healthy(self) -> bool:
        return True

    # intake ---------------------------------------------------------------------------
    async def enqueue(self, job: Job, admission: Admission) -> Enqueued:
        if job.idempotency_key is not None:
            existing = self._by_key(job.endpoint, job.tenant, job.idempotency_key)
            if existing is not None:
                return Enqueued(existing, created=False)
        endpoint = self._endpoints.setdefault(job.endpoint, _Backlog())
        tenant = self._tenants.setdefault(job.tenant, _Backlog())
        problem = check_admission(admission, job, (endpoint.jobs, endpoint.cost),
                                  (tenant.jobs, tenant.cost))  # fmt: skip
        if problem is not None:
            raise StoreFull(*problem)
        self.add(job)
        endpoint.add(job.cost, +1)
        tenant.add(job.cost, +1)
        self._unfinished.add(job.id)
        self._queued.setdefault(job.endpoint, OrderedDict())[job.id] = None
        self._announce(job.endpoint)
        return Enqueued(job, created=True)

    def add(self, job: Job) -> None:
        """Keep a job that runs outside the queue (a caller session's): lookups find it."""
        self._jobs[job.id] = job
        if job.idempotency_key is not None:
            self._idempotency[(job.endpoint, job.tenant, job.idempotency_key)] = job.id

    def _arrival(self, endpoint: str) -> asyncio.Event:
        event = self._arrived.get(endpoint)
        if event is None:
            event = self._arrived[endpoint] = asyncio.Event()
        return event

    # the consumer side ----------------------------------------------------------------
    def push_arrivals(self, endpoint: str, take: Callable[[list[Job]], None] | None) -> bool:
        """From now on claim an endpoint's jobs as they arrive and hand them to ``take`` in the
        enqueuing call (no claimer task to wake: a task switch less per job); ``None`` stops."""
        if take is None:
            self._takers.pop(endpoint, None)
            return True
        self._takers[endpoint] = take
        if self._queued.get(endpoint):  # what came before
            self._announce(endpoint)
        return True

    def _announce(self, endpoint: str) -> None:
        take = self._takers.get(endpoint)
        if take is None:
            self._arrival(endpoint).set()
            return
        queued = self._queued[endpoint]
        take(self._take(queued, len(queued)))

    async def claim(self, endpoint: str, max_jobs: int, block_s: float) -> list[Job]:
        queued = self._queued.setdefault(endpoint, OrderedDict())
        if not queued and block_s > 0:
            arrived = self._arrival(endpoint)
            arrived.clear()
            try:
                async with asyncio.timeout(block_s):
                    await arrived.wait()
            except TimeoutError:
                return []
        return self._take(queued, max_jobs)

    def _take(self, queued: OrderedDict[str, None], max_jobs: int) -> list[Job]:
        claimed: list[Job] = []
        now = self._clock()
        while queued and len(claimed) < max_jobs:
            job = self._jobs.get(queued.popitem(last=False)[0])
            if job is not None and not job.finished:
                self._claims[job.id] = now
                claimed.append(job)
        return claimed

    async def requeue(self, job_ids: list[str]) -> None:
        endpoints: dict[str, None] = {}
        for job_id in reversed(job_ids):  # each to the front: they were there before the rest
            job = self._jobs.get(job_id)
            if self._claims.pop(job_id, None) is None or job is None or job.finished:
                continue
            job.status = JobStatus.QUEUED
            queued = self._queued.setdefault(job.endpoint, OrderedDict())
            queued[job_id] = None
            queued.move_to_end(job_id, last=False)
            endpoints[job.endpoint] = None
        for endpoint in endpoints:
            self._announce(endpoint)

    async def touch(self) -> None:
        now = self._clock()
        for job_id in self._claims:
            self._claims[job_id] = now

    async def reclaim(self, endpoint: str, min_idle_s: float, max_jobs: int) -> list[Job]:
        now = self._clock()
        taken: list[Job] = []
        for job_id, touched in self._claims.items():
            job = self._jobs.get(job_id)
            if len(taken) >= max_jobs:
                break
            if job is not None and job.endpoint == endpoint and now - touched >= min_idle_s:
                taken.append(job)
        for job in taken:
            self._claims[job.id] = now
        return taken

    async def finish(self, job: Job) -> bool:
        return self.finish_now(job)

    def finish_now(self, job: Job) -> bool:
        """``finish`` for callers that cannot await: nothing here waits."""
        self._claims.pop(job.id, None)
        queued = self._queued.get(job.endpoint)
        if queued is not None:
            queued.pop(job.id, None)
        if job.id in self._ended or job.id not in self._jobs:
            return False
        self._ended.add(job.id)
        if job.id in self._unfinished:  # a caller-session job was never counted
            self._unfinished.discard(job.id)
            self._endpoints[job.endpoint].add(job.cost, -1)
            self._tenants[job.tenant].add(job.cost, -1)
        self.mark_finished(job, self._clock())
        for future in self._waiters.pop(job.id, []):
            if not future.done():
                future.set_result(None)
        return True

    # any replica ----------------------------------------------------------------------
    async def cancel(self, job_id: str) -> CancelOutcome:
        job = self._jobs.get(job_id)
        if job is None:
            return CancelOutcome.UNKNOWN
        if job.finished or job.id in self._ended:
            return CancelOutcome.FINISHED
        job.cancel_requested = True
        queued = self._queued.get(job.endpoint)
        if queued is not None and job_id in queued:
            job.finish(JobStatus.CANCELLED, self._clock(), CANCELLED_BY_CALLER)
            self.finish_now(job)
            return CancelOutcome.CANCELLED
        self._on_cancel(job_id)
        return CancelOutcome.SIGNALLED

    async def get(self, job_id: str) -> Job | None:
        return self.peek(job_id)

    def peek(self, job_id: str) -> Job | None:
        self.sweep(self._clock())  # cheap: pops only what is due
        return self._jobs.get(job_id)

    @property
    def unfinished(self) -> int:
        """Jobs enqueued and not finished (queued, claimed or running)."""
        return len(self._unfinished)

    async def by_idempotency_key(self, endpoint: str, tenant: str, key: str) -> Job | None:
        return self._by_key(endpoint, tenant, key)

    def _by_key(self, endpoint: str, tenant: str, key: str) -> Job | None:
        """A tenant's job by its key: keys of different tenants never collide."""
        job_id = self._idempotency.get((endpoint, tenant, key))
        return None if job_id is None else self._jobs.get(job_id)

    async def wait_finished(self, job_id: str, timeout_s: float) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None or job.id in self._ended:
            return job
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        try:
            async with asyncio.timeout(timeout_s):
                await future
        except TimeoutError:
            waiters = self._waiters.get(job_id, [])
            if future in waiters:
                waiters.remove(future)
        return self._jobs.get(job_id, job)

    async def backlog(self, endpoint: str) -> tuple[int, float]:
        found = self._endpoints.get(endpoint, _Backlog())
        return found.jobs, found.cost

    # retention ------------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Every job held, finished or not."""
        return list(self._jobs)

    def mark_finished(self, job: Job, now: float) -> None:
        self._finished.append((now, job.id))
        while len(self._finished) > self._max_retained:
            self._forget(self._finished.popleft()[1])

    def sweep(self, now: float) -> int:
        removed = 0
        while self._finished and now - self._finished[0][0] >= self._retention_s:
            self._forget(self._finished.popleft()[1])
            removed += 1
        return removed

    def _forget(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        self._ended.discard(job_id)
        if job is not None and job.idempotency_key is not None:
            self._idempotency.pop((job.endpoint, job.tenant, job.idempotency_key), None)
