"""A lease: one route answer the daemon may place jobs on, and how it may reuse it. Pure.

The real worker keys its bookkeeping by ``reqnum``, so outside a Vast session an answer
carries at most one job at a time (``sequential``); inside a session it carries jobs
concurrently up to the cost the session declared (``session``); ``never`` uses an answer once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from scheduler.core.sessions import SessionClock

EPSILON = 1e-9


class Held(enum.Enum):
    """``LeasePool.choose``: every worker with room is busy past the horizon; keep the job."""

    HOLD = "hold"


HOLD = Held.HOLD


class ReuseMode(enum.StrEnum):
    SESSION = "session"
    SEQUENTIAL = "sequential"
    NEVER = "never"


@dataclass(eq=False, slots=True)
class Lease:
    lease_id: int
    worker_url: str
    answer: Any = field(repr=False)  # the route answer (vast.types.Ready), sent verbatim
    mode: ReuseMode
    capacity: float  # the cost it was routed with: what the worker accounts for it
    created_at: float
    expires_at: float
    session_id: str | None = None
    budget: float = 0.0
    inflight_cost: float = 0.0
    inflight_jobs: int = 0
    completed: int = 0
    uses: int = 0  # jobs ever placed on it
    last_used: float = 0.0
    available_at: float = 0.0  # a sequential answer rests after each job, see LeaseLimits
    retired: bool = False
    # Its Vast session as the worker keeps it (``SessionClock``); None: no session.
    session: SessionClock | None = None

    def __post_init__(self) -> None:
        if self.budget <= 0:
            self.budget = self.capacity
        self.last_used = self.created_at

    def has_room(self, cost: float, now: float, until: float | None = None) -> bool:
        """Room for a job of ``cost`` now; on a session lease, one the session covers
        (``SessionClock.takes``) up to ``until`` (the job's deadline, None: unchecked)."""
        if self.retired or now >= self.expires_at:
            return False
        if self.session is not None and not self.session.takes(now, until):
            return False
        if self.mode is ReuseMode.SESSION:
            return self.inflight_cost + cost <= self.budget + EPSILON
        if self.mode is ReuseMode.NEVER and self.uses > 0:
            return False
        return self.inflight_jobs == 0 and now >= self.available_at

    @property
    def utilisation(self) -> float:
        if self.mode is ReuseMode.SESSION:
            return self.inflight_cost / max(self.budget, EPSILON)
        return float(self.inflight_jobs)

    @property
    def idle(self) -> bool:
        return self.inflight_jobs == 0
