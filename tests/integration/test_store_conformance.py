"""One suite for every ``JobStore``: the memory store and the Redis store behave the same.

``make_store(consumer)`` gives the store of one replica. Redis: a separate ``RedisJobStore``
(a separate consumer, on its own client named after it) per name over one key prefix. Memory:
one process is one consumer, so every name gets the same instance; the tests hold for both.
``pass_time`` advances the memory store's clock and really sleeps for Redis (whose idle times
are the server's): a test that checks something does NOT happen within a window keeps the time
it spends inside the window small against the window (a loaded machine stretches it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from scheduler.jobs import Job, JobMode, JobResult, JobStatus, new_job_id
from scheduler.jobs.delivery import BufferedDelivery
from scheduler.store import redis_scripts
from scheduler.store.base import Admission, CancelOutcome, JobStore, StoreFull, StoreUnavailable
from scheduler.store.memory import MemoryJobStore
from scheduler.store.redis import GROUP, RedisJobStore
from scheduler.store.redis_client import connect
from tests.integration.redis_support import redis_client, redis_config, redis_prefix

__all__ = ["redis_client", "redis_prefix"]  # fixtures, imported for pytest

RETENTION_S = 60.0
ENDPOINT = "ep"


class Clock:
    """Real monotonic time plus what the test skipped."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def delivery(mode: JobMode) -> BufferedDelivery:
    return BufferedDelivery(1 << 20)


class Fleet:
    """The stores of one backend sharing one state; ``__call__`` is the ``make_store`` factory."""

    def __init__(self, backend: str, redis: tuple[Redis, str] | None) -> None:
        self.backend = backend
        self.clock = Clock()
        self._redis = redis
        self._stores: dict[str, JobStore] = {}
        self._clients: list[Redis] = []
        self._heard: dict[int, list[str]] = {}

    async def __call__(self, consumer: str, retention_s: float = RETENTION_S) -> JobStore:
        if self.backend == "memory" and self._stores:
            return next(iter(self._stores.values()))  # one process is one consumer
        store = self._build(consumer, retention_s)
        heard: list[str] = []
        await store.start(heard.append)
        self._stores[consumer] = store
        self._heard[id(store)] = heard
        return store

    def _build(self, consumer: str, retention_s: float) -> JobStore:
        if self._redis is None:
            return MemoryJobStore(retention_s=retention_s, max_retained=1000, clock=self.clock)
        _, prefix = self._redis
        client = named_client(f"{prefix}-{consumer}")
        self._clients.append(client)
        return RedisJobStore(client, prefix, consumer, retention_s, delivery, clock=self.clock)

    async def in_call(self, consumer: str, command: str, blocked: bool = False) -> None:
        """Wait until the store of ``consumer`` is inside the call just started as a task:
        Redis ran its ``command`` (and, ``blocked``, holds it blocked). Memory answers
        without I/O: one turn of the loop runs the task to where it waits."""
        if self._redis is None:
            await asyncio.sleep(0)
            return
        client, prefix = self._redis
        await wait_for_client(client, f"{prefix}-{consumer}", command, blocked)

    def heard(self, store: JobStore) -> list[str]:
        """Job ids the cancel listener of ``store`` was called with."""
        return self._heard[id(store)]

    async def pass_time(self, seconds: float) -> None:
        if self.backend == "memory":
            self.clock.offset += seconds
        else:
            await asyncio.sleep(seconds)

    def job(self, endpoint: str = ENDPOINT, **fields: Any) -> Job:
        values: dict[str, Any] = {
            "route": "/generate",
            "payload": b'{"prompt": "hi"}',
            "cost": 1.0,
            "priority": 0,
            "timeout_s": 30.0,
            "mode": "async",
        }
        values.update(fields)
        return Job(id=new_job_id(), endpoint=endpoint, delivery=delivery("async"),
                   created_mono=self.clock(), **values)  # fmt: skip

    async def close(self) -> None:
        for store in self._stores.values():
            await store.close()
        for client in self._clients:
            await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def shared_state(request: pytest.FixtureRequest) -> tuple[str, tuple[Redis, str] | None]:
    if request.param == "memory":
        return "memory", None
    return "redis", (request.getfixturevalue("redis_client"),
                     request.getfixturevalue("redis_prefix"))  # fmt: skip


@pytest.fixture
async def make_store(
    shared_state: tuple[str, tuple[Redis, str] | None],
) -> AsyncIterator[Fleet]:
    fleet = Fleet(*shared_state)
    try:
        yield fleet
    finally:
        await fleet.close()


async def eventually(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


def named_client(name: str, **config: Any) -> Redis:
    """A client whose every connection carries ``name`` (``CLIENT LIST`` tells them apart)."""
    url = f"{redis_config().url.get_secret_value()}?client_name={name}"
    return connect(redis_config().model_copy(update={"url": SecretStr(url), **config}))


async def wait_for_client(
    observer: Redis, name: str, command: str, blocked: bool = False, timeout_s: float = 10.0
) -> None:
    """Until the server shows a connection named ``name`` whose last command is ``command``
    (``blocked``: and blocked in it)."""

    async def seen() -> bool:
        clients = await observer.client_list()
        return any(c["name"] == name and c["cmd"] == command
                   and (not blocked or "b" in c["flags"]) for c in clients)  # fmt: skip

    async with asyncio.timeout(timeout_s):
        while not await seen():
            await asyncio.sleep(0.01)


def complete(job: Job, now: float, body: Any = None, content_type: str | None = None) -> bool:
    """What a dispatcher does when a worker answered: False if the job had ended here."""
    if not job.finish(JobStatus.SUCCEEDED, now):
        return False
    job.result = JobResult(200, content_type, body)
    return True


NO_LIMITS = Admission()


async def enqueue_all(store: JobStore, jobs: list[Job], admission: Admission = NO_LIMITS) -> None:
    for job in jobs:
        assert (await store.enqueue(job, admission)).created


# claim ------------------------------------------------------------------------------------
async def test_claim_is_fifo(make_store: Fleet) -> None:
    a = await make_store("a")
    jobs = [make_store.job() for _ in range(3)]
    await enqueue_all(a, jobs)
    first = await a.claim(ENDPOINT, max_jobs=2, block_s=0)
    rest = await a.claim(ENDPOINT, max_jobs=5, block_s=0)
    assert [j.id for j in first] == [jobs[0].id, jobs[1].id]
    assert [j.id for j in rest] == [jobs[2].id]
    assert await a.claim(ENDPOINT, max_jobs=5, block_s=0) == []


async def test_claim_blocks_then_returns_empty(make_store: Fleet) -> None:
    a = await make_store("a")
    started = time.monotonic()
    assert await a.claim(ENDPOINT, max_jobs=1, block_s=0.3) == []
    assert time.monotonic() - started >= 0.25


async def test_blocked_claim_wakes_on_enqueue(make_store: Fleet) -> None:
    """The claim is blocked before the job exists, so only a wake-up can hand it the job; a
    claim that slept through the enqueue would return nothing when its block ends."""
    a, b = await make_store("a"), await make_store("b")
    await a.claim(ENDPOINT, max_jobs=1, block_s=0)  # the queue exists (Redis: its group)
    waiting = asyncio.create_task(a.claim(ENDPOINT, max_jobs=1, block_s=2.0))
    await make_store.in_call("a", "xreadgroup", blocked=True)
    job = make_store.job()
    await b.enqueue(job, Admission())
    claimed = await asyncio.wait_for(waiting, 10.0)
    assert [j.id for j in claimed] == [job.id]


async def test_claimed_job_is_claimed_once(make_store: Fleet) -> None:
    a, b = await make_store("a"), await make_store("b")
    job = make_store.job()
    await enqueue_all(a, [job])
    claimed = await a.claim(ENDPOINT, max_jobs=5, block_s=0)
    again = await b.claim(ENDPOINT, max_jobs=5, block_s=0)
    assert [j.id for j in claimed] == [job.id]
    assert again == []
    assert not claimed[0].finished


async def test_endpoints_are_separate_queues(make_store: Fleet) -> None:
    a = await make_store("a")
    other = make_store.job(endpoint="other")
    await enqueue_all(a, [other])
    assert await a.claim(ENDPOINT, max_jobs=5, block_s=0) == []
    assert [j.id for j in await a.claim("other", max_jobs=5, block_s=0)] == [other.id]


async def test_pushed_arrivals_are_handed_over_in_the_enqueuing_call(make_store: Fleet) -> None:
    """A store that can push hands each job over before ``enqueue`` returns, in order, and a
    requeued job comes back the same way; one that cannot leaves every job to ``claim``."""
    a = await make_store("a")
    handed: list[str] = []
    jobs = [make_store.job() for _ in range(3)]
    pushes = a.push_arrivals(ENDPOINT, lambda taken: handed.extend(j.id for j in taken))
    assert pushes is (make_store.backend == "memory")
    for job in jobs:
        await a.enqueue(job, NO_LIMITS)
        if pushes:
            assert handed[-1] == job.id  # already handed over: no claimer woke for it
    assert handed == ([j.id for j in jobs] if pushes else [])
    if not pushes:
        assert [j.id for j in await a.claim(ENDPOINT, 5, block_s=0)] == [j.id for j in jobs]
    await a.requeue([jobs[0].id, jobs[1].id])  # unstarted, given back: oldest first again
    if pushes:
        assert handed[3:] == [jobs[0].id, jobs[1].id]
        assert await a.claim(ENDPOINT, 5, block_s=0) == []


async def test_stopped_push_leaves_jobs_for_claim(make_store: Fleet) -> None:
    a = await make_store("a")
    handed: list[Job] = []
    a.push_arrivals(ENDPOINT, handed.extend)
    a.push_arrivals(ENDPOINT, None)  # a draining replica stops taking
    job = make_store.job()
    await a.enqueue(job, NO_LIMITS)
    assert handed == []
    assert [j.id for j in await a.claim(ENDPOINT, 5, block_s=0)] == [job.id]


async def test_push_hands_over_what_was_queued_before(make_store: Fleet) -> None:
    a = await make_store("a")
    early = make_store.job()
    await a.enqueue(early, NO_LIMITS)
    handed: list[Job] = []
    if a.push_arrivals(ENDPOINT, handed.extend):
        assert [j.id for j in handed] == [early.id]
    else:
        assert [j.id for j in await a.claim(ENDPOINT, 5, block_s=0)] == [early.id]


# idempotency ------------------------------------------------------------------------------
async def test_idempotency_key_names_one_job_per_tenant(make_store: Fleet) -> None:
    a, b = await make_store("a"), await make_store("b")
    first = make_store.job(idempotency_key="k1", tenant="t1")
    assert (await a.enqueue(first, Admission())).created
    again = await b.enqueue(make_store.job(idempotency_key="k1", tenant="t1"), Admission())
    assert not again.created
    assert again.job.id == first.id
    other_tenant = make_store.job(idempotency_key="k1", tenant="t2")
    assert (await b.enqueue(other_tenant, Admission())).created
    assert await b.backlog(ENDPOINT) == (2, 2.0)
    found = await b.by_idempotency_key(ENDPOINT, "t1", "k1")
    assert found is not None
    assert found.id == first.id
    found_other = await a.by_idempotency_key(ENDPOINT, "t2", "k1")
    assert found_other is not None
    assert found_other.id == other_tenant.id
    assert await a.by_idempotency_key(ENDPOINT, "t1", "nope") is None
    assert [j.id for j in await a.claim(ENDPOINT, 5, 0)] == [first.id, other_tenant.id]


async def test_idempotency_answers_before_admission(make_store: Fleet) -> None:
    a = await make_store("a")
    full = Admission(max_depth=1)
    assert (await a.enqueue(make_store.job(idempotency_key="k"), full)).created
    again = await a.enqueue(make_store.job(idempotency_key="k"), full)
    assert not again.created


# admission --------------------------------------------------------------------------------
ADMISSIONS = [
    # admission, (tenant, cost) accepted first, (tenant, cost) refused, (tenant, cost) still fine
    ("queue_full", Admission(max_depth=2), [("t1", 1.0), ("t2", 1.0)], ("t3", 1.0), None),
    ("queue_cost_full", Admission(max_cost=5.0), [("t1", 3.0)], ("t2", 2.5), ("t2", 2.0)),
    ("tenant_jobs_quota", Admission(tenant_max_jobs=1), [("t1", 1.0)], ("t1", 1.0), ("t2", 1.0)),
    ("tenant_cost_quota", Admission(tenant_max_cost=4.0), [("t1", 3.0)], ("t1", 2.0),
     ("t2", 2.0)),
]  # fmt: skip


@pytest.mark.parametrize(("reason", "admission", "accepted", "refused", "fine"), ADMISSIONS,
                         ids=[a[0] for a in ADMISSIONS])  # fmt: skip
async def test_admission_refuses(
    make_store: Fleet,
    reason: str,
    admission: Admission,
    accepted: list[tuple[str, float]],
    refused: tuple[str, float],
    fine: tuple[str, float] | None,
) -> None:
    a, b = await make_store("a"), await make_store("b")
    for tenant, cost in accepted:
        assert (await a.enqueue(make_store.job(tenant=tenant, cost=cost), admission)).created
    job = make_store.job(tenant=refused[0], cost=refused[1])
    with pytest.raises(StoreFull) as refusal:
        await b.enqueue(job, admission)
    assert refusal.value.reason == reason
    assert " of " in str(refusal.value)
    assert await b.get(job.id) is None
    assert await b.backlog(ENDPOINT) == (len(accepted), sum(c for _, c in accepted))
    if fine is not None:
        assert (await b.enqueue(make_store.job(tenant=fine[0], cost=fine[1]), admission)).created


async def test_admission_message_is_readable(make_store: Fleet) -> None:
    a = await make_store("a")
    admission = Admission(max_depth=2)
    await enqueue_all(a, [make_store.job(), make_store.job()], admission)
    with pytest.raises(StoreFull, match="the endpoint has 2 of 2 jobs queued"):
        await a.enqueue(make_store.job(), admission)


async def test_no_limits_are_not_checked(make_store: Fleet) -> None:
    a = await make_store("a")
    await enqueue_all(a, [make_store.job(cost=1e9) for _ in range(20)])
    assert await a.backlog(ENDPOINT) == (20, 2e10)


async def test_tenant_quota_spans_endpoints(make_store: Fleet) -> None:
    a = await make_store("a")
    admission = Admission(tenant_max_jobs=1)
    await enqueue_all(a, [make_store.job(endpoint="one", tenant="t")], admission)
    with pytest.raises(StoreFull) as refusal:
        await a.enqueue(make_store.job(endpoint="two", tenant="t"), admission)
    assert refusal.value.reason == "tenant_jobs_quota"


async def test_finishing_frees_capacity(make_store: Fleet) -> None:
    a = await make_store("a")
    admission = Admission(max_depth=1, tenant_max_cost=1.0)
    await enqueue_all(a, [make_store.job()], admission)
    with pytest.raises(StoreFull):
        await a.enqueue(make_store.job(), admission)
    [claimed] = await a.claim(ENDPOINT, 1, 0)
    assert complete(claimed, make_store.clock())
    assert await a.finish(claimed)
    assert (await a.enqueue(make_store.job(), admission)).created


# finish -----------------------------------------------------------------------------------
async def test_finish_first_result_wins(make_store: Fleet) -> None:
    a, b = await make_store("a"), await make_store("b")
    job = make_store.job()
    await enqueue_all(a, [job])
    [mine] = await a.claim(ENDPOINT, 1, 0)
    await make_store.pass_time(0.3)
    [theirs] = await b.reclaim(ENDPOINT, min_idle_s=0.2, max_jobs=5)
    assert theirs.id == job.id
    assert complete(mine, make_store.clock(), {"by": "a"}, "application/json")
    assert await a.finish(mine)
    complete(theirs, make_store.clock(), {"by": "b"}, "application/json")
    assert not await b.finish(theirs)
    record = await b.get(job.id)
    assert record is not None
    assert record.status == JobStatus.SUCCEEDED
    assert record.result == JobResult(200, "application/json", {"by": "a"})
    assert await a.backlog(ENDPOINT) == (0, 0.0)


async def test_finish_of_unknown_job_is_false(make_store: Fleet) -> None:
    a = await make_store("a")
    job = make_store.job()
    complete(job, make_store.clock())
    assert not await a.finish(job)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [({"choices": [{"text": "ok"}], "n": 1.5}, "application/json"),
     ("plain text, ünïcode", "text/plain"), (None, None), ([1, "two", None], "application/json")],
)  # fmt: skip
async def test_result_round_trips(make_store: Fleet, body: Any, content_type: str | None) -> None:
    a, b = await make_store("a"), await make_store("b")
    job = make_store.job(tenant="t1", idempotency_key="key", priority=3, cost=2.5)
    await enqueue_all(a, [job])
    [claimed] = await a.claim(ENDPOINT, 1, 0)
    claimed.started_mono = make_store.clock()
    claimed.attempts = 2
    claimed.history += ("worker gone",)
    claimed.error_status = 502
    assert complete(claimed, make_store.clock(), body, content_type)
    assert await a.finish(claimed)
    seen = await b.get(job.id)
    assert seen is not None
    assert seen.result == JobResult(200, content_type, body)
    assert (seen.status, seen.attempts, seen.history, seen.error_status) == (
        JobStatus.SUCCEEDED, 2, ("worker gone",), 502)  # fmt: skip
    assert (seen.tenant, seen.idempotency_key, seen.priority, seen.cost) == ("t1", "key", 3, 2.5)
    assert seen.started_mono is not None
    assert seen.finished_mono is not None


@pytest.mark.parametrize("payload", [b'{"prompt": "hi", "n": [1, 2.5, null]}', None])
async def test_payload_round_trips(make_store: Fleet, payload: bytes | None) -> None:
    a, b = await make_store("a"), await make_store("b")
    job = make_store.job(payload=payload)
    await enqueue_all(a, [job])
    [claimed] = await b.claim(ENDPOINT, 1, 0)
    assert claimed.payload == payload
    assert (claimed.route, claimed.mode, claimed.timeout_s) == ("/generate", "async", 30.0)


# requeue, touch, reclaim ------------------------------------------------------------------
async def test_requeued_job_goes_to_another_consumer(make_store: Fleet) -> None:
    a, b = await make_store("a"), await make_store("b")
    job = make_store.job()
    await enqueue_all(a, [job])
    [claimed] = await a.claim(ENDPOINT, 1, 0)
    await a.requeue([claimed.id, "job_unknown"])
    queued = await b.get(job.id)
    assert queued is not None
    assert queued.status == JobStatus.QUEUED
    assert [j.id for j in await b.claim(ENDPOINT, 5, 0)] == [job.id]
    assert await a.backlog(ENDPOINT) == (1, 1.0)


async def test_requeue_of_unclaimed_job_does_nothing(make_store: Fleet) -> None:
    a = await make_store("a")
    job = make_store.job()
    await enqueue_all(a, [job])
    await a.requeue([job.id])
    assert [j.id for j in await a.claim(ENDPOINT, 5, 0)] == [job.id]
    assert await a.claim(ENDPOINT, 5, 0) == []


async def test_touch_keeps_a_claim(make_store: Fleet) -> None:
    a, b = await make_store("a"), await make_store("b")
    job = make_store.job()
    await enqueue_all(a, [job])
    await a.claim(ENDPOINT, 1, 0)
    idle_s = 1.5  # what counts as abandoned
    await make_store.pass_time(idle_s + 0.1)  # untouched, the claim would be taken now
    await a.touch()
    await make_store.pass_time(0.1)  # idle again, but far from idle_s (room for a slow machine)
    assert await b.reclaim(ENDPOINT, min_idle_s=idle_s, max_jobs=5) == []
    await make_store.pass_time(idle_s)
    taken = await b.reclaim(ENDPOINT, min_idle_s=idle_s, max_jobs=5)
    assert [j.id for j in taken] == [job.id]


async def test_reclaim_takes_only_idle_claims(make_store: Fleet) -> None:
    a, b = await make_store("a"), await make_store("b")
    jobs = [make_store.job() for _ in range(3)]
    await enqueue_all(a, jobs)
    await a.claim(ENDPOINT, 2, 0)
    assert await b.reclaim(ENDPOINT, min_idle_s=5.0, max_jobs=5) == []
    await make_store.pass_time(0.3)
    taken = await b.reclaim(ENDPOINT, min_idle_s=0.2, max_jobs=1)
    assert [j.id for j in taken] == [jobs[0].id]
    assert await b.reclaim("other", min_idle_s=0.0, max_jobs=5) == []


# cancel -----------------------------------------------------------------------------------
async def test_cancel_queued_job(make_store: Fleet) -> None:
    a, b = await make_store("a"), await make_store("b")
    job = make_store.job(cost=2.0)
    await enqueue_all(a, [job])
    assert await b.cancel(job.id) == CancelOutcome.CANCELLED
    assert await a.claim(ENDPOINT, 5, 0) == []
    seen = await a.wait_finished(job.id, 5.0)
    assert seen is not None
    assert (seen.status, seen.error) == (JobStatus.CANCELLED, "cancelled by caller")
    assert seen.finished_mono is not None
    assert await a.backlog(ENDPOINT) == (0, 0.0)
    assert await b.cancel(job.id) == CancelOutcome.FINISHED


async def test_cancel_claimed_job_signals(make_store: Fleet) -> None:
    a, b = await make_store("a"), await make_store("b")
    job = make_store.job()
    await enqueue_all(a, [job])
    [claimed] = await a.claim(ENDPOINT, 1, 0)
    assert await b.cancel(job.id) == CancelOutcome.SIGNALLED
    await eventually(lambda: job.id in make_store.heard(a))
    seen = await b.get(job.id)
    assert seen is not None
    assert seen.cancel_requested
    assert not seen.finished
    assert await a.backlog(ENDPOINT) == (1, 1.0)
    assert claimed.finish(JobStatus.CANCELLED, make_store.clock(), "cancelled by caller")
    assert await a.finish(claimed)


async def test_cancel_finished_and_unknown(make_store: Fleet) -> None:
    a = await make_store("a")
    job = make_store.job()
    await enqueue_all(a, [job])
    [claimed] = await a.claim(ENDPOINT, 1, 0)
    complete(claimed, make_store.clock())
    await a.finish(claimed)
    assert await a.cancel(job.id) == CancelOutcome.FINISHED
    assert await a.cancel("job_unknown") == CancelOutcome.UNKNOWN


# wait, backlog, get, retention ------------------------------------------------------------
async def test_wait_finished_wakes_on_finish_elsewhere(make_store: Fleet) -> None:
    """The waiter has read the job unfinished before it finishes elsewhere: it answers long
    before its own timeout only if the finish woke it."""
    a, b = await make_store("a"), await make_store("b")
    job = make_store.job()
    await enqueue_all(b, [job])
    [claimed] = await a.claim(ENDPOINT, 1, 0)
    waiting = asyncio.create_task(b.wait_finished(job.id, 50.0))
    await make_store.in_call("b", "hgetall")
    assert not waiting.done()
    complete(claimed, make_store.clock(), "done", "text/plain")
    assert await a.finish(claimed)
    seen = await asyncio.wait_for(waiting, 10.0)  # a fifth of the waiter's timeout
    assert seen is not None
    assert seen.status == JobStatus.SUCCEEDED
    assert seen.result == JobResult(200, "text/plain", "done")


async def test_wait_finished_times_out_with_current_state(make_store: Fleet) -> None:
    a = await make_store("a")
    job = make_store.job()
    await enqueue_all(a, [job])
    started = time.monotonic()
    seen = await a.wait_finished(job.id, 0.3)
    assert time.monotonic() - started >= 0.25
    assert seen is not None
    assert seen.status == JobStatus.QUEUED
    assert await a.wait_finished("job_unknown", 0.1) is None


async def test_backlog_counts_unfinished_jobs(make_store: Fleet) -> None:
    a, b = await make_store("a"), await make_store("b")
    first, second = make_store.job(cost=2.5), make_store.job(cost=1.5)
    await enqueue_all(a, [first, second])
    assert await b.backlog(ENDPOINT) == (2, 4.0)
    [claimed] = await b.claim(ENDPOINT, 1, 0)
    assert await a.backlog(ENDPOINT) == (2, 4.0)
    complete(claimed, make_store.clock())
    await b.finish(claimed)
    assert await a.backlog(ENDPOINT) == (1, 1.5)
    await a.cancel(second.id)
    assert await a.backlog(ENDPOINT) == (0, 0.0)
    assert await a.backlog("other") == (0, 0.0)


async def test_get_snapshot_and_unknown(make_store: Fleet) -> None:
    a, b = await make_store("a"), await make_store("b")
    job = make_store.job(tenant="t9", webhook_url="https://example.test/hook", request_id="r1")
    await enqueue_all(a, [job])
    seen = await b.get(job.id)
    assert seen is not None
    assert (seen.id, seen.endpoint, seen.status) == (job.id, ENDPOINT, JobStatus.QUEUED)
    assert (seen.webhook_url, seen.request_id, seen.tenant) == (job.webhook_url, "r1", "t9")
    assert abs(seen.created_wall - job.created_wall) < 1e-6
    assert await b.get("job_unknown") is None


async def test_finished_job_is_forgotten_after_retention(make_store: Fleet) -> None:
    retention_s = 2.0
    a = await make_store("a", retention_s=retention_s)
    job = make_store.job(idempotency_key="k")
    await enqueue_all(a, [job])
    [claimed] = await a.claim(ENDPOINT, 1, 0)
    complete(claimed, make_store.clock())
    await a.finish(claimed)
    await make_store.pass_time(0.5)  # well inside the retention (room for a slow machine)
    assert await a.get(job.id) is not None
    assert await a.by_idempotency_key(ENDPOINT, "default", "k") is not None
    await make_store.pass_time(retention_s - 0.5 + 0.1)
    assert await a.get(job.id) is None
    assert await a.by_idempotency_key(ENDPOINT, "default", "k") is None
    assert (await a.enqueue(make_store.job(idempotency_key="k"), Admission())).created


# Redis only: what the memory store cannot get wrong -----------------------------------------
def redis_store(client: Redis, prefix: str, consumer: str, **kwargs: Any) -> RedisJobStore:
    return RedisJobStore(client, prefix, consumer, RETENTION_S, delivery, **kwargs)


async def test_unreachable_redis_is_unavailable() -> None:
    config = redis_config().model_copy(
        update={"url": SecretStr("redis://127.0.0.1:1/0"), "retries": 0}
    )
    client = connect(config)
    failed: list[str] = []
    store = redis_store(client, "unreachable", "a", on_error=failed.append)
    try:
        await store.start(lambda _: None)  # does not raise: the listener keeps trying
        assert not store.healthy()
        job = Fleet("redis", None).job()
        with pytest.raises(StoreUnavailable):
            await store.enqueue(job, Admission())
        with pytest.raises(StoreUnavailable):
            await store.get(job.id)
        with pytest.raises(StoreUnavailable):
            await store.cancel(job.id)
        assert failed[0] == "listen"
        assert {"enqueue", "get", "cancel"} <= set(failed)
    finally:
        await asyncio.wait_for(store.close(), 10.0)
        await client.aclose()


async def test_health_returns_with_the_next_success(redis_client: Redis, redis_prefix: str) -> None:
    failed: list[str] = []
    store = redis_store(redis_client, redis_prefix, "a", on_error=failed.append)
    await redis_client.set(f"{redis_prefix}:job:broken", "not a hash")
    with pytest.raises(StoreUnavailable):
        await store.get("broken")
    assert (store.healthy(), failed) == (False, ["get"])
    assert await store.get("job_unknown") is None
    assert store.healthy()


async def test_job_cancelled_while_delivered_is_skipped(
    redis_client: Redis, redis_prefix: str
) -> None:
    store = redis_store(redis_client, redis_prefix, "a")
    job = Fleet("redis", None).job()
    await store.enqueue(job, Admission())
    # as if cancelled between the stream read and the claim
    await redis_client.hset(f"{redis_prefix}:job:{job.id}", "status", "cancelled")
    assert await store.claim(ENDPOINT, 5, 0) == []
    queue = f"{redis_prefix}:q:{ENDPOINT}"
    assert (await redis_client.xpending(queue, GROUP))["pending"] == 0
    assert await redis_client.xlen(queue) == 0


async def test_lost_consumer_group_is_recreated(redis_client: Redis, redis_prefix: str) -> None:
    store = redis_store(redis_client, redis_prefix, "a")
    queue = f"{redis_prefix}:q:{ENDPOINT}"
    await redis_client.xadd(queue, {"id": "job_gone"})  # a stream without the group
    assert await store.claim(ENDPOINT, 5, 0) == []
    assert await store.reclaim("never-used", 0.0, 5) == []
    job = Fleet("redis", None).job()
    await store.enqueue(job, Admission())
    assert [j.id for j in await store.claim(ENDPOINT, 5, 0)] == [job.id]
    assert store.healthy()


async def test_loser_of_a_takeover_does_not_requeue(redis_client: Redis, redis_prefix: str) -> None:
    a, b, c = (redis_store(redis_client, redis_prefix, name) for name in "abc")
    job = Fleet("redis", None).job()
    await a.enqueue(job, Admission())
    [mine] = await a.claim(ENDPOINT, 1, 0)
    await asyncio.sleep(0.2)
    [theirs] = await b.reclaim(ENDPOINT, min_idle_s=0.1, max_jobs=5)
    await a.touch()  # finds the claim gone
    await a.requeue([mine.id])
    assert await c.claim(ENDPOINT, 5, 0) == []
    assert await b.reclaim(ENDPOINT, min_idle_s=0.0, max_jobs=5) == []  # its own: not again
    complete(theirs, time.monotonic())
    assert await b.finish(theirs)


async def test_finished_records_expire(redis_client: Redis, redis_prefix: str) -> None:
    store = RedisJobStore(redis_client, redis_prefix, "a", 30.0, delivery)
    job = Fleet("redis", None).job(idempotency_key="k")
    await store.enqueue(job, Admission())
    assert await redis_client.pttl(f"{redis_prefix}:job:{job.id}") == -1
    [claimed] = await store.claim(ENDPOINT, 1, 0)
    complete(claimed, time.monotonic())
    await store.finish(claimed)
    for key in (f"job:{job.id}", f"idem:{ENDPOINT}:default:k"):
        assert 0 < await redis_client.pttl(f"{redis_prefix}:{key}") <= 30_000
    assert await redis_client.exists(f"{redis_prefix}:backlog:endpoint:{ENDPOINT}") == 0


@pytest.mark.parametrize("retries", [0, 2], ids=["store-resubscribes", "client-reconnects"])
async def test_listener_survives_a_dropped_connection(
    redis_client: Redis, redis_prefix: str, retries: int
) -> None:
    """Without retries the drop reaches the store's listener, which subscribes again itself;
    with them redis-py reconnects under it. Either way cancels are heard afterwards."""
    name = f"{redis_prefix}-a"
    client = named_client(name, retries=retries)
    a, b = redis_store(client, redis_prefix, "a"), redis_store(redis_client, redis_prefix, "b")
    heard: list[str] = []
    await a.start(heard.append)
    try:
        [listener] = [c["id"] for c in await redis_client.client_list()
                      if c["name"] == name and "P" in c["flags"]]  # fmt: skip
        assert await redis_client.client_kill_filter(_id=listener) == 1
        job = Fleet("redis", None).job()
        await a.enqueue(job, Admission())
        await a.claim(ENDPOINT, 1, 0)
        async with asyncio.timeout(20):  # re-subscribing takes a back-off and a connection
            while not heard:  # a cancel published while re-subscribing is lost: ask again
                await b.cancel(job.id)
                await asyncio.sleep(0.1)
        assert heard[0] == job.id
        assert a.healthy()
    finally:
        await a.close()
        await client.aclose()


async def test_close_does_not_wait_for_a_blocked_claim(
    redis_client: Redis, redis_prefix: str
) -> None:
    name = f"{redis_prefix}-a"
    client = named_client(name, socket_timeout_s=60.0)  # lets a claim block for 30 s
    try:
        store = redis_store(client, redis_prefix, "a")
        await store.start(lambda _: None)
        blocked = asyncio.create_task(store.claim(ENDPOINT, 1, block_s=30.0))
        await wait_for_client(redis_client, name, "xreadgroup", blocked=True)
        await asyncio.wait_for(store.close(), 10.0)  # a third of the claim's block
        assert not blocked.done()
        blocked.cancel()
        await asyncio.wait([blocked], timeout=10.0)
        assert blocked.done()
        assert await client.ping()  # the pool is usable after a cancelled blocking read
    finally:
        await client.aclose()


async def test_connect_applies_the_config() -> None:
    client = connect(redis_config())
    try:
        pool = client.connection_pool
        assert pool.max_connections == redis_config().max_connections
        assert pool.connection_kwargs["socket_timeout"] == 5.0
        assert pool.connection_kwargs["socket_connect_timeout"] == 2.0
        assert pool.connection_kwargs["retry"].get_retries() == 2
        assert pool.connection_kwargs["decode_responses"]
    finally:
        await client.aclose()


async def test_retried_calls_answer_like_the_first(redis_client: Redis, redis_prefix: str) -> None:
    """redis-py retries a script whose reply was lost: the second run must not count twice."""
    store = redis_store(redis_client, redis_prefix, "a")
    job = Fleet("redis", None).job()
    await store.enqueue(job, Admission())
    await store.enqueue(job, Admission())  # as a retry: same job id
    assert await store.backlog(ENDPOINT) == (1, 1.0)
    assert await redis_client.xlen(f"{redis_prefix}:q:{ENDPOINT}") == 1
    finish = redis_client.register_script(redis_scripts.FINISH)
    key = f"{redis_prefix}:job:{job.id}"
    args = [redis_prefix, GROUP, 30_000, "", "token-1", "status", "succeeded"]
    assert await finish(keys=[key], args=args) == 1
    assert await finish(keys=[key], args=args) == 1  # the retry
    assert await finish(keys=[key], args=[*args[:4], "token-2", *args[5:]]) == 0
    assert await store.backlog(ENDPOINT) == (0, 0.0)
