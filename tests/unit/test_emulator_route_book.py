"""The pure autoscaler state: picking, summaries, request_idx, rate limit, envelope."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.emulator.envelope import EnvelopeError, ReplayGuard, parse_envelope
from scheduler.emulator.route_book import RateLimiter, RouteBook
from scheduler.emulator.settings import EmulatorConfig


def _report(worker_id: int, cur_load: float = 0, loadtime: float = 1.0) -> dict[str, Any]:
    url = f"http://w{worker_id}"
    return {"id": worker_id, "cur_load": cur_load, "max_perf": 100, "loadtime": loadtime,
            "error_msg": "", "url": url}  # fmt: skip


def test_pick_least_queue_time_counting_cost_routed_since_report() -> None:
    book = RouteBook(stale_after_s=3)
    for wid in (1, 2):
        book.register(wid, "e", legacy=False)
        book.on_status(_report(wid), now=0.0)
    first = book.pick("e", 0.1)
    assert first is not None
    book.assign(first, 500, book.request_idx("e", 0))
    second = book.pick("e", 0.1)
    assert second is not None
    assert second.worker_id != first.worker_id


def test_summary_counts_states_and_staleness() -> None:
    book = RouteBook(stale_after_s=3)
    for wid in (1, 2, 3, 4):
        book.register(wid, "e", legacy=False)
    book.on_status(_report(1), 0.0)
    book.on_status(_report(2, loadtime=0), 0.0)
    book.on_status({**_report(3), "error_msg": "boom"}, 0.0)
    assert book.summary("e", 1.0) == "Ready: 1, Loading: 2, Error: 1, Stopped: 0"
    assert book.summary("e", 10.0) == "Ready: 0, Loading: 1, Error: 0, Stopped: 3"
    assert book.pick("e", 10.0) is None


def test_request_idx_is_stable_while_waiting_and_fresh_after() -> None:
    book = RouteBook(stale_after_s=3)
    idx = book.request_idx("e", 0)
    assert book.request_idx("e", idx) == idx
    assert book.request_idx("e", 12345) != 12345
    book.register(1, "e", legacy=False)
    book.on_status(_report(1), 0.0)
    view = book.pick("e", 0.0)
    assert view is not None
    assert book.assign(view, 1, idx) == 1
    assert book.request_idx("e", idx) != idx


def test_rate_limiter_retry_after_in_whole_seconds() -> None:
    limiter = RateLimiter()
    assert limiter.check("k", 0.0, 2.5) is None
    assert limiter.check("k", 0.1, 2.5) == 3
    assert limiter.check("other", 0.1, 2.5) is None
    assert limiter.check("k", 2.6, 2.5) is None
    assert limiter.check("k", 2.7, 0) is None


def test_envelope_errors_match_official_shapes() -> None:
    with pytest.raises(EnvelopeError) as bad:
        parse_envelope(b"{")
    assert bad.value.body == {"error": "invalid JSON"}
    with pytest.raises(EnvelopeError) as missing:
        parse_envelope(b'{"auth_data": {"url": "u"}}')
    assert missing.value.body["payload"] == "field missing"
    assert set(missing.value.body["auth_data"]) == {
        "cost", "endpoint", "reqnum", "request_idx", "signature"
    }  # fmt: skip
    legacy = parse_envelope(
        b'{"auth_data": {"url": "u", "cost": 1, "endpoint": "e", "reqnum": 3, "signature": "s"},'
        b' "payload": {}}',
        legacy=True,
    )
    assert legacy.reqnum == 3


def test_replay_guard_history_and_reqnum_window() -> None:
    guard = ReplayGuard()
    msg = {"cost": 1, "endpoint": "e", "reqnum": 500, "url": "u", "signature": "s"}
    assert not guard.is_replay(msg)
    guard.admit(msg)
    assert guard.is_replay(msg)
    assert guard.is_replay({**msg, "reqnum": 399})
    assert not guard.is_replay({**msg, "reqnum": 400})


def test_config_is_yaml_friendly_and_strict() -> None:
    cfg = EmulatorConfig.model_validate({"endpoints": {"a": {"workers": 0, "mode": "legacy"}}})
    assert cfg.endpoints["a"].mode == "legacy"
    assert cfg.worker_stale_after_s == 3.0
    with pytest.raises(ValueError, match="extra"):
        EmulatorConfig.model_validate({"bogus": 1})
    with pytest.raises(ValueError, match="greater than 0"):
        EmulatorConfig.model_validate({"endpoints": {"a": {"perf": 0}}})
