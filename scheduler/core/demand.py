"""The demand Vast has not heard of: the cost of jobs that arrived here since the last route
call that declared it. No I/O, no clock reads (times are passed in).

Why: the official client routes every job, so Vast's routed cost follows the arrival rate.
The daemon routes a few batches and places the rest on leases it holds; while those leases
keep up, the workers' reported load tells Vast enough. Once they do not (jobs held here for
busy workers), the jobs piling up here are invisible to Vast unless a route call declares
them: measured in the bill scenario (j), the autoscaler model ran 3-4 workers in a burst
where the official client's visible backlog got it 6, and the daemon's median latency was
4x the official client's. A demand call (``dispatch.routing``) declares what arrived since
the last one.
"""

from __future__ import annotations

from collections import deque

# Arrivals this close together share one entry: the ledger holds at most window / BUCKET_S.
BUCKET_S = 0.05


class DemandLedger:
    """Arrivals (time, cost) not yet declared; only the last ``window_s`` count, so the first
    held call after a long easy spell declares the recent rate, not hours of arrivals that
    the leases absorbed (and the workers reported)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._arrivals: deque[tuple[float, float]] = deque()
        self._cost = 0.0  # the sum of the costs in _arrivals

    def arrived(self, now: float, cost: float) -> None:
        arrivals = self._arrivals
        if arrivals and now - arrivals[-1][0] < BUCKET_S:
            at, bucket = arrivals[-1]
            arrivals[-1] = (at, bucket + cost)
        else:
            arrivals.append((now, cost))
        self._cost += cost
        self._forget_before(now - self.window_s)

    def undeclared(self, now: float) -> float:
        """The cost arrived within the window and not declared yet."""
        self._forget_before(now - self.window_s)
        return max(0.0, self._cost)

    def declared(self) -> None:
        """A route call declared all of it."""
        self._arrivals.clear()
        self._cost = 0.0

    def _forget_before(self, cutoff: float) -> None:
        arrivals = self._arrivals
        while arrivals and arrivals[0][0] < cutoff:
            self._cost -= arrivals.popleft()[1]
        if not arrivals:
            self._cost = 0.0  # no float residue
