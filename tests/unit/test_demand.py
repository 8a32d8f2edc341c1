"""The demand ledger: what arrived within the window since the last declaration, no more and
(within one bucket) no less; bounded in memory."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scheduler.core.demand import BUCKET_S, DemandLedger

WINDOW_S = 2.0

events = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=1.5, allow_nan=False),  # time since the last event
        st.one_of(st.floats(min_value=0.0, max_value=1000.0, allow_nan=False), st.none()),
    ),  # a cost arrives, or (None) a route call declares everything
    max_size=200,
)


@given(events)
def test_undeclared_is_what_arrived_in_the_window_since_the_last_declaration(
    history: list[tuple[float, float | None]],
) -> None:
    ledger = DemandLedger(WINDOW_S)
    now = 0.0
    pending: list[tuple[float, float]] = []  # (arrival time, cost) since the last declaration
    for gap, cost in history:
        now += gap
        if cost is None:
            ledger.declared()
            pending.clear()
        else:
            ledger.arrived(now, cost)
            pending.append((now, cost))
        undeclared = ledger.undeclared(now)
        # Arrivals sharing a bucket carry its first time, so they leave it up to a bucket early.
        upper = sum(c for t, c in pending if t >= now - WINDOW_S)
        lower = sum(c for t, c in pending if t >= now - WINDOW_S + BUCKET_S)
        assert lower - 1e-6 <= undeclared <= upper + 1e-6
        assert len(ledger._arrivals) <= WINDOW_S / BUCKET_S + 2


def test_a_declaration_clears_it_and_old_arrivals_fall_out() -> None:
    ledger = DemandLedger(WINDOW_S)
    ledger.arrived(0.0, 100.0)
    ledger.arrived(1.0, 50.0)
    assert ledger.undeclared(1.0) == 150.0
    assert ledger.undeclared(2.5) == 50.0  # the first is older than the window
    ledger.declared()
    assert ledger.undeclared(2.5) == 0.0
    ledger.arrived(3.0, 10.0)
    assert ledger.undeclared(3.0) == 10.0
