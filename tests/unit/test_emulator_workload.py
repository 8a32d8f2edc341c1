"""The pure service models (processor sharing, FIFO, batching) and payload workloads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.emulator.settings import EmulatedEndpoint
from scheduler.emulator.workload import WorkQueue, benchmark_perf, queue_time_s, workload_of

works = st.lists(st.floats(0.1, 1000), min_size=1, max_size=8)
services = st.sampled_from(["processor_sharing", "fifo", "batching"])


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
    queue = WorkQueue(rate=rate, service="processor_sharing" if shared else "fifo")
    for job, units in enumerate(work):
        queue.add(job, units, 0.0)
    finished = _run_to_end(queue, step=0.5)
    assert set(finished) == set(range(len(work)))
    assert max(finished.values()) == pytest.approx(sum(work) / rate, rel=1e-6)


def test_processor_sharing_equal_jobs_finish_together() -> None:
    queue = WorkQueue(rate=100, service="processor_sharing")
    for job in range(3):
        queue.add(job, 100, 0.0)
    assert queue.next_completion_in() == pytest.approx(3.0)
    assert sorted(queue.advance(3.0)) == [0, 1, 2]


def test_fifo_serves_in_arrival_order() -> None:
    queue = WorkQueue(rate=100, service="fifo")
    queue.add(1, 100, 0.0)
    queue.add(2, 50, 0.0)
    assert queue.advance(1.0) == [1]
    assert queue.advance(1.5) == [2]


def test_slower_rate_midway() -> None:
    queue = WorkQueue(rate=100, service="processor_sharing")
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


def _batching(rate: float, max_batch: int, slowdown: float) -> WorkQueue:
    return WorkQueue(rate=rate, service="batching", max_batch=max_batch, batch_slowdown=slowdown)


@settings(max_examples=50, deadline=None)
@given(work=works, rate=st.floats(1, 1e4), max_batch=st.integers(1, 10),
       slowdown=st.floats(0, 1))  # fmt: skip
def test_batching_serves_everything_no_later_than_one_at_a_time(
    work: list[float], rate: float, max_batch: int, slowdown: float
) -> None:
    """Work conservation: a busy batch serves n * rate / (1 + s(n-1)) >= rate units/s, so
    the last job ends by sum(work) / rate (exactly then at slowdown 1, or one at a time);
    and no job ends before it could alone (work / rate)."""
    queue = _batching(rate, max_batch, slowdown)
    for job, units in enumerate(work):
        queue.add(job, units, 0.0)
    finished = _run_to_end(queue, step=0.5)
    assert set(finished) == set(range(len(work)))
    assert max(finished.values()) <= sum(work) / rate * (1 + 1e-6)
    if slowdown == 1 or max_batch == 1 or len(work) == 1:
        assert max(finished.values()) == pytest.approx(sum(work) / rate, rel=1e-6)
    for job, units in enumerate(work):
        assert finished[job] >= units / rate * (1 - 1e-6)


@settings(max_examples=50, deadline=None)
@given(work=works, rate=st.floats(1, 1e4), slowdown=st.floats(0, 1))
def test_batching_completion_order(work: list[float], rate: float, slowdown: float) -> None:
    """All in one batch: a smaller job never ends after a bigger one; batch of 1: FIFO."""
    together = _batching(rate, len(work), slowdown)
    one_by_one = _batching(rate, 1, slowdown)
    for job, units in enumerate(work):
        together.add(job, units, 0.0)
        one_by_one.add(job, units, 0.0)
    by_finish = _run_to_end(together, step=0.5)
    for a in range(len(work)):
        for b in range(len(work)):
            if work[a] < work[b]:
                assert by_finish[a] <= by_finish[b]
    in_order = _run_to_end(one_by_one, step=0.5)
    assert sorted(in_order, key=lambda j: (in_order[j], j)) == list(range(len(work)))


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 32), cost=st.floats(1, 1000), rate=st.floats(1, 1e4),
       slowdown=st.floats(0, 1))  # fmt: skip
def test_batch_started_together_ends_together(
    n: int, cost: float, rate: float, slowdown: float
) -> None:
    """n <= max_batch equal jobs started together all end at cost * (1 + s(n-1)) / rate;
    one alone takes cost / rate."""
    queue = _batching(rate, 32, slowdown)
    for job in range(n):
        queue.add(job, cost, 0.0)
    expected = cost * (1 + slowdown * (n - 1)) / rate
    assert queue.next_completion_in() == pytest.approx(expected, rel=1e-9)
    finished = _run_to_end(queue, step=expected / 3)
    assert set(finished) == set(range(n))
    assert all(at == pytest.approx(expected, rel=1e-6) for at in finished.values())


def test_the_job_past_max_batch_waits_then_joins_when_a_slot_frees() -> None:
    queue = _batching(100, 4, 0.1)
    for job in range(5):
        queue.add(job, 100, 0.0)
    assert queue.in_service() == [0, 1, 2, 3]
    batch_s = 100 * (1 + 0.1 * 3) / 100  # 1.3 s for the four together
    assert queue.advance(batch_s - 0.01) == []
    assert queue.remaining[4] == 100  # waiting costs nothing and serves nothing
    assert queue.advance(batch_s) == [0, 1, 2, 3]
    assert queue.next_completion_in() == pytest.approx(1.0)  # alone now: cost / rate
    assert queue.advance(batch_s + 1.0) == [4]


def test_continuous_batching_lets_a_waiting_job_in_as_soon_as_one_leaves() -> None:
    queue = _batching(100, 2, 0.0)
    queue.add(1, 50, 0.0)
    queue.add(2, 200, 0.0)
    queue.add(3, 100, 0.0)
    assert queue.advance(0.5) == [1]  # job 3 joins now, not when the batch of two ends
    assert queue.in_service() == [2, 3]
    assert queue.advance(1.5) == [3]
    assert queue.advance(2.0) == [2]
    queue.add(4, 100, 2.0)
    queue.remove(4, 2.5)  # a cancelled job leaves its slot as well
    assert queue.remaining == {}


def test_benchmark_perf_is_the_throughput_at_the_benchmark_concurrency() -> None:
    """What the official worker's benchmark measures: concurrency requests together (1 when
    it serves FIFO), total workload over elapsed time."""
    assert benchmark_perf(EmulatedEndpoint(perf=1000)) == pytest.approx(1000)
    assert benchmark_perf(EmulatedEndpoint(perf=1000, service="fifo")) == pytest.approx(1000)
    batching = EmulatedEndpoint(perf=1000, service="batching")
    assert benchmark_perf(batching) == pytest.approx(10 * 1000 / 1.18)
    narrow = batching.with_overrides({"max_batch": 4, "batch_slowdown": 0.0})
    # Ten requests, four at a time: three rounds of one request's time.
    assert benchmark_perf(narrow) == pytest.approx(10 * 1000 / 3)
    alone = batching.with_overrides({"benchmark_concurrency": 1})
    assert benchmark_perf(alone) == pytest.approx(1000)


def test_service_settings_and_the_parallel_alias() -> None:
    assert EmulatedEndpoint().service == "fifo"  # the official worker's default
    assert EmulatedEndpoint.model_validate({"parallel": True}).service == "processor_sharing"
    assert EmulatedEndpoint.model_validate({"parallel": False}).service == "fifo"
    both = {"parallel": False, "service": "fifo"}
    assert EmulatedEndpoint.model_validate(both).service == "fifo"
    wrongs = [
        {"parallel": True, "service": "batching"},
        {"parallel": False, "service": "processor_sharing"},
        {"batch_slowdown": 1.5},
        {"max_batch": 0},
    ]
    for wrong in wrongs:
        with pytest.raises(ValueError, match=r"parallel|batch"):
            EmulatedEndpoint.model_validate(wrong)
    fifo = EmulatedEndpoint.model_validate({"parallel": False})
    assert fifo.with_overrides({"service": "batching"}).service == "batching"
    assert fifo.with_overrides({"parallel": True}).service == "processor_sharing"
    assert fifo.with_overrides({"perf": 5}).service == "fifo"


def test_a_memory_bound_batch_holds_no_more_work_than_its_budget() -> None:
    """``max_batch_cost`` (a KV cache's tokens): the oldest jobs join while their whole work
    fits; one that does not fit waits, and the small one behind it too (first come)."""
    queue = WorkQueue(rate=100, service="batching", max_batch=8, batch_slowdown=0.0,
                      max_batch_cost=1000)  # fmt: skip
    for job, work in enumerate([400, 400, 400, 20]):
        queue.add(job, work, 0.0)
    assert queue.in_service() == [0, 1]  # 800; the third would make 1,200
    assert queue.advance(4.0) == [0, 1]  # both at the full rate: 400 / 100
    assert queue.in_service() == [2, 3]
    assert queue.advance(4.2) == [3]
    assert queue.advance(8.0) == [2]
    queue.add(9, 5000, 8.0)  # larger than the whole budget: alone, it still runs
    assert queue.in_service() == [9]


# Memory-bound batches: jobs' work, the batch's memory, its count of requests.
memory_bound = {
    "work": st.lists(st.floats(1, 500), min_size=1, max_size=12),
    "budget": st.floats(50, 2000),
    "max_batch": st.integers(1, 12),
}


@settings(max_examples=50, deadline=None)
@given(**memory_bound)
def test_a_memory_bound_batch_is_the_longest_fitting_prefix(
    work: list[float], budget: float, max_batch: int
) -> None:
    queue = WorkQueue(rate=100, service="batching", max_batch=max_batch, batch_slowdown=0.02,
                      max_batch_cost=budget)  # fmt: skip
    for job, units in enumerate(work):
        queue.add(job, units, 0.0)
    serving = queue.in_service()
    assert serving == list(range(len(serving)))  # the oldest, in order
    assert 1 <= len(serving) <= max_batch
    assert len(serving) == 1 or sum(work[: len(serving)]) <= budget
    if len(serving) < min(max_batch, len(work)):
        assert sum(work[: len(serving) + 1]) > budget  # the next would not fit
    assert set(_run_to_end(queue, step=0.5)) == set(range(len(work)))


def _paged(budget: float, max_batch: int = 8, slowdown: float = 0.0) -> WorkQueue:
    return WorkQueue(rate=100, service="batching", max_batch=max_batch, batch_slowdown=slowdown,
                     max_batch_cost=budget, batch_memory="grow", prompt_share=0.1)  # fmt: skip


def test_a_paged_batch_preempts_its_newest_job_when_memory_runs_out() -> None:
    """vLLM's paged KV cache: two jobs of 600 join on their prompts (60 each) and grow at
    100 units/s each; at 4.4 s they hold 1,000 and the newest starts again after the other."""
    queue = _paged(1000)
    queue.add(0, 600, 0.0)
    queue.add(1, 600, 0.0)
    assert queue.in_service() == [0, 1]
    assert queue.advance(4.39) == []
    assert queue.advance(4.41) == []
    assert queue.preemptions == 1
    assert queue.in_service() == [0]
    assert queue.remaining[1] == 600  # its progress is lost
    assert queue.next_completion_in() == pytest.approx(1.59)  # 160 left, alone: 6.0 s
    queue.add(2, 10, 4.5)  # no job joins while one was preempted and none has finished
    assert queue.in_service() == [0]
    assert queue.advance(6.0) == [0]
    assert queue.in_service() == [1, 2]  # the preempted one first, then the next
    finished = _run_to_end(queue, step=1.0)
    assert set(finished) == {1, 2}


@settings(max_examples=50, deadline=None)
@given(**memory_bound)
def test_a_paged_batch_never_holds_more_than_its_memory_and_ends_every_job(
    work: list[float], budget: float, max_batch: int
) -> None:
    queue = _paged(budget, max_batch, slowdown=0.02)
    for job, units in enumerate(work):
        queue.add(job, units, 0.0)
    finished: set[int] = set()
    now = 0.0
    for _ in range(10_000):
        serving = queue.in_service()
        if len(serving) > 1:
            held = sum(0.1 * queue.work[j] + queue.work[j] - queue.remaining[j] for j in serving)
            assert held <= budget * (1 + 1e-9)
        assert len(serving) <= max_batch
        if not queue.remaining:
            break
        now += min(queue.next_completion_in() or 0.0, 0.7)
        finished.update(queue.advance(now))
    assert finished == set(range(len(work)))
