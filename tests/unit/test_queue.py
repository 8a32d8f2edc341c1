"""JobQueue: priority order, FIFO within a priority, bounds, lazy removal, deadlines."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scheduler.core.queue import MAX_PRIORITY, MIN_CHARGE, MIN_PRIORITY, JobQueue, QueueFull


def footprint_bound(live: int) -> int:
    """Internal items a queue of ``live`` jobs may hold: deadline and cost heaps + levels +
    priorities."""
    levels = MAX_PRIORITY - MIN_PRIORITY + 1
    heaps = 2 * (max(64, 4 * live) + live)  # + pushes since the last compaction check
    tenant_heaps = 65 * levels + 4 * live  # per level: 64 + 4 x backlogged tenants, + 1
    fronts = live
    return heaps + tenant_heaps + fronts + levels


def drain(queue: JobQueue) -> list[str]:
    out = []
    while (job_id := queue.pop()) is not None:
        out.append(job_id)
    return out


# --- table-driven examples ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("pushes", "expected"),
    [
        pytest.param([], [], id="empty"),
        pytest.param([("a", 5)], ["a"], id="single"),
        pytest.param([("lo", 0), ("hi", 9)], ["hi", "lo"], id="9-before-0"),
        pytest.param([("a", 3), ("b", 3), ("c", 3)], ["a", "b", "c"], id="fifo-same-priority"),
        pytest.param(
            [("a", 1), ("b", 7), ("c", 1), ("d", 7), ("e", 4)],
            ["b", "d", "e", "a", "c"],
            id="mixed",
        ),
        pytest.param(
            [(f"p{p}", p) for p in range(MIN_PRIORITY, MAX_PRIORITY + 1)],
            [f"p{p}" for p in range(MAX_PRIORITY, MIN_PRIORITY - 1, -1)],
            id="all-priorities",
        ),
    ],
)
def test_pop_order(pushes: list[tuple[str, int]], expected: list[str]) -> None:
    queue = JobQueue(max_depth=100)
    for job_id, priority in pushes:
        queue.push(job_id, priority, 1.0, 100.0)
    assert drain(queue) == expected
    assert len(queue) == 0
    assert queue.pop() is None


def test_push_beyond_max_depth_raises_queue_full() -> None:
    queue = JobQueue(max_depth=2)
    queue.push("a", 5, 1.0, 10.0)
    queue.push("b", 5, 2.0, 10.0)
    with pytest.raises(QueueFull, match=r"queue is full \(2 jobs\)") as info:
        queue.push("c", 5, 4.0, 10.0)
    assert info.value.depth == 2
    assert len(queue) == 2
    assert "c" not in queue
    assert queue.queued_cost == pytest.approx(3.0)


def test_push_unbounded_ignores_max_depth() -> None:
    queue = JobQueue(max_depth=1)
    queue.push("a", 5, 1.0, 10.0)
    queue.push_unbounded("b", 9, 1.0, 10.0)
    queue.push_unbounded("c", 0, 1.0, 10.0)
    assert len(queue) == 3
    with pytest.raises(QueueFull):
        queue.push("d", 5, 1.0, 10.0)
    assert drain(queue) == ["b", "a", "c"]


def test_room_frees_up_after_pop_and_remove() -> None:
    queue = JobQueue(max_depth=2)
    queue.push("a", 5, 1.0, 10.0)
    queue.push("b", 5, 1.0, 10.0)
    assert queue.pop() == "a"
    queue.push("c", 5, 1.0, 10.0)
    assert queue.remove("b")
    queue.push("d", 5, 1.0, 10.0)
    assert drain(queue) == ["c", "d"]


@pytest.mark.parametrize("method", ["push", "push_unbounded"])
def test_duplicate_job_id_rejected(method: str) -> None:
    queue = JobQueue(max_depth=10)
    queue.push("a", 5, 1.0, 10.0)
    with pytest.raises(ValueError, match="already queued"):
        getattr(queue, method)("a", 9, 1.0, 10.0)
    assert len(queue) == 1
    assert queue.queued_cost == pytest.approx(1.0)


def test_remove_is_lazy_and_skipped_by_pop() -> None:
    queue = JobQueue(max_depth=10)
    for job_id, priority in [("a", 9), ("b", 5), ("c", 1)]:
        queue.push(job_id, priority, 1.0, 10.0)
    assert queue.remove("a") is True
    assert queue.remove("a") is False
    assert queue.remove("never-queued") is False
    assert "a" not in queue
    assert len(queue) == 2
    assert drain(queue) == ["b", "c"]


def test_requeue_after_remove_uses_new_priority_and_position() -> None:
    queue = JobQueue(max_depth=10)
    queue.push("a", 5, 1.0, 10.0)
    queue.push("b", 5, 1.0, 10.0)
    queue.remove("a")
    queue.push("a", 5, 3.0, 20.0)
    assert drain(queue) == ["b", "a"]
    assert queue.next_deadline() is None


def test_contains() -> None:
    queue = JobQueue(max_depth=10)
    assert "a" not in queue
    queue.push("a", 5, 1.0, 10.0)
    assert "a" in queue
    assert 42 not in queue
    queue.pop()
    assert "a" not in queue


def test_pop_expired_boundary_and_order() -> None:
    queue = JobQueue(max_depth=10)
    queue.push("late", 9, 1.0, 30.0)
    queue.push("b", 0, 1.0, 10.0)
    queue.push("a", 9, 1.0, 5.0)
    queue.push("c", 5, 1.0, 10.0)
    assert queue.pop_expired(4.999) == []
    # deadline == now counts as expired; ties keep insertion order
    assert queue.pop_expired(10.0) == ["a", "b", "c"]
    assert queue.pop_expired(10.0) == []
    assert len(queue) == 1
    assert queue.next_deadline() == 30.0
    assert drain(queue) == ["late"]


def test_pop_expired_skips_removed_and_popped_entries() -> None:
    queue = JobQueue(max_depth=10)
    queue.push("a", 9, 1.0, 1.0)
    queue.push("b", 5, 1.0, 2.0)
    queue.push("c", 1, 1.0, 3.0)
    assert queue.pop() == "a"
    assert queue.remove("b")
    assert queue.pop_expired(100.0) == ["c"]
    assert len(queue) == 0
    assert queue.queued_cost == 0.0


@pytest.mark.parametrize(
    ("pushes", "removed", "expected"),
    [
        pytest.param([], [], None, id="empty"),
        pytest.param([("a", 5.0)], [], 5.0, id="single"),
        pytest.param([("a", 5.0), ("b", 2.0), ("c", 9.0)], [], 2.0, id="min"),
        pytest.param([("a", 5.0), ("b", 2.0)], ["b"], 5.0, id="skips-removed"),
        pytest.param([("a", 5.0), ("b", 2.0)], ["a", "b"], None, id="all-removed"),
    ],
)
def test_next_deadline(
    pushes: list[tuple[str, float]], removed: list[str], expected: float | None
) -> None:
    queue = JobQueue(max_depth=10)
    for job_id, deadline in pushes:
        queue.push(job_id, 5, 1.0, deadline)
    for job_id in removed:
        queue.remove(job_id)
    assert queue.next_deadline() == expected


def test_queued_cost_tracks_push_pop_remove_expire() -> None:
    queue = JobQueue(max_depth=10)
    queue.push("a", 9, 0.1, 1.0)
    queue.push("b", 5, 0.2, 2.0)
    queue.push("c", 1, 0.3, 3.0)
    assert queue.queued_cost == pytest.approx(0.6)
    queue.pop()
    assert queue.queued_cost == pytest.approx(0.5)
    queue.remove("c")
    assert queue.queued_cost == pytest.approx(0.2)
    queue.pop_expired(2.0)
    # back to exactly zero once empty, whatever float drift accumulated
    assert queue.queued_cost == 0.0


def test_compaction_bounds_dead_entries() -> None:
    queue = JobQueue(max_depth=10_000)
    for i in range(1_000):
        queue.push(f"j{i}", i % 10, 1.0, float(i))
    survivors = [i for i in range(1_000) if i % 47 == 0]
    for i in range(1_000):
        if i % 47:
            queue.remove(f"j{i}")
    live = len(queue)
    assert live == len(survivors) == 22
    # the lazy deadline heap was rebuilt once dead entries dominated; levels hold no dead
    assert len(queue._deadlines) <= max(64, 4 * live)
    assert queue._footprint() <= footprint_bound(live)
    assert queue.queued_cost == pytest.approx(22.0)
    expected = [f"j{i}" for i in sorted(survivors, key=lambda i: (-(i % 10), i))]
    assert drain(queue) == expected


def test_compaction_keeps_deadline_order() -> None:
    queue = JobQueue(max_depth=10_000)
    for i in range(200):
        queue.push(f"j{i}", 5, 1.0, float(200 - i))
    for i in range(200):
        if i % 7:
            queue.remove(f"j{i}")
    survivors = [f"j{i}" for i in range(200) if i % 7 == 0]
    assert queue.next_deadline() == min(200.0 - int(j[1:]) for j in survivors)
    expired = queue.pop_expired(1_000.0)
    assert expired == sorted(survivors, key=lambda j: 200 - int(j[1:]))


# --- model-based test ---------------------------------------------------------------------


@dataclass
class _Ref:
    job_id: str
    priority: int
    seq: int
    cost: float
    deadline: float


priorities = st.integers(MIN_PRIORITY, MAX_PRIORITY)
costs = st.one_of(
    st.integers(0, 1_000).map(float),
    st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False),
)
deadlines = st.integers(0, 30).map(float)  # small range: many ties


class QueueMachine(RuleBasedStateMachine):
    """JobQueue against a plain list kept in (-priority, insertion) order."""

    def __init__(self) -> None:
        super().__init__()
        self.max_depth = 8
        self.queue = JobQueue(self.max_depth)
        self.model: list[_Ref] = []
        self.seq = 0
        self.ids_ever: list[str] = []
        self.cost_scale = 0.0  # largest magnitude the running sum ever had, for tolerance
        self.cost_sq_scale = 0.0  # the same for the sum of squares

    # helpers
    def _new_id(self) -> str:
        job_id = f"job-{len(self.ids_ever)}"
        self.ids_ever.append(job_id)
        return job_id

    def _add(self, job_id: str, priority: int, cost: float, deadline: float) -> None:
        self.model.append(_Ref(job_id, priority, self.seq, cost, deadline))
        self.seq += 1
        self.cost_scale = max(self.cost_scale, sum(r.cost for r in self.model))
        self.cost_sq_scale = max(self.cost_sq_scale, sum(r.cost**2 for r in self.model))

    def _ordered(self) -> list[_Ref]:
        return sorted(self.model, key=lambda r: (-r.priority, r.seq))

    # rules
    @rule(priority=priorities, cost=costs, deadline=deadlines)
    def push(self, priority: int, cost: float, deadline: float) -> None:
        job_id = self._new_id()
        if len(self.model) >= self.max_depth:
            with pytest.raises(QueueFull):
                self.queue.push(job_id, priority, cost, deadline)
            return
        self.queue.push(job_id, priority, cost, deadline)
        self._add(job_id, priority, cost, deadline)

    @rule(priority=priorities, cost=costs, deadline=deadlines)
    def push_unbounded(self, priority: int, cost: float, deadline: float) -> None:
        job_id = self._new_id()
        self.queue.push_unbounded(job_id, priority, cost, deadline)
        self._add(job_id, priority, cost, deadline)

    @rule(count=st.integers(60, 90), priority=priorities, deadline=deadlines)
    def push_batch(self, count: int, priority: int, deadline: float) -> None:
        # enough entries to cross the compaction threshold (64) when they are removed
        for _ in range(count):
            job_id = self._new_id()
            self.queue.push_unbounded(job_id, priority, 1.0, deadline)
            self._add(job_id, priority, 1.0, deadline)

    @precondition(lambda self: self.ids_ever)
    @rule(data=st.data(), priority=priorities, cost=costs, deadline=deadlines)
    def requeue_known_id(
        self, data: st.DataObject, priority: int, cost: float, deadline: float
    ) -> None:
        job_id = data.draw(st.sampled_from(self.ids_ever))
        if any(r.job_id == job_id for r in self.model):
            with pytest.raises(ValueError, match="already queued"):
                self.queue.push_unbounded(job_id, priority, cost, deadline)
            return
        self.queue.push_unbounded(job_id, priority, cost, deadline)
        self._add(job_id, priority, cost, deadline)

    @rule()
    def pop(self) -> None:
        ordered = self._ordered()
        expected = ordered[0].job_id if ordered else None
        assert self.queue.pop() == expected
        if ordered:
            self.model.remove(ordered[0])

    @precondition(lambda self: self.ids_ever)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from([*self.ids_ever, "unknown"]))
        present = [r for r in self.model if r.job_id == job_id]
        assert self.queue.remove(job_id) is bool(present)
        for r in present:
            self.model.remove(r)

    @rule(fraction=st.floats(0.5, 1.0))
    def remove_many(self, fraction: float) -> None:
        victims = self.model[: int(len(self.model) * fraction)]
        for r in victims:
            assert self.queue.remove(r.job_id)
            self.model.remove(r)

    @rule(now=st.integers(-1, 31).map(float))
    def pop_expired(self, now: float) -> None:
        expected = sorted(
            (r for r in self.model if r.deadline <= now), key=lambda r: (r.deadline, r.seq)
        )
        assert self.queue.pop_expired(now) == [r.job_id for r in expected]
        for r in expected:
            self.model.remove(r)

    @rule()
    def next_deadline(self) -> None:
        expected = min((r.deadline for r in self.model), default=None)
        assert self.queue.next_deadline() == expected

    # invariants
    @invariant()
    def length_and_membership(self) -> None:
        assert len(self.queue) == len(self.model)
        for r in self.model:
            assert r.job_id in self.queue

    def running_sum_matches(self, total: float, expected: float, scale: float) -> None:
        """A running sum the queue keeps equals the live jobs' (within float drift over
        ``scale``), is never negative, and is exactly zero when the queue is empty."""
        tolerance = 1e-9 * max(1.0, scale)
        assert math.isclose(total, expected, rel_tol=1e-9, abs_tol=tolerance)
        assert total >= 0.0
        if not self.model:
            assert total == 0.0

    @invariant()
    def queued_cost_matches_live_costs(self) -> None:
        expected = sum(r.cost for r in self.model)
        self.running_sum_matches(self.queue.queued_cost, expected, self.cost_scale)

    @invariant()
    def queued_cost_sq_matches_live_costs(self) -> None:
        expected = sum(r.cost**2 for r in self.model)
        self.running_sum_matches(self.queue.queued_cost_sq, expected, self.cost_sq_scale)

    @invariant()
    def largest_cost_is_the_largest_live_cost(self) -> None:
        assert self.queue.largest_cost() == max((r.cost for r in self.model), default=0.0)

    @invariant()
    def compaction_bounds_heaps(self) -> None:
        assert self.queue._footprint() <= footprint_bound(len(self.model))


QueueMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestJobQueueModel = QueueMachine.TestCase


# --- tenants, requeue at head, peek ----------------------------------------------------------


def pop_n(queue: JobQueue, n: int) -> list[str]:
    return [job_id for _ in range(n) if (job_id := queue.pop()) is not None]


def test_peek_matches_pop_and_does_not_remove() -> None:
    queue = JobQueue(max_depth=10)
    assert queue.peek() is None
    queue.push("a", 1, 2.5, 10.0)
    queue.push("b", 7, 4.0, 10.0, tenant="t")
    assert queue.peek() == ("b", 4.0)
    assert queue.peek() == ("b", 4.0)
    assert len(queue) == 2
    assert queue.pop() == "b"
    assert queue.peek() == ("a", 2.5)
    assert queue.pop() == "a"
    assert queue.peek() is None


def test_requeue_front_runs_first_within_its_priority_only() -> None:
    queue = JobQueue(max_depth=2)
    queue.push("a1", 5, 1.0, 10.0, tenant="A")
    queue.push("b1", 5, 1.0, 10.0, tenant="B")
    queue.requeue_front("r1", 5, 1.0, 10.0, tenant="B")  # never refused for depth
    queue.requeue_front("r2", 5, 1.0, 10.0, tenant="C")
    queue.push_unbounded("hi", 9, 1.0, 10.0, tenant="A")
    queue.requeue_front("lo", 0, 1.0, 10.0, tenant="A")
    # strict priority; then requeued jobs, latest first, whatever their tenant; then fair share
    assert drain(queue) == ["hi", "r2", "r1", "a1", "b1", "lo"]


def test_requeue_batch_in_reverse_restores_its_order() -> None:
    queue = JobQueue(max_depth=100)
    fill(queue, "A", 5)
    batch = pop_n(queue, 3)
    for job_id in reversed(batch):
        queue.requeue_front(job_id, 5, 1.0, 1e9, tenant="A")
    assert drain(queue) == [f"A-{i}" for i in range(5)]


def test_requeue_front_is_not_charged_again() -> None:
    queue = JobQueue(max_depth=100)
    for i in range(3):
        queue.push(f"a{i}", 5, 1.0, 10.0, tenant="A")
        queue.push(f"b{i}", 5, 1.0, 10.0, tenant="B")
    assert queue.pop() == "a0"
    queue.requeue_front("a0", 5, 1.0, 10.0, tenant="A")  # e.g. the worker answered 429
    assert drain(queue) == ["a0", "b0", "a1", "b1", "a2", "b2"]


@pytest.mark.parametrize("method", ["push", "push_unbounded", "requeue_front"])
def test_duplicate_id_rejected_across_tenants_and_paths(method: str) -> None:
    queue = JobQueue(max_depth=10)
    queue.requeue_front("a", 5, 1.0, 10.0, tenant="A")
    with pytest.raises(ValueError, match="already queued"):
        getattr(queue, method)("a", 3, 1.0, 10.0, tenant="B")
    assert queue.tenant_of("a") == "A"
    assert queue.depth_by_tenant() == {"A": 1}


@pytest.mark.parametrize("cost", [-1.0, math.inf, math.nan])
def test_invalid_cost_rejected(cost: float) -> None:
    queue = JobQueue(max_depth=10)
    with pytest.raises(ValueError, match="cost must be finite"):
        queue.push("a", 5, cost, 10.0)
    assert len(queue) == 0


@pytest.mark.parametrize("weight", [0.0, -1.0, math.inf, math.nan])
def test_invalid_weight_rejected(weight: float) -> None:
    with pytest.raises(ValueError, match="weight must be finite"):
        JobQueue(max_depth=10, tenant_weights={"A": weight})
    with pytest.raises(ValueError, match="weight must be finite"):
        JobQueue(max_depth=10, default_weight=weight)
    queue = JobQueue(max_depth=10, tenant_weights={"A": 2.0})
    with pytest.raises(ValueError, match="weight must be finite"):
        queue.set_tenant_weights({"A": weight})
    assert queue.weight_of("A") == 2.0


def test_tenant_accounting() -> None:
    queue = JobQueue(max_depth=10)
    queue.push("a1", 5, 1.5, 10.0, tenant="A")
    queue.push("a2", 1, 2.0, 20.0, tenant="A")
    queue.push("b1", 5, 4.0, 10.0, tenant="B")
    queue.requeue_front("d1", 9, 0.5, 30.0)
    assert queue.tenant_of("a2") == "A"
    assert queue.tenant_of("d1") == "default"
    assert queue.tenant_of("nope") is None
    assert queue.depth_by_tenant() == {"A": 2, "B": 1, "default": 1}
    assert queue.cost_by_tenant() == pytest.approx({"A": 3.5, "B": 4.0, "default": 0.5})
    assert queue.pop() == "d1"
    assert queue.remove("a2")
    assert queue.pop_expired(10.0) == ["a1", "b1"]
    assert queue.depth_by_tenant() == {}
    assert queue.cost_by_tenant() == {}
    assert queue.tenant_of("a1") is None


# --- fairness ---------------------------------------------------------------------------------


def served_cost(queue: JobQueue, pops: int, costs: dict[str, float]) -> dict[str, float]:
    shares: dict[str, float] = {}
    for job_id in pop_n(queue, pops):
        tenant = job_id.split("-")[0]
        shares[tenant] = shares.get(tenant, 0.0) + costs[tenant]
    return shares


def fill(queue: JobQueue, tenant: str, count: int, cost: float = 1.0, priority: int = 5) -> None:
    for i in range(count):
        queue.push(f"{tenant}-{i}", priority, cost, 1e9, tenant=tenant)


def test_late_tenant_is_not_stuck_behind_a_backlog() -> None:
    queue = JobQueue(max_depth=10_000)
    fill(queue, "A", 1_000)
    fill(queue, "B", 20)
    first = pop_n(queue, 40)
    assert sum(job_id.startswith("B-") for job_id in first) == 20
    assert [j for j in first if j.startswith("B-")] == [f"B-{i}" for i in range(20)]
    assert len(queue) == 980


def test_late_tenant_after_long_service_neither_waits_nor_jumps_ahead_for_long() -> None:
    queue = JobQueue(max_depth=10_000)
    fill(queue, "A", 1_000)
    assert all(j.startswith("A-") for j in pop_n(queue, 500))
    fill(queue, "B", 20)
    first = pop_n(queue, 40)
    # B starts at the current virtual time: it banks nothing for the 500 jobs it missed
    assert sum(j.startswith("B-") for j in first) == 20
    assert sum(j.startswith("A-") for j in first[:10]) >= 4


def test_weighted_cost_share_is_three_to_one() -> None:
    queue = JobQueue(max_depth=10_000, tenant_weights={"A": 3.0, "B": 1.0})
    fill(queue, "A", 1_000)
    fill(queue, "B", 1_000)
    shares = served_cost(queue, 400, {"A": 1.0, "B": 1.0})
    assert shares["A"] / shares["B"] == pytest.approx(3.0, rel=0.1)


def test_share_is_by_cost_not_by_count() -> None:
    queue = JobQueue(max_depth=10_000)
    fill(queue, "A", 1_000, cost=4.0)
    fill(queue, "B", 1_000, cost=1.0)
    shares = served_cost(queue, 500, {"A": 4.0, "B": 1.0})
    assert shares["A"] / shares["B"] == pytest.approx(1.0, rel=0.1)


def test_weights_and_costs_combine() -> None:
    queue = JobQueue(max_depth=10_000, tenant_weights={"A": 2.0}, default_weight=1.0)
    fill(queue, "A", 1_000, cost=1.0)
    fill(queue, "B", 1_000, cost=5.0)
    shares = served_cost(queue, 600, {"A": 1.0, "B": 5.0})
    assert shares["A"] / shares["B"] == pytest.approx(2.0, rel=0.1)


def test_set_tenant_weights_applies_to_later_service() -> None:
    queue = JobQueue(max_depth=10_000)
    fill(queue, "A", 1_000)
    fill(queue, "B", 1_000)
    assert served_cost(queue, 100, {"A": 1.0, "B": 1.0}) == {"A": 50.0, "B": 50.0}
    queue.set_tenant_weights({"A": 3.0})
    shares = served_cost(queue, 400, {"A": 1.0, "B": 1.0})
    assert shares["A"] / shares["B"] == pytest.approx(3.0, rel=0.1)


def test_going_idle_between_jobs_sheds_no_debt() -> None:
    # A closed-loop tenant: one job queued at a time, pushed again right after it is taken.
    queue = JobQueue(max_depth=10_000)
    fill(queue, "B", 500)
    queue.push("A-0", 5, 1.0, 1e9, tenant="A")
    served = []
    for i in range(1, 201):
        job_id = queue.pop()
        assert job_id is not None
        served.append(job_id)
        if job_id.startswith("A-"):
            queue.push(f"A-{i}", 5, 1.0, 1e9, tenant="A")
    assert sum(j.startswith("A-") for j in served) == pytest.approx(100, abs=2)


def test_zero_cost_jobs_share_and_drain() -> None:
    queue = JobQueue(max_depth=10_000)
    fill(queue, "A", 50, cost=0.0)
    fill(queue, "B", 50, cost=0.0)
    first = pop_n(queue, 20)
    assert sum(j.startswith("B-") for j in first) == 10
    assert len(pop_n(queue, 100)) == 80
    assert queue.queued_cost == 0.0


def test_fairness_is_per_priority() -> None:
    queue = JobQueue(max_depth=10_000)
    fill(queue, "A", 10, priority=9)
    fill(queue, "B", 10, priority=1)
    queue.push("B-hi", 9, 1.0, 1e9, tenant="B")
    order = drain(queue)
    # B-hi competes with A's priority-9 jobs only; B's priority-1 jobs wait for all of them
    assert order.index("B-hi") <= 2
    assert order[11:] == [f"B-{i}" for i in range(10)]


# --- memory under cancel-heavy loads --------------------------------------------------------


def test_cancel_heavy_load_keeps_memory_bounded() -> None:
    queue = JobQueue(max_depth=10_000)
    for i in range(10):
        queue.push(f"keep{i}", i, 1.0, 1e9, tenant=f"t{i}")
    for i in range(20_000):
        queue.push(f"j{i}", i % 10, 1.0, float(i), tenant=f"t{i % 997}")
        queue.remove(f"j{i}")
        assert queue._footprint() <= footprint_bound(len(queue))
    assert drain(queue) == [f"keep{i}" for i in range(9, -1, -1)]
    assert queue._footprint() <= footprint_bound(0)


def test_idle_tenants_do_not_accumulate() -> None:
    # every job from a new tenant, the queue never empty: virtual time stands still and each
    # served tenant keeps a finish tag ahead of it until compaction lets idle tenants go
    queue = JobQueue(max_depth=10)
    queue.push("j0", 5, 1.0, 1e9, tenant="t0")
    for i in range(1, 5_000):
        queue.push(f"j{i}", 5, 1.0, 1e9, tenant=f"t{i}")
        assert queue.pop() == f"j{i - 1}"
        assert queue._footprint() <= footprint_bound(len(queue))


def test_push_pop_without_deadline_reads_keeps_memory_bounded() -> None:
    queue = JobQueue(max_depth=10)
    for i in range(5_000):
        queue.push(f"j{i}", 5, 1.0, float(i), tenant=f"t{i}")
        assert queue.pop() == f"j{i}"
    assert queue._footprint() <= footprint_bound(0)


# --- model-based test with tenants, requeue at head and peek ---------------------------------


TENANT_WEIGHTS = {"A": 1.0, "B": 3.0, "C": 0.5}  # "D" gets the default weight
tenants = st.sampled_from(["A", "B", "C", "D"])
few_priorities = st.sampled_from([0, 4, 9])  # few levels: tenants meet at a priority


@dataclass
class _Job:
    job_id: str
    priority: int
    tenant: str
    cost: float
    deadline: float
    seq: int
    front: bool


@dataclass
class _RefLevel:
    """Start-time fair queueing, naively: start tags in a dict, scanned with min()."""

    vtime: float = 0.0
    finish: dict[str, float] = field(default_factory=dict)  # of each tenant's last served job
    start: dict[str, tuple[float, int]] = field(default_factory=dict)  # backlogged tenants
    keys: int = 0
    fronts: list[_Job] = field(default_factory=list)  # requeued at the head, latest first
    backlogs: dict[str, list[_Job]] = field(default_factory=dict)  # per tenant, FIFO
    size: int = 0

    def schedule(self, tenant: str, start: float) -> None:
        self.start[tenant] = (start, self.keys)
        self.keys += 1

    def head(self) -> _Job:
        if self.fronts:
            return self.fronts[0]
        tenant = min(self.start, key=self.start.__getitem__)
        return self.backlogs[tenant][0]


class FairQueueMachine(RuleBasedStateMachine):
    """JobQueue against a slow reference: exact order, and nothing lost or duplicated."""

    def __init__(self) -> None:
        super().__init__()
        self.max_depth = 12
        self.weights = dict(TENANT_WEIGHTS)
        self.queue = JobQueue(self.max_depth, tenant_weights=self.weights, default_weight=1.5)
        self.model: dict[str, _Job] = {}
        self.levels: dict[int, _RefLevel] = {}
        self.seq = 0
        self.admitted: dict[str, int] = {}
        self.released: dict[str, int] = {}
        self.total_cost = 0.0
        self.cost_scale = 0.0

    # reference model
    def _weight(self, tenant: str) -> float:
        return self.weights.get(tenant, 1.5)

    def _admit(self, job: _Job) -> None:
        self.model[job.job_id] = job
        self.seq += 1
        self.admitted[job.job_id] = self.admitted.get(job.job_id, 0) + 1
        self.total_cost += job.cost
        self.cost_scale = max(self.cost_scale, self.total_cost)
        level = self.levels.setdefault(job.priority, _RefLevel())
        level.size += 1
        if job.front:
            level.fronts.insert(0, job)
            return
        backlog = level.backlogs.setdefault(job.tenant, [])
        backlog.append(job)
        if len(backlog) == 1:
            level.schedule(job.tenant, max(level.vtime, level.finish.get(job.tenant, 0.0)))

    def _release(self, job: _Job) -> None:
        del self.model[job.job_id]
        self.released[job.job_id] = self.released.get(job.job_id, 0) + 1
        self.total_cost = self.total_cost - job.cost if self.model else 0.0
        level = self.levels[job.priority]
        level.size -= 1
        if job.front:
            level.fronts.remove(job)
        else:
            level.backlogs[job.tenant].remove(job)
            if not level.backlogs[job.tenant]:
                del level.backlogs[job.tenant]
                level.start.pop(job.tenant, None)
        if not level.size:
            del self.levels[job.priority]  # an empty level forgets its virtual time

    def _expected_next(self) -> _Job | None:
        return self.levels[max(self.levels)].head() if self.levels else None

    def _serve(self, job: _Job) -> None:
        level = self.levels[job.priority]
        if not job.front:
            start = level.start.pop(job.tenant)[0]
            level.vtime = start
            finish = start + max(job.cost, MIN_CHARGE) / self._weight(job.tenant)
            finish = finish if finish > start else math.nextafter(start, math.inf)
            level.finish[job.tenant] = finish
            if len(level.backlogs[job.tenant]) > 1:
                level.schedule(job.tenant, finish)
        self._release(job)

    def _new_id(self) -> str:
        return f"job-{len(self.admitted)}"

    def _job(self, job_id: str, priority: int, tenant: str, cost: float, deadline: float) -> _Job:
        return _Job(job_id, priority, tenant, cost, deadline, self.seq, front=False)

    # rules
    @rule(priority=few_priorities, tenant=tenants, cost=costs, deadline=deadlines)
    def push(self, priority: int, tenant: str, cost: float, deadline: float) -> None:
        job = self._job(self._new_id(), priority, tenant, cost, deadline)
        if len(self.model) >= self.max_depth:
            with pytest.raises(QueueFull):
                self.queue.push(job.job_id, priority, cost, deadline, tenant=tenant)
            return
        self.queue.push(job.job_id, priority, cost, deadline, tenant=tenant)
        self._admit(job)

    @rule(priority=few_priorities, tenant=tenants, cost=costs, deadline=deadlines)
    def push_unbounded(self, priority: int, tenant: str, cost: float, deadline: float) -> None:
        job = self._job(self._new_id(), priority, tenant, cost, deadline)
        self.queue.push_unbounded(job.job_id, priority, cost, deadline, tenant=tenant)
        self._admit(job)

    @rule(count=st.integers(40, 70), priority=few_priorities, tenant=tenants)
    def push_batch(self, count: int, priority: int, tenant: str) -> None:
        for _ in range(count):
            job = self._job(self._new_id(), priority, tenant, 1.0, 30.0)
            self.queue.push_unbounded(job.job_id, priority, 1.0, 30.0, tenant=tenant)
            self._admit(job)

    @precondition(lambda self: self.released)
    @rule(data=st.data(), deadline=deadlines)
    def requeue_front(self, data: st.DataObject, deadline: float) -> None:
        # a job taken earlier comes back at the head, possibly at another priority or tenant
        job_id = data.draw(st.sampled_from(sorted(self.released)))
        priority, tenant = data.draw(few_priorities), data.draw(tenants)
        cost = data.draw(costs)
        if job_id in self.model:
            with pytest.raises(ValueError, match="already queued"):
                self.queue.requeue_front(job_id, priority, cost, deadline, tenant=tenant)
            return
        self.queue.requeue_front(job_id, priority, cost, deadline, tenant=tenant)
        self._admit(_Job(job_id, priority, tenant, cost, deadline, self.seq, front=True))

    @rule()
    def pop(self) -> None:
        expected = self._expected_next()
        peeked = self.queue.peek()
        popped = self.queue.pop()
        if expected is None:
            assert peeked is None
            assert popped is None
            return
        assert popped is not None
        assert popped in self.model, "popped a job that is not queued (lost or duplicated)"
        job = self.model[popped]
        assert job.priority == max(self.levels), "a lower priority went first"
        assert peeked == (popped, job.cost)
        assert popped == expected.job_id
        self._serve(job)

    @rule()
    def peek(self) -> None:
        expected = self._expected_next()
        assert self.queue.peek() == (None if expected is None else (expected.job_id, expected.cost))

    @precondition(lambda self: self.admitted)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from([*sorted(self.admitted), "unknown"]))
        job = self.model.get(job_id)
        assert self.queue.remove(job_id) is (job is not None)
        if job is not None:
            self._release(job)

    @rule(fraction=st.floats(0.5, 1.0))
    def remove_many(self, fraction: float) -> None:
        jobs = sorted(self.model.values(), key=lambda j: j.seq)
        for job in jobs[: int(len(jobs) * fraction)]:
            assert self.queue.remove(job.job_id)
            self._release(job)

    @rule(now=st.integers(-1, 31).map(float))
    def pop_expired(self, now: float) -> None:
        expected = sorted(
            (j for j in self.model.values() if j.deadline <= now),
            key=lambda j: (j.deadline, j.seq),
        )
        assert self.queue.pop_expired(now) == [j.job_id for j in expected]
        for job in expected:
            self._release(job)

    @rule(tenant=tenants, weight=st.sampled_from([0.25, 1.0, 2.0, 5.0]))
    def set_weight(self, tenant: str, weight: float) -> None:
        self.weights[tenant] = weight
        self.queue.set_tenant_weights(self.weights)

    # invariants
    @invariant()
    def counts_membership_and_accounting(self) -> None:
        assert len(self.queue) == len(self.model)
        depth: dict[str, int] = {}
        cost: dict[str, float] = {}
        for job in self.model.values():
            assert self.queue.tenant_of(job.job_id) == job.tenant  # also: it is queued
            depth[job.tenant] = depth.get(job.tenant, 0) + 1
            cost[job.tenant] = cost.get(job.tenant, 0.0) + job.cost
        assert self.queue.depth_by_tenant() == depth
        got = self.queue.cost_by_tenant()
        assert got.keys() == cost.keys()
        tolerance = 1e-9 * max(1.0, self.cost_scale)
        for tenant, expected in cost.items():
            assert math.isclose(got[tenant], expected, rel_tol=1e-9, abs_tol=tolerance)
        total = sum(cost.values())
        assert math.isclose(self.queue.queued_cost, total, rel_tol=1e-9, abs_tol=tolerance)
        if not self.model:
            assert self.queue.queued_cost == 0.0

    @invariant()
    def memory_bounded(self) -> None:
        assert self.queue._footprint() <= footprint_bound(len(self.model))

    def teardown(self) -> None:
        # everything still queued comes out exactly once, in the reference order
        while self.model:
            self.pop()
        assert self.queue.pop() is None
        assert self.queue.next_deadline() is None
        assert self.admitted == self.released  # each admission left exactly once


FairQueueMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestFairQueueModel = FairQueueMachine.TestCase
