"""Back-off after refusals (scheduler.core.backoff): route calls and workers' 429s."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scheduler.core.backoff import (
    Backoff,
    WorkerBackoff,
    route_failed,
    route_refusal_delay_s,
)

POLICY = Backoff(initial_s=1.0, max_s=30.0, multiplier=2.0)
jitters = st.floats(0, 1)
streaks = st.integers(1, 10_000)


@given(streaks, jitters)
def test_a_route_refusal_without_retry_after_backs_off_within_its_cap(
    streak: int, jitter: float
) -> None:
    delay = route_refusal_delay_s(POLICY, streak, None, 60.0, jitter)
    step = min(30.0, 2.0 ** min(streak - 1, 10))
    assert step / 2 - 1e-9 <= delay <= step + 1e-9


def test_route_refusals_in_a_row_grow_to_tens_of_seconds() -> None:
    delays = [route_refusal_delay_s(POLICY, n, None, 60.0, 1.0) for n in range(1, 8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


@given(st.floats(0.001, 1e6), streaks, jitters)
def test_retry_after_is_honoured_up_to_its_cap(
    retry_after: float, streak: int, jitter: float
) -> None:
    delay = route_refusal_delay_s(POLICY, streak, retry_after, 60.0, jitter)
    assert delay == min(retry_after, 60.0)


@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans(), jitters), max_size=60))
def test_worker_backoff_doubles_per_refusal_and_clears_on_a_completion(
    events: list[tuple[str, bool, float]],
) -> None:
    """Refusals (True) and completions (False) per worker, 0.1 s apart."""
    backoff = WorkerBackoff(Backoff(0.5, 8.0, 2.0))
    streaks: dict[str, int] = {}
    now = 0.0
    for worker, refused, jitter in events:
        now += 0.1
        if refused:
            streaks[worker] = streaks.get(worker, 0) + 1
            until = backoff.refused(worker, now, jitter)
            step = min(8.0, 0.5 * 2 ** (streaks[worker] - 1))
            assert now + step / 2 - 1e-9 <= until <= now + step + 1e-9
            assert backoff.blocked(worker, now)
            assert worker in backoff.backed_off(now)
        else:
            streaks.pop(worker, None)
            backoff.completed(worker)
            assert not backoff.blocked(worker, now)
        assert backoff.streak(worker) == streaks.get(worker, 0)
        release = backoff.next_release(now)
        assert (release is None) == (not backoff.backed_off(now))
        assert not backoff.backed_off(now + 8.0 + 1e-6)  # every back-off ends within its cap


def test_worker_backoff_remembers_a_bounded_number_of_workers() -> None:
    backoff = WorkerBackoff(POLICY, max_workers=3)
    for index in range(10):
        backoff.refused(f"w{index}", 0.0, 1.0)
    assert backoff.backed_off(0.5) == {"w7", "w8", "w9"}


def test_route_trouble_keeps_when_the_streak_began_and_which_kind_came_last() -> None:
    trouble = route_failed(None, "rate_limited", 10.0, 11.0)
    trouble = route_failed(trouble, "unauthorized", 12.0, 14.0)
    assert (trouble.kind, trouble.since, trouble.streak, trouble.retry_at) == (
        "unauthorized", 10.0, 2, 14.0,
    )  # fmt: skip
    assert trouble.refused
    assert not route_failed(None, "rate_limited", 0.0, 1.0).refused
    assert route_failed(None, "bad_request", 0.0, 1.0).refused
