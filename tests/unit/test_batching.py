"""take_batch: jobs popped in order while they fit by count and by cost."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.core.batching import BatchLimits, take_batch


class FakeQueue:
    """A FIFO of (job_id, cost) that records every pop."""

    def __init__(self, items: list[tuple[str, float]]) -> None:
        self.items = deque(items)
        self.popped: list[str] = []

    def peek(self) -> tuple[str, float] | None:
        return self.items[0] if self.items else None

    def pop(self) -> str | None:
        if not self.items:
            return None
        job_id, _ = self.items.popleft()
        self.popped.append(job_id)
        return job_id


def jobs(*costs: float) -> list[tuple[str, float]]:
    return [(f"j{i}", cost) for i, cost in enumerate(costs)]


@pytest.mark.parametrize(
    ("items", "limits", "ids", "total"),
    [
        pytest.param([], BatchLimits(), [], 0.0, id="empty"),
        pytest.param(jobs(1, 2, 3), BatchLimits(), ["j0", "j1", "j2"], 6.0, id="all-fit"),
        pytest.param(jobs(1, 1, 1, 1), BatchLimits(max_jobs=2), ["j0", "j1"], 2.0, id="by-count"),
        pytest.param(jobs(2, 2, 2), BatchLimits(max_cost=4), ["j0", "j1"], 4.0, id="cost-exact"),
        pytest.param(jobs(2, 3, 1), BatchLimits(max_cost=4), ["j0"], 2.0, id="cost-stops"),
        pytest.param(jobs(9, 1), BatchLimits(max_cost=4), ["j0"], 9.0, id="first-too-costly"),
        pytest.param(jobs(1, 9, 1), BatchLimits(max_cost=4), ["j0"], 1.0, id="no-skipping"),
        pytest.param(jobs(0, 0, 0), BatchLimits(max_cost=0), ["j0", "j1", "j2"], 0.0, id="zero"),
        pytest.param(jobs(1, 1), BatchLimits(max_jobs=1), ["j0"], 1.0, id="one-at-a-time"),
        pytest.param(jobs(1, 1), BatchLimits(max_jobs=0), [], 0.0, id="max-jobs-zero"),
    ],
)
def test_take_batch(
    items: list[tuple[str, float]], limits: BatchLimits, ids: list[str], total: float
) -> None:
    queue = FakeQueue(items)
    assert take_batch(queue.peek, queue.pop, limits) == (ids, total)
    assert queue.popped == ids


def test_pop_returning_none_ends_the_batch() -> None:
    """A job that vanished between peek and pop (cancelled) ends the batch cleanly."""
    queue = FakeQueue(jobs(1, 1, 1))
    pops = iter(["j0", None])
    taken = take_batch(queue.peek, lambda: next(pops), BatchLimits())
    assert taken == (["j0"], 1.0)


@given(
    costs=st.lists(st.floats(0.0, 100.0), max_size=40),
    max_jobs=st.integers(0, 20),
    max_cost=st.floats(0.0, 300.0),
)
def test_take_batch_properties(costs: list[float], max_jobs: int, max_cost: float) -> None:
    items = jobs(*costs)
    queue = FakeQueue(items)
    ids, total = take_batch(queue.peek, queue.pop, BatchLimits(max_jobs, max_cost))

    assert len(ids) <= max_jobs
    assert ids == [job_id for job_id, _ in items[: len(ids)]]  # an ordered prefix
    assert queue.popped == ids  # pops exactly what it returns
    assert list(queue.items) == items[len(ids) :]
    assert total == pytest.approx(sum(costs[: len(ids)]))
    if len(ids) > 1:
        assert total <= max_cost + 1e-9
    # maximal: it stops only for a reason
    if len(ids) < len(items) and len(ids) < max_jobs:
        assert ids, "the first job is always taken"
        assert total + costs[len(ids)] > max_cost
    if items and max_jobs > 0:
        assert ids
