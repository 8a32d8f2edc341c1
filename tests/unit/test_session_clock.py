"""SessionClock: a Vast session's expiry by the official worker's rule (creation + lifetime, +
lifetime at each request start, swept every 5 s), and the daemon's two promises on top: a job
started on it is covered up to its deadline, and the expiry never runs further ahead of now
than the bound (what a lost /session/end costs the worker)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.config import ConfigError, parse_config
from scheduler.core.assignments import LeaseLimits, LeasePool, ReuseMode
from scheduler.core.sessions import SESSION_MARGIN_S, SessionClock, session_lifetime
from scheduler.dispatch.pinned import PinnedSession

lifetimes = st.floats(1, 3600)
bounds = st.floats(1, 86_400)
# (seconds since the previous step, the job's deadline as seconds from then)
steps = st.lists(st.tuples(st.floats(0, 600), st.floats(0, 7200)), max_size=60)


@given(lifetime=lifetimes, bound=bounds, steps=steps)
def test_no_start_runs_the_expiry_past_the_bound(
    lifetime: float, bound: float, steps: list[tuple[float, float]]
) -> None:
    clock = SessionClock.opened(0.0, lifetime, bound)
    now = 0.0
    for gap, deadline_in in steps:
        now += gap
        if clock.takes(now, now + deadline_in):
            clock.started()
            assert clock.expires_at - now <= max(bound, 2 * lifetime + SESSION_MARGIN_S) + 1e-6


@given(lifetime=lifetimes, bound=bounds, steps=steps)
def test_a_job_it_takes_is_covered_until_its_deadline(
    lifetime: float, bound: float, steps: list[tuple[float, float]]
) -> None:
    """The worker cuts a request at the session's expiry: what the job was admitted with
    (its deadline) must come first, even if no other request ever starts on the session."""
    clock = SessionClock.opened(0.0, lifetime, bound)
    now = 0.0
    for gap, deadline_in in steps:
        now += gap
        if clock.takes(now, now + deadline_in):
            clock.started()
            assert clock.expires_at >= now + deadline_in + SESSION_MARGIN_S - 1e-6


@given(
    lifetime=lifetimes,
    lifetimes_in_bound=st.floats(2, 12),  # bounds of a few lifetimes are where it is tight
    gaps=st.lists(st.floats(0, 60), max_size=80),
)
def test_a_busy_session_is_due_for_renewal_before_it_is_spent(
    lifetime: float, lifetimes_in_bound: float, gaps: list[float]
) -> None:
    """Renewal from a kept answer opens the successor while the old session still takes
    jobs: a session not yet due takes at least one more start, and one whose starts ran it
    to its bound had been due before it was spent."""
    clock = SessionClock.opened(0.0, lifetime, lifetimes_in_bound * lifetime)
    now = 0.0
    due_seen = False
    for gap in gaps:
        now += gap
        if not clock.live(now):
            return
        if not clock.renewal_due(now):  # room for this start and one more, at the least
            assert clock.takes(now)
            after = SessionClock(clock.lifetime_s, clock.expires_at, clock.max_ahead_s)
            after.started()
            assert after.takes(now) or not after.live(now)
        due_seen = due_seen or clock.renewal_due(now)
        if clock.spent(now):
            assert due_seen
            return
        clock.started()


def test_a_fresh_session_under_a_long_bound_is_not_due() -> None:
    clock = SessionClock.opened(0.0, 160.0, 86_400.0)
    assert not clock.renewal_due(1.0)
    for _ in range(420):  # past ~75% of the ~540 starts the bound allows
        clock.started()
    assert clock.renewal_due(1.0)
    assert clock.takes(1.0)


@given(lifetime=lifetimes, bound=bounds, deadline_in=st.floats(0, 3600))
def test_a_fresh_session_opened_for_a_job_takes_it(
    lifetime: float, bound: float, deadline_in: float
) -> None:
    """The lifetime chosen for the jobs at hand always lets the longest of them start."""
    chosen = session_lifetime(lifetime, [10.0 + deadline_in], 10.0, cap_s=3600)
    clock = SessionClock.opened(10.0, chosen, bound)
    assert clock.takes(10.0, 10.0 + deadline_in)


@given(
    configured=lifetimes,
    deadlines=st.lists(st.floats(-100, 10_000), max_size=20),
    cap=st.floats(1, 7200),
)
def test_the_lifetime_covers_the_jobs_at_hand_up_to_the_cap(
    configured: float, deadlines: list[float], cap: float
) -> None:
    chosen = session_lifetime(configured, deadlines, 0.0, cap)
    assert chosen >= max(configured, 2 * SESSION_MARGIN_S)
    longest = max(deadlines, default=0.0)
    # a fresh session's first start covers the longest deadline (within the cap)
    assert 2 * chosen >= min(cap, longest) + SESSION_MARGIN_S - 1e-6
    assert chosen <= max(configured, 2 * SESSION_MARGIN_S, cap / 2 + 2 * SESSION_MARGIN_S) + 1e-6


def test_a_quiet_session_is_spent_before_the_worker_sweeps_it() -> None:
    clock = SessionClock.opened(0.0, 120.0, 1800.0)
    assert clock.takes(0.0)
    assert clock.spent(120.0 - SESSION_MARGIN_S)
    clock.started()  # a job at 0 s: the worker's expiry is now 240 s
    assert clock.expires_at == 240.0
    assert not clock.spent(200.0)


def test_a_spent_session_lease_is_renewed_not_used() -> None:
    """In the pool, a session lease at its bound is retired (it ends once its jobs have) and
    ``choose`` asks for a new route answer (None) instead of placing on it."""
    pool = LeasePool(LeaseLimits())
    lease = pool.new_lease("http://w", object(), ReuseMode.SESSION, 1000.0, 0.0)
    lease.session = SessionClock.opened(0.0, 100.0, 400.0)  # at most 400 s ahead
    rng = random.Random(1)
    placed = 0
    for _ in range(10):  # bounded: the bound lets 3 starts in at t=0 (200, 300, 400 s ahead)
        chosen = pool.choose(1.0, 0.0, rng)
        if chosen is not lease:
            break
        pool.acquire(lease, 1.0, 0.0)
        placed += 1
    assert placed == 3
    assert lease.retired
    assert pool.choose(1.0, 0.0, rng) is None


def test_a_bound_below_two_lifetimes_is_refused_naming_it() -> None:
    """A session's first job already carries its expiry 2 lifetimes ahead: a smaller bound
    could not hold for any session (check-config says so, with the field's path)."""
    text = "endpoints:\n  e:\n    lease: {session_lifetime_s: 600, session_end_bound_s: 900}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    wanted = "session_end_bound_s must be >= 2 x session_lifetime_s"
    problems = info.value.problems
    assert any(wanted in p and "endpoints.e.lease" in p for p in problems), problems
    assert parse_config(text.replace("900", "1200"), env={}).endpoints["e"].lease


def test_a_caller_session_expires_by_the_workers_rule() -> None:
    """``expires_in_s`` of a caller session: creation + lifetime, + lifetime at each job's
    start (not at its end: a job that ends late gives nothing back), less the sweep margin."""
    pool = LeasePool(LeaseLimits())
    lease = pool.make_lease("http://w", object(), ReuseMode.SESSION, 100.0, 0.0)
    lease.session = SessionClock.opened(0.0, 60.0, 1800.0)
    pinned = PinnedSession("ses_x", lease, 60.0)
    assert pinned.expires_in_s(0.0) == 60.0 - SESSION_MARGIN_S
    sent = pool.acquire(lease, 1.0, 10.0)
    assert pinned.expires_in_s(10.0) == 120.0 - SESSION_MARGIN_S - 10.0
    pool.release(lease, 1.0, 100.0, True, sent)  # ends at 100 s: the expiry stays 120 s
    assert pinned.expires_in_s(100.0) == 120.0 - SESSION_MARGIN_S - 100.0
    assert pinned.expired(120.0 - SESSION_MARGIN_S)
