"""Scenario (j)'s pure parts: the day's arrivals and the targets read from its runs."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bench.bill import DAY, Phase, arrivals, bill_targets


def test_the_day_sends_its_integral_in_order_with_a_quiet_hour() -> None:
    times = arrivals(DAY)
    assert len(times) == int(sum((p.start + p.end) / 2 * p.duration_s for p in DAY))
    assert times == sorted(times)
    quiet_start = sum(p.duration_s for p in DAY[:4])
    assert not [t for t in times if quiet_start + 1 < t < quiet_start + DAY[4].duration_s]
    assert len(arrivals(DAY, 0.5)) == len(times) // 2


phases = st.lists(
    st.builds(
        Phase,
        name=st.just("p"),
        duration_s=st.floats(0.5, 50),
        start=st.floats(0, 100),
        end=st.floats(0, 100),
    ),
    min_size=1,
    max_size=6,
)


@given(phases)
def test_arrivals_follow_the_rate(day: list[Phase]) -> None:
    times = arrivals(day)
    t0 = 0.0
    expected = 0.0
    for phase in day:
        expected += (phase.start + phase.end) / 2 * phase.duration_s
        inside = [t for t in times if t <= t0 + phase.duration_s + 1e-9]
        assert abs(len(inside) - expected) <= 1 + 1e-6
        t0 += phase.duration_s
    assert times == sorted(times)
    assert all(0 <= t <= t0 + 1e-6 for t in times)


def _run(system: str, seconds: float, p99: float, idle: float, failed: int = 0) -> dict[str, Any]:
    return {"variant": "j day", "system": system, "worker_seconds": seconds, "failed": failed,
            "latency_ms": {"p99": p99}, "idle_worker_seconds_after_last_job": idle}  # fmt: skip


def test_targets_compare_the_daemon_with_the_official_client() -> None:
    runs = [_run("official client", 100, 500, 20), _run("vast-scheduler (run)", 90, 600, 20)]
    met = {t["target"]: t["met"] for t in bill_targets(runs, "j day")}
    assert met == {
        "(j) worker-seconds <= 1.0x official": True,
        "(j) p99 <= 1.0x official": False,
        "(j) idle worker-seconds after the last job <= official": True,
        "(j) no failed job (vast-scheduler)": True,
    }
