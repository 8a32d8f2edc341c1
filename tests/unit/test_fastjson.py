"""``scheduler.fastjson`` reads and writes what the standard library would, edges included."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import fastjson

# Everything ``json`` reads or writes: NaN and infinities, integers far past 64 bits, any text
# (lone surrogates too), non-ASCII keys.
documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(2**200), 2**200) | st.floats()
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=25,
)  # fmt: skip


def spelled(value: Any) -> str:
    """One spelling per value: ``1`` and ``1.0`` differ, ``1e-05`` and ``0.00001`` do not."""
    return json.dumps(value, sort_keys=False)


@settings(max_examples=400)
@given(documents)
def test_loads_gives_the_standard_librarys_value(value: Any) -> None:
    raw = json.dumps(value).encode()
    assert spelled(fastjson.loads(raw)) == spelled(json.loads(raw))


@settings(max_examples=400)
@given(documents)
def test_dumps_is_compact_ascii_of_the_same_value(value: Any) -> None:
    out = fastjson.dumps(value)
    assert out.isascii()
    assert spelled(json.loads(out)) == spelled(value)
    if not has_float(value):  # floats may be spelled otherwise; all else byte for byte
        standard = json.dumps(value, separators=(",", ":")).encode()
        assert out.replace(b"\x7f", b"\\u007f") == standard  # DEL: raw or escaped, both JSON


def has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    children = value.values() if isinstance(value, dict) else value
    return isinstance(value, dict | list) and any(has_float(c) for c in children)


def test_integers_past_64_bits_stay_exact() -> None:
    big = 2**64 + 1
    assert fastjson.loads(f'{{"n": {big}}}'.encode()) == {"n": big}
    assert fastjson.dumps({"n": big}) == f'{{"n":{big}}}'.encode()


def test_nan_is_written_as_json_writes_it() -> None:
    assert fastjson.dumps([float("nan")]) == b"[NaN]"
    assert fastjson.dumps([None]) == b"[null]"


@pytest.mark.parametrize(
    ("raw", "error"),
    [(b"{", ValueError), (b"\xff{}", UnicodeDecodeError), (b"[" * 100_000, RecursionError)],
)
def test_errors_are_the_standard_librarys(raw: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        fastjson.loads(raw)
