"""The autoscaler model's pure rule: how many workers an endpoint wants running, and a
sliding window for its load rate. No I/O, no clock reads (times are passed in).

From Vast (``vastai`` 1.9.1 ``vastai create endpoint --help`` and ``api/endpoints.py``,
the protocol doc section 3): ``min_load`` is a floor load in perf units/s; ``target_util``
the target capacity utilisation (capacity wanted = load / target_util); ``target_queue_time``
the seconds in which the queue should be cleared; ``inactivity_timeout`` the seconds of no
traffic before the endpoint can scale to zero active workers; ``max_workers`` the cap; Vast
scales on the load workers report and the demand it holds (WAITING requests).

From the protocol doc (section 3): Vast scales on routed cost, pending (WAITING) cost and the
load workers report.

Assumed (Vast publishes no formula): load = the larger of the workload workers report
receiving (``new_load``) and the cost routed to them (READY answers), each per second over the
last ``window_s``; capacity wanted = the largest of ``min_load``, load / ``target_util`` and
backlog / ``target_queue_time`` (backlog = reported ``cur_load`` of running workers + the cost
of waiting requests); workers wanted = that over one worker's ``max_perf``, rounded up, at
least one while traffic is younger than ``inactivity_timeout``, at most ``max_workers``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScalingParams:
    """An endpoint's scaling settings, under Vast's names (seconds and perf units/s)."""

    min_load: float = 0.0
    target_util: float = 0.9
    target_queue_time_s: float = 10.0
    inactivity_timeout_s: float = 60.0
    max_workers: int = 20


@dataclass(frozen=True)
class Demand:
    """What the autoscaler sees of an endpoint at one tick."""

    load_rate: float  # workload received by its workers per second (reported new_load)
    backlog: float  # reported cur_load of running workers + cost of waiting requests
    since_traffic_s: float  # since the last route call or in-flight work
    worker_perf: float  # one worker's max_perf, units/s
    routed_rate: float = 0.0  # cost routed to its workers per second (READY answers)


def capacity_wanted(params: ScalingParams, demand: Demand) -> float:
    """Perf units/s the endpoint should have running."""
    return max(
        params.min_load,
        max(demand.load_rate, demand.routed_rate) / params.target_util,
        demand.backlog / params.target_queue_time_s,
    )


def workers_wanted(params: ScalingParams, demand: Demand) -> int:
    """How many workers should be running (loading or ready)."""
    perf = max(demand.worker_perf, 1e-9)
    wanted = math.ceil(capacity_wanted(params, demand) / perf - 1e-9)
    if demand.since_traffic_s < params.inactivity_timeout_s:
        wanted = max(wanted, 1)
    return max(0, min(wanted, params.max_workers))


@dataclass
class RateWindow:
    """A running total's rate of change over the last ``window_s`` seconds."""

    window_s: float
    samples: deque[tuple[float, float]] = field(default_factory=deque)

    def add(self, now: float, total: float) -> float:
        """Record ``total`` at ``now``; return its rate over the window (0 until two
        samples). Samples older than the window are dropped, but one is kept before it."""
        self.samples.append((now, total))
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window_s:
            self.samples.popleft()
        first_t, first_total = self.samples[0]
        return (total - first_total) / (now - first_t) if now > first_t else 0.0
