"""KeptAnswers: route answers kept to renew sessions without a route call. The worker keys a
session's load by the answer's ``reqnum``, so no answer may be given out while a live session
holds its ``reqnum``; renewals want budget, so the largest that fits is given out."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from scheduler.core.kept_answers import Kept, KeptAnswers

WORKERS = ("http://w1", "http://w2", "http://w3")


@dataclass(frozen=True)
class Answer:
    url: str
    cost: float
    reqnum: int


answers = st.builds(Answer, st.sampled_from(WORKERS), st.floats(1, 1000), st.integers(0, 30))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("keep"), answers, st.floats(0, 100)),
        st.tuples(
            st.just("take"),
            st.sampled_from(WORKERS),
            st.floats(0, 1000),
            st.frozensets(st.integers(0, 30)),  # reqnums of live sessions
            st.floats(0, 100),  # now
        ),
        st.tuples(st.just("forget"), st.sampled_from(WORKERS)),
    ),
    max_size=60,
)


@given(operations)
def test_a_taken_answer_fits_is_the_largest_and_no_live_session_holds_it(ops: list) -> None:
    kept: KeptAnswers[Answer] = KeptAnswers(per_worker=3, max_workers=2)
    for op in ops:
        if op[0] == "keep":
            kept.keep(op[1], until=op[2])
        elif op[0] == "forget":
            kept.forget(op[1])
            assert kept.count(op[1]) == 0
        else:
            _, url, cost, live, now = op
            usable = [k for k in kept._by_worker.get(url, []) if k.until > now]
            fitting = [k for k in usable if k.answer.cost >= cost and k.answer.reqnum not in live]
            taken = kept.take(url, cost, live, now)
            if not fitting:
                assert taken is None
                assert kept.count(url) == len(usable)  # those past their time dropped
                continue
            assert taken is not None
            assert taken.answer.url == url
            assert taken.answer.cost >= cost
            assert taken.answer.reqnum not in live
            assert taken.until > now
            assert taken.answer.cost == max(k.answer.cost for k in fitting)
            assert kept.count(url) == len(usable) - 1
        for url in WORKERS:
            held = kept._by_worker.get(url, [])
            assert len(held) <= 3
            assert len({k.answer.reqnum for k in held}) == len(held)  # one answer once
        assert len(kept._by_worker) <= 2


def test_a_full_worker_keeps_its_largest_answers() -> None:
    kept: KeptAnswers[Answer] = KeptAnswers(per_worker=2, max_workers=4)
    for reqnum, cost in enumerate((50.0, 300.0, 100.0)):
        kept.keep(Answer("http://w1", cost, reqnum), until=10.0)
    assert kept.take("http://w1", 0.0, set(), 1.0) == Kept(Answer("http://w1", 300.0, 1), 10.0)
    assert kept.take("http://w1", 0.0, set(), 1.0) == Kept(Answer("http://w1", 100.0, 2), 10.0)
    assert kept.take("http://w1", 0.0, set(), 1.0) is None


def test_an_answer_whose_reqnum_a_live_session_holds_is_not_given_out() -> None:
    kept: KeptAnswers[Answer] = KeptAnswers(per_worker=2, max_workers=4)
    kept.keep(Answer("http://w1", 100.0, 7), until=10.0)
    assert kept.take("http://w1", 100.0, {7}, 1.0) is None
    assert kept.take("http://w1", 100.0, {8}, 1.0) == Kept(Answer("http://w1", 100.0, 7), 10.0)


def test_an_answer_serves_no_longer_than_its_first_lease_would_have() -> None:
    kept: KeptAnswers[Answer] = KeptAnswers(per_worker=2, max_workers=4)
    kept.keep(Answer("http://w1", 100.0, 7), until=10.0)
    assert kept.take("http://w1", 100.0, set(), 10.0) is None
    assert kept.count() == 0
