"""The console's answers are untrusted: shapes checked, sizes capped, entries that are not
endpoints skipped, nothing of a key in a repr or an error."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.vast.console import (
    MAX_ENDPOINTS,
    ConsoleMalformed,
    ConsoleServerError,
    EndpointsMissing,
    parse_listing,
    parse_workers,
)

KEY = "endpoint-key-0123456789abcdef"


def row(**fields: Any) -> dict[str, Any]:
    return {"id": 7, "endpoint_name": "llm", "api_key": KEY, "endpoint_state": "active",
            "max_queue_time": 30.0, "target_queue_time": 10, "max_workers": 20,
            "user_id": 1, "created_at": 1.0, **fields}  # fmt: skip


def test_a_listing_row_becomes_an_endpoint_with_its_settings() -> None:
    listing = parse_listing({"success": True, "results": [row()]})
    (endpoint,) = listing.endpoints
    assert (endpoint.id, endpoint.name, endpoint.api_key.get_secret_value()) == (7, "llm", KEY)
    assert endpoint.settings() == {
        "id": 7, "state": "active", "max_queue_time_s": 30.0, "target_queue_time_s": 10.0,
        "max_workers": 20, "cold_workers": None, "min_load": None, "target_util": None,
        "cold_mult": None,
    }  # fmt: skip
    assert KEY not in repr(endpoint)
    assert KEY not in repr(listing)


@pytest.mark.parametrize(
    "bad",
    [
        row(id="7"), row(id=True), row(id=-1), row(endpoint_name=""), row(endpoint_name=3),
        row(endpoint_name="x" * 300), row(api_key=""), row(api_key="has space"),
        row(api_key="k" * 600), row(api_key=None), "not an object", None,
    ],
)  # fmt: skip
def test_entries_that_are_not_endpoints_are_skipped(bad: Any) -> None:
    listing = parse_listing({"success": True, "results": [bad, row(endpoint_name="ok")]})
    assert [e.name for e in listing.endpoints] == ["ok"]
    assert listing.skipped == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_queue_time", "30"), ("max_queue_time", float("inf")), ("max_workers", 2.5),
     ("max_workers", -1), ("max_workers", 10**400), ("endpoint_state", 5)],
)  # fmt: skip
def test_odd_settings_are_none_not_errors(field: str, value: Any) -> None:
    (endpoint,) = parse_listing({"results": [row(**{field: value})]}).endpoints
    settings = endpoint.settings()
    key = {"max_queue_time": "max_queue_time_s", "endpoint_state": "state"}.get(field, field)
    assert settings[key] is None


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ([], ConsoleMalformed), ({"success": True}, ConsoleMalformed),
        ({"results": {}}, ConsoleMalformed),
        ({"success": False, "results": []}, ConsoleServerError),
        ({"results": [row()] * (MAX_ENDPOINTS + 1)}, ConsoleMalformed),
    ],
)  # fmt: skip
def test_answers_that_are_not_listings_are_errors(answer: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_listing(answer)


def test_two_endpoints_of_one_name_the_first_listed_wins() -> None:
    listing = parse_listing({"results": [row(id=1), row(id=2)]})
    assert listing.by_name()["llm"].id == 1


def test_workers_rows_error_msg_and_junk() -> None:
    rows = [{"id": 1, "status": "RUNNING", "cur_load": 2.5, "perf": 100, "measured_perf": 90,
             "reqs_working": 3, "reliability": 0.99, "loaded_at": 1.7e9},
            {"id": "2"}, "junk", {"id": 3}]  # fmt: skip
    workers = parse_workers(rows, KEY)
    assert [w.id for w in workers.workers] == [1, 3]
    assert workers.workers[0].view()["measured_perf"] == 90.0
    assert workers.workers[1].status == "UNKNOWN"
    unavailable = parse_workers({"error_msg": f"bad key {KEY}" + "x" * 500}, KEY)
    assert unavailable.workers == ()
    assert unavailable.unavailable is not None
    assert KEY not in unavailable.unavailable
    assert len(unavailable.unavailable) <= 200
    with pytest.raises(ConsoleMalformed):
        parse_workers({"workers": []}, KEY)


def test_missing_endpoints_message_names_them() -> None:
    message = str(EndpointsMissing(["nope", "other"], ["llm"]))
    assert "nope, other" in message
    assert "llm" in message
