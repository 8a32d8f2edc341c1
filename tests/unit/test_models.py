"""Request bodies of the job API: worker routes and JobRequest validation."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from scheduler.api.models import JobRequest, check_worker_route

GOOD_ROUTES = [
    "/",
    "/generate",
    "/v1/chat/completions",
    "/v1/completions/",
    "/a.b/c_d-e~f",
    "/.well-known/x",
    "/a..b",
    "/...",
    "/a/b..",
    "/x:y@z",
    "/p;v=1,2",
    "/!$&'()*+,;=",
]

BAD_ROUTES = [
    pytest.param("", id="empty"),
    pytest.param("generate", id="relative"),
    pytest.param("//evil.example/x", id="network-path"),
    pytest.param("//", id="double-slash"),
    pytest.param("http://x/generate", id="absolute-http"),
    pytest.param("https://x", id="absolute-https"),
    pytest.param("/..", id="dotdot"),
    pytest.param("/a/./b", id="dot-segment"),
    pytest.param("/%20encoded", id="percent-encoding"),
    pytest.param("/../etc/passwd", id="dotdot-first"),
    pytest.param("/a/../b", id="dotdot-middle"),
    pytest.param("/a/..", id="dotdot-last"),
    pytest.param("/a/../", id="dotdot-trailing-slash"),
    pytest.param("/a b", id="space"),
    pytest.param(" /a", id="leading-space"),
    pytest.param("/a\n", id="newline"),
    pytest.param("/a\r\nHost: x", id="crlf-injection"),
    pytest.param("/a\x00", id="nul"),
    pytest.param("/a\t", id="tab"),
    pytest.param("/a\x7f", id="del"),
    pytest.param("/a?x=1", id="query"),
    pytest.param("/a#frag", id="fragment"),
    pytest.param("/caf\u00e9", id="non-ascii"),
    pytest.param("\\a", id="backslash"),
    pytest.param("/a\\b", id="inner-backslash"),
]


@pytest.mark.parametrize("route", GOOD_ROUTES)
def test_good_routes_pass_unchanged(route: str) -> None:
    assert check_worker_route(route) == route
    assert JobRequest.model_validate({"payload": {}, "route": route}).route == route


@pytest.mark.parametrize("route", BAD_ROUTES)
def test_bad_routes_rejected(route: str) -> None:
    with pytest.raises(ValueError, match="must"):
        check_worker_route(route)
    with pytest.raises(ValidationError) as info:
        JobRequest.model_validate({"payload": {}, "route": route})
    assert info.value.errors()[0]["loc"] == ("route",)


def test_dotdot_message() -> None:
    with pytest.raises(ValueError, match=r"must not contain '\.' or '\.\.' segments"):
        check_worker_route("/a/../b")


@pytest.mark.parametrize("route", ["/%2e%2e/admin", "/%2E%2E/admin", "/.%2e/x", "/a/%2e%2e"])
def test_percent_encoded_dotdot_rejected(route: str) -> None:
    with pytest.raises(ValueError, match="must"):
        check_worker_route(route)


def test_route_too_long() -> None:
    with pytest.raises(ValidationError):
        JobRequest.model_validate({"payload": {}, "route": "/" + "a" * 512})


@given(st.text(max_size=40))
@settings(max_examples=200)
def test_check_worker_route_accepts_only_plain_paths(route: str) -> None:
    try:
        accepted = check_worker_route(route)
    except ValueError:
        return
    assert accepted == route
    assert route.startswith("/")
    assert not route.startswith("//")
    assert ".." not in route.split("/")
    assert all(33 <= ord(ch) <= 126 for ch in route)
    assert not set(route) & set('?#\\ "<>[]{}|^`')


@given(st.lists(st.sampled_from(["a", "v1", ".", "..", "", "x.y", "%41"]), max_size=6))
@settings(max_examples=200)
def test_check_worker_route_segments(segments: list[str]) -> None:
    route = "/" + "/".join(segments)
    should_pass = (
        not {".", ".."} & set(segments) and not route.startswith("//") and "%" not in route
    )
    if should_pass:
        assert check_worker_route(route) == route
    else:
        with pytest.raises(ValueError, match="must"):
            check_worker_route(route)


# --- JobRequest -----------------------------------------------------------------------------


def test_minimal_request_defaults() -> None:
    request = JobRequest.model_validate({"payload": {"prompt": "hi"}})
    assert request.payload == {"prompt": "hi"}
    assert request.route is None
    assert request.cost is None
    assert request.priority == 5
    assert request.timeout_s is None
    assert request.idempotency_key is None
    assert request.webhook is None


def test_full_request() -> None:
    body = {
        "route": "/v1/completions",
        "payload": {"nested": {"list": [1, 2, None]}},
        "cost": 12.5,
        "priority": 9,
        "timeout_s": 30,
        "idempotency_key": "k-1",
        "webhook": {"url": "http://localhost:9000/hook"},
    }
    request = JobRequest.model_validate_json(json.dumps(body))
    assert request.model_dump() == {**body, "timeout_s": 30.0, "session": None}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", 0),
        ("priority", 9),
        ("cost", 0),
        ("cost", 0.0),
        ("cost", 1e9),
        ("cost", None),
        ("timeout_s", 1e-6),
        ("timeout_s", 86_400),
        ("timeout_s", None),
        ("idempotency_key", "k"),
        ("idempotency_key", "k" * 256),
        ("webhook", None),
        ("webhook", {"url": "x"}),
        ("route", None),
    ],
)
def test_valid_field(field: str, value: Any) -> None:
    request = JobRequest.model_validate({"payload": {}, field: value})
    assert request.model_dump()[field] == value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", -1),
        ("priority", 10),
        ("priority", 2.5),
        ("priority", "high"),
        ("priority", None),
        ("cost", -0.01),
        ("cost", -1),
        ("cost", 1e9 + 1),
        ("cost", math.inf),
        ("cost", -math.inf),
        ("cost", math.nan),
        ("cost", "cheap"),
        ("timeout_s", 0),
        ("timeout_s", -1),
        ("timeout_s", 86_401),
        ("timeout_s", math.inf),
        ("timeout_s", math.nan),
        ("idempotency_key", ""),
        ("idempotency_key", "k" * 257),
        ("webhook", {"url": ""}),
        ("webhook", {"url": "x" * 2049}),
        ("webhook", {"url": "http://x", "secret": "s"}),
        ("webhook", "http://x"),
        ("payload", []),
        ("payload", "text"),
        ("payload", None),
        ("payload", 42),
        ("unknown", 1),
        ("model", "gpt"),
    ],
)
def test_invalid_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        JobRequest.model_validate({"payload": {}, field: value})
    assert info.value.errors()[0]["loc"][0] == field


def test_payload_required() -> None:
    with pytest.raises(ValidationError) as info:
        JobRequest.model_validate({"priority": 5})
    assert info.value.errors()[0]["loc"] == ("payload",)
    assert info.value.errors()[0]["type"] == "missing"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ["cost", "timeout_s"])
def test_non_finite_json_numbers_rejected(field: str, literal: str) -> None:
    with pytest.raises(ValidationError):
        JobRequest.model_validate_json(f'{{"payload": {{}}, "{field}": {literal}}}')


@given(st.integers(-100, 100))
@settings(max_examples=200)
def test_priority_range(priority: int) -> None:
    body = {"payload": {}, "priority": priority}
    if 0 <= priority <= 9:
        assert JobRequest.model_validate(body).priority == priority
    else:
        with pytest.raises(ValidationError):
            JobRequest.model_validate(body)


@given(st.floats())
@settings(max_examples=200)
def test_cost_range(cost: float) -> None:
    body = {"payload": {}, "cost": cost}
    if math.isfinite(cost) and 0 <= cost <= 1e9:
        assert JobRequest.model_validate(body).cost == cost
    else:
        with pytest.raises(ValidationError):
            JobRequest.model_validate(body)


@given(st.floats())
@settings(max_examples=200)
def test_timeout_range(timeout: float) -> None:
    body = {"payload": {}, "timeout_s": timeout}
    if math.isfinite(timeout) and 0 < timeout <= 86_400:
        assert JobRequest.model_validate(body).timeout_s == timeout
    else:
        with pytest.raises(ValidationError):
            JobRequest.model_validate(body)
