"""The bench's medians over repetitions: paired differences, sums and the largest RSS."""

from __future__ import annotations

import statistics
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bench.loadgen import Record
from bench.report import add_over_direct, medians, rate_to_share

latencies = st.floats(min_value=0.1, max_value=1000, allow_nan=False)


def run(system: str, rep: int, p50: float, p99: float, rss: float | None = None) -> dict[str, Any]:
    return {
        "variant": "open 10/s", "system": system, "rep": rep, "jobs": 100, "succeeded": 99,
        "failed": 1, "throughput_jobs_s": p50, "route_calls": 2, "daemon_peak_rss_mb": rss,
        "latency_ms": {"p50": p50, "p95": p99, "p99": p99, "mean": p50, "max": p99},
    }  # fmt: skip


@given(st.lists(st.tuples(latencies, latencies, latencies, latencies), min_size=1, max_size=7))
def test_added_latency_is_the_median_of_each_repetitions_own_difference(
    reps: list[tuple[float, float, float, float]],
) -> None:
    runs = []
    for i, (d50, d99, s50, s99) in enumerate(reps, start=1):
        runs += [run("direct (floor)", i, d50, d99), run("vast-scheduler (run)", i, s50, s99, i)]
    add_over_direct(runs)
    rows = {r["system"]: r for r in medians(runs)}
    mine = rows["vast-scheduler (run)"]
    expected = statistics.median(round(s50 - d50, 3) for d50, _, s50, _ in reps)
    assert abs(mine["added_over_direct_ms"]["p50"] - expected) < 1e-3
    assert mine["latency_ms"]["p50"] == round(statistics.median(s for *_, s, _ in reps), 4)
    assert mine["jobs"] == 100 * len(reps)
    assert mine["failed"] == len(reps)
    assert mine["route_calls_per_job"] == 0.02
    assert mine["daemon_peak_rss_mb"] == len(reps)
    assert mine["reps"] == len(reps)
    assert mine["rep"] == "median"
    assert "added_over_direct_ms" not in rows["direct (floor)"]


def test_single_runs_have_no_median_row() -> None:
    assert medians([{**run("direct (floor)", 1, 1, 2), "rep": None}]) == []


def test_the_pace_to_nine_tenths_leaves_out_the_slowest_tenth() -> None:
    # 10 jobs from t=0: nine end by 0.9 s, the last at 3 s (a tail): the whole run is 3.3 jobs/s,
    # its pace to 90% is 10 jobs/s.
    records = [Record(i, 0.0, 0.1 * (i + 1), True, 200) for i in range(9)]
    records.append(Record(9, 0.0, 3.0, True, 200))
    assert rate_to_share(records, 0.9) == 10.0
    assert rate_to_share(records, 1.0) == round(10 / 3.0, 1)


def test_the_pace_counts_only_succeeded_jobs() -> None:
    records = [Record(0, 0.0, 1.0, True, 200), Record(1, 0.0, 0.2, False, 502)]
    assert rate_to_share(records, 1.0) == 1.0
    assert rate_to_share([], 0.9) is None
    assert rate_to_share([Record(1, 0.0, 0.2, False, 502)], 0.9) is None
