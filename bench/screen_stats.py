"""Comparing two copies of the daemon screened side by side (``--scenario f-screen`` with
``BENCH_SCHEDULER_SRC_B``). Pure: no I/O, no clock.

Screens of one copy at a time, an hour apart, could not rank two copies: the same base gave 3,
4 and 5 slow runs of 24 within one hour, and the machine drifts between screens. Run side by
side (``ab_order``), the drift falls on both; the two tests below say how likely a difference
at least as large would be if the copies behaved alike.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence

MAX_PERMUTATIONS = 100_000  # a bound on ``permutation_p``'s work


def ab_order(runs: int) -> list[str]:
    """Which copy each of ``runs`` pairs of runs starts with: A B, B A, A B, ... so that
    neither copy always runs first or last in a pair (``2 * runs`` labels in all)."""
    order: list[str] = []
    for pair in range(runs):
        order += ["A", "B"] if pair % 2 == 0 else ["B", "A"]
    return order


def slow_runs(rates: Sequence[float], slow_below: float) -> int:
    """How many runs' jobs/s fell below ``slow_below``."""
    return sum(1 for rate in rates if rate < slow_below)


def fisher_exact_p(a_hits: int, a_runs: int, b_hits: int, b_runs: int) -> float:
    """Two-sided p-value of Fisher's exact test: the probability, with the copies alike (the
    hits drawn at random from all runs), of a split of the hits at most as likely as the one
    seen (e.g. slow runs, A's against B's)."""
    if not (0 <= a_hits <= a_runs and 0 <= b_hits <= b_runs):
        raise ValueError("hits must be between 0 and the runs")
    hits, total = a_hits + b_hits, a_runs + b_runs

    def prob(k: int) -> float:
        return math.comb(a_runs, k) * math.comb(b_runs, hits - k) / math.comb(total, hits)

    seen = prob(a_hits)
    low, high = max(0, hits - b_runs), min(hits, a_runs)
    p = sum(q for k in range(low, high + 1) if (q := prob(k)) <= seen * (1 + 1e-9))
    return min(1.0, p)


def permutation_p(
    a: Sequence[float], b: Sequence[float], permutations: int = 20_000, seed: int = 0
) -> float:
    """Two-sided p-value of the difference in means of ``a`` and ``b``: the share of random
    relabellings of the pooled runs whose difference is at least as large (seeded: the same
    samples give the same answer). ``permutations`` is capped at ``MAX_PERMUTATIONS``."""
    if not a or not b:
        raise ValueError("both samples need at least one value")
    seen = abs(statistics.fmean(a) - statistics.fmean(b))
    pooled = [*a, *b]
    total = sum(pooled)
    rng = random.Random(seed)
    rounds = max(1, min(permutations, MAX_PERMUTATIONS))
    extreme = 0
    for _ in range(rounds):
        picked = rng.sample(pooled, len(a))
        sum_a = sum(picked)
        diff = abs(sum_a / len(a) - (total - sum_a) / len(b))
        if diff >= seen - 1e-9:
            extreme += 1
    return (extreme + 1) / (rounds + 1)  # the seen labelling counts as one of them


def compare(a: Sequence[float], b: Sequence[float], slow_below: float) -> dict[str, float | int]:
    """Copy B's screen against copy A's: slow runs of each and Fisher's p on them; the mean
    jobs/s of each, B's less A's, and the permutation test's p on it."""
    slow_a, slow_b = slow_runs(a, slow_below), slow_runs(b, slow_below)
    mean_a, mean_b = statistics.fmean(a), statistics.fmean(b)
    return {
        "slow_a": slow_a,
        "slow_b": slow_b,
        "slow_p": round(fisher_exact_p(slow_a, len(a), slow_b, len(b)), 4),
        "mean_a": round(mean_a, 1),
        "mean_b": round(mean_b, 1),
        "mean_diff": round(mean_b - mean_a, 2),
        "mean_p": round(permutation_p(a, b), 4),
    }
