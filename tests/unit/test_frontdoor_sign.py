"""The front door's ticket signer: good tickets pass once, any change is refused, the seen-set
stays bounded in size and time."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.frontdoor_sign import SIGNED_FIELDS, TicketSigner

SECRET = b"0123456789abcdef0123456789abcdef"
NOW = 1_000_000.0
EXPECT = {"endpoint": "echo", "tenant": "alpha"}


def ticket(signer: TicketSigner, cost: float = 5, now: float = NOW) -> dict[str, Any]:
    return signer.issue("http://d/vast/echo", "echo", cost, "alpha", now)


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_a_good_ticket_passes_once_then_is_replayed(cost: float) -> None:
    signer = TicketSigner(SECRET)
    issued = ticket(signer, cost)
    assert signer.verify(issued, EXPECT) is None
    assert signer.spend(issued, EXPECT, NOW + 1) is None
    assert signer.spend(issued, EXPECT, NOW + 2) == "replayed"
    assert signer.verify(issued, EXPECT) is None  # a session's ticket keeps verifying


@given(
    st.sampled_from(SIGNED_FIELDS),
    st.one_of(st.integers(-5, 10**12), st.text(max_size=20), st.floats(allow_nan=False)),
)
def test_any_changed_field_is_refused(name: str, value: Any) -> None:
    signer = TicketSigner(SECRET)
    issued = ticket(signer)
    changed = {**issued, name: value}
    if changed[name] == issued[name] and type(changed[name]) is type(issued[name]):
        return
    assert signer.spend(changed, EXPECT, NOW) in {"bad_signature", "malformed"}
    assert signer.spend(issued, EXPECT, NOW) is None  # the refusal spent nothing


def test_another_secret_or_another_tenant_is_refused() -> None:
    signer = TicketSigner(SECRET)
    forged = ticket(TicketSigner(b"another-secret-0123456789"))
    assert signer.spend(forged, EXPECT, NOW) == "bad_signature"
    assert signer.spend(ticket(signer), {**EXPECT, "tenant": "beta"}, NOW) == "mismatch"
    assert signer.spend({"url": "x"}, EXPECT, NOW) == "malformed"
    assert signer.spend("not a mapping", EXPECT, NOW) == "malformed"
    assert signer.spend({**ticket(signer), "reqnum": True}, EXPECT, NOW) == "malformed"


def test_an_expired_ticket_is_refused() -> None:
    signer = TicketSigner(SECRET, ttl_s=10)
    assert signer.spend(ticket(signer), EXPECT, NOW + 10) == "expired"
    assert signer.spend(ticket(signer), EXPECT, NOW + 9.9) is None


@settings(max_examples=50)
@given(st.integers(1, 8), st.lists(st.floats(0, 30), min_size=1, max_size=40))
def test_the_seen_set_is_bounded_and_no_ticket_passes_twice(
    max_seen: int, gaps: list[float]
) -> None:
    signer = TicketSigner(SECRET, ttl_s=10, max_seen=max_seen)
    now = NOW
    spent: list[dict[str, Any]] = []
    for gap in gaps:
        now += gap
        issued = ticket(signer, now=now)
        assert signer.spend(issued, EXPECT, now) is None  # a fresh ticket always passes
        spent.append(issued)
        assert signer.seen_count <= max_seen
        for old in spent:
            assert signer.spend(old, EXPECT, now) in {"replayed", "expired"}


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        TicketSigner(b"short")
