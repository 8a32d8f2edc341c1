"""The shared store: jobs in Redis, one Stream per endpoint with one consumer group.

Each replica is one consumer. A claimed job is a pending entry of its consumer until
``finish`` or ``requeue`` acknowledges it; ``touch`` keeps it from ``reclaim`` by other
replicas (at-least-once: a taken-over job may have run partly). Every state change is one Lua
script (``redis_scripts``); finished jobs expire ``retention_s`` after they ended. Key layout:
see ``redis_scripts``.

The client must decode responses (``connect`` builds one). Closing it is the caller's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Any, cast

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError, ResponseError

from scheduler.jobs import CANCELLED_BY_CALLER, Job, JobMode
from scheduler.store.base import (
    Admission,
    CancelListener,
    CancelOutcome,
    DeliveryFactory,
    Enqueued,
    StoreFull,
    StoreUnavailable,
    check_admission,
    from_record,
    to_record,
)
from scheduler.store.keys import Keys
from scheduler.store.redis_client import Scripts
from scheduler.tasks import cancel_and_wait

log = structlog.get_logger("scheduler.store.redis")

GROUP = "scheduler"
TERMINAL_FIELDS = ("status", "result", "error", "attempts", "history", "error_status",
                   "queued_s", "total_s", "payload")  # fmt: skip
LISTEN_POLL_S = 1.0  # how long one pub/sub read waits before looping (cancellation points)
LISTEN_BACKOFF_S = (0.1, 5.0)  # first and longest sleep before re-subscribing
TOUCH_BATCH = 500  # entry ids per script call (Lua's unpack has a stack limit)


class RedisJobStore:
    """``JobStore`` over Redis; this instance is the consumer ``consumer``."""

    shared = True

    def __init__(
        self,
        client: Redis,
        prefix: str,
        consumer: str,
        retention_s: float,
        delivery_factory: DeliveryFactory,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_error: Callable[[str], None] = lambda op: None,
    ) -> None:
        kwargs = client.connection_pool.connection_kwargs
        if not kwargs.get("decode_responses"):
            raise ValueError("the Redis client must be built with decode_responses=True")
        self._client = client
        self._prefix = prefix
        self._keys = Keys(prefix)
        self._consumer = consumer
        self._retention_ms = max(1, round(retention_s * 1000))
        self._delivery_factory = delivery_factory
        self._clock = clock
        self._wall = wall
        self._on_error = on_error
        socket_timeout = kwargs.get("socket_timeout")
        # A blocking read must answer before the socket times out (or it would be retried).
        self._block_cap_s = socket_timeout / 2 if socket_timeout else float("inf")
        self._scripts = Scripts(client)
        self._claims: dict[str, tuple[str, str]] = {}  # job id -> (endpoint, stream entry id)
        self._cursors: dict[str, str] = {}  # endpoint -> where the next reclaim scan starts
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._healthy = True
        self._closed = False
        self._on_cancel: CancelListener = lambda _: None
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None

    # keys -------------------------------------------------------------------------------
    def _args(self, *args: str | int | float) -> list[str | int | float]:
        return [self._prefix, GROUP, *args]

    # health -----------------------------------------------------------------------------
    def healthy(self) -> bool:
        return self._healthy

    @contextlib.contextmanager
    def _op(self, name: str) -> Iterator[None]:
        """Redis errors become ``StoreUnavailable``; the store is unhealthy until a success."""
        try:
            yield
        except RedisError as exc:
            self._failed(name)
            raise StoreUnavailable(f"the job store failed to {name}") from exc
        self._healthy = True

    def _failed(self, name: str) -> None:
        self._healthy = False
        self._on_error(name)

    # intake -----------------------------------------------------------------------------
    async def enqueue(self, job: Job, admission: Admission) -> Enqueued:
        record = to_record(job, self._clock())
        limits = (admission.max_depth, admission.max_cost, admission.tenant_max_jobs,
                  admission.tenant_max_cost)  # fmt: skip
        args = self._args(*("" if limit is None else repr(limit) for limit in limits),
                          *chain.from_iterable(record.items()))  # fmt: skip
        with self._op("enqueue"):
            reply = await self._scripts.enqueue(keys=[self._keys.job(job.id)], args=args)
        if reply[0] == "existing":
            return Enqueued(self._snapshot(_pairs(reply[1])), created=False)
        if reply[0] == "full":
            counted = (int(reply[1]), float(reply[2])), (int(reply[3]), float(reply[4]))
            problem = check_admission(admission, job, *counted)
            raise StoreFull(*(problem or ("queue_full", "the queue is full")))
        return Enqueued(job, created=True)

    # the consumer side ------------------------------------------------------------------
    def push_arrivals(self, endpoint: str, take: Callable[[list[Job]], None] | None) -> bool:
        return False  # the stream is shared: each replica claims what it has room for

    async def claim(self, endpoint: str, max_jobs: int, block_s: float) -> list[Job]:
        stream = self._keys.queue(endpoint)
        block_ms = round(min(block_s, self._block_cap_s) * 1000)
        with self._op("claim"):
            entries = await self._read(stream, max_jobs, block_ms if block_ms > 0 else None)
            return await self._mark(endpoint, entries)

    async def _read(self, stream: str, count: int, block_ms: int | None) -> list[Any]:
        """New entries for this consumer; the group is created if Redis lost it (restart)."""
        for _attempt in range(2):
            try:
                reply = await self._client.xreadgroup(
                    GROUP, self._consumer, {stream: ">"}, count=count, block=block_ms
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._create_group(stream)
                continue
            return list(reply[0][1]) if reply else []
        return []

    async def _create_group(self, stream: str) -> None:
        try:
            await self._client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _mark(self, endpoint: str, entries: Iterable[Any]) -> list[Job]:
        """Claim delivered entries: live jobs marked running, ended ones acknowledged."""
        pairs = [(entry_id, (fields or {}).get("id", "")) for entry_id, fields in entries]
        if not pairs:
            return []
        ids = chain.from_iterable((job_id, entry) for entry, job_id in pairs)
        args = self._args(self._consumer, self._keys.queue(endpoint), *ids)
        records = await self._scripts.mark_claimed(args=args)
        jobs = []
        for (entry_id, _), flat in zip(pairs, records, strict=True):
            if flat:
                job = self._snapshot(_pairs(flat))
                self._claims[job.id] = (endpoint, entry_id)
                jobs.append(job)
        return jobs

    async def finish(self, job: Job) -> bool:
        if not job.finished:
            raise ValueError(f"job {job.id} is {job.status}: finish it first")
        record = to_record(job, self._clock())
        fields = chain.from_iterable((k, record[k]) for k in TERMINAL_FIELDS if k in record)
        claim = self._claims.get(job.id)
        entry = "" if claim is None else claim[1]
        args = self._args(self._retention_ms, entry, _token(), *fields)
        with self._op("finish"):
            recorded = await self._scripts.finish(keys=[self._keys.job(job.id)], args=args)
        self._claims.pop(job.id, None)
        return bool(recorded)

    async def requeue(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            claim = self._claims.get(job_id)
            if claim is None:
                continue
            with self._op("requeue"):
                await self._scripts.requeue(
                    keys=[self._keys.job(job_id)], args=self._args(self._consumer, claim[1])
                )
            self._claims.pop(job_id, None)

    async def touch(self) -> None:
        by_endpoint: dict[str, list[tuple[str, str]]] = {}
        for job_id, (endpoint, entry) in self._claims.items():
            by_endpoint.setdefault(endpoint, []).append((job_id, entry))
        for endpoint, claims in by_endpoint.items():
            for start in range(0, len(claims), TOUCH_BATCH):
                await self._touch(endpoint, claims[start : start + TOUCH_BATCH])

    async def _touch(self, endpoint: str, claims: list[tuple[str, str]]) -> None:
        args = self._args(self._consumer, self._keys.queue(endpoint), *(e for _, e in claims))
        with self._op("touch"):
            kept = set(await self._scripts.touch(args=args))
        for job_id, entry in claims:  # taken over by another replica: not ours any more
            if entry not in kept:
                self._claims.pop(job_id, None)

    async def reclaim(self, endpoint: str, min_idle_s: float, max_jobs: int) -> list[Job]:
        stream = self._keys.queue(endpoint)
        with self._op("reclaim"):
            try:
                reply = await self._client.xautoclaim(
                    stream, GROUP, self._consumer, min_idle_time=round(min_idle_s * 1000),
                    start_id=self._cursors.get(endpoint, "0-0"), count=max_jobs,
                )  # fmt: skip
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                return []  # nothing was ever claimed there
            self._cursors[endpoint] = reply[0]
            # Our own claims are running here: taking them over renewed them, nothing more.
            entries = [(entry, fields) for entry, fields in reply[1]
                       if (fields or {}).get("id") not in self._claims]  # fmt: skip
            return await self._mark(endpoint, entries)

    # any replica ------------------------------------------------------------------------
    async def cancel(self, job_id: str) -> CancelOutcome:
        args = self._args(repr(self._wall()), self._retention_ms, CANCELLED_BY_CALLER, _token())
        with self._op("cancel"):
            outcome = await self._scripts.cancel(keys=[self._keys.job(job_id)], args=args)
        return CancelOutcome(outcome)

    async def get(self, job_id: str) -> Job | None:
        with self._op("get"):
            record = await self._hgetall(self._keys.job(job_id))
        return self._snapshot(record) if record else None

    async def by_idempotency_key(self, endpoint: str, tenant: str, key: str) -> Job | None:
        with self._op("get"):
            job_id = await self._client.get(self._keys.idempotency(endpoint, tenant, key))
        return None if job_id is None else await self.get(job_id)

    async def wait_finished(self, job_id: str, timeout_s: float) -> Job | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:  # ends by the deadline; each wake-up (done, re-subscribed) reads again
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(job_id, set()).add(future)  # before reading: no lost wake
            try:
                job = await self.get(job_id)
                remaining = deadline - loop.time()
                if job is None or job.finished or remaining <= 0 or self._closed:
                    return job
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await future
            finally:
                self._forget_waiter(job_id, future)

    def _forget_waiter(self, job_id: str, future: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[job_id]

    async def backlog(self, endpoint: str) -> tuple[int, float]:
        key = self._keys.endpoint_backlog(endpoint)
        with self._op("backlog"):
            jobs, cost = await self._client.hmget(key, ["jobs", "cost"])  # type: ignore[misc]  # async
        return int(jobs or 0), float(cost or 0.0)

    def _snapshot(self, record: dict[str, str]) -> Job:
        mode = cast(JobMode, record["mode"])
        job = from_record(record, self._delivery_factory(mode), self._clock(), self._wall())
        job.cancel_requested = record.get("cancel_requested") == "1"
        return job

    async def _hgetall(self, key: str) -> dict[str, str]:
        found: dict[str, str] = await self._client.hgetall(key)  # type: ignore[misc]  # async
        return found

    # events -----------------------------------------------------------------------------
    async def start(self, on_cancel: CancelListener) -> None:
        """Subscribe to the events channel (now, if Redis answers) and keep listening."""
        self._on_cancel = on_cancel
        try:
            await self._subscribe()
        except RedisError:
            self._failed("listen")
            await self._drop_pubsub()
        self._listener = asyncio.create_task(self._listen(), name="redis-store-events")

    async def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            await cancel_and_wait([self._listener])
            self._listener = None
        await self._drop_pubsub()
        self._wake_all()  # waiters read once more and return

    async def _subscribe(self) -> PubSub:
        pubsub = self._pubsub = self._client.pubsub()
        await pubsub.subscribe(self._keys.events)
        self._healthy = True
        return pubsub

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):  # closing a broken connection
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py: untyped

    async def _listen(self) -> None:
        first, longest = LISTEN_BACKOFF_S
        delay = first
        while True:  # until cancelled by close()
            try:
                pubsub = self._pubsub
                if pubsub is None:
                    pubsub = await self._subscribe()
                    self._wake_all()  # events may have been missed meanwhile: read again
                delay = first
                await self._pump(pubsub)
            except RedisError as exc:
                self._failed("listen")
                log.warning("store_events_lost", error=str(exc), retry_in_s=delay)
            except Exception:  # the task's top: a failed listener must not end the task
                log.exception("store_events_failed", retry_in_s=delay)
            await self._drop_pubsub()
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)

    async def _pump(self, pubsub: PubSub) -> None:
        while True:  # until an error or cancellation
            message = await pubsub.get_message(ignore_subscribe_messages=True,
                                               timeout=LISTEN_POLL_S)  # fmt: skip
            if message is not None and message.get("type") == "message":
                self._event(str(message["data"]))

    def _event(self, data: str) -> None:
        kind, _, job_id = data.partition(" ")
        if kind == "done":
            for future in self._waiters.get(job_id, ()):
                if not future.done():
                    future.set_result(None)
        elif kind == "cancel":
            self._on_cancel(job_id)

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_result(None)


def _token() -> str:
    return secrets.token_hex(8)


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))
