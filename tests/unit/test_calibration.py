"""Calibration: EWMA of observed / estimated cost, and per-worker throughput."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.calibration import (
    MAX_RATIO,
    MIN_RATIO,
    Calibrator,
    CompletionRate,
    ThroughputMeter,
)

NAN = float("nan")
INF = float("inf")


def test_ratio_is_one_before_any_sample() -> None:
    calibrator = Calibrator()
    assert (calibrator.ratio, calibrator.samples, calibrator.alpha) == (1.0, 0, 0.1)
    assert calibrator.apply(250.0) == 250.0


def test_first_sample_seeds_then_ewma() -> None:
    calibrator = Calibrator(alpha=0.5)
    assert calibrator.observe(estimated=100.0, service_time_s=2.0, throughput=100.0)
    assert calibrator.ratio == pytest.approx(2.0)  # observed 200 for an estimate of 100
    assert calibrator.observe(estimated=100.0, service_time_s=1.0, throughput=100.0)
    assert calibrator.ratio == pytest.approx(1.5)
    assert calibrator.samples == 2
    assert calibrator.apply(10.0) == pytest.approx(15.0)


@pytest.mark.parametrize("true_ratio", [0.05, 0.5, 1.0, 3.0, 40.0])
def test_converges_to_a_constant_ratio(true_ratio: float) -> None:
    calibrator = Calibrator(alpha=0.1)
    calibrator.observe(100.0, 1.0, 100.0)  # a misleading first sample (ratio 1)
    for i in range(200):
        estimated = 10.0 + i
        calibrator.observe(estimated, service_time_s=estimated * true_ratio / 50.0, throughput=50)
    assert calibrator.ratio == pytest.approx(true_ratio, rel=1e-6)


@pytest.mark.parametrize(
    ("estimated", "service_time_s", "rate"),
    [
        pytest.param(0.0, 1.0, 1.0, id="zero-estimate"),
        pytest.param(-1.0, 1.0, 1.0, id="negative-estimate"),
        pytest.param(NAN, 1.0, 1.0, id="nan-estimate"),
        pytest.param(INF, 1.0, 1.0, id="inf-estimate"),
        pytest.param(1.0, 0.0, 1.0, id="zero-time"),
        pytest.param(1.0, -2.0, 1.0, id="negative-time"),
        pytest.param(1.0, NAN, 1.0, id="nan-time"),
        pytest.param(1.0, INF, 1.0, id="inf-time"),
        pytest.param(1.0, 1.0, 0.0, id="zero-throughput"),
        pytest.param(1.0, 1.0, -INF, id="negative-throughput"),
        pytest.param(1.0, 1.0, NAN, id="nan-throughput"),
        pytest.param(1.0, 1e200, 1e200, id="observed-overflows"),
    ],
)
def test_bad_samples_are_ignored(estimated: float, service_time_s: float, rate: float) -> None:
    calibrator = Calibrator()
    calibrator.observe(100.0, 3.0, 100.0)
    assert not calibrator.observe(estimated, service_time_s, rate)
    assert (calibrator.ratio, calibrator.samples) == (pytest.approx(3.0), 1)


@pytest.mark.parametrize(
    ("service_time_s", "expected"),
    [(1e9, MAX_RATIO), (1e-9, MIN_RATIO)],
)
def test_ratio_is_clamped(service_time_s: float, expected: float) -> None:
    calibrator = Calibrator(alpha=1.0)
    for _ in range(3):
        calibrator.observe(1.0, service_time_s, 1.0)
    assert calibrator.ratio == expected


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, NAN])
def test_bad_alpha_rejected(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        Calibrator(alpha)
    with pytest.raises(ValueError, match="alpha"):
        ThroughputMeter(alpha)


samples = st.tuples(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=True, allow_infinity=True),
)


@given(st.floats(0.0, 1.0, exclude_min=True), st.lists(samples, max_size=30))
@settings(max_examples=100, deadline=None)
def test_ratio_always_finite_and_clamped(alpha: float, observed: list[tuple[float, ...]]) -> None:
    calibrator = Calibrator(alpha)
    used = sum(calibrator.observe(*sample) for sample in observed)
    assert calibrator.samples == used
    assert MIN_RATIO <= calibrator.ratio <= MAX_RATIO
    assert math.isfinite(calibrator.ratio)


# --- ThroughputMeter ----------------------------------------------------------------------


def test_meter_unknown_worker() -> None:
    meter = ThroughputMeter()
    assert meter.throughput("w1") is None
    assert len(meter) == 0


def test_meter_first_sample_then_ratio_of_averages() -> None:
    meter = ThroughputMeter(alpha=0.5)
    assert meter.observe("w1", cost=100.0, service_time_s=1.0)
    assert meter.throughput("w1") == pytest.approx(100.0)
    assert meter.observe("w1", cost=100.0, service_time_s=0.001)  # a lucky short job
    # averages: cost 100, time 0.5005 -> about 200/s, not the mean of 100/s and 100,000/s
    assert meter.throughput("w1") == pytest.approx(100.0 / 0.5005)


def test_meter_converges_per_worker() -> None:
    meter = ThroughputMeter(alpha=0.2)
    for i in range(200):
        cost = 50.0 + i
        meter.observe("fast", cost, cost / 1000.0)
        meter.observe("slow", cost, cost / 10.0)
    assert meter.throughput("fast") == pytest.approx(1000.0, rel=1e-3)
    assert meter.throughput("slow") == pytest.approx(10.0, rel=1e-3)


@pytest.mark.parametrize(
    ("cost", "service_time_s"),
    [(0.0, 1.0), (-1.0, 1.0), (NAN, 1.0), (INF, 1.0), (1.0, 0.0), (1.0, -1.0), (1.0, NAN)],
)
def test_meter_ignores_bad_samples(cost: float, service_time_s: float) -> None:
    meter = ThroughputMeter()
    assert not meter.observe("w1", cost, service_time_s)
    assert meter.throughput("w1") is None


def test_meter_extreme_rate_is_not_reported() -> None:
    meter = ThroughputMeter()
    meter.observe("w1", 1e300, 1e-300)
    assert meter.throughput("w1") is None


def test_meter_forget_and_bound() -> None:
    meter = ThroughputMeter(max_workers=2)
    meter.observe("a", 1.0, 1.0)
    meter.observe("b", 2.0, 1.0)
    meter.observe("a", 1.0, 1.0)  # a seen again: b is now the least recent
    meter.observe("c", 3.0, 1.0)
    assert (meter.throughput("a"), meter.throughput("b"), meter.throughput("c")) == (1, None, 3)
    meter.forget("a")
    meter.forget("missing")
    assert len(meter) == 1
    with pytest.raises(ValueError, match="max_workers"):
        ThroughputMeter(max_workers=0)


def test_meter_feeds_calibrator() -> None:
    """A route whose estimates are half of what its jobs take is calibrated up by 2."""
    meter = ThroughputMeter()
    calibrator = Calibrator(alpha=0.2)
    for _ in range(100):
        meter.observe("w1", cost=100.0, service_time_s=1.0)  # well-estimated jobs: 100/s
        throughput = meter.throughput("w1")
        assert throughput is not None
        calibrator.observe(estimated=50.0, service_time_s=1.0, throughput=throughput)
    assert calibrator.ratio == pytest.approx(2.0)
    assert calibrator.apply(50.0) == pytest.approx(100.0)


def test_completion_rate_is_zero_until_two_completions() -> None:
    rate = CompletionRate()
    assert rate.cost_per_s == 0.0
    rate.completed(100.0, now=5.0)
    assert rate.cost_per_s == 0.0
    rate.completed(100.0, now=5.5)
    assert rate.cost_per_s == pytest.approx(200.0)


@given(costs=st.lists(st.floats(0.1, 1e6), min_size=2, max_size=4), gap_s=st.floats(1e-3, 100))
def test_completion_rate_converges_on_a_steady_stream(costs: list[float], gap_s: float) -> None:
    """Jobs of repeating costs, one every ``gap_s``: the rate settles near mean cost / gap."""
    rate = CompletionRate()
    for index in range(400):
        rate.completed(costs[index % len(costs)], now=index * gap_s)
    mean = sum(costs) / len(costs)
    spread = (max(costs) - min(costs)) / mean
    assert rate.cost_per_s == pytest.approx(mean / gap_s, rel=0.01 + spread)
