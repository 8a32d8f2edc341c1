"""The side-by-side screen's statistics (``bench.screen_stats``)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.screen_stats import ab_order, compare, fisher_exact_p, permutation_p


@given(st.integers(0, 200))
def test_each_copy_runs_first_in_half_the_pairs(runs: int) -> None:
    order = ab_order(runs)
    pairs = [order[i : i + 2] for i in range(0, len(order), 2)]
    assert len(pairs) == runs
    assert all(sorted(pair) == ["A", "B"] for pair in pairs)
    firsts = [pair[0] for pair in pairs]
    assert abs(firsts.count("A") - firsts.count("B")) <= 1


@pytest.mark.parametrize(
    ("table", "p"),
    [
        ((1, 1, 0, 1), 1.0),  # one hit in two runs: either split is as likely
        ((3, 3, 0, 3), 0.1),  # all 3 hits on one side of 3 + 3: 2 tables of 1/20
        ((4, 4, 0, 4), 2 / 70),  # the lady tasting tea, both tails
        ((0, 24, 5, 24), 0.0496),  # 0 slow runs of 24 against 5 of 24
        ((12, 72, 9, 72), 0.6376),  # this session's base against its best mend
    ],
)
def test_fisher_exact_matches_known_tables(table: tuple[int, int, int, int], p: float) -> None:
    assert fisher_exact_p(*table) == pytest.approx(p, abs=5e-4)


@settings(max_examples=200)
@given(st.integers(1, 40), st.integers(1, 40), st.data())
def test_fisher_exact_is_a_probability_and_symmetric(
    a_runs: int, b_runs: int, data: st.DataObject
) -> None:
    a_hits = data.draw(st.integers(0, a_runs))
    b_hits = data.draw(st.integers(0, b_runs))
    p = fisher_exact_p(a_hits, a_runs, b_hits, b_runs)
    assert 0.0 < p <= 1.0
    assert p == pytest.approx(fisher_exact_p(b_hits, b_runs, a_hits, a_runs))
    # The split expected with the copies alike is never surprising.
    if a_runs == b_runs and a_hits == b_hits:
        assert p == pytest.approx(1.0)


def test_fisher_exact_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="between 0 and the runs"):
        fisher_exact_p(5, 4, 0, 4)


def test_a_clear_difference_in_means_is_rare_under_relabelling_and_none_is_not() -> None:
    fast = [94.0 + 0.1 * i for i in range(12)]
    slow = [88.0 + 0.1 * i for i in range(12)]
    assert permutation_p(fast, slow) < 0.001
    assert permutation_p(fast, fast) == 1.0
    assert permutation_p(fast, slow, seed=3) == permutation_p(fast, slow, seed=3)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(50, 100), min_size=1, max_size=12),
    st.lists(st.floats(50, 100), min_size=1, max_size=12),
)
def test_permutation_p_is_a_probability(a: list[float], b: list[float]) -> None:
    p = permutation_p(a, b, permutations=500)
    assert 0.0 < p <= 1.0
    assert math.isfinite(p)


def test_compare_reports_both_copies_and_both_tests() -> None:
    a = [62.0, 70.0, 91.0, 92.0, 93.0, 94.0]
    b = [90.0, 91.0, 92.0, 93.0, 94.0, 95.0]
    out = compare(a, b, slow_below=80.0)
    assert (out["slow_a"], out["slow_b"]) == (2, 0)
    assert out["slow_p"] == pytest.approx(fisher_exact_p(2, 6, 0, 6), abs=1e-4)
    assert out["mean_diff"] == pytest.approx(92.5 - 83.67, abs=0.01)
    assert 0.0 < float(out["mean_p"]) <= 1.0
