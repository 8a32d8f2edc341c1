"""The pure service model: processor sharing and FIFO, and payload workloads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.emulator.settings import EmulatedEndpoint
from scheduler.emulator.workload import WorkQueue, queue_time_s, workload_of

works = st.lists(st.floats(0.1, 1000), min_size=1, max_size=8)


def _run_to_end(queue: WorkQueue, step: float, limit: int = 100_000) -> dict[int, float]:
    finished: dict[int, float] = {}
    now = queue.now
    for _ in range(limit):
        if not queue.remaining:
            break
        delay = queue.next_completion_in() or 0.0
        now += min(delay, step)
        for job in queue.advance(now):
            finished[job] = now
    return finished


@settings(max_examples=50, deadline=None)
@given(work=works, rate=st.floats(1, 1e4), shared=st.booleans())
def test_all_work_done_exactly_when_total_work_over_rate(
    work: list[float], rate: float, shared: bool
) -> None:
    queue = WorkQueue(rate=rate, shared=shared)
    for job, units in enumerate(work):
        queue.add(job, units, 0.0)
    finished = _run_to_end(queue, step=0.5)
    assert set(finished) == set(range(len(work)))
    assert max(finished.values()) == pytest.approx(sum(work) / rate, rel=1e-6)


def test_processor_sharing_equal_jobs_finish_together() -> None:
    queue = WorkQueue(rate=100, shared=True)
    for job in range(3):
        queue.add(job, 100, 0.0)
    assert queue.next_completion_in() == pytest.approx(3.0)
    assert sorted(queue.advance(3.0)) == [0, 1, 2]


def test_fifo_serves_in_arrival_order() -> None:
    queue = WorkQueue(rate=100, shared=False)
    queue.add(1, 100, 0.0)
    queue.add(2, 50, 0.0)
    assert queue.advance(1.0) == [1]
    assert queue.advance(1.5) == [2]


def test_slower_rate_midway() -> None:
    queue = WorkQueue(rate=100, shared=True)
    queue.add(1, 100, 0.0)
    queue.set_rate(50, 0.5)
    assert queue.advance(1.49) == []
    assert queue.advance(1.5) == [1]


def test_workload_kinds_and_queue_time() -> None:
    constant = EmulatedEndpoint()
    tokens = EmulatedEndpoint(workload="max_tokens", workload_units_per_token=2)
    assert workload_of({"max_tokens": 7}, constant) == 100
    assert workload_of({"max_tokens": 7}, tokens) == 14
    assert workload_of({"max_tokens": "x"}, tokens) == 32
    assert queue_time_s([100, 200], 100) == 3.0
