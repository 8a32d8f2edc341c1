"""Vast sessions as the official worker keeps them, and what the daemon declares for one.
Pure: time is passed in.

A lease's session (``scheduler.core.assignments.Lease``) tracks its expiry by the worker's rule
(``SessionClock``); ``session_lifetime`` picks the lifetime to open it with, ``session_cost``
the cost its route call declares (its budget for its whole life).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# The official worker sweeps expired sessions every 5 s (``SESSION_GC_INTERVAL``); a session
# this close to its expiry may be gone before the next request reaches it.
SESSION_MARGIN_S = 5.0
# A session renews (``SessionClock.renewal_due``) when the expiry ahead has used all but this
# share of its bound: enough starts left to run on while the successor opens.
RENEWAL_SHARE = 0.25


@dataclass(eq=False, slots=True)
class SessionClock:
    """A Vast session's expiry by the official worker's rule (``vastai`` 1.9.1,
    ``lib/backend.py``): creation + ``lifetime_s``, plus ``lifetime_s`` again at the start of
    every request on it (not on ``/session/get``); a sweep every 5 s ends expired sessions and
    cuts the requests still running on them.

    So a job that starts on a live session has at least ``lifetime_s`` before it can be cut:
    the daemon picks ``lifetime_s`` to cover the jobs' deadlines (``session_lifetime``). And
    every start pushes the expiry ``lifetime_s`` further: a job may start only while the
    expiry stays within ``max_ahead_s`` of now, so a session whose ``/session/end`` is lost
    frees its worker within ``max_ahead_s`` (plus the worker's sweep); past it the lease is
    renewed (retired, a new session opened) instead. ``created_at`` is taken before the create
    call was sent: the worker's own expiry is then no earlier than this one."""

    lifetime_s: float
    expires_at: float
    max_ahead_s: float

    @classmethod
    def opened(cls, created_at: float, lifetime_s: float, max_ahead_s: float) -> SessionClock:
        # one job must always fit on a fresh session, whatever the bound
        ahead = max(max_ahead_s, 2 * lifetime_s + SESSION_MARGIN_S)
        return cls(lifetime_s, created_at + lifetime_s, ahead)

    def started(self) -> None:
        """A request on the session starts: the worker adds a lifetime to its expiry."""
        self.expires_at += self.lifetime_s

    def live(self, now: float) -> bool:
        """Not (about to be) swept by the worker."""
        return now + SESSION_MARGIN_S < self.expires_at

    def takes(self, now: float, until: float | None = None) -> bool:
        """A job may start on it now: the session is live, the expiry after the start stays
        within the bound, and covers ``until`` (the job's deadline, None: unchecked)."""
        after = self.expires_at + self.lifetime_s
        covered = until is None or after >= until + SESSION_MARGIN_S
        return self.live(now) and after <= now + self.max_ahead_s and covered

    def spent(self, now: float) -> bool:
        """No job of any deadline can start on it any more (expiring, or at its bound)."""
        return not self.takes(now)

    def renewal_due(self, now: float) -> bool:
        """Live, with the expiry ahead within ``RENEWAL_SHARE`` of its bound plus one start
        of it being spent: time to open its successor (``core.kept_answers``), so that jobs
        move to it before this one is spent. A session not yet due takes two more starts at
        least (one while the successor's create call is out)."""
        room = now + self.max_ahead_s - self.expires_at  # the bound less the expiry ahead
        due = room < 2 * self.lifetime_s + RENEWAL_SHARE * self.max_ahead_s
        return self.live(now) and due


def session_lifetime(configured_s: float, deadlines: Iterable[float], now: float,
                     cap_s: float) -> float:  # fmt: skip
    """The lifetime to open a session with: ``configured_s``, or longer so that a fresh
    session takes any job at hand (their ``deadlines``, up to ``cap_s`` away): its first
    start brings the expiry to creation + 2 lifetimes, past the deadline. Half the longest
    deadline, not all of it: each start adds a lifetime, so a shorter one lets a session carry
    more jobs within its bound; a later job the session no longer covers (``takes``) waits for
    a new session instead of being cut. At least 2 sweep margins: a session opened now must be
    live when its first job reaches the worker."""
    longest = max((deadline - now for deadline in deadlines), default=0.0)
    covering = (min(cap_s, longest) + SESSION_MARGIN_S) / 2 + SESSION_MARGIN_S
    return max(configured_s, 2 * SESSION_MARGIN_S, covering)


def held_cost(cost: float, cost_sq: float) -> float:
    """The mean cost of the jobs a worker holds at once, over jobs whose costs sum to ``cost``
    and whose squares sum to ``cost_sq``: each is held for a time about proportional to its
    cost (on a batching, sharing or FIFO worker alike), so a full worker's slots hold the
    large ones more often than the queue does. With (f2)'s mix (80% at 20, 20% at 400: a mean
    of 96) a held job costs 337 on average; with jobs alike, their cost."""
    return cost_sq / cost if cost > 0 else 0.0


def session_cost(
    batch_cost: float, batch_cost_sq: float, queued_cost: float, queued_cost_sq: float,
    limit: int, cap: float, largest_queued: float = 0.0,
) -> float:  # fmt: skip
    """The cost a batch's route call declares when its answer opens a Vast session: at least
    the batch's, and what the daemon means to place on one worker, its concurrency ``limit``
    times the cost of a job it holds (``held_cost`` over the batch and the queue), and never
    less than the largest job waiting (``largest_queued``), all capped at ``cap``.

    A session's declared cost is its budget for its whole life: one sized to the few jobs that
    happened to be queued when it opened caps its worker below its limit, and the worker's
    sessions are few. Sized by the queue's mean cost, (f2)'s sessions held 7-15 jobs of a
    limit of 32 in a cold start (its slots fill with the 400-cost jobs), and start-up read
    the jobs that waited for budget as a limit the load did not fill. Declaring what will run
    on it is also what Vast should see as its load. A session that cannot hold the largest job
    waiting needs another route call for each such job: on a FIFO worker at a limit of one
    (held cost 337 of (f2)'s mix, its large jobs 400) each large job was routed for, and the
    small ones behind it took the worker before the answer came (route calls per job 0.17 ->
    0.25-0.3 in (g))."""
    held = held_cost(batch_cost + queued_cost, batch_cost_sq + queued_cost_sq)
    return max(batch_cost, min(cap, max(largest_queued, limit * held)))
