"""KeptAnswers: route answers kept to renew sessions without a route call. The worker keys a
session's load by the answer's ``reqnum``, so no answer may be given out while a live session
holds its ``reqnum``; renewals want budget, so the largest that fits is given out."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from scheduler.core.kept_answers import KeptAnswers

WORKERS = ("http://w1", "http://w2", "http://w3")


@dataclass(frozen=True)
class Answer:
    url: str
    cost: float
    reqnum: int


answers = st.builds(Answer, st.sampled_from(WORKERS), st.floats(1, 1000), st.integers(0, 30))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("keep"), answers),
        st.tuples(
            st.just("take"),
            st.sampled_from(WORKERS),
            st.floats(0, 1000),
            st.frozensets(st.integers(0, 30)),  # reqnums of live sessions
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
            kept.keep(op[1])
        elif op[0] == "forget":
            kept.forget(op[1])
            assert kept.count(op[1]) == 0
        else:
            _, url, cost, live = op
            before = list(kept._by_worker.get(url, []))
            taken = kept.take(url, cost, live)
            fitting = [a for a in before if a.cost >= cost and a.reqnum not in live]
            if not fitting:
                assert taken is None
                continue
            assert taken is not None
            assert taken.url == url
            assert taken.cost >= cost
            assert taken.reqnum not in live
            assert taken.cost == max(a.cost for a in fitting)
            assert kept.count(url) == len(before) - 1
        for url in WORKERS:
            held = kept._by_worker.get(url, [])
            assert len(held) <= 3
            assert len({a.reqnum for a in held}) == len(held)  # one answer once
        assert len(kept._by_worker) <= 2


def test_a_full_worker_keeps_its_largest_answers() -> None:
    kept: KeptAnswers[Answer] = KeptAnswers(per_worker=2, max_workers=4)
    for reqnum, cost in enumerate((50.0, 300.0, 100.0)):
        kept.keep(Answer("http://w1", cost, reqnum))
    assert kept.take("http://w1", 0.0, set()) == Answer("http://w1", 300.0, 1)
    assert kept.take("http://w1", 0.0, set()) == Answer("http://w1", 100.0, 2)
    assert kept.take("http://w1", 0.0, set()) is None


def test_an_answer_whose_reqnum_a_live_session_holds_is_not_given_out() -> None:
    kept: KeptAnswers[Answer] = KeptAnswers(per_worker=2, max_workers=4)
    kept.keep(Answer("http://w1", 100.0, 7))
    assert kept.take("http://w1", 100.0, {7}) is None
    assert kept.take("http://w1", 100.0, {8}) == Answer("http://w1", 100.0, 7)
