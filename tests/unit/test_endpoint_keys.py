"""Which key each endpoint routes with (precedence) and when a 401 may refetch the keys."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scheduler.core.endpoint_keys import KeyChoice, KeySource, choose_keys, may_refresh

NAMES = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), unique=True, max_size=5)
KEYS = st.dictionaries(st.sampled_from(["a", "b", "c", "x"]), st.text(min_size=1, max_size=8))


@given(NAMES, KEYS, st.none() | KEYS, st.none() | st.text(min_size=1, max_size=8), st.booleans())
def test_precedence_endpoint_then_listing_then_shared(
    names: list[str],
    explicit: dict[str, str],
    listed: dict[str, str] | None,
    shared: str | None,
    account: bool,
) -> None:
    choices = choose_keys(names, explicit, listed, shared, account=account)
    for name in names:
        chosen = choices.keys.get(name)
        if name in explicit:
            assert chosen == KeyChoice(explicit[name], KeySource.ENDPOINT)
        elif not account:
            assert chosen == (None if shared is None else KeyChoice(shared, KeySource.SHARED))
        elif listed is not None and name in listed:
            assert chosen == KeyChoice(listed[name], KeySource.ACCOUNT)
        else:
            assert chosen is None  # never the shared key with an account key
    expected_missing = (
        sorted(n for n in names if n not in explicit and n not in listed)
        if account and listed is not None
        else []
    )
    assert choices.missing == expected_missing


def test_listing_not_read_yet_gives_only_configured_keys() -> None:
    choices = choose_keys(["a", "b"], {"a": "ka"}, None, "shared", account=True)
    assert set(choices.keys) == {"a"}
    assert choices.missing == []


@given(st.floats(0, 1e6), st.none() | st.floats(0, 1e6), st.floats(0, 1e3))
def test_refresh_at_most_once_per_interval(
    now: float, last: float | None, interval_s: float
) -> None:
    assert may_refresh(now, last, interval_s) == (last is None or now - last >= interval_s)
