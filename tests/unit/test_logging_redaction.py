"""Redactor: secret-looking keys dropped, known secrets masked wherever they appear."""

from __future__ import annotations

import copy
import string
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scheduler.observability.logging import REDACTED, Redactor

KEY = "sk-live-0123456789abcdef"
HOOK = "whsec-fedcba9876543210"


def process(redactor: Redactor, event: dict[str, Any]) -> dict[str, Any]:
    return redactor(None, "info", event)


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [*strings_in(k), *strings_in(v)]]
    if isinstance(value, list | tuple):
        return [s for v in value for s in strings_in(v)]
    return []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(KEY, REDACTED, id="whole"),
        pytest.param(f"Bearer {KEY}", f"Bearer {REDACTED}", id="embedded"),
        pytest.param(f"{KEY}{KEY}", REDACTED * 2, id="repeated"),
        pytest.param(f"a={KEY}&b={HOOK}", f"a={REDACTED}&b={REDACTED}", id="two-secrets"),
        pytest.param("nothing here", "nothing here", id="clean"),
        pytest.param(KEY[:-1], KEY[:-1], id="partial-not-matched"),
        pytest.param("", "", id="empty"),
    ],
)
def test_scrub_strings(value: str, expected: str) -> None:
    assert Redactor([KEY, HOOK]).scrub(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            {"detail": {"headers": [f"x {KEY}", ("y", KEY)]}},
            {"detail": {"headers": [f"x {REDACTED}", ["y", REDACTED]]}},
            id="dict-list-tuple",
        ),
        pytest.param([[[[KEY]]]], [[[[REDACTED]]]], id="deep-list"),
        pytest.param(
            {"a": {"b": {"c": {"d": f"url?k={KEY}"}}}},
            {"a": {"b": {"c": {"d": f"url?k={REDACTED}"}}}},
            id="deep-dict",
        ),
        pytest.param(
            {"n": 1, "f": 1.5, "none": None, "flag": True},
            {"n": 1, "f": 1.5, "none": None, "flag": True},
            id="scalars-untouched",
        ),
        pytest.param({1: KEY, None: "x"}, {1: REDACTED, None: "x"}, id="non-str-keys"),
    ],
)
def test_scrub_nested(value: Any, expected: Any) -> None:
    assert Redactor([KEY]).scrub(value) == expected


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "apikey",
        "API_KEY",
        "vast_api_key",
        "Authorization",
        "authorization",
        "proxy-authorization",
        "token",
        "access_token",
        "Token",
        "secret",
        "webhook_secret",
        "password",
        "signature",
        "X-Vast-Scheduler-Signature",
    ],
)
def test_secret_keys_redacted(key: str) -> None:
    redactor = Redactor()
    nested = {"outer": {key: "some-opaque-value", "other": "kept"}}
    assert redactor.scrub(nested) == {"outer": {key: REDACTED, "other": "kept"}}
    assert process(redactor, {"event": "e", key: {"deep": "x"}}) == {"event": "e", key: REDACTED}


@pytest.mark.parametrize("key", ["endpoint", "cost", "job_id", "url", "status", "event", "key"])
def test_ordinary_keys_kept(key: str) -> None:
    assert Redactor().scrub({key: "value"}) == {key: "value"}


@pytest.mark.parametrize("short", ["", "a", "ab", "abc"])
def test_short_secrets_ignored(short: str) -> None:
    redactor = Redactor([short])
    text = "abcabc a b c and more text"
    assert redactor.scrub(text) == text
    assert redactor.scrub({"msg": text}) == {"msg": text}


def test_four_char_secret_masked() -> None:
    assert Redactor(["abcd"]).scrub("xxabcdxx") == f"xx{REDACTED}xx"


def test_add_later() -> None:
    redactor = Redactor()
    assert redactor.scrub(KEY) == KEY
    redactor.add([KEY, "no"])
    assert redactor.scrub(KEY) == REDACTED
    assert redactor.scrub("no") == "no"


def test_processor_redacts_event_and_values() -> None:
    redactor = Redactor([KEY])
    event = {
        "event": f"route failed for key {KEY}",
        "api_key": "anything",
        "detail": [{"Authorization": f"Bearer {KEY}"}, f"k={KEY}"],
        "attempt": 3,
    }
    original = copy.deepcopy(event)
    out = process(redactor, event)
    assert out == {
        "event": f"route failed for key {REDACTED}",
        "api_key": REDACTED,
        "detail": [{"Authorization": REDACTED}, f"k={REDACTED}"],
        "attempt": 3,
    }
    assert event == original  # the input is not mutated


# --- properties ---------------------------------------------------------------------------

SECRET_ALPHABET = string.ascii_letters + string.digits + "-_."
secrets_st = st.text(SECRET_ALPHABET, min_size=4, max_size=24)
MARK = "\x00"  # stands for the secret until it is known
filler = st.text(st.characters(exclude_characters=f"[]{MARK}", codec="utf-8"), max_size=12)
leaves = st.one_of(
    st.builds(lambda a, n, b: a + MARK * n + b, filler, st.integers(0, 2), filler),
    st.integers(),
    st.none(),
    st.booleans(),
)
trees = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.sampled_from(["msg", "detail", "items", "url", "body"]), inner),
    ),
    max_leaves=10,
)


def with_secret(tree: Any, secret: str) -> Any:
    """The drawn log value with every placeholder replaced by ``secret``."""
    if isinstance(tree, str):
        return tree.replace(MARK, secret)
    if isinstance(tree, dict):
        return {k: with_secret(v, secret) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(with_secret(v, secret) for v in tree)
    return tree


@given(trees, secrets_st)
@settings(max_examples=100)
def test_known_secret_never_survives(tree: Any, secret: str) -> None:
    assume(secret not in REDACTED)
    scrubbed = Redactor([secret]).scrub(with_secret(tree, secret))
    for text in strings_in(scrubbed):
        assert secret not in text


@given(trees, secrets_st)
@settings(max_examples=100)
def test_scrub_only_changes_secret_occurrences(tree: Any, secret: str) -> None:
    assume(secret not in REDACTED)
    value = with_secret(tree, secret)
    scrubbed = Redactor([secret]).scrub(value)
    # undoing the mask restores every string exactly (no other text touched)
    restored = [s.replace(REDACTED, secret) for s in strings_in(scrubbed)]
    assert restored == strings_in(value)


@given(st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=6))
@settings(max_examples=200)
def test_no_known_secrets_only_secret_keys_change(event: dict[str, str]) -> None:
    out = process(Redactor(), event)
    assert out.keys() == event.keys()
    for key, value in out.items():
        assert value == event[key] or value == REDACTED


def test_overlapping_secrets_fully_masked() -> None:
    leaks = []
    for i in range(64):
        short = f"key{i:04d}"
        long = f"{short}-tail{i:04d}secret"
        scrubbed = Redactor([short, long]).scrub(f"value={long}")
        if scrubbed != f"value={REDACTED}":
            leaks.append(scrubbed)
    assert leaks == []


@pytest.mark.parametrize("key", ["x-api-key", "X-API-Key", "api-key"])
def test_hyphenated_api_key_header_redacted(key: str) -> None:
    assert Redactor().scrub({key: "caller-own-key-123"}) == {key: REDACTED}


@pytest.mark.parametrize(
    "line",
    [
        'GET /api/v0/endptjobs/?client_id=me&api_key=not-a-known-key-42 HTTP/1.1" 401',
        "POST /route/?API_KEY=mistyped-token-xyz",
        "/v1/x?token=abc123&other=1",
    ],
)
def test_keys_in_a_query_string_are_masked_even_unknown(line: str) -> None:
    scrubbed = Redactor([]).scrub(line)
    assert REDACTED in scrubbed
    for secret in ("not-a-known-key-42", "mistyped-token-xyz", "abc123"):
        assert secret not in scrubbed
    assert "client_id=me" in Redactor([]).scrub("/x?client_id=me&api_key=k")
