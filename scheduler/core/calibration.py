"""Calibration of cost estimates against what workers actually did. Pure: no I/O, no clock.

``ThroughputMeter`` learns each worker's per-job rate (cost over each job's service time)
from the jobs it completes; ``BusyMeter`` learns the rate at which a worker clears work (cost
per second during which it had work from us), which placement uses; ``Calibrator`` learns
how far an endpoint's estimates are from the cost observed as ``service_time_s * throughput``
and scales new estimates by that ratio.
Durations are passed in by the caller (from the injected monotonic clock).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_RATIO = 0.01
MAX_RATIO = 100.0
DEFAULT_ALPHA = 0.1
DEFAULT_MAX_WORKERS = 4096


def check_alpha(alpha: float) -> float:
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    return alpha


def check_max_workers(max_workers: int) -> int:
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    return max_workers


def positive_finite(*values: float) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def ewma(previous: float | None, sample: float, alpha: float) -> float:
    """Exponentially weighted moving average; the first sample seeds it."""
    return sample if previous is None else previous + alpha * (sample - previous)


class Calibrator:
    """EWMA of observed / estimated cost, clamped to [MIN_RATIO, MAX_RATIO].

    ``ratio`` is 1.0 until the first usable sample, which seeds the average. Samples with a
    non-positive or non-finite input are ignored.
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA) -> None:
        self.alpha = check_alpha(alpha)
        self._ratio: float | None = None
        self._samples = 0

    @property
    def ratio(self) -> float:
        return 1.0 if self._ratio is None else self._ratio

    @property
    def samples(self) -> int:
        return self._samples

    def observe(self, estimated: float, service_time_s: float, throughput: float) -> bool:
        """Record one finished job; ``throughput`` is the worker's cost units per second.

        Returns whether the sample was used.
        """
        if not positive_finite(estimated, service_time_s, throughput):
            return False
        observed = service_time_s * throughput
        if not math.isfinite(observed):
            return False
        sample = min(MAX_RATIO, max(MIN_RATIO, observed / estimated))
        self._ratio = min(MAX_RATIO, max(MIN_RATIO, ewma(self._ratio, sample, self.alpha)))
        self._samples += 1
        return True

    def apply(self, estimate: float) -> float:
        """``estimate * ratio``; clamp the result to the endpoint's [min, max] afterwards."""
        return estimate * self.ratio


class CompletionRate:
    """An endpoint's completed cost per second: EWMAs of cost and of the gap between
    completions, divided (an EWMA of cost/gap samples overshoots when completions come in
    bursts). 0 until two completions have been seen."""

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = check_alpha(alpha)
        self.cost_per_s = 0.0
        self._last: float | None = None
        self._gap_s: float | None = None
        self._cost = 0.0

    def completed(self, cost: float, now: float) -> None:
        if self._last is None:
            self._cost = cost
        else:
            self._gap_s = ewma(self._gap_s, now - self._last, self.alpha)
            self._cost = ewma(self._cost, cost, self.alpha)
            if self._gap_s > 0:
                self.cost_per_s = self._cost / self._gap_s
        self._last = now


class ThroughputMeter:
    """Per-worker throughput: EWMA of completed cost over EWMA of service time.

    A ratio of averages, not an average of per-job rates, so a very short job cannot swing
    the rate. At most ``max_workers`` workers are tracked; the one seen least recently goes.
    """

    def __init__(
        self, alpha: float = DEFAULT_ALPHA, max_workers: int = DEFAULT_MAX_WORKERS
    ) -> None:
        self.max_workers = check_max_workers(max_workers)
        self.alpha = check_alpha(alpha)
        self._averages: dict[str, tuple[float, float]] = {}  # worker -> (cost, seconds)

    def __len__(self) -> int:
        return len(self._averages)

    def observe(self, worker: str, cost: float, service_time_s: float) -> bool:
        """Record one job ``worker`` completed; returns whether the sample was used."""
        if not positive_finite(cost, service_time_s):
            return False
        previous = self._averages.pop(worker, None)
        if previous is None:
            averages = (cost, service_time_s)
        else:
            averages = (
                ewma(previous[0], cost, self.alpha),
                ewma(previous[1], service_time_s, self.alpha),
            )
        self._averages[worker] = averages  # re-inserted: most recently seen last
        while len(self._averages) > self.max_workers:
            del self._averages[next(iter(self._averages))]
        return True

    def throughput(self, worker: str) -> float | None:
        """Cost units per busy second, or None before the worker's first sample."""
        averages = self._averages.get(worker)
        if averages is None:
            return None
        rate = averages[0] / averages[1]
        return rate if math.isfinite(rate) else None

    def forget(self, worker: str) -> None:
        self._averages.pop(worker, None)


@dataclass(slots=True)
class _Busy:
    inflight: int = 0
    last_s: float = 0.0  # time of the last start or end
    busy_s: float = 0.0  # busy seconds since the last completion
    cost_sum: float = 0.0  # decayed completed cost
    busy_sum_s: float = 0.0  # decayed busy seconds

    def advance(self, now: float) -> None:
        if self.inflight > 0 and now > self.last_s:
            self.busy_s += now - self.last_s
        self.last_s = max(self.last_s, now)


class BusyMeter:
    """Per-worker throughput as the worker delivers it: completed cost per second during which
    the daemon had at least one job on the worker (send to answer), whatever the concurrency.

    Unlike ``ThroughputMeter`` (cost over each job's own service time, which on a worker that
    shares its speed among concurrent requests falls with their number), this is the rate at
    which the worker clears work, so ``(work in flight + cost) / throughput`` estimates when a
    new job would finish there. Busy time and completed cost are kept as exponentially decayed
    sums, updated at each completion; a failed job's busy time counts towards the next success.
    At most ``max_workers`` workers are tracked; the one seen least recently goes.
    """

    def __init__(
        self, alpha: float = DEFAULT_ALPHA, max_workers: int = DEFAULT_MAX_WORKERS
    ) -> None:
        self.max_workers = check_max_workers(max_workers)
        self.alpha = check_alpha(alpha)
        self._state: dict[str, _Busy] = {}

    def __len__(self) -> int:
        return len(self._state)

    def started(self, worker: str, now: float) -> None:
        """A job was sent to ``worker`` at ``now``."""
        state = self._state.pop(worker, None) or _Busy(last_s=now)
        self._state[worker] = state  # re-inserted: most recently seen last
        while len(self._state) > self.max_workers:
            del self._state[next(iter(self._state))]
        state.advance(now)
        state.inflight += 1

    def finished(self, worker: str, cost: float, now: float, succeeded: bool) -> None:
        """A job ``started`` on ``worker`` ended at ``now``; only a success completes cost."""
        state = self._state.get(worker)
        if state is None or state.inflight <= 0:
            return  # forgotten (evicted) since it started
        state.advance(now)
        state.inflight -= 1
        if not succeeded or not positive_finite(cost):
            return
        if state.busy_s <= 0:  # ended with another one: one completion event, no decay
            if state.busy_sum_s > 0:
                state.cost_sum += cost
            return
        keep = 1.0 - self.alpha if state.busy_sum_s > 0 else 0.0
        state.cost_sum = state.cost_sum * keep + cost
        state.busy_sum_s = state.busy_sum_s * keep + state.busy_s
        state.busy_s = 0.0

    def last_active(self, worker: str) -> float:
        """When a job last started or ended on ``worker`` (0 if never, or forgotten)."""
        state = self._state.get(worker)
        return state.last_s if state is not None else 0.0

    def throughput(self, worker: str) -> float | None:
        """Cost units per busy second, or None before the worker's first completion."""
        state = self._state.get(worker)
        if state is None or state.busy_sum_s <= 0:
            return None
        rate = state.cost_sum / state.busy_sum_s
        return rate if math.isfinite(rate) and rate > 0 else None

    def forget(self, worker: str) -> None:
        self._state.pop(worker, None)
