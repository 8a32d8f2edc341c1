"""Placement: the per-worker busy rate (BusyMeter) and earliest-finish placement with a horizon
(LeasePool.choose / admits), table-driven and with hypothesis."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.assignments import (
    BUSY_ALPHA,
    HOLD,
    Held,
    Lease,
    LeaseLimits,
    LeasePool,
    ReuseMode,
)
from scheduler.core.calibration import BusyMeter

LIMITS = LeaseLimits(ttl_s=100.0, idle_close_s=10.0, min_budget_fraction=0.05)
HORIZON_S = 0.1
RNG = random.Random(0)

# --- BusyMeter ---------------------------------------------------------------------------


def test_busy_meter_unknown_until_a_completion() -> None:
    meter = BusyMeter()
    assert meter.throughput("w") is None
    meter.started("w", 0.0)
    assert meter.throughput("w") is None
    meter.finished("w", 100.0, 1.0, succeeded=True)
    assert meter.throughput("w") == pytest.approx(100.0)


def test_busy_meter_counts_overlapping_jobs_once() -> None:
    # Two jobs of 100 on a worker sharing 100 units/s: both end at 2 s. Per-job service time
    # says 50/s; the worker cleared 200 units in 2 busy seconds: 100/s.
    meter = BusyMeter(alpha=0.5)
    meter.started("w", 0.0)
    meter.started("w", 0.0)
    meter.finished("w", 100.0, 2.0, succeeded=True)
    meter.finished("w", 100.0, 2.0, succeeded=True)  # the same instant: no busy time of its own
    assert meter.throughput("w") == pytest.approx(100.0)


def test_busy_meter_leaves_idle_gaps_out() -> None:
    meter = BusyMeter(alpha=0.5)
    for start in (0.0, 10.0, 20.0):  # 1 s of work, then 9 s idle
        meter.started("w", start)
        meter.finished("w", 50.0, start + 1.0, succeeded=True)
    assert meter.throughput("w") == pytest.approx(50.0)


def test_busy_meter_failed_time_counts_towards_the_next_success() -> None:
    meter = BusyMeter(alpha=1.0)
    meter.started("w", 0.0)
    meter.finished("w", 100.0, 1.0, succeeded=False)
    assert meter.throughput("w") is None
    meter.started("w", 1.0)
    meter.finished("w", 100.0, 2.0, succeeded=True)
    assert meter.throughput("w") == pytest.approx(50.0)


def test_busy_meter_bounds_and_forgets() -> None:
    meter = BusyMeter(max_workers=2)
    for name in ("a", "b", "c"):
        meter.started(name, 0.0)
        meter.finished(name, 1.0, 1.0, succeeded=True)
    assert len(meter) == 2
    assert meter.throughput("a") is None
    meter.finished("a", 1.0, 2.0, succeeded=True)  # never started (evicted): ignored
    meter.forget("b")
    assert meter.throughput("b") is None
    with pytest.raises(ValueError, match="max_workers"):
        BusyMeter(max_workers=0)


def serve_shared(perf: float, arrivals: list[tuple[float, float]], meters: list[BusyMeter]) -> None:
    """Feed ``meters`` the starts and ends of jobs (arrival time, cost) on a worker that shares
    ``perf`` units/s among the jobs it holds (processor sharing)."""
    remaining: dict[int, float] = {}
    costs = [cost for _, cost in arrivals]
    now, nxt = 0.0, 0
    # Each step takes an arrival or ends the jobs with the least work left: bounded. (Ending
    # "whatever is within 1e-9 of zero" after the float update could miss the job, and loop.)
    for _ in range(2 * len(arrivals) + 1):
        if nxt >= len(arrivals) and not remaining:
            return
        next_arrival = arrivals[nxt][0] if nxt < len(arrivals) else float("inf")
        rest = min(remaining.values()) if remaining else 0.0
        next_done = now + rest * len(remaining) / perf if remaining else float("inf")
        step_to = min(next_arrival, next_done)
        finishing = [j for j, left in remaining.items() if left == rest] if remaining else []
        for job in remaining:
            remaining[job] -= (step_to - now) * perf / len(remaining)
        now = step_to
        if step_to == next_done:
            for job in finishing:
                del remaining[job]
                for meter in meters:
                    meter.finished("w", costs[job], now, succeeded=True)
        while nxt < len(arrivals) and arrivals[nxt][0] <= now:
            remaining[nxt] = costs[nxt]
            nxt += 1
            for meter in meters:
                meter.started("w", now)
    raise AssertionError("the simulated worker did not finish its jobs")


@settings(max_examples=60, deadline=None)
@given(
    perf=st.floats(10.0, 1e5),
    jobs=st.lists(st.tuples(st.floats(1.0, 1000.0), st.floats(0.0, 2.0)), min_size=1, max_size=40),
)
def test_busy_meter_measures_a_shared_worker_speed(
    perf: float, jobs: list[tuple[float, float]]
) -> None:
    """Whatever the overlap, every busy second of a processor-sharing worker serves ``perf``
    units: the cumulative busy rate (a vanishing alpha) is exactly ``perf``."""
    arrivals, t = [], 0.0
    for cost, gap in jobs:
        t += gap * cost / perf
        arrivals.append((t, cost))
    meter = BusyMeter(alpha=1e-12)
    serve_shared(perf, arrivals, [meter])
    assert meter.throughput("w") == pytest.approx(perf, rel=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_busy_meter_tracks_a_loaded_shared_worker(seed: int) -> None:
    """With decay, each completion credits its whole cost to the busy time since the previous
    one (part of it was served earlier): near ``perf`` at a steady load, not exact. The worst
    case: 90% busy, so about nine jobs share the worker (placement keeps it to a few); the
    estimate is 10-35% high at the pool's alpha (and 40-80% high at 0.1)."""
    rng = random.Random(seed)
    perf, arrivals, t = 10_000.0, [], 0.0
    for _ in range(1500):
        cost = min(1024.0, max(8.0, rng.lognormvariate(5.0, 0.9)))
        t += rng.expovariate(0.9 * perf / 216.0)  # about 90% busy
        arrivals.append((t, cost))
    meter = BusyMeter(alpha=BUSY_ALPHA)
    serve_shared(perf, arrivals[:-300], [meter])  # stop while still loaded
    assert meter.throughput("w") == pytest.approx(perf, rel=0.4)


# --- LeasePool.choose / admits -----------------------------------------------------------


def learned(pool: LeasePool, url: str, rate: float) -> None:
    """Teach the pool's meter that ``url`` clears ``rate`` units per second."""
    pool.meter.started(url, 0.0)
    pool.meter.finished(url, rate, 1.0, succeeded=True)


def fleet(
    rates: dict[str, float], capacity: float = 10_000.0
) -> tuple[LeasePool, dict[str, Lease]]:
    pool = LeasePool(LIMITS)
    leases = {}
    for url, rate in rates.items():
        learned(pool, url, rate)
        leases[url] = pool.new_lease(url, None, ReuseMode.SESSION, capacity, now=1.0)
    return pool, leases


def test_choose_is_none_without_room() -> None:
    pool, _ = fleet({"a": 1000.0}, capacity=10.0)
    assert pool.choose(20.0, 1.0, RNG, horizon_s=HORIZON_S) is None
    assert pool.choose(5.0, 1.0, RNG, excluded=frozenset({"a"}), horizon_s=HORIZON_S) is None


def test_choose_sends_a_big_job_to_the_fast_worker() -> None:
    pool, leases = fleet({"slow": 5_000.0, "fast": 20_000.0})
    assert pool.choose(1000.0, 1.0, RNG, horizon_s=HORIZON_S) is leases["fast"]


def test_choose_weighs_work_in_flight_on_every_lease_of_a_worker() -> None:
    pool, leases = fleet({"slow": 5_000.0, "fast": 20_000.0})
    second = pool.new_lease("fast", None, ReuseMode.SESSION, 10_000.0, now=1.0)
    pool.acquire(leases["fast"], 1500.0, 1.0)  # 75 ms of work on the fast worker
    pool.acquire(second, 300.0, 1.0)  # and 15 ms more on its other lease
    # fast: (1800 + 100) / 20,000 = 95 ms; slow: 100 / 5,000 = 20 ms
    assert pool.choose(100.0, 1.0, RNG, horizon_s=HORIZON_S) is leases["slow"]


def test_light_load_stays_on_the_alike_idle_worker_used_last() -> None:
    """Idle workers within 25% of each other's rate are alike: the one used last takes the
    job, so light load keeps to few workers and the others go idle (their leases close, Vast
    can stop them). Without the rule the measured-fastest (b) would take every job."""
    pool, leases = fleet({"a": 10_000.0, "b": 11_000.0, "c": 9_000.0})
    now = 2.0
    for _ in range(4):
        chosen = pool.choose(100.0, now, RNG) if now > 2.0 else leases["c"]
        assert chosen is leases["c"]
        sent = pool.acquire(chosen, 100.0, now)
        pool.release(chosen, 100.0, now + 100.0 / 9_000.0, succeeded=True, sent=sent)
        now += 1.0
    # Not alike (twice as fast): the fast idle worker wins whoever was used last.
    pool, leases = fleet({"slow": 5_000.0, "fast": 10_000.0})
    sent = pool.acquire(leases["slow"], 100.0, 2.0)
    pool.release(leases["slow"], 100.0, 2.02, succeeded=True, sent=sent)
    assert pool.choose(100.0, 3.0, RNG) is leases["fast"]
    # An idle worker still beats a busy one used last (the rule packs only idle workers).
    pool, leases = fleet({"a": 10_000.0, "b": 10_000.0})
    pool.acquire(leases["a"], 100.0, 2.0)
    assert pool.choose(100.0, 2.0, RNG) is leases["b"]


def test_choose_holds_when_every_busy_worker_is_past_the_horizon() -> None:
    pool, leases = fleet({"slow": 5_000.0, "fast": 20_000.0})
    pool.acquire(leases["slow"], 400.0, 1.0)
    pool.acquire(leases["fast"], 1800.0, 1.0)
    assert pool.choose(400.0, 1.0, RNG, horizon_s=HORIZON_S) is HOLD
    assert not pool.admits(leases["fast"], 400.0, 1.0, HORIZON_S)
    # fast: (1800 + 100) / 20,000 = 95 ms; slow: (400 + 100) / 5,000 = 100 ms: both admit it
    assert pool.choose(100.0, 1.0, RNG, horizon_s=HORIZON_S) is leases["fast"]


def test_an_idle_worker_always_admits() -> None:
    pool, leases = fleet({"slow": 5_000.0, "fast": 20_000.0})
    pool.acquire(leases["fast"], 4000.0, 1.0)
    # 1024 units take 205 ms on the idle slow worker, past the horizon: still admitted.
    assert pool.choose(1024.0, 1.0, RNG, horizon_s=HORIZON_S) is leases["slow"]
    assert pool.admits(leases["slow"], 1024.0, 1.0, HORIZON_S)


def test_choose_falls_back_to_two_choices_until_rates_are_known() -> None:
    pool, leases = fleet({"known": 1000.0})
    new = pool.new_lease("new", None, ReuseMode.SESSION, 10_000.0, now=1.0)
    pool.acquire(leases["known"], 5000.0, 1.0)
    assert pool.choose(100.0, 1.0, RNG, horizon_s=HORIZON_S) is new  # less utilised
    lone = LeasePool(LIMITS)
    only = lone.new_lease("x", None, ReuseMode.SESSION, 10_000.0, now=1.0)
    lone.acquire(only, 5000.0, 1.0)
    assert lone.choose(100.0, 1.0, RNG, horizon_s=HORIZON_S) is only
    assert lone.admits(only, 100.0, 1.0, HORIZON_S)  # no rate yet: the lease budget decides


def test_a_retired_lease_still_loads_its_worker() -> None:
    pool, leases = fleet({"slow": 5_000.0, "fast": 20_000.0})
    pool.acquire(leases["fast"], 1900.0, 1.0)
    pool.retire(leases["fast"])
    fresh = pool.new_lease("fast", None, ReuseMode.SESSION, 10_000.0, now=1.0)
    assert pool.choose(200.0, 1.0, RNG, horizon_s=HORIZON_S) is leases["slow"]
    assert not pool.admits(fresh, 200.0, 1.0, HORIZON_S)


@settings(max_examples=200, deadline=None)
@given(
    rates=st.lists(st.floats(100.0, 1e5), min_size=1, max_size=5),
    loads=st.lists(st.floats(0.0, 5000.0), min_size=5, max_size=5),
    capacity=st.floats(100.0, 10_000.0),
    cost=st.floats(1.0, 2000.0),
    horizon_s=st.floats(0.0, 1.0),
)
def test_choose_is_the_earliest_admitted_finish(
    rates: list[float], loads: list[float], capacity: float, cost: float, horizon_s: float
) -> None:
    pool, leases = fleet({f"w{i}": r for i, r in enumerate(rates)}, capacity)
    for lease, load in zip(leases.values(), loads, strict=False):
        if 0 < load <= capacity:
            pool.acquire(lease, load, 1.0)
    choice = pool.choose(cost, 1.0, RNG, horizon_s=horizon_s)
    with_room = [lease for lease in leases.values() if lease.has_room(cost, 1.0)]
    admitted = [lease for lease in with_room if pool.admits(lease, cost, 1.0, horizon_s)]

    def finish(lease: Lease) -> float:
        rate = pool.meter.throughput(lease.worker_url)
        assert rate is not None
        return (lease.inflight_cost + cost) / rate

    if not with_room:
        assert choice is None
    elif not admitted:
        assert isinstance(choice, Held)
        assert all(lease.inflight_jobs > 0 and finish(lease) > horizon_s for lease in with_room)
    else:
        assert isinstance(choice, Lease)
        assert choice in admitted
        assert finish(choice) == pytest.approx(min(finish(lease) for lease in admitted))
