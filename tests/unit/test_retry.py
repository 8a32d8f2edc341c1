"""Worker answer classification and capped exponential back-off."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.retry import Outcome, backoff_s, classify_status, worker_error_kind


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCESS),
        (201, Outcome.SUCCESS),
        (204, Outcome.SUCCESS),
        (299, Outcome.SUCCESS),
        (401, Outcome.RETRY_ELSEWHERE),
        (410, Outcome.RETRY_ELSEWHERE),
        (429, Outcome.RETRY_ELSEWHERE),
        (100, Outcome.FAIL),
        (199, Outcome.FAIL),
        (300, Outcome.FAIL),
        (302, Outcome.FAIL),
        (400, Outcome.FAIL),
        (403, Outcome.FAIL),
        (404, Outcome.FAIL),
        (422, Outcome.FAIL),
        (500, Outcome.FAIL),
        (502, Outcome.FAIL),
        (503, Outcome.FAIL),
    ],
)
def test_classify_status(status: int, outcome: Outcome) -> None:
    assert classify_status(status) is outcome


@given(st.integers(-1_000, 10_000))
@settings(max_examples=200)
def test_classify_status_total(status: int) -> None:
    outcome = classify_status(status)
    assert (outcome is Outcome.SUCCESS) == (200 <= status < 300)
    assert (outcome is Outcome.RETRY_ELSEWHERE) == (status in (401, 410, 429))


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, "unauthorized"),
        (410, "session_gone"),
        (422, "bad_envelope"),
        (429, "overloaded"),
        (400, "client_error"),
        (403, "client_error"),
        (404, "client_error"),
        (499, "client_error"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "server_error"),
        (599, "server_error"),
    ],
)
def test_worker_error_kind(status: int, kind: str) -> None:
    assert worker_error_kind(status) == kind


@given(st.integers(0, 1_000))
@settings(max_examples=200)
def test_worker_error_kind_is_bounded(status: int) -> None:
    assert worker_error_kind(status) in {
        "unauthorized",
        "session_gone",
        "bad_envelope",
        "overloaded",
        "client_error",
        "server_error",
    }


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [
        pytest.param(1, 1.0, 0.1, id="first-full"),
        pytest.param(1, 0.0, 0.05, id="first-half"),
        pytest.param(1, 0.5, 0.075, id="first-mid"),
        pytest.param(2, 1.0, 0.2, id="second"),
        pytest.param(3, 1.0, 0.4, id="third"),
        pytest.param(6, 1.0, 3.2, id="sixth"),
        pytest.param(7, 1.0, 5.0, id="capped"),
        pytest.param(50, 0.0, 2.5, id="capped-half"),
        pytest.param(0, 1.0, 0.1, id="attempt-0-like-1"),
        pytest.param(-5, 1.0, 0.1, id="negative-attempt-like-1"),
        pytest.param(1, 2.0, 0.1, id="jitter-above-1-clamped"),
        pytest.param(1, -1.0, 0.05, id="jitter-below-0-clamped"),
    ],
)
def test_backoff_examples(attempt: int, jitter: float, expected: float) -> None:
    assert backoff_s(attempt, 0.1, 5.0, 2.0, jitter) == pytest.approx(expected)


def test_backoff_multiplier_one_is_constant() -> None:
    assert {backoff_s(a, 0.3, 5.0, 1.0, 1.0) for a in range(1, 100)} == {0.3}


def test_backoff_initial_above_max_is_capped() -> None:
    assert backoff_s(1, 10.0, 2.0, 2.0, 1.0) == 2.0


# Attempts are kept below where multiplier ** attempt overflows a float; see the xfail below.
attempts = st.integers(-3, 60)
initials = st.floats(1e-3, 10.0)
maxima = st.floats(1e-3, 600.0)
multipliers = st.floats(1.0, 4.0)
jitters = st.floats(0.0, 1.0)


@given(attempts, initials, maxima, multipliers, jitters)
@settings(max_examples=200)
def test_backoff_within_half_and_full_step(
    attempt: int, initial: float, max_s: float, multiplier: float, jitter: float
) -> None:
    step = min(max_s, initial * multiplier ** max(0, attempt - 1))
    delay = backoff_s(attempt, initial, max_s, multiplier, jitter)
    assert 0.5 * step * (1 - 1e-12) <= delay <= step * (1 + 1e-12)
    assert delay <= max_s * (1 + 1e-12)
    assert delay > 0


@given(attempts, initials, maxima, multipliers, jitters)
@settings(max_examples=200)
def test_backoff_monotone_in_attempt(
    attempt: int, initial: float, max_s: float, multiplier: float, jitter: float
) -> None:
    assert backoff_s(attempt, initial, max_s, multiplier, jitter) <= backoff_s(
        attempt + 1, initial, max_s, multiplier, jitter
    )


@given(attempts, initials, maxima, multipliers, jitters, jitters)
@settings(max_examples=200)
def test_backoff_monotone_in_jitter(
    attempt: int, initial: float, max_s: float, multiplier: float, j1: float, j2: float
) -> None:
    low, high = sorted((j1, j2))
    assert backoff_s(attempt, initial, max_s, multiplier, low) <= backoff_s(
        attempt, initial, max_s, multiplier, high
    )


@pytest.mark.parametrize(("attempt", "multiplier"), [(1_100, 2.0), (400, 10.0)])
def test_backoff_large_attempt_stays_capped(attempt: int, multiplier: float) -> None:
    assert backoff_s(attempt, 0.1, 5.0, multiplier, 1.0) == 5.0
