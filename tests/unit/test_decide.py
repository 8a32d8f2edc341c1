"""decide(): what the dispatcher does after one attempt, over the whole input table."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.core.retry import Action, Outcome, classify_status, decide

KINDS = ("answered", "gone", "timeout", "retryable_5xx", "malformed", "other")
STATUSES = (200, 201, 400, 401, 404, 410, 422, 429, 500, 503)
FLAGS = (False, True)

# An answered status, whatever the reuse: 2xx delivered, 410 unknown session, 429 overloaded,
# everything else is the job's or the backend's answer and goes to the caller.
ANSWERED = {
    200: Action.SUCCEED,
    201: Action.SUCCEED,
    400: Action.FAIL,
    404: Action.FAIL,
    410: Action.REROUTE_EVICT,
    422: Action.FAIL,
    429: Action.REROUTE_SHRINK,
    500: Action.FAIL,
    503: Action.FAIL,
}
# Not answered: the status (if any) does not matter.
UNANSWERED = {
    "gone": Action.REROUTE_GONE,
    "timeout": Action.RETRY,
    "retryable_5xx": Action.RETRY,
    "malformed": Action.RETRY,  # a 2xx that is not what it says: the dispatcher checks idempotency
    "other": Action.FAIL,
}


def expected(kind: str, status: int | None, reused: bool, detect_legacy: bool) -> Action:
    if kind != "answered":
        return UNANSWERED[kind]
    if status is None:
        return Action.FAIL
    if status == 401:
        # Only a 401 on an answer that already worked reveals a replay-protected worker.
        return Action.REROUTE_LEGACY if reused and detect_legacy else Action.REROUTE_EVICT
    return ANSWERED[status]


def case_id(kind: str, status: int | None, reused: bool, detect_legacy: bool) -> str:
    reuse = "reused" if reused else "fresh"
    detect = "detect" if detect_legacy else "nodetect"
    return f"{kind}-{status}-{reuse}-{detect}"


TABLE = [
    pytest.param(k, s, r, d, expected(k, s, r, d), id=case_id(k, s, r, d))
    for k, s, r, d in itertools.product(KINDS, (*STATUSES, None), FLAGS, FLAGS)
]


@pytest.mark.parametrize(("kind", "status", "reused", "detect_legacy", "action"), TABLE)
def test_decide_table(
    kind: str, status: int | None, reused: bool, detect_legacy: bool, action: Action
) -> None:
    assert decide(kind, status, reused, detect_legacy) is action


def test_table_is_complete() -> None:
    assert len(TABLE) == len(KINDS) * (len(STATUSES) + 1) * 4
    assert {p.values[-1] for p in TABLE} == set(Action)


@given(
    status=st.integers(100, 599),
    reused=st.booleans(),
    detect_legacy=st.booleans(),
)
def test_answered_agrees_with_classify_status(
    status: int, reused: bool, detect_legacy: bool
) -> None:
    action = decide("answered", status, reused, detect_legacy)
    outcome = classify_status(status)
    if outcome is Outcome.SUCCESS:
        assert action is Action.SUCCEED
    elif outcome is Outcome.RETRY_ELSEWHERE:
        assert action in (Action.REROUTE_EVICT, Action.REROUTE_SHRINK, Action.REROUTE_LEGACY)
    else:
        assert action is Action.FAIL
    # An answered attempt is never retried blindly nor taken for a gone worker.
    assert action not in (Action.RETRY, Action.REROUTE_GONE)


@given(
    kind=st.sampled_from(KINDS) | st.text(max_size=12),
    status=st.none() | st.integers(-1, 1000),
    reused=st.booleans(),
    detect_legacy=st.booleans(),
)
def test_legacy_only_on_a_reused_401(
    kind: str, status: int | None, reused: bool, detect_legacy: bool
) -> None:
    action = decide(kind, status, reused, detect_legacy)
    assert isinstance(action, Action)
    legacy = kind == "answered" and status == 401 and reused and detect_legacy
    assert (action is Action.REROUTE_LEGACY) == legacy
    success = kind == "answered" and status is not None and 200 <= status < 300
    assert (action is Action.SUCCEED) == success
