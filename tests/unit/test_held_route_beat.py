"""The beat of held route calls (``dispatch.held_routes.HeldRoutes``): pure given its inputs
(times are passed in, the pool's measured rates are set by the test)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.config import EndpointConfig
from scheduler.core.assignments import LeaseLimits, LeasePool, ReuseMode
from scheduler.dispatch.held_routes import (
    DRAIN_SHARE,
    PROBE_INTERVALS,
    PROBE_JOBS,
    SHORT_BACKLOG_INTERVALS,
    HeldRoutes,
)

CONFIG = EndpointConfig.model_validate({"placement": {"held_route_interval_s": 0.5}})
BASE = 0.5


def pool_clearing(rate: float | None) -> LeasePool:
    """A pool with one leased worker that has cleared ``rate`` cost per second (None: no
    measured rate yet)."""
    pool = LeasePool(LeaseLimits())
    pool.new_lease("http://w", None, ReuseMode.SESSION, 1e6, 0.0)
    if rate is not None:
        pool.meter.started("http://w", 0.0)
        pool.meter.finished("http://w", rate, 1.0, succeeded=True)
    return pool


@settings(max_examples=300, deadline=None)
@given(
    unused=st.integers(0, 8),
    held_waiting=st.floats(0, 1e5),
    waiting=st.floats(0, 1e5),
    rate=st.none() | st.floats(1.0, 1e4),
)
def test_the_next_held_call_is_never_before_the_base_interval_nor_after_the_back_off(
    unused: int, held_waiting: float, waiting: float, rate: float | None
) -> None:
    """Between the base interval and the backed-off one: at the base when the waiting cost
    grew; at the back-off when no rate is measured; else capped at DRAIN_SHARE of the time
    the workers need to clear what waits."""
    held = HeldRoutes(CONFIG, pool_clearing(rate), now=0.0)
    held.unused = unused
    held.went(10.0, held_waiting)
    due = held.due(waiting)
    backed_off = 10.0 + held.interval_s(unused)
    assert 10.0 + BASE - 1e-9 <= due <= backed_off + 1e-9
    if waiting > held_waiting:
        assert due == 10.0 + BASE
    elif rate is None or waiting / rate <= SHORT_BACKLOG_INTERVALS * BASE:
        assert due == backed_off
    else:
        drain_capped = max(10.0 + BASE, 10.0 + DRAIN_SHARE * waiting / rate)
        assert due == pytest.approx(min(backed_off, drain_capped))


def test_a_backlog_that_lasts_keeps_the_beat_one_that_clears_soon_backs_off() -> None:
    """Answers named workers at their limit 4 times in a row (back-off 8 s). 20,000 waiting at
    1,000 a second (20 s to clear): the next call in 5 s; 1,500 (1.5 s): the base; 800 (a
    closed loop's queue, gone before the next call could find a worker): the back-off."""
    held = HeldRoutes(CONFIG, pool_clearing(1000.0), now=0.0)
    held.unused = 4
    held.went(0.0, 20_000.0)
    assert held.due(20_000.0) == DRAIN_SHARE * 20.0
    assert held.due(1_500.0) == BASE
    assert held.due(800.0) == held.interval_s(4)
    held.went(0.0, 1e9)  # ... an hour's backlog: the full back-off
    assert held.due(1e9) == held.interval_s(4) == 8.0


def test_a_demand_call_goes_only_after_growth_and_once_a_window() -> None:
    held = HeldRoutes(CONFIG, pool_clearing(None), now=0.0)
    held.demand.arrived(0.1, 500.0)
    held.went(0.2, 0.0)  # nothing waited before: not grown
    assert held.demand_due(0.2, declared=0.0) is None
    held.went(0.7, 500.0)  # grew
    assert held.demand_due(0.7, declared=100.0) == 400.0
    held.demand_declared(0.7)
    held.demand.arrived(0.8, 300.0)
    held.went(1.2, 800.0)
    assert held.demand_due(1.2, declared=0.0) is None  # within the window of the last
    assert held.demand_due(0.7 + held.demand.window_s, declared=0.0) == 300.0


def test_an_answer_used_brings_the_next_held_call_back_to_the_base_interval() -> None:
    """Two answers in a row named workers at their limit (the next call 2 s after the last);
    then one opened a lease: the next held call is due at the base interval, not on the old
    back-off (in (k) the call that found the worker Vast had added went 2 s late)."""
    held = HeldRoutes(CONFIG, pool_clearing(None), now=0.0)
    held.answer_unused()
    held.answer_unused()
    held.went(10.0, 100.0)
    assert held.due(100.0) == 10.0 + held.interval_s(2) == 12.0
    held.answer_used()
    assert held.due(100.0) == 10.0 + BASE


def test_a_worker_with_room_named_by_an_answer_that_opens_nothing_is_called_for_at_once() -> None:
    """A held call just went (the next one 2 s away, backed off); the demand call after it
    named a worker with room, which its answer does not open (its cost is the demand's, not a
    session's): the next held call is due now, not at the base interval nor on the back-off
    (a cold (f2) start's second worker waited 0.25 s for it, 90 jobs queued)."""
    held = HeldRoutes(CONFIG, pool_clearing(None), now=0.0)
    held.answer_unused()
    held.answer_unused()
    held.went(10.0, 100.0)
    assert held.due(100.0) == 12.0
    held.room_named(10.01)
    assert held.due(100.0) == 10.01  # before the base interval (10.5): at once
    assert held.due(200.0) == 10.01  # the waiting cost grew: still at once
    held.went(10.02, 100.0)
    assert held.due(100.0) == 10.02 + BASE  # and the back-off starts again from the base


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(st.floats(0.0, 0.6), st.integers(0, 60)), max_size=60),
    unused=st.integers(0, 4),
)
def test_probes_go_only_while_backed_off_once_per_probe_jobs_starts_and_base_interval(
    steps: list[tuple[float, int]], unused: int
) -> None:
    """Whatever the starts and times: no probe while held calls are not backed off; never
    more than one per PROBE_JOBS starts; never two within PROBE_INTERVALS held intervals."""
    held = HeldRoutes(CONFIG, pool_clearing(None), now=0.0)
    held.unused = unused
    held.went(0.0, 0.0)
    now, starts, probes = 0.0, 0, [0.0]
    for dt, starting in steps:
        now += dt
        for _ in range(starting):
            held.job_started()
        starts += starting
        if held.probe_due(now):
            held.probed(now)
            probes.append(now)
    assert unused > 0 or len(probes) == 1
    assert len(probes) - 1 <= starts // PROBE_JOBS
    assert all(b - a >= PROBE_INTERVALS * BASE - 1e-9 for a, b in pairwise(probes))


def test_a_probe_is_due_after_probe_jobs_starts_and_a_held_call_resets_the_count() -> None:
    held = HeldRoutes(CONFIG, pool_clearing(None), now=0.0)
    held.answer_unused()
    held.went(0.0, 0.0)
    for _ in range(PROBE_JOBS - 1):
        held.job_started()
    assert not held.probe_due(1.1)
    held.job_started()
    assert held.probe_due(1.1)
    assert not held.probe_due(0.9)  # within PROBE_INTERVALS held intervals of the held call
    held.went(1.2, 0.0)
    assert not held.probe_due(3.0)  # the held call started the count again
