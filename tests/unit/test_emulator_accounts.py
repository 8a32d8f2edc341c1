"""The emulated account: endpoint ids, per-endpoint route keys, rotation, listing and worker
rows in the shapes the official client (``vastai`` 1.9.1) parses."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from vastai.data.endpoint import EndpointData
from vastai.serverless.client.worker import Worker

from scheduler.emulator.accounts import Accounts
from scheduler.emulator.endpoint_workers import DLPERF, worker_row
from scheduler.emulator.route_book import RouteBook
from scheduler.emulator.settings import (
    EMULATOR_ACCOUNT_KEY,
    FIRST_ENDPOINT_ID,
    EmulatorConfig,
    assign_endpoint_ids,
)

GLOBAL = "global-key"


def _config(**endpoints: dict[str, Any]) -> EmulatorConfig:
    return EmulatorConfig.model_validate({"endpoints": endpoints})


def _accounts(**endpoints: dict[str, Any]) -> Accounts:
    return Accounts(_config(**endpoints), [GLOBAL, "second-global"], created_at=1_700_000_000.0)


# ---------------------------------------------------------------------- settings and ids
def test_ids_default_to_first_id_plus_sorted_index() -> None:
    cfg = _config(zeta={}, alpha={}, mid={})
    assert cfg.endpoint_ids() == {"alpha": 1000, "mid": 1001, "zeta": 1002}


def test_explicit_ids_kept_and_derived_ones_step_over_them() -> None:
    cfg = _config(a={}, b={"id": 1000}, c={})
    assert cfg.endpoint_ids() == {"b": 1000, "a": 1001, "c": 1002}


def test_two_endpoints_with_one_id_is_a_validation_error_naming_both() -> None:
    with pytest.raises(ValidationError, match="'a' and 'b' both have id 7"):
        _config(a={"id": 7}, b={"id": 7})


def test_blank_keys_are_refused_and_secrets_lists_every_key() -> None:
    with pytest.raises(ValidationError, match="api_key"):
        _config(a={"api_key": "  "})
    with pytest.raises(ValidationError, match="account_api_key"):
        EmulatorConfig.model_validate({"account_api_key": ""})
    cfg = _config(a={"api_key": "key-of-a"}, b={})
    assert cfg.secrets() == [EMULATOR_ACCOUNT_KEY, "key-of-a"]
    assert "key-of-a" not in repr(cfg)
    assert EMULATOR_ACCOUNT_KEY not in repr(cfg)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=6),
        st.one_of(st.none(), st.integers(FIRST_ENDPOINT_ID - 3, FIRST_ENDPOINT_ID + 12)),
        max_size=12,
    )
)
def test_assigned_ids_are_unique_keep_explicit_ones_and_are_deterministic(
    explicit: dict[str, int | None],
) -> None:
    given_ids = [i for i in explicit.values() if i is not None]
    if len(given_ids) != len(set(given_ids)):
        with pytest.raises(ValueError, match="both have id"):
            assign_endpoint_ids(explicit)
        return
    ids = assign_endpoint_ids(explicit)
    assert set(ids) == set(explicit)
    assert len(set(ids.values())) == len(ids)
    assert all(ids[n] == i for n, i in explicit.items() if i is not None)
    assert assign_endpoint_ids(dict(reversed(list(explicit.items())))) == ids


# ---------------------------------------------------------------------- route keys
def test_global_keys_route_to_an_endpoint_without_a_key_of_its_own() -> None:
    accounts = _accounts(echo={})
    assert accounts.route_identity("echo", [None, "second-global"]) == "second-global"
    assert accounts.route_identity("echo", [EMULATOR_ACCOUNT_KEY]) is None
    assert accounts.route_identity(None, ["wrong", GLOBAL]) == GLOBAL


def test_an_endpoint_key_routes_to_that_endpoint_only_and_shuts_the_global_keys_out() -> None:
    accounts = _accounts(a={"api_key": "key-of-a"}, b={})
    assert accounts.route_identity("a", ["key-of-a"]) == "key-of-a"
    assert accounts.route_identity("a", [GLOBAL]) is None
    assert accounts.route_identity("b", ["key-of-a"]) is None
    assert accounts.route_identity(None, ["key-of-a"]) is None


def test_rotation_replaces_the_key_and_the_listing_shows_the_new_one() -> None:
    accounts = _accounts(a={"api_key": "key-of-a"}, b={})
    generated = accounts.rotate("b")
    assert len(generated) == 64
    assert generated != accounts.rotate("b")
    new = accounts.rotate("a", "fresh-key")
    assert new == "fresh-key"
    assert accounts.route_identity("a", ["key-of-a", GLOBAL]) is None
    assert accounts.route_identity("a", ["key-of-a", "fresh-key"]) == "fresh-key"
    entry = accounts.get("a")
    assert entry is not None
    assert accounts.row(entry)["api_key"] == "fresh-key"
    with pytest.raises(KeyError):
        accounts.rotate("missing")
    with pytest.raises(ValueError, match="non-blank"):
        accounts.rotate("a", " ")


def test_account_key_is_checked_exactly() -> None:
    accounts = _accounts(a={})
    assert accounts.is_account_key(EMULATOR_ACCOUNT_KEY)
    assert not accounts.is_account_key(EMULATOR_ACCOUNT_KEY + "x")
    assert not accounts.is_account_key(None)


# ---------------------------------------------------------------------- listing rows
def test_rows_parse_with_the_official_endpoint_data_and_carry_the_settings() -> None:
    accounts = _accounts(
        a={"max_queue_time_s": 12, "target_queue_time_s": 4, "max_workers": 3,
           "min_load": 5, "target_util": 0.8, "cold_mult": 2, "endpoint_state": "suspended"},
        b={},
    )  # fmt: skip
    rows = [accounts.row(e) for e in accounts.entries()]
    assert [r["endpoint_name"] for r in rows] == ["a", "b"]
    data = EndpointData.from_dict(rows[0])
    assert (data.id, data.api_key, data.config.endpoint_name) == (1000, GLOBAL, "a")
    cfg = data.config
    assert (cfg.max_queue_time, cfg.target_queue_time, cfg.max_workers) == (12, 4, 3)
    assert (cfg.min_load, cfg.target_util, cfg.cold_mult) == (5, 0.8, 2)
    assert cfg.endpoint_state == "suspended"
    assert EndpointData.from_dict(rows[1]).config.endpoint_state == "active"


def test_an_endpoint_the_config_lacks_joins_with_the_next_id_and_global_keys() -> None:
    accounts = _accounts(a={"id": 5000}, b={})
    entry = accounts.ensure("added")
    assert entry.id == 5001
    assert accounts.ensure("added") is entry
    assert accounts.by_id(5001) is entry
    assert accounts.route_identity("added", [GLOBAL]) == GLOBAL


# ---------------------------------------------------------------------- worker rows
def _ready(loadtime: float = 2.0, working: int = 0, error: str = "") -> dict[str, Any]:
    return {"id": 1, "loadtime": loadtime, "cur_load": 300.0, "new_load": 50.0,
            "max_perf": 850.0, "cur_perf": 40.0, "num_requests_working": working,
            "disk_usage": 1.5, "error_msg": error, "url": "http://w1"}  # fmt: skip


def _row(book: RouteBook, now: float, to_epoch: float = 0.0) -> dict[str, Any]:
    view = book.workers[1]
    return worker_row(view, view.status(now, book.stale_after_s), to_epoch)


def test_worker_rows_follow_the_worker_from_loading_to_running_and_parse_officially() -> None:
    book = RouteBook(stale_after_s=3)
    book.register(1, "e", legacy=False)
    book.on_status(_ready(loadtime=0), now=10.0)
    loading = _row(book, 10.5, to_epoch=1000.0)
    assert loading["status"] == "loading"
    assert (loading["measured_perf"], loading["loaded_at"]) == (DLPERF, 0.0)
    assert loading["started_at"] == 1010.0
    book.on_status(_ready(working=2), now=14.0)
    running = _row(book, 14.5, to_epoch=1000.0)
    assert running["status"] == "running"
    assert (running["measured_perf"], running["perf"], running["reqs_working"]) == (850, 850, 2)
    assert (running["loaded_at"], running["started_at"]) == (1014.0, 1010.0)
    worker = Worker.from_dict(running)
    assert (worker.id, worker.status, worker.cur_load) == (1, "running", 300.0)
    book.on_status(_ready(working=0), now=15.0)
    assert _row(book, 15.1)["status"] == "idle"
    assert _row(book, 30.0)["status"] == "stopped"
    book.on_status(_ready(loadtime=0, error="boom"), now=31.0)
    assert _row(book, 31.0)["status"] == "error"


def test_a_worker_first_seen_ready_dates_its_start_from_its_loadtime() -> None:
    book = RouteBook(stale_after_s=3)
    book.register(1, "e", legacy=False)
    book.on_status(_ready(loadtime=4.0), now=20.0)
    row = _row(book, 20.0)
    assert (row["started_at"], row["loaded_at"]) == (16.0, 20.0)


def test_a_restart_starts_a_new_life() -> None:
    book = RouteBook(stale_after_s=3)
    book.register(1, "e", legacy=False)
    book.on_status(_ready(loadtime=0), now=1.0)
    book.on_status(_ready(), now=2.0)
    book.on_status(_ready(loadtime=0), now=9.0)
    row = _row(book, 9.0)
    assert (row["status"], row["started_at"], row["loaded_at"]) == ("loading", 9.0, 0.0)
