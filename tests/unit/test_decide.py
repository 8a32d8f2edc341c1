"""decide(): what the dispatcher does after one attempt. Its rules as properties over generated
inputs, plus a table of named edge cases (the status boundaries, each flag combination of a 401,
a status on an attempt that was not answered)."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from scheduler.core.retry import Action, AttemptKind, Outcome, classify_status, decide

# Not answered: the worker's status, if any, does not matter, nor do the flags. Every other
# kind but ANSWERED (expired, caller gone, broken, unknown) fails the job.
UNANSWERED = {
    AttemptKind.GONE: Action.REROUTE_GONE,
    # sent, then the connection broke: off the worker too; the dispatcher checks idempotency
    AttemptKind.LOST: Action.REROUTE_GONE,
    AttemptKind.TIMEOUT: Action.RETRY,
    AttemptKind.RETRYABLE_5XX: Action.RETRY,
    # a 2xx that is not what it says: the dispatcher checks idempotency
    AttemptKind.MALFORMED: Action.RETRY,
}
# Answered and the worker cannot take the job now: route again, each in its own way.
REROUTES = {410: Action.REROUTE_EVICT, 429: Action.REROUTE_SHRINK}

# Around every boundary the rules draw: 2xx, and each status with its own action.
EDGE_STATUSES = (-1, 0, 199, 200, 201, 299, 300, 400, 401, 402, 409, 410, 411, 428, 429, 430, 500)
statuses = st.none() | st.sampled_from(EDGE_STATUSES) | st.integers(-1, 1000)
kinds = st.sampled_from(AttemptKind) | st.text(max_size=12)
flags = st.booleans()


@given(kind=st.sampled_from(list(UNANSWERED)), status=statuses, reused=flags, detect=flags)
def test_an_attempt_without_an_answer_depends_on_its_kind_alone(
    kind: AttemptKind, status: int | None, reused: bool, detect: bool
) -> None:
    assert decide(kind, status, reused, detect) is UNANSWERED[kind]


@given(kind=kinds, status=statuses, reused=flags, detect=flags)
def test_a_final_or_unknown_kind_or_an_answer_without_a_status_fails(
    kind: AttemptKind | str, status: int | None, reused: bool, detect: bool
) -> None:
    if kind in UNANSWERED or (kind == AttemptKind.ANSWERED and status is not None):
        return
    assert decide(kind, status, reused, detect) is Action.FAIL


@settings(max_examples=300)
@given(status=statuses.filter(lambda s: s is not None), reused=flags, detect=flags)
@example(status=300, reused=False, detect=False)
def test_an_answer_is_decided_by_its_status(status: int, reused: bool, detect: bool) -> None:
    """2xx succeeds; 401 reroutes, as a replay-protected worker only when a reused answer got
    it and detection is on; 410 and 429 reroute; any other status goes to the caller."""
    action = decide(AttemptKind.ANSWERED, status, reused, detect)
    if 200 <= status < 300:
        assert action is Action.SUCCEED
    elif status == 401:
        legacy = reused and detect
        assert action is (Action.REROUTE_LEGACY if legacy else Action.REROUTE_EVICT)
    else:
        assert action is REROUTES.get(status, Action.FAIL)
    # The same split as classify_status, which the metrics and the route answer use.
    expected = {
        Outcome.SUCCESS: {Action.SUCCEED},
        Outcome.RETRY_ELSEWHERE: {
            Action.REROUTE_EVICT,
            Action.REROUTE_SHRINK,
            Action.REROUTE_LEGACY,
        },
        Outcome.FAIL: {Action.FAIL},
    }[classify_status(status)]
    assert action in expected


@given(kind=kinds, status=statuses)
def test_the_flags_matter_only_for_an_answered_401(
    kind: AttemptKind | str, status: int | None
) -> None:
    actions = {decide(kind, status, r, d) for r in (False, True) for d in (False, True)}
    if kind == AttemptKind.ANSWERED and status == 401:
        assert actions == {Action.REROUTE_EVICT, Action.REROUTE_LEGACY}
    else:
        assert len(actions) == 1


K = AttemptKind
EDGES = [
    # name, kind, status, reused, detect_legacy, action
    ("200 succeeds", K.ANSWERED, 200, False, False, Action.SUCCEED),
    ("299 succeeds", K.ANSWERED, 299, True, True, Action.SUCCEED),
    ("199 is not a success", K.ANSWERED, 199, False, False, Action.FAIL),
    ("300 is not a success", K.ANSWERED, 300, False, False, Action.FAIL),
    ("a 404 goes to the caller", K.ANSWERED, 404, True, True, Action.FAIL),
    ("an answered 500 goes to the caller", K.ANSWERED, 500, False, False, Action.FAIL),
    ("an answered 503 goes to the caller", K.ANSWERED, 503, True, True, Action.FAIL),
    ("401 on a fresh answer evicts", K.ANSWERED, 401, False, True, Action.REROUTE_EVICT),
    ("401 without detection evicts", K.ANSWERED, 401, True, False, Action.REROUTE_EVICT),
    ("401 fresh, no detection", K.ANSWERED, 401, False, False, Action.REROUTE_EVICT),
    ("401 on a reused answer is legacy", K.ANSWERED, 401, True, True, Action.REROUTE_LEGACY),
    ("410 evicts even when reused", K.ANSWERED, 410, True, True, Action.REROUTE_EVICT),
    ("429 shrinks", K.ANSWERED, 429, False, False, Action.REROUTE_SHRINK),
    ("429 shrinks even when reused", K.ANSWERED, 429, True, True, Action.REROUTE_SHRINK),
    ("answered without a status", K.ANSWERED, None, True, True, Action.FAIL),
    ("gone despite a 200", K.GONE, 200, False, False, Action.REROUTE_GONE),
    ("gone with a reused 401", K.GONE, 401, True, True, Action.REROUTE_GONE),
    ("timeout", K.TIMEOUT, None, False, False, Action.RETRY),
    ("retryable 5xx", K.RETRYABLE_5XX, 503, False, False, Action.RETRY),
    ("malformed 2xx", K.MALFORMED, 200, True, True, Action.RETRY),
    ("expired despite a 200", K.EXPIRED, 200, False, False, Action.FAIL),
    ("caller gone", K.CALLER_GONE, 200, True, True, Action.FAIL),
    ("broken after part of the answer", K.BROKEN, 200, False, False, Action.FAIL),
    ("an unknown kind", "other", 200, False, False, Action.FAIL),
    ("kinds are case-sensitive", "ANSWERED", 200, False, False, Action.FAIL),
    ("an empty kind", "", None, False, False, Action.FAIL),
]


def test_edge_cases() -> None:
    wrong = [
        (name, decide(kind, status, reused, detect), action)
        for name, kind, status, reused, detect, action in EDGES
        if decide(kind, status, reused, detect) is not action
    ]
    assert wrong == []  # (case, what decide said, what it should say)
