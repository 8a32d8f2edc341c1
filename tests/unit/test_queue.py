"""JobQueue: priority order, FIFO within a priority, bounds, lazy removal, deadlines."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scheduler.core.queue import MAX_PRIORITY, MIN_PRIORITY, JobQueue, QueueFull


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
    # internal heaps were rebuilt once dead entries dominated
    assert len(queue._order) <= max(64, 4 * live)
    assert len(queue._deadlines) <= max(64, 4 * live)
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

    # helpers
    def _new_id(self) -> str:
        job_id = f"job-{len(self.ids_ever)}"
        self.ids_ever.append(job_id)
        return job_id

    def _add(self, job_id: str, priority: int, cost: float, deadline: float) -> None:
        self.model.append(_Ref(job_id, priority, self.seq, cost, deadline))
        self.seq += 1
        self.cost_scale = max(self.cost_scale, sum(r.cost for r in self.model))

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

    @invariant()
    def queued_cost_matches_live_costs(self) -> None:
        expected = sum(r.cost for r in self.model)
        tolerance = 1e-9 * max(1.0, self.cost_scale)
        assert math.isclose(self.queue.queued_cost, expected, rel_tol=1e-9, abs_tol=tolerance)
        assert self.queue.queued_cost >= 0.0
        if not self.model:
            assert self.queue.queued_cost == 0.0

    @invariant()
    def compaction_bounds_heaps(self) -> None:
        bound = max(64, 4 * len(self.model)) + 1
        assert len(self.queue._order) <= bound + len(self.model)


QueueMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestJobQueueModel = QueueMachine.TestCase
