"""The autoscaler model's pure rule (scheduler/emulator/scaling.py)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from scheduler.emulator.scaling import (
    Demand,
    RateWindow,
    ScalingParams,
    capacity_wanted,
    workers_wanted,
)

PARAMS = ScalingParams(
    min_load=0, target_util=0.9, target_queue_time_s=10, inactivity_timeout_s=60, max_workers=20
)


def demand(load_rate: float = 0, backlog: float = 0, since: float = 1e9) -> Demand:
    return Demand(load_rate=load_rate, backlog=backlog, since_traffic_s=since, worker_perf=100)


def test_load_over_target_util_sets_the_fleet() -> None:
    assert workers_wanted(PARAMS, demand(load_rate=900)) == 10  # 900 / 0.9 = 1000 = 10 x 100
    assert workers_wanted(PARAMS, demand(load_rate=901)) == 11


def test_routed_cost_counts_as_load_when_it_exceeds_the_reported() -> None:
    """Vast scales on routed cost too (protocol doc, section 3): a client that keeps its queue
    and routes it in batches shows its demand there, before any worker reports it."""
    routed = Demand(load_rate=100, backlog=0, since_traffic_s=1e9, worker_perf=100,
                    routed_rate=900)  # fmt: skip
    assert workers_wanted(PARAMS, routed) == 10
    assert workers_wanted(PARAMS, demand(load_rate=100)) == 2  # without it: 100 / 0.9


def test_backlog_is_cleared_within_target_queue_time() -> None:
    assert workers_wanted(PARAMS, demand(backlog=3000)) == 3  # 3000 units in 10 s at 100/s


def test_min_load_floor_and_max_workers_cap() -> None:
    floor = ScalingParams(min_load=250, max_workers=20)
    assert workers_wanted(floor, demand()) == 3
    assert workers_wanted(PARAMS, demand(load_rate=1e9)) == 20


def test_scale_to_zero_only_after_inactivity_timeout() -> None:
    assert workers_wanted(PARAMS, demand(since=59.9)) == 1
    assert workers_wanted(PARAMS, demand(since=60)) == 0


@given(
    load=st.floats(0, 1e6), extra=st.floats(0, 1e6), backlog=st.floats(0, 1e6),
    since=st.floats(0, 1e4), max_workers=st.integers(0, 100),
)  # fmt: skip
def test_wanted_is_monotone_in_demand_and_within_bounds(
    load: float, extra: float, backlog: float, since: float, max_workers: int
) -> None:
    params = ScalingParams(max_workers=max_workers)
    low = workers_wanted(params, demand(load, backlog, since))
    high = workers_wanted(params, demand(load + extra, backlog + extra, since))
    assert 0 <= low <= high <= max_workers
    needed = math.ceil(capacity_wanted(params, demand(load, backlog, since)) / 100 - 1e-9)
    assert low >= min(needed, max_workers)


def test_rate_window_is_the_rate_over_the_last_window() -> None:
    window = RateWindow(window_s=10)
    assert window.add(0, 0) == 0
    for t in range(1, 31):
        rate = window.add(float(t), 50.0 * t)  # 50 units/s
    assert rate == 50
    assert len(window.samples) <= 12
    assert window.add(31.0, 50.0 * 30) < 50  # nothing new in the last second
