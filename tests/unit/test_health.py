"""OutlierDetector (consecutive-failure ejection, half-open probe, doubling) and RetryBudget."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from scheduler.core.health import EjectionPolicy, OutlierDetector, RetryBudget

POLICY = EjectionPolicy(consecutive_failures=3, base_s=5.0, max_s=60.0)
W = "http://w"


def fail_n(detector: OutlierDetector, n: int, now: float, worker: str = W) -> list[bool]:
    return [detector.failure(worker, now) for _ in range(n)]


# --- OutlierDetector: examples -----------------------------------------------------------


@pytest.mark.parametrize("threshold", [1, 2, 3, 5, 10])
def test_ejects_after_exactly_consecutive_failures(threshold: int) -> None:
    detector = OutlierDetector(EjectionPolicy(consecutive_failures=threshold, base_s=5.0))
    assert fail_n(detector, threshold, now=0.0) == [False] * (threshold - 1) + [True]
    assert not detector.available(W, 0.0)
    assert detector.ejected(0.0) == {W}
    assert detector.ejections_total == 1


def test_unknown_worker_is_available() -> None:
    detector = OutlierDetector(POLICY)
    assert detector.available(W, 0.0)
    assert detector.ejected(0.0) == frozenset()
    detector.success(W)  # no state is made for a success
    assert detector.ejected(0.0) == frozenset()


def test_success_resets_the_count() -> None:
    detector = OutlierDetector(POLICY)
    fail_n(detector, 2, now=0.0)
    detector.success(W)
    assert fail_n(detector, 2, now=1.0) == [False, False]
    assert detector.available(W, 1.0)
    assert detector.failure(W, 1.0)


def test_workers_are_counted_apart() -> None:
    detector = OutlierDetector(POLICY)
    fail_n(detector, 2, now=0.0, worker="http://a")
    fail_n(detector, 2, now=0.0, worker="http://b")
    assert detector.ejected(0.0) == frozenset()
    assert detector.failure("http://a", 0.0)
    assert detector.ejected(0.0) == {"http://a"}
    assert detector.available("http://b", 0.0)


@pytest.mark.parametrize(
    ("base_s", "max_s", "durations"),
    [
        (5.0, 60.0, [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0]),
        (1.0, 4.0, [1.0, 2.0, 4.0, 4.0]),
        (10.0, 10.0, [10.0, 10.0, 10.0]),
        (1.0, 1e9, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]),
    ],
)
def test_half_open_probe_failure_doubles_the_ejection(
    base_s: float, max_s: float, durations: list[float]
) -> None:
    detector = OutlierDetector(EjectionPolicy(consecutive_failures=3, base_s=base_s, max_s=max_s))
    now = 0.0
    assert fail_n(detector, 3, now) == [False, False, True]
    for i, duration in enumerate(durations):
        until = now + duration
        assert not detector.available(W, until - 1e-6), f"ejection {i + 1} too short"
        assert detector.available(W, until), f"ejection {i + 1} too long"  # half-open
        now = until
        assert detector.failure(W, now), "a failed probe ejects at once"
    assert detector.ejections_total == len(durations) + 1


def test_probe_success_restores_the_worker_and_the_base_duration() -> None:
    detector = OutlierDetector(POLICY)
    fail_n(detector, 3, now=0.0)  # out until 5
    assert detector.failure(W, 5.0)  # probe fails: out until 15
    detector.success(W)  # a later probe succeeds
    assert detector.available(W, 15.0)
    assert fail_n(detector, 3, now=20.0) == [False, False, True]
    assert not detector.available(W, 24.9)
    assert detector.available(W, 25.0)  # base duration again


def test_straggler_failures_during_an_ejection_do_not_extend_it() -> None:
    detector = OutlierDetector(POLICY)
    fail_n(detector, 3, now=0.0)
    assert fail_n(detector, 2, now=1.0) == [False, False]
    assert detector.available(W, 5.0)


def test_tracked_workers_are_bounded() -> None:
    detector = OutlierDetector(EjectionPolicy(consecutive_failures=1, base_s=5.0), max_workers=3)
    for i in range(10):
        detector.failure(f"http://w{i}", 0.0)
    assert len(detector.ejected(0.0)) <= 3


# --- OutlierDetector: random sequences against a reference model -------------------------


@dataclass
class Ref:
    """The documented behaviour, written out plainly."""

    failures: int = 0
    streak: int = 0  # ejections since the last success
    until: float = 0.0


@dataclass(frozen=True)
class Event:
    dt: float
    worker: int
    ok: bool


events = st.lists(
    st.builds(
        Event,
        dt=st.sampled_from([0.0, 0.5, 1.0, 5.0]) | st.floats(0.0, 80.0),
        worker=st.integers(0, 2),
        ok=st.sampled_from([True, False, False]),  # failures twice as likely
    ),
    max_size=80,
)


@given(
    threshold=st.integers(1, 6),
    base_s=st.floats(0.5, 20.0),
    cap=st.floats(1.0, 200.0),
    seq=events,
)
def test_outlier_detector_matches_reference(
    threshold: int, base_s: float, cap: float, seq: list[Event]
) -> None:
    policy = EjectionPolicy(consecutive_failures=threshold, base_s=base_s, max_s=cap)
    detector = OutlierDetector(policy)
    refs = {f"http://w{i}": Ref() for i in range(3)}
    now, ejections = 0.0, 0
    for event in seq:
        now += event.dt
        worker = f"http://w{event.worker}"
        ref = refs[worker]
        if event.ok:
            detector.success(worker)
            ref.failures = ref.streak = 0
        else:
            probe = ref.streak > 0 and now >= ref.until
            ref.failures += 1
            ejects = ref.failures >= threshold or probe
            assert detector.failure(worker, now) is ejects
            if ejects:
                ref.until = now + min(cap, base_s * 2**ref.streak)
                ref.streak += 1
                ref.failures = 0
                ejections += 1
                assert not detector.available(worker, now)
        assert detector.ejections_total == ejections
        ejected = detector.ejected(now)
        for name, r in refs.items():
            assert detector.available(name, now) is (now >= r.until)
            assert (name in ejected) is (not detector.available(name, now))


# --- RetryBudget ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "min_retries", "requests", "granted"),
    [
        (0.0, 0, 0, 0),
        (0.0, 3, 0, 3),
        (0.0, 3, 100, 3),
        (0.5, 0, 10, 5),
        (0.2, 1, 10, 3),
        (1.0, 2, 4, 6),
    ],
)
def test_retry_budget_allowance(
    ratio: float, min_retries: int, requests: int, granted: int
) -> None:
    budget = RetryBudget(ratio=ratio, min_retries=min_retries, window_s=10.0)
    for _ in range(requests):
        budget.record_request(0.0)
    assert sum(budget.try_retry(0.0) for _ in range(granted + 5)) == granted


def test_retry_budget_window_slides() -> None:
    budget = RetryBudget(ratio=0.0, min_retries=2, window_s=10.0)
    assert [budget.try_retry(t) for t in (0.0, 1.0, 2.0)] == [True, True, False]
    assert not budget.try_retry(10.0)  # the retry at 0 is still within [0, 10]
    assert budget.try_retry(10.5)  # now it has left the window
    assert not budget.try_retry(10.6)


def test_requests_leave_the_window_too() -> None:
    budget = RetryBudget(ratio=1.0, min_retries=0, window_s=10.0)
    budget.record_request(0.0)
    assert not budget.try_retry(10.5)


@dataclass(frozen=True)
class Call:
    dt: float
    retry: bool


calls = st.lists(
    st.builds(
        Call, dt=st.sampled_from([0.0, 0.1, 1.0]) | st.floats(0.0, 15.0), retry=st.booleans()
    ),
    max_size=120,
)


def replay(
    budget: RetryBudget, seq: list[Call]
) -> tuple[list[float], list[float], list[tuple[float, int, int]]]:
    """Returns request times, granted retry times, and for each refusal its time and how many
    requests and grants had been made by then."""
    now = 0.0
    requests: list[float] = []
    grants: list[float] = []
    refusals: list[tuple[float, int, int]] = []
    for call in seq:
        now += call.dt
        if not call.retry:
            budget.record_request(now)
            requests.append(now)
        elif budget.try_retry(now):
            grants.append(now)
        else:
            refusals.append((now, len(requests), len(grants)))
    return requests, grants, refusals


def in_window(stamps: list[float], t: float, window_s: float) -> int:
    """Stamps in [t - window_s, t], the budget's own window (its float arithmetic too)."""
    return sum(1 for s in stamps if s <= t and t - s <= window_s)


budget_args = {
    "ratio": st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]) | st.floats(0.0, 2.0),
    "min_retries": st.integers(0, 5),
    "window_s": st.floats(1.0, 30.0),
    "seq": calls,
}


@given(**budget_args)
def test_retries_in_any_window_are_bounded_up_to_rounding(
    ratio: float, min_retries: int, window_s: float, seq: list[Call]
) -> None:
    requests, grants, refusals = replay(RetryBudget(ratio, min_retries, window_s), seq)
    for t in grants:
        allowed = min_retries + ratio * in_window(requests, t, window_s)
        assert in_window(grants, t, window_s) <= math.ceil(allowed)
    for t, n_requests, n_grants in refusals:  # and it refuses only when the window is full
        window = in_window(requests[:n_requests], t, window_s)
        allowed = min_retries + math.floor(ratio * window + 1e-9)
        assert in_window(grants[:n_grants], t, window_s) >= allowed


@given(**budget_args)
@example(ratio=0.1, min_retries=0, window_s=10.0, seq=[Call(0.0, False), Call(0.0, True)])
def test_retries_in_any_window_are_bounded(
    ratio: float, min_retries: int, window_s: float, seq: list[Call]
) -> None:
    requests, grants, _ = replay(RetryBudget(ratio, min_retries, window_s), seq)
    for t in grants:
        allowed = min_retries + ratio * in_window(requests, t, window_s)
        assert in_window(grants, t, window_s) <= allowed + 1e-9
