"""The pure helpers of the bench's capacity scenarios (f)-(h): the batching ceiling, the job
mix and the watch over the daemon's per-worker limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.capacity import (
    LARGE_COST,
    SMALL_COST,
    LimitWatch,
    _f_targets,
    batching_ceiling_cost_s,
    ceiling,
    cost_jobs,
    limits_text,
    mixed_costs,
    screen_summary,
)
from bench.scenarios import ratio_text
from scheduler.emulator.settings import EmulatedEndpoint
from scheduler.emulator.workload import WorkQueue


def test_the_ceiling_of_three_full_batches() -> None:
    # 3 workers x 32 x cost / (cost / 200 x (1 + 0.02 x 31)): 11,851.9 cost/s, 118.5 jobs/s.
    assert batching_ceiling_cost_s(3, 32, 200, 0.02) == pytest.approx(3 * 32 * 200 / 1.62)
    top = ceiling([100.0] * 10)
    assert top["cost_per_s"] == pytest.approx(11_851.9, abs=0.1)
    assert top["jobs_per_s"] == pytest.approx(118.52, abs=0.01)
    assert ceiling(mixed_costs(100, 1))["jobs_per_s"] == pytest.approx(11_851.85 / 96, abs=0.01)


@given(
    batch=st.integers(min_value=1, max_value=64),
    slowdown=st.floats(min_value=0, max_value=0.2),
    perf=st.floats(min_value=1, max_value=1e5),
)
def test_the_ceiling_is_what_the_emulators_batching_model_serves(
    batch: int, slowdown: float, perf: float
) -> None:
    """A full batch of equal jobs in the emulator's own WorkQueue ends together, at the time
    the ceiling gives for one worker."""
    endpoint = EmulatedEndpoint(
        perf=perf, service="batching", max_batch=batch, batch_slowdown=slowdown
    )
    queue = WorkQueue.for_endpoint(endpoint)
    for i in range(batch):
        queue.add(i, 100.0, 0.0)
    finish = queue.next_completion_in()
    assert finish is not None
    assert queue.advance(finish) == list(range(batch))  # all together
    assert batch * 100.0 / finish == pytest.approx(
        batching_ceiling_cost_s(1, batch, perf, slowdown), rel=1e-6
    )


@given(count=st.integers(min_value=0, max_value=2000), seed=st.integers())
def test_the_mix_is_one_fifth_twenty_times_larger(count: int, seed: int) -> None:
    costs = mixed_costs(count, seed)
    assert len(costs) == count
    assert set(costs) <= {SMALL_COST, LARGE_COST}
    assert costs.count(LARGE_COST) == round(0.2 * count)
    assert costs == mixed_costs(count, seed)  # the same job list for every system


def test_jobs_carry_their_cost_as_max_tokens() -> None:
    jobs = cost_jobs([20.0, 400.0])
    assert [j.payload["max_tokens"] for j in jobs] == [20, 400]
    assert [j.cost for j in jobs] == [20.0, 400.0]
    assert [j.index for j in jobs] == [0, 1]


def view(url: str, limit: int | None, phase: str = "startup") -> dict[str, object]:
    return {"worker_url": url, "limit": limit, "phase": phase, "inflight_jobs": 0}


def test_the_watch_keeps_changes_the_end_state_and_when_a_batch_was_reached() -> None:
    watch = LimitWatch({"b": 32})
    watch.observe(0.1, [view("b", 2), view("f", 2)])
    watch.observe(0.2, [view("b", 2), view("f", 2)])  # no change: not a new entry
    watch.observe(1.0, [view("b", 16), view("f", 1, "steady")])
    watch.observe(2.0, [view("b", 28)])  # 28 < 0.9 x 32
    watch.observe(2.5, [view("b", 29)])
    watch.observe(3.0, [view("b", 40, "probing")])
    assert watch.reached_s == {"b": 2.5}
    assert watch.last == {
        "b": {"limit": 40, "phase": "probing"},
        "f": {"limit": 1, "phase": "steady"},
    }
    assert [(c["t_s"], c["worker_url"], c["limit"]) for c in watch.changes] == [
        (0.1, "b", 2), (0.1, "f", 2), (1.0, "b", 16), (1.0, "f", 1), (2.0, "b", 28),
        (2.5, "b", 29), (3.0, "b", 40),
    ]  # fmt: skip
    assert watch.polls == 6


def test_limits_off_never_reach_the_batch() -> None:
    watch = LimitWatch({"b": 32})
    watch.observe(0.5, [view("b", None, "")])
    assert watch.reached_s == {}


def test_limits_text() -> None:
    run = {
        "worker_limits_end": [
            {
                "worker_url": "b",
                "service": "batching",
                "limit": 60,
                "phase": "steady",
                "max_batch": 64,
            },
            {"worker_url": "f", "service": "fifo", "limit": 1, "phase": "steady"},
        ],
        "limit_reached_90pct_s": {"b": 2.5},
    }
    assert limits_text(run) == "batching 60 of 64 (steady, 90% at 2.5 s); fifo 1 (steady)"
    assert limits_text(None) == "-"


@pytest.mark.parametrize(
    ("ratio", "bound", "text"),
    [(0.8994, 0.9, "0.899"), (0.9004, 0.9, "0.900"), (0.9, 0.9, "0.90"), (1.234, 1.0, "1.23"),
     (1.0049, 1.0, "1.005")],
)  # fmt: skip
def test_a_ratio_next_to_its_bound_prints_the_side_it_is_on(
    ratio: float, bound: float, text: str
) -> None:
    assert ratio_text(ratio, bound) == text


def test_a_screen_counts_the_runs_below_its_slow_bound() -> None:
    summary = screen_summary([93.2, 61.5, 88.0, 70.1], slow_below=80.3)
    assert summary["jobs_per_s"] == [61.5, 70.1, 88.0, 93.2]
    assert summary["slow"] == 2
    assert summary["median"] == 79.0
    assert summary["mean"] == 78.2


def test_the_screen_is_run_on_demand_only() -> None:
    from bench.__main__ import SCENARIOS, scenario_names

    everything = scenario_names("all")
    assert "f-screen" in SCENARIOS
    assert "f-screen" not in everything
    assert {"a", "f", "j", "k"} <= set(everything)
    assert scenario_names("f-screen") == ["f-screen"]


def test_a_ceiling_share_next_to_its_bound_prints_the_side_it_is_on() -> None:
    """(f1) warm at 106.5 jobs/s against a ceiling of 118.52 is 0.8986x: printed "0.899x",
    missed, not a "0.90x" that reads as met."""
    variant = "f1 cost 100, c=96, warm"
    runs = [
        {"variant": variant, "system": "vast-scheduler (run)", "throughput_jobs_s": 106.5,
         "latency_ms": {"p99": 900.0}},
        {"variant": variant, "system": "official vastai client", "throughput_jobs_s": 105.6,
         "latency_ms": {"p99": 910.0}},
    ]  # fmt: skip
    ceilings = {variant: {"jobs_per_s": 118.52}}
    out = _f_targets(runs, variant, "f2, warm", ceilings)
    share = next(t for t in out if "ceiling" in t["target"])
    assert share["measured"].startswith("0.899x")
    assert share["met"] is False
