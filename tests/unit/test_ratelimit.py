"""TokenBucket: burst, steady rate, 429 blocks and an accurate ready_at."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from scheduler.core.ratelimit import TokenBucket

TOL = 1e-9


@pytest.mark.parametrize(
    ("burst", "takes"),
    [(1, 1), (3, 3), (10, 10), (0, 1), (0.5, 1), (2.5, 2)],
)
def test_starts_full(burst: float, takes: int) -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=burst, now=0.0)
    assert [bucket.try_take(0.0) for _ in range(takes + 1)] == [True] * takes + [False]


@pytest.mark.parametrize(
    ("rate", "wait_s", "expected"),
    [
        (1.0, 0.5, False),
        (1.0, 1.0, True),
        (4.0, 0.25, True),
        (4.0, 0.2, False),
        (0.5, 2.0, True),
    ],
)
def test_refills_at_rate(rate: float, wait_s: float, expected: bool) -> None:
    bucket = TokenBucket(rate_per_s=rate, burst=1, now=0.0)
    assert bucket.try_take(0.0)
    assert bucket.try_take(wait_s) is expected


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate_per_s=100.0, burst=2, now=0.0)
    assert [bucket.try_take(1000.0) for _ in range(3)] == [True, True, False]


def test_block_until() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=5, now=0.0)
    bucket.block_until(10.0)
    bucket.block_until(3.0)  # never shortens a block
    assert not bucket.try_take(9.999)
    assert bucket.ready_at(1.0) == 10.0
    assert bucket.try_take(10.0)


def test_ready_at() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=1, now=0.0)
    assert bucket.ready_at(0.0) == 0.0
    assert bucket.try_take(0.0)
    assert bucket.ready_at(0.0) == pytest.approx(0.5)
    assert bucket.ready_at(0.2) == pytest.approx(0.5)
    assert bucket.try_take(0.5)


@dataclass(frozen=True)
class Op:
    dt: float
    kind: str  # "take" | "block" | "ready"
    arg: float = 0.0


ops_strategy = st.lists(
    st.builds(
        Op,
        dt=st.one_of(st.just(0.0), st.floats(0.0, 5.0)),
        kind=st.sampled_from(["take", "take", "take", "block", "ready"]),
        arg=st.floats(0.0, 5.0),
    ),
    max_size=80,
)
rates = st.floats(0.1, 50.0)
bursts = st.integers(1, 20)


def run(bucket: TokenBucket, ops: list[Op]) -> tuple[float, list[float], float]:
    """Plays ``ops``; returns the final time, the success times and the latest block."""
    now, successes, blocked = 0.0, [], 0.0
    for op in ops:
        now += op.dt
        if op.kind == "take":
            ok = bucket.try_take(now)
            assert not (ok and now < blocked), "a take succeeded while blocked"
            if ok:
                successes.append(now)
        elif op.kind == "block":
            blocked = max(blocked, now + op.arg)
            bucket.block_until(now + op.arg)
        else:
            assert bucket.ready_at(now) >= now
    return now, successes, blocked


@given(rate=rates, burst=bursts, ops=ops_strategy)
def test_successes_in_any_window_are_bounded(rate: float, burst: int, ops: list[Op]) -> None:
    _, successes, _ = run(TokenBucket(rate, burst, now=0.0), ops)
    for i, t0 in enumerate(successes):
        for j in range(i, len(successes)):
            t1 = successes[j]
            assert j - i + 1 <= burst + rate * (t1 - t0) + TOL


@given(rate=rates, burst=bursts, ops=ops_strategy)
def test_ready_at_is_the_earliest_success(rate: float, burst: int, ops: list[Op]) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    now, _, blocked = run(bucket, ops)
    ready = bucket.ready_at(now)
    assert ready >= max(now, blocked)
    if ready > now + 1e-6:  # not before
        assert not copy.deepcopy(bucket).try_take(now + (ready - now) / 2)
        assert not copy.deepcopy(bucket).try_take(ready - 1e-6)
    assert copy.deepcopy(bucket).try_take(ready + 1e-9)  # but then (within rounding)


@given(rate=rates, burst=bursts, ops=ops_strategy)
@example(rate=49.0, burst=1, ops=[Op(0.0, "take")])
def test_take_at_ready_at_succeeds_exactly(rate: float, burst: int, ops: list[Op]) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    now, _, _ = run(bucket, ops)
    assert bucket.try_take(bucket.ready_at(now))


@given(
    rates=st.tuples(st.floats(0.1, 100), st.floats(0.1, 100)),
    bursts=st.tuples(st.integers(1, 10), st.integers(1, 10)),
    at=st.floats(0, 10),
    asks=st.lists(st.floats(0, 10), max_size=5),
)
def test_ready_at_is_a_question_and_set_rate_keeps_what_was_earned(
    rates: tuple[float, float], bursts: tuple[int, int], at: float, asks: list[float]
) -> None:
    """Asking ready_at changes nothing; a new rate applies from the change on."""
    asked = TokenBucket(rates[0], bursts[0], now=0.0)
    quiet = TokenBucket(rates[0], bursts[0], now=0.0)
    for bucket in (asked, quiet):
        while bucket.try_take(0.0):
            pass
    for when in asks:
        asked.ready_at(when)
    for bucket in (asked, quiet):
        bucket.set_rate(rates[1], bursts[1], at)
    assert asked.ready_at(at) == quiet.ready_at(at)
    earned = min(float(bursts[1]), min(float(bursts[0]), at * rates[0]))
    expected = at if earned >= 1.0 else at + (1.0 - earned) / rates[1]
    assert quiet.ready_at(at) == pytest.approx(expected)
