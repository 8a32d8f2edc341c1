"""Mapping the route call's HTTP answer to Ready | Waiting or typed errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from scheduler.vast.route_client import (
    MAX_ANSWER_BYTES,
    MAX_ERROR_CHARS,
    answer_to_result,
    parse_route_answer,
)
from scheduler.vast.types import (
    Ready,
    RouteBadRequest,
    RouteError,
    RouteMalformed,
    RouteRateLimited,
    RouteServerError,
    RouteUnauthorized,
    Waiting,
    parse_status_counts,
    summarise_counts,
)


def ready_answer(**overrides: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "url": "https://10.0.0.5:41000/",
        "reqnum": 17,
        "signature": "c2lnbmF0dXJl",
        "cost": 256.0,
        "endpoint": "llm",
        "request_idx": 4,
        "__request_id": "abc",
    }
    answer.update(overrides)
    return {k: v for k, v in answer.items() if v is not _DROP}


_DROP = object()


def encode(answer: object) -> bytes:
    return json.dumps(answer).encode()


# --- 200 with a url: Ready ----------------------------------------------------------------


def test_ready_from_answer() -> None:
    answer = ready_answer()
    result = answer_to_result(answer)
    assert result == Ready("https://10.0.0.5:41000", 256.0, 17, 4, answer)
    assert isinstance(result, Ready)
    # the answer travels to the worker verbatim: the very same dict, untouched
    assert result.auth_data is answer
    assert result.auth_data["url"] == "https://10.0.0.5:41000/"
    assert result.auth_data == ready_answer()


def test_ready_from_http_answer_keeps_every_field() -> None:
    answer = ready_answer(extra={"nested": [1, 2]}, cost=3)
    result = parse_route_answer(200, {}, encode(answer))
    assert isinstance(result, Ready)
    assert result.auth_data == answer
    assert result.cost == 3.0
    assert isinstance(result.cost, float)
    assert "signature" not in repr(result)


@pytest.mark.parametrize(
    ("overrides", "field", "expected"),
    [
        pytest.param({"request_idx": _DROP}, "request_idx", 0, id="no-request-idx"),
        pytest.param({"request_idx": None}, "request_idx", 0, id="null-request-idx"),
        pytest.param({"url": "http://h:8000"}, "url", "http://h:8000", id="http"),
        pytest.param({"url": "https://h/path/"}, "url", "https://h/path", id="path"),
        pytest.param({"reqnum": 0}, "reqnum", 0, id="reqnum-zero"),
        pytest.param({"cost": 0}, "cost", 0.0, id="cost-int-zero"),
    ],
)
def test_ready_fields(overrides: dict[str, Any], field: str, expected: object) -> None:
    result = answer_to_result(ready_answer(**overrides))
    assert isinstance(result, Ready)
    assert getattr(result, field) == expected


# --- 200 without a url: Waiting -----------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param({}, Waiting("", None, {}), id="empty"),
        pytest.param(
            {"status": "Loading: 2, Ready: 0", "request_idx": 9},
            Waiting("Loading: 2, Ready: 0", 9, {"loading": 2, "ready": 0}),
            id="counts",
        ),
        pytest.param(
            {"url": "", "status": "No workers ready", "request_idx": 3},
            Waiting("No workers ready", 3, {}),
            id="empty-url",
        ),
        pytest.param({"url": None, "request_idx": 0}, Waiting("", 0, {}), id="null-url"),
        pytest.param({"status": 42}, Waiting("42", None, {}), id="non-string-status"),
        pytest.param(
            {"status": "Cold Start = 3; stopped:1"},
            Waiting("Cold Start = 3; stopped:1", None, {"cold_start": 3, "stopped": 1}),
            id="mixed-separators",
        ),
    ],
)
def test_waiting(answer: dict[str, Any], expected: Waiting) -> None:
    assert answer_to_result(answer) == expected
    assert parse_route_answer(200, {}, encode(answer)) == expected


def test_waiting_status_truncated() -> None:
    result = answer_to_result({"status": "x" * 10_000})
    assert isinstance(result, Waiting)
    assert len(result.status) == 500


# --- error statuses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        pytest.param(b'{"error": "endpoint llm not found"}', "endpoint llm not found", id="json"),
        pytest.param(b'{"detail": "nope"}', "nope", id="json-without-error-key"),
        pytest.param(b"plain text problem", "plain text problem", id="text"),
        pytest.param(b'"a json string"', "a json string", id="json-string"),
        pytest.param(b"\xff\xfebad bytes", "bad bytes", id="bad-utf8"),
    ],
)
def test_400_is_bad_request_with_server_text(raw: bytes, fragment: str) -> None:
    with pytest.raises(RouteBadRequest, match="route call rejected") as info:
        parse_route_answer(400, {}, raw)
    assert fragment in str(info.value)


def test_400_error_text_is_bounded() -> None:
    with pytest.raises(RouteBadRequest) as info:
        parse_route_answer(400, {}, encode({"error": "e" * 5_000}))
    assert str(info.value).count("e" * 10) <= MAX_ERROR_CHARS // 10
    assert len(str(info.value)) <= len("route call rejected: ") + MAX_ERROR_CHARS


@pytest.mark.parametrize("status", [401, 403])
def test_unauthorized(status: int) -> None:
    with pytest.raises(RouteUnauthorized, match=str(status)):
        parse_route_answer(status, {}, b'{"error": "bad key"}')


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [
        pytest.param({"Retry-After": "3"}, 3.0, id="int"),
        pytest.param({"Retry-After": "1.5"}, 1.5, id="float"),
        pytest.param({"Retry-After": "0"}, 0.0, id="zero"),
        pytest.param({"Retry-After": "3600"}, 3600.0, id="upper-bound"),
        pytest.param({"Retry-After": " 2 "}, 2.0, id="whitespace"),
        pytest.param(CIMultiDict({"retry-after": "4"}), 4.0, id="case-insensitive"),
        pytest.param({}, None, id="missing"),
        pytest.param(None, None, id="no-headers"),
        pytest.param({"Retry-After": ""}, None, id="empty"),
        pytest.param({"Retry-After": "soon"}, None, id="text"),
        pytest.param({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None, id="http-date"),
        pytest.param({"Retry-After": "-1"}, None, id="negative"),
        pytest.param({"Retry-After": "3601"}, None, id="too-large"),
        pytest.param({"Retry-After": "nan"}, None, id="nan"),
        pytest.param({"Retry-After": "inf"}, None, id="inf"),
    ],
)
def test_429_rate_limited(headers: Any, retry_after: float | None) -> None:
    with pytest.raises(RouteRateLimited) as info:
        parse_route_answer(429, headers, b"")
    assert info.value.retry_after_s == retry_after
    assert info.value.kind == "rate_limited"


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_5xx_is_server_error(status: int) -> None:
    with pytest.raises(RouteServerError, match=str(status)):
        parse_route_answer(status, {}, encode(ready_answer()))


@pytest.mark.parametrize("status", [201, 204, 302, 404, 418])
def test_other_statuses_are_route_errors(status: int) -> None:
    with pytest.raises(RouteError):
        parse_route_answer(status, {}, encode(ready_answer()))


# --- malformed answers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b'{"url": ', id="truncated"),
        pytest.param(b"\xff\xfe\x00", id="bad-utf8"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'"string"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"42", id="number"),
        pytest.param(b"true", id="bool"),
    ],
)
def test_malformed_body(raw: bytes) -> None:
    with pytest.raises(RouteMalformed):
        parse_route_answer(200, {}, raw)


def test_oversize_answer_is_malformed() -> None:
    answer = ready_answer(padding="")
    base = len(encode(answer))
    exact = encode(ready_answer(padding="p" * (MAX_ANSWER_BYTES - base)))
    assert len(exact) == MAX_ANSWER_BYTES
    assert isinstance(parse_route_answer(200, {}, exact), Ready)
    with pytest.raises(RouteMalformed, match="too large"):
        parse_route_answer(200, {}, exact + b" ")


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"url": "http://user:pw@10.0.0.5:4000"}, id="user-and-password"),
        pytest.param({"url": "http://user@10.0.0.5:4000"}, id="user-only"),
        pytest.param({"url": "ftp://10.0.0.5"}, id="ftp"),
        pytest.param({"url": "file:///etc/passwd"}, id="file"),
        pytest.param({"url": "10.0.0.5:4000"}, id="no-scheme"),
        pytest.param({"url": "http://"}, id="no-host"),
        pytest.param({"url": "/relative"}, id="relative"),
        pytest.param({"url": 12345}, id="url-number"),
        pytest.param({"url": ["http://h"]}, id="url-list"),
        pytest.param({"url": True}, id="url-true"),
        pytest.param({"signature": _DROP}, id="no-signature"),
        pytest.param({"signature": None}, id="null-signature"),
        pytest.param({"signature": 123}, id="numeric-signature"),
        pytest.param({"reqnum": _DROP}, id="no-reqnum"),
        pytest.param({"reqnum": True}, id="bool-reqnum"),
        pytest.param({"reqnum": 1.0}, id="float-reqnum"),
        pytest.param({"reqnum": "17"}, id="string-reqnum"),
        pytest.param({"cost": _DROP}, id="no-cost"),
        pytest.param({"cost": "256"}, id="string-cost"),
        pytest.param({"cost": False}, id="bool-cost"),
        pytest.param({"request_idx": "4"}, id="string-request-idx"),
        pytest.param({"request_idx": True}, id="bool-request-idx"),
        pytest.param({"request_idx": 4.0}, id="float-request-idx"),
    ],
)
def test_malformed_answer(overrides: dict[str, Any]) -> None:
    answer = ready_answer(**overrides)
    with pytest.raises(RouteMalformed):
        answer_to_result(answer)
    with pytest.raises(RouteMalformed):
        parse_route_answer(200, {}, encode(answer))


@pytest.mark.parametrize("request_idx", ["4", True, 1.5, [1]])
def test_waiting_with_bad_request_idx_is_malformed(request_idx: object) -> None:
    with pytest.raises(RouteMalformed):
        answer_to_result({"status": "waiting", "request_idx": request_idx})


@pytest.mark.parametrize(
    "url", ["http://[::1", "http://[10.0.0.5]:4000", "http://exa\u2100mple:4000"]
)
def test_unparseable_url_is_malformed(url: str) -> None:
    with pytest.raises(RouteMalformed):
        answer_to_result(ready_answer(url=url))


def test_deeply_nested_answer_is_malformed() -> None:
    depth = 30_000
    raw = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    assert len(raw) <= MAX_ANSWER_BYTES
    with pytest.raises(RouteMalformed):
        parse_route_answer(200, {}, raw)


# --- properties ---------------------------------------------------------------------------

# URL text: printable ASCII without brackets (brackets reach the urlsplit bug above).
url_text = st.text(
    st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="[]"), max_size=30
)
urls = st.one_of(
    url_text,
    st.builds(
        str.__add__,
        st.sampled_from(["http://", "https://", "ftp://", "http://u:p@", "HTTP://", ""]),
        url_text,
    ),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
known_keys = {
    "url": st.one_of(urls, json_values),
    "reqnum": st.one_of(st.integers(), json_values),
    "signature": st.one_of(st.text(max_size=10), json_values),
    "cost": st.one_of(st.floats(allow_nan=False), st.integers(), json_values),
    "request_idx": st.one_of(st.integers(), json_values),
    "status": st.one_of(st.text(max_size=40), json_values),
}
good_urls = st.builds(
    "{}://{}{}{}".format,
    st.sampled_from(["http", "https"]),
    st.sampled_from(["10.0.0.5", "worker.example", "[::1]", "h"]),
    st.sampled_from(["", ":4000", ":65535"]),
    st.sampled_from(["", "/", "/prefix/", "/a/b"]),
)
extras = st.dictionaries(st.text(max_size=8), json_values, max_size=3)
random_answers = st.builds(
    lambda fixed, extra: {**extra, **fixed},
    st.fixed_dictionaries({}, optional=known_keys),
    extras,
)
# Mostly well-formed answers, one field possibly swapped for anything: reaches Ready.
plausible_answers = st.builds(
    lambda fixed, extra, swap: {**extra, **fixed, **swap},
    st.fixed_dictionaries(
        {
            "url": good_urls,
            "reqnum": st.integers(),
            "signature": st.text(max_size=10),
            "cost": st.one_of(st.integers(), st.floats(allow_nan=False)),
        },
        optional={"request_idx": st.one_of(st.none(), st.integers()), "status": st.text()},
    ),
    extras,
    st.fixed_dictionaries({}, optional=known_keys),
)
answers = st.one_of(random_answers, plausible_answers)


def check_result(result: object, answer: dict[str, Any]) -> None:
    if isinstance(result, Ready):
        assert result.auth_data == answer
        assert result.url.startswith(("http://", "https://", "HTTP://"))
        assert not result.url.endswith("/")
        assert isinstance(result.reqnum, int)
        assert not isinstance(result.reqnum, bool)
    else:
        assert isinstance(result, Waiting)
        assert not answer.get("url")
        assert all(isinstance(v, int) and v >= 0 for v in result.worker_counts.values())


@given(answers)
@settings(max_examples=100)
def test_any_json_object_gives_result_or_route_error(answer: dict[str, Any]) -> None:
    try:
        result = answer_to_result(answer)
    except RouteMalformed:  # any other exception fails the test
        return
    check_result(result, answer)


@given(answers)
@settings(max_examples=100)
def test_any_json_object_over_http_gives_result_or_route_error(answer: dict[str, Any]) -> None:
    raw = encode(answer)
    try:
        result = parse_route_answer(200, {}, raw)
    except RouteMalformed:  # any other exception fails the test
        return
    check_result(result, json.loads(raw))


@given(st.integers(100, 599), st.binary(max_size=300), st.text(max_size=12))
@settings(max_examples=200)
def test_any_bytes_any_status_only_route_errors(status: int, raw: bytes, retry: str) -> None:
    try:
        result = parse_route_answer(status, {"Retry-After": retry}, raw)
    except RouteError:
        return
    assert status == 200
    assert isinstance(result, Ready | Waiting)


# --- parse_status_counts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("", {}),
        ("No workers ready", {}),
        ("Loading: 2, Ready: 0", {"loading": 2, "ready": 0}),
        ("loading=2 ready=1", {"loading": 2, "ready": 1}),
        ("Cold Start: 3", {"cold_start": 3}),
        ("READY : 10", {"ready": 10}),
        ("ready: -1", {}),
        ("ready: 1.5", {"ready": 1}),
        ("42", {}),
        (": 3", {}),
    ],
)
def test_parse_status_counts(status: str, expected: dict[str, int]) -> None:
    assert parse_status_counts(status) == expected


@given(st.text(max_size=80))
@settings(max_examples=200)
def test_parse_status_counts_total(status: str) -> None:
    counts = parse_status_counts(status)
    for name, count in counts.items():
        assert name
        assert name == name.lower()
        assert " " not in name
        assert isinstance(count, int)
        assert count >= 0


@pytest.mark.parametrize(
    ("counts", "state"),
    [
        ({}, "unknown"),
        ({"ready": 2, "loading": 1}, "all_busy"),
        ({"ready": 0, "loading": 2}, "loading"),
        ({"model_loading": 1}, "loading"),
        ({"stopped": 3, "ready": 0}, "scaled_to_zero"),
        ({"inactive": 1}, "scaled_to_zero"),
    ],
)
def test_waiting_status_summary(counts: dict[str, int], state: str) -> None:
    assert summarise_counts(counts) == state
