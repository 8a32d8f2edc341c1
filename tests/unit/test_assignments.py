"""LeasePool: reuse modes, AIMD budgets, collection, and a random-interleaving state machine.

The key safety property (vast-protocol.md section 2): a worker reached through a session leaves
session requests out of its own 429 check, so the cost in flight on a session lease must never
exceed what the session declared (its routed capacity); outside a session an answer may carry
at most one request at a time, and ``never`` uses an answer once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from scheduler.core.assignments import EPSILON, Lease, LeaseLimits, LeasePool, ReuseMode
from scheduler.core.capacity import Capacity, CapacityPolicy
from scheduler.core.leases import HOLD
from scheduler.core.sessions import held_cost, session_cost

LIMITS = LeaseLimits(ttl_s=100.0, idle_close_s=10.0, min_budget_fraction=0.05)
TOL = 1e-6


def pool_with(mode: ReuseMode, capacity: float = 10.0, now: float = 0.0) -> tuple[LeasePool, Lease]:
    pool = LeasePool(LIMITS)
    return pool, pool.new_lease("http://w1", {"answer": 1}, mode, capacity, now)


# --- table-driven examples ---------------------------------------------------------------


def test_new_lease_starts_with_full_budget_and_unique_ids() -> None:
    pool = LeasePool(LIMITS)
    a = pool.new_lease("http://a", None, ReuseMode.SESSION, 8.0, now=5.0)
    b = pool.new_lease("http://b", None, ReuseMode.SEQUENTIAL, 0.0, now=6.0)
    assert a.lease_id != b.lease_id
    assert a.budget == a.capacity == 8.0
    assert (a.created_at, a.last_used, a.expires_at) == (5.0, 5.0, 5.0 + LIMITS.ttl_s)
    assert b.capacity == EPSILON  # a zero cost still gives a positive capacity
    assert b.budget == b.capacity
    assert len(pool) == 2
    assert set(pool) == {a, b}


@pytest.mark.parametrize(
    ("mode", "inflight", "cost", "has_room"),
    [
        pytest.param(ReuseMode.SESSION, [], 10.0, True, id="session-exactly-full"),
        pytest.param(ReuseMode.SESSION, [], 10.1, False, id="session-over-capacity"),
        pytest.param(ReuseMode.SESSION, [4.0, 5.0], 1.0, True, id="session-fills-up"),
        pytest.param(ReuseMode.SESSION, [4.0, 5.0], 1.5, False, id="session-would-overflow"),
        pytest.param(ReuseMode.SEQUENTIAL, [], 99.0, True, id="sequential-idle-any-cost"),
        pytest.param(ReuseMode.SEQUENTIAL, [0.1], 0.1, False, id="sequential-busy"),
        pytest.param(ReuseMode.NEVER, [], 1.0, True, id="never-fresh"),
        pytest.param(ReuseMode.NEVER, [1.0], 1.0, False, id="never-busy"),
    ],
)
def test_has_room(mode: ReuseMode, inflight: list[float], cost: float, has_room: bool) -> None:
    pool, lease = pool_with(mode, capacity=10.0)
    for c in inflight:
        pool.acquire(lease, c, now=1.0)
    assert lease.has_room(cost, now=1.0) is has_room
    assert (pool.pick(cost, 1.0, random.Random(0)) is lease) is has_room


@pytest.mark.parametrize("mode", list(ReuseMode))
def test_retired_or_expired_lease_has_no_room(mode: ReuseMode) -> None:
    pool, lease = pool_with(mode)
    assert lease.has_room(1.0, now=LIMITS.ttl_s - 0.001)
    assert not lease.has_room(1.0, now=LIMITS.ttl_s)
    assert pool.pick(1.0, LIMITS.ttl_s, random.Random(0)) is None
    pool.retire(lease)
    assert not lease.has_room(1.0, now=0.0)
    assert pool.pick(1.0, 0.0, random.Random(0)) is None


def test_never_lease_is_used_once_after_success() -> None:
    pool, lease = pool_with(ReuseMode.NEVER)
    pool.acquire(lease, 1.0, now=1.0)
    pool.release(lease, 1.0, now=2.0, succeeded=True)
    assert not lease.has_room(1.0, now=2.0)
    assert pool.collect(now=2.0) == [lease]


def test_never_lease_is_used_once_after_failure() -> None:
    """A failed job still spent the answer: a replay-protected worker would refuse it again."""
    pool, lease = pool_with(ReuseMode.NEVER)
    pool.acquire(lease, 1.0, now=1.0)
    pool.release(lease, 1.0, now=2.0, succeeded=False)
    assert pool.pick(1.0, 5.0, random.Random(0)) is None  # even after the sequential rest
    assert pool.collect(now=5.0) == [lease]


@pytest.mark.parametrize(
    ("mode", "rests"),
    [(ReuseMode.SEQUENTIAL, True), (ReuseMode.SESSION, False)],
)
def test_a_reused_answer_rests_between_sequential_jobs(mode: ReuseMode, rests: bool) -> None:
    """The worker drops a reqnum's entry only after answering: a sequential answer waits."""
    pool, lease = pool_with(mode)
    pool.acquire(lease, 1.0, now=1.0)
    pool.release(lease, 1.0, now=2.0, succeeded=True)
    rest = LIMITS.sequential_rest_s
    assert lease.has_room(1.0, now=2.0) is not rests
    assert lease.has_room(1.0, now=2.0 + rest / 2) is not rests
    assert lease.has_room(1.0, now=2.0 + rest)
    assert pool.next_available(2.0) == (2.0 + rest if rests else None)
    assert pool.next_available(2.0 + rest) is None


def test_pick_honours_excluded_workers() -> None:
    pool = LeasePool(LIMITS)
    a = pool.new_lease("http://a", None, ReuseMode.SEQUENTIAL, 1.0, now=0.0)
    b = pool.new_lease("http://b", None, ReuseMode.SEQUENTIAL, 1.0, now=0.0)
    rng = random.Random(0)
    assert pool.pick(1.0, 0.0, rng, excluded=frozenset({"http://a"})) is b
    assert pool.pick(1.0, 0.0, rng, excluded=frozenset({"http://b"})) is a
    assert pool.pick(1.0, 0.0, rng, excluded=frozenset({"http://a", "http://b"})) is None


def test_pick_prefers_the_less_utilised_of_two() -> None:
    pool = LeasePool(LIMITS)
    busy = pool.new_lease("http://a", None, ReuseMode.SESSION, 10.0, now=0.0)
    calm = pool.new_lease("http://b", None, ReuseMode.SESSION, 10.0, now=0.0)
    pool.acquire(busy, 6.0, now=0.0)
    pool.acquire(calm, 1.0, now=0.0)
    for seed in range(20):
        assert pool.pick(1.0, 0.0, random.Random(seed)) is calm


@pytest.mark.parametrize(
    ("shrinks", "budget"),
    [(0, 10.0), (1, 5.0), (2, 2.5), (3, 1.25), (4, 0.625), (5, 0.5), (50, 0.5)],
)
def test_shrink_halves_down_to_the_floor(shrinks: int, budget: float) -> None:
    pool, lease = pool_with(ReuseMode.SESSION, capacity=10.0)
    for _ in range(shrinks):
        pool.shrink(lease)
    assert lease.budget == pytest.approx(budget)  # floor: 10 * 0.05


@pytest.mark.parametrize(
    ("successes", "budget"), [(0, 2.5), (1, 3.5), (5, 7.5), (7, 9.5), (8, 10.0)]
)
def test_success_grows_budget_back_to_capacity(successes: int, budget: float) -> None:
    pool, lease = pool_with(ReuseMode.SESSION, capacity=10.0)
    pool.shrink(lease)
    pool.shrink(lease)
    for _ in range(successes):
        pool.acquire(lease, 1.0, now=1.0)
        pool.release(lease, 1.0, now=1.0, succeeded=True)
    assert lease.budget == pytest.approx(budget)


def test_failure_leaves_budget_alone() -> None:
    pool, lease = pool_with(ReuseMode.SESSION, capacity=10.0)
    pool.shrink(lease)
    pool.acquire(lease, 1.0, now=1.0)
    pool.release(lease, 1.0, now=1.0, succeeded=False)
    assert lease.budget == 5.0
    assert lease.completed == 0


def test_release_resets_cost_exactly_when_last_job_ends() -> None:
    pool, lease = pool_with(ReuseMode.SESSION, capacity=1.0)
    for c in (0.1, 0.2, 0.3):
        pool.acquire(lease, c, now=0.0)
    for c in (0.1, 0.2, 0.3):
        pool.release(lease, c, now=0.0, succeeded=True)
    assert lease.inflight_cost == 0.0
    assert lease.inflight_jobs == 0
    assert lease.idle


@pytest.mark.parametrize(
    ("setup", "now", "collected"),
    [
        pytest.param("fresh", 1.0, False, id="fresh-idle"),
        pytest.param("fresh", LIMITS.idle_close_s, True, id="idle-too-long"),
        pytest.param("fresh", LIMITS.ttl_s, True, id="expired"),
        pytest.param("retired", 1.0, True, id="retired-idle"),
        pytest.param("busy", 1.0, False, id="busy"),
        pytest.param("busy", LIMITS.ttl_s + 1, False, id="busy-expired"),
        pytest.param("busy-retired", 1.0, False, id="busy-retired"),
    ],
)
def test_collect(setup: str, now: float, collected: bool) -> None:
    pool, lease = pool_with(ReuseMode.SEQUENTIAL)
    if setup.startswith("busy"):
        pool.acquire(lease, 1.0, now=0.5)
    if setup.endswith("retired"):
        pool.retire(lease)
    assert (pool.collect(now) == [lease]) is collected
    assert (lease in set(pool)) is not collected
    assert pool.collect(now) == []


def test_retire_worker_retires_only_that_workers_leases() -> None:
    pool = LeasePool(LIMITS)
    a1 = pool.new_lease("http://a", None, ReuseMode.SESSION, 1.0, now=0.0)
    a2 = pool.new_lease("http://a", None, ReuseMode.SEQUENTIAL, 1.0, now=0.0)
    b = pool.new_lease("http://b", None, ReuseMode.SESSION, 1.0, now=0.0)
    assert set(pool.retire_worker("http://a")) == {a1, a2}
    assert a1.retired
    assert a2.retired
    assert not b.retired
    assert pool.workers() == {"http://b"}
    assert pool.budget() == b.budget
    assert pool.retire_worker("http://nobody") == []


def test_next_collection() -> None:
    pool = LeasePool(LIMITS)
    assert pool.next_collection(0.0) is None
    a = pool.new_lease("http://a", None, ReuseMode.SEQUENTIAL, 1.0, now=0.0)
    pool.new_lease("http://b", None, ReuseMode.SEQUENTIAL, 1.0, now=3.0)
    assert pool.next_collection(0.0) == LIMITS.idle_close_s
    pool.acquire(a, 1.0, now=1.0)  # busy leases are not due
    assert pool.next_collection(1.0) == 3.0 + LIMITS.idle_close_s
    assert pool.inflight_cost() == 1.0


def test_spare_workers_close_after_the_shorter_wait_but_the_one_used_last() -> None:
    """Idle workers are spare while another runs a job; once all are idle, all but the one
    used last. A spare worker's idle lease is due after ``spare_close_s``, the others' after
    ``idle_close_s``."""
    limits = LeaseLimits(ttl_s=100.0, idle_close_s=10.0, spare_close_s=1.0)
    pool = LeasePool(limits)
    a = pool.new_lease("http://a", None, ReuseMode.SESSION, 5.0, now=0.0)
    b = pool.new_lease("http://b", None, ReuseMode.SESSION, 5.0, now=0.0)
    sent_a = pool.acquire(a, 1.0, now=0.0)
    pool.acquire(b, 1.0, now=0.0)
    assert pool.spare_workers() == frozenset()  # both busy
    pool.release(a, 1.0, now=1.0, succeeded=True, sent=sent_a)
    assert pool.spare_workers() == {"http://a"}  # b still runs a job
    pool.release(b, 1.0, now=2.0, succeeded=True)
    spare = pool.spare_workers()
    assert spare == {"http://a"}  # b was used last: it keeps the idle close
    assert pool.next_collection(2.0, spare) == a.last_used + limits.spare_close_s
    assert pool.collect(a.last_used + limits.spare_close_s, spare) == [a]
    assert pool.spare_workers() == frozenset()  # the last one is never spare
    assert pool.collect(b.last_used + limits.idle_close_s - 0.01, frozenset()) == []
    assert pool.collect(b.last_used + limits.idle_close_s, frozenset()) == [b]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(("http://a", "http://b", "http://c")), st.booleans()),
        min_size=1,
        max_size=30,
    )
)
def test_spare_workers_never_include_a_busy_one_nor_all(steps: list[tuple[str, bool]]) -> None:
    """Whatever jobs started and ended: no worker running a job is spare; some leased worker is
    not spare; and at the time ``next_collection`` names, ``collect`` closes something (the
    endpoint's loop would otherwise wake in a spin)."""
    pool = LeasePool(LeaseLimits(ttl_s=100.0, idle_close_s=10.0, spare_close_s=1.0))
    leases = {url: pool.new_lease(url, None, ReuseMode.SESSION, 50.0, 0.0) for url, _ in steps}
    now = 0.0
    for url, start in steps:
        now += 0.1
        lease = leases[url]
        if start:
            pool.acquire(lease, 1.0, now)
        elif lease.inflight_jobs:
            pool.release(lease, 1.0, now, succeeded=True)
        spare = pool.spare_workers()
        busy = {u for u, lease in leases.items() if lease.inflight_jobs}
        assert not spare & busy
        assert spare < pool.workers()
    spare = pool.spare_workers()
    due = pool.next_collection(now, spare)
    if due is not None:
        assert pool.collect(max(due, now), spare)


# --- random interleavings ----------------------------------------------------------------

WORKERS = ("http://a", "http://b", "http://c")
COSTS = st.just(0.0) | st.floats(0.01, 12.0)


@dataclass
class Job:
    lease: Lease
    cost: float


class LeasePoolMachine(RuleBasedStateMachine):
    """Drives a LeasePool like the dispatcher does, keeping its own account of what is in
    flight on each lease, and checks the pool's bookkeeping and its safety properties."""

    leases = Bundle("leases")
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.limits = LeaseLimits(
            ttl_s=60.0,
            idle_close_s=15.0,
            min_budget_fraction=0.1,
            increase_fraction=0.25,
            sequential_rest_s=0.25,
        )
        self.pool = LeasePool(self.limits)
        self.now = 0.0
        self.inflight: dict[int, list[float]] = {}  # lease_id -> costs in flight
        self.ever: dict[int, int] = {}  # lease_id -> jobs ever placed
        self.rest_until: dict[int, float] = {}  # lease_id -> end of its sequential rest
        self.collected: set[int] = set()

    # model ----------------------------------------------------------------------------
    def eligible(self, lease: Lease, cost: float, excluded: frozenset[str]) -> bool:
        if lease.retired or self.now >= lease.expires_at or lease.worker_url in excluded:
            return False
        if lease.lease_id in self.collected:
            return False
        costs = self.inflight[lease.lease_id]
        if lease.mode is ReuseMode.SESSION:
            return sum(costs) + cost <= lease.budget + EPSILON
        if self.now < self.rest_until[lease.lease_id]:
            return False
        if lease.mode is ReuseMode.NEVER:  # one job in its life, whatever that job's outcome
            return self.ever[lease.lease_id] == 0
        return not costs

    # rules ----------------------------------------------------------------------------
    @initialize(
        target=leases,
        workers=st.lists(st.sampled_from(WORKERS), min_size=3, max_size=3),
        capacities=st.lists(st.floats(0.0, 20.0), min_size=3, max_size=3),
    )
    def one_lease_per_mode(self, workers: list[str], capacities: list[float]) -> object:
        specs = zip(workers, ReuseMode, capacities, strict=True)
        return multiple(*(self.make_lease(w, m, c) for w, m, c in specs))

    @rule(dt=st.floats(0.0, 1.0) | st.sampled_from([0.0, 0.5]) | st.floats(0.0, 30.0))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(
        target=leases,
        worker=st.sampled_from(WORKERS),
        mode=st.sampled_from(list(ReuseMode)),
        capacity=st.floats(0.0, 20.0),
    )
    def new_lease(self, worker: str, mode: ReuseMode, capacity: float) -> Lease:
        return self.make_lease(worker, mode, capacity)

    def make_lease(self, worker: str, mode: ReuseMode, capacity: float) -> Lease:
        lease = self.pool.new_lease(worker, object(), mode, capacity, self.now)
        assert lease.lease_id not in self.inflight
        self.inflight[lease.lease_id] = []
        self.ever[lease.lease_id] = 0
        self.rest_until[lease.lease_id] = 0.0
        return lease

    @rule(
        target=jobs,
        cost=COSTS,
        excluded=st.just(frozenset()) | st.frozensets(st.sampled_from(WORKERS), max_size=2),
        seed=st.integers(0, 2**16),
        acquire=st.sampled_from([True, True, True, False]),
    )
    def pick(self, cost: float, excluded: frozenset[str], seed: int, acquire: bool) -> object:
        lease = self.checked_pick(cost, excluded, seed)
        if lease is None or not acquire:
            return multiple()
        return self.place(lease, cost)

    @rule(
        cost=COSTS,
        seed=st.integers(0, 2**16),
        dt=st.floats(0.0, 1.0),
        succeeded=st.booleans(),
    )
    def job_cycle(self, cost: float, seed: int, dt: float, succeeded: bool) -> None:
        """One whole job: pick, acquire, some time, release."""
        lease = self.checked_pick(cost, frozenset(), seed)
        if lease is not None:
            job = self.place(lease, cost)
            self.now += dt
            self.release(job, succeeded)

    def checked_pick(self, cost: float, excluded: frozenset[str], seed: int) -> Lease | None:
        live = list(self.pool)
        lease = self.pool.pick(cost, self.now, random.Random(seed), excluded)
        if lease is None:
            assert not any(self.eligible(x, cost, excluded) for x in live)
            return None
        assert lease in live
        assert lease.worker_url not in excluded
        assert not lease.retired
        assert self.now < lease.expires_at
        assert self.eligible(lease, cost, excluded)
        if lease.mode is ReuseMode.SESSION:
            # The key safety property: never more in flight than the session declared.
            assert sum(self.inflight[lease.lease_id]) + cost <= lease.capacity + TOL
        return lease

    def place(self, lease: Lease, cost: float) -> Job:
        self.pool.acquire(lease, cost, self.now)
        self.inflight[lease.lease_id].append(cost)
        self.ever[lease.lease_id] += 1
        return Job(lease, cost)

    @rule(job=consumes(jobs), succeeded=st.booleans())
    def release(self, job: Job, succeeded: bool) -> None:
        self.pool.release(job.lease, job.cost, self.now, succeeded)
        self.inflight[job.lease.lease_id].remove(job.cost)
        if job.lease.mode is not ReuseMode.SESSION:
            self.rest_until[job.lease.lease_id] = self.now + self.limits.sequential_rest_s

    @rule(lease=leases)
    def shrink(self, lease: Lease) -> None:
        before = lease.budget
        self.pool.shrink(lease)
        assert lease.budget <= before

    @rule(lease=leases)
    def retire(self, lease: Lease) -> None:
        self.pool.retire(lease)
        assert lease.retired

    @rule(worker=st.sampled_from(WORKERS))
    def retire_worker(self, worker: str) -> None:
        expected = {x for x in self.pool if x.worker_url == worker}
        assert set(self.pool.retire_worker(worker)) == expected
        assert all(x.retired for x in expected)
        assert worker not in self.pool.workers()

    @rule()
    def collect(self) -> None:
        before = set(self.pool)
        done = self.pool.collect(self.now)
        ids = [x.lease_id for x in done]
        assert len(ids) == len(set(ids)), "a lease returned twice in one collection"
        assert not set(ids) & self.collected, "a lease returned by two collections"
        for lease in done:
            assert lease in before
            assert not self.inflight[lease.lease_id], "collected a lease with jobs in flight"
            assert lease.idle
        self.collected.update(ids)
        after = set(self.pool)
        assert after == before - set(done)
        for lease in after:  # nothing idle and due is left behind
            due = lease.retired or self.now >= lease.expires_at
            due = due or (lease.mode is ReuseMode.NEVER and self.ever[lease.lease_id] > 0)
            assert not (lease.idle and due)

    # invariants -----------------------------------------------------------------------
    @invariant()
    def bookkeeping(self) -> None:
        for lease in self.pool:
            costs = self.inflight[lease.lease_id]
            floor = lease.capacity * self.limits.min_budget_fraction
            assert floor - TOL <= lease.budget <= lease.capacity + TOL
            assert lease.inflight_jobs == len(costs) >= 0
            assert lease.inflight_cost >= 0.0
            if lease.inflight_jobs == 0:
                assert lease.inflight_cost == 0.0
            assert lease.inflight_cost == pytest.approx(sum(costs), abs=TOL)

    @invariant()
    def concurrency(self) -> None:
        for lease in self.pool:
            costs = self.inflight[lease.lease_id]
            if lease.mode is ReuseMode.SESSION:
                assert sum(costs) <= lease.capacity + TOL
            else:
                assert len(costs) <= 1
            if lease.mode is ReuseMode.NEVER:
                assert self.ever[lease.lease_id] <= 1

    @invariant()
    def aggregates(self) -> None:
        live = list(self.pool)
        assert len(self.pool) == len(live)
        assert self.pool.inflight_cost() == pytest.approx(
            sum(sum(self.inflight[x.lease_id]) for x in live), abs=TOL
        )
        assert self.pool.workers() == {x.worker_url for x in live if not x.retired}


LeasePoolMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLeasePool = LeasePoolMachine.TestCase


# --- a few direct properties -------------------------------------------------------------


@given(
    capacity=st.floats(0.0, 1e6),
    ops=st.lists(st.booleans(), max_size=60),
    fraction=st.floats(0.0, 1.0),
    increase=st.floats(0.0, 1.0),
)
def test_budget_stays_between_floor_and_capacity(
    capacity: float, ops: list[bool], fraction: float, increase: float
) -> None:
    limits = LeaseLimits(min_budget_fraction=fraction, increase_fraction=increase)
    pool = LeasePool(limits)
    lease = pool.new_lease("http://w", None, ReuseMode.SESSION, capacity, now=0.0)
    for grow in ops:
        if grow:
            pool.acquire(lease, 0.0, now=0.0)
            pool.release(lease, 0.0, now=0.0, succeeded=True)
        else:
            pool.shrink(lease)
        assert lease.capacity * fraction <= lease.budget <= lease.capacity


a_cost = st.one_of(st.just(0.0), st.floats(1e-3, 1e4))  # squares that do not underflow
costs = st.lists(a_cost, min_size=1, max_size=50)


@given(batch=costs, queued=st.lists(a_cost, max_size=50),
       limit=st.integers(1, 256), cap=st.floats(1, 1e9))  # fmt: skip
def test_a_session_declares_its_batch_what_the_limit_holds_and_any_job_within_the_cap(
    batch: list[float], queued: list[float], limit: int, cap: float
) -> None:
    batch_cost, batch_sq = sum(batch), sum(c * c for c in batch)
    queued_cost, queued_sq = sum(queued), sum(c * c for c in queued)
    largest = max(queued, default=0.0)
    declared = session_cost(batch_cost, batch_sq, queued_cost, queued_sq, limit, cap, largest)
    held = held_cost(batch_cost + queued_cost, batch_sq + queued_sq)
    assert declared >= batch_cost  # the batch it carries always fits
    assert declared >= min(cap, largest)  # and so does any one job waiting
    assert declared <= max(batch_cost, cap)
    assert declared >= min(cap, limit * held) - 1e-6 * max(1.0, limit * held)
    more = session_cost(batch_cost, batch_sq, queued_cost, queued_sq, limit + 1, cap, largest)
    assert more >= declared  # a higher limit never asks for less


@given(costs)
def test_a_held_job_costs_at_least_the_mean_and_at_most_the_largest(jobs: list[float]) -> None:
    held = held_cost(sum(jobs), sum(c * c for c in jobs))
    if sum(jobs) > 0:
        assert sum(jobs) / len(jobs) * (1 - 1e-9) <= held <= max(jobs) * (1 + 1e-9)
    else:
        assert held == 0.0


def test_a_session_for_a_mixed_load_holds_its_limit_of_the_jobs_a_full_worker_keeps() -> None:
    # (f2)'s mix: 80% at 20, 20% at 400 (a mean of 96). A batching worker kept at 32 jobs holds
    # the large ones most of the time (each is held 20 times longer): 337 per job, not 96.
    batch = [20.0] * 8 + [400.0] * 2
    queued = [20.0] * 24 + [400.0] * 6
    assert held_cost(sum(batch + queued), sum(c * c for c in batch + queued)) == pytest.approx(
        (0.8 * 20**2 + 0.2 * 400**2) / 96
    )
    declared = session_cost(
        sum(batch), sum(c * c for c in batch), sum(queued), sum(c * c for c in queued), 32, 1e6
    )
    assert declared == pytest.approx(32 * 336.67, rel=1e-3)  # by the mean: 32 x 96 = 3,072
    # On a FIFO worker at a limit of one, a job held costs less than a large one waiting: the
    # session holds the large one, or each would need a route call of its own.
    one = session_cost(20.0, 400.0, sum(queued), sum(c * c for c in queued), 1, 1e6, 400.0)
    assert one == 400.0


def test_a_worker_told_its_memory_takes_jobs_while_their_cost_fits() -> None:
    """``max_worker_cost``: a job joins a worker while the work it holds, with the job's, fits
    (the first job always); the learnt limit (2 here) does not bound it. The session's budget
    is ample, so placement alone holds the job back."""
    policy = CapacityPolicy(initial_limit=2, max_worker_cost=1000.0)
    pool = LeasePool(LeaseLimits(ttl_s=1e9, idle_close_s=1e9), capacity=Capacity(policy))
    lease = pool.new_lease("w", None, ReuseMode.SESSION, 1e6, 0.0)
    rng = random.Random(1)
    assert pool.choose(5000.0, 0.0, rng) is lease  # alone, even one larger than the memory
    sent = pool.acquire(lease, 5000.0, 0.0)
    assert pool.choose(10.0, 0.1, rng) is HOLD
    pool.release(lease, 5000.0, 0.2, True, sent)
    for _ in range(2):
        pool.acquire(lease, 400.0, 0.3)
    assert pool.choose(400.0, 0.3, rng) is HOLD  # 1,200 would not fit
    assert pool.choose(150.0, 0.3, rng) is lease  # a third job: past the learnt limit of 2
    pool.acquire(lease, 150.0, 0.3)
    assert pool.choose(60.0, 0.3, rng) is HOLD  # 1,010
    assert pool.choose(50.0, 0.3, rng) is lease  # exactly 1,000
