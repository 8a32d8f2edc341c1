"""External workers in the emulator's route book: reports kept, overrides, staleness."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.emulator.emulator import Emulator
from scheduler.emulator.route_book import RouteBook, StatusReport
from scheduler.emulator.settings import EmulatorConfig


def _report(worker_id: int, **fields: Any) -> dict[str, Any]:
    base = {"id": worker_id, "cur_load": 0, "max_perf": 100, "loadtime": 1.0, "error_msg": ""}
    return base | {"url": f"http://w{worker_id}"} | fields


def _book() -> RouteBook:
    book = RouteBook(stale_after_s=0.3)
    book.register_external(7, "e", url=None, perf=None, stale_after_s=30.0)
    return book


def test_external_reports_are_all_kept_with_arrival_times() -> None:
    book = _book()
    first, second = _report(7, loadtime=0.0), _report(7, cur_load=250)
    assert book.on_status(first, 1.0)
    assert book.on_status(second, 2.5)
    assert book.reports(7) == [StatusReport(1.0, first), StatusReport(2.5, second)]
    assert "e" in book.endpoints


def test_reports_of_unknown_or_emulated_workers_raise() -> None:
    book = _book()
    book.register(1, "e", legacy=False)
    book.on_status(_report(1), 0.0)
    with pytest.raises(KeyError):
        book.reports(1)
    with pytest.raises(KeyError):
        book.reports(99)


def test_external_ready_after_loadtime_and_stale_after_its_own_limit() -> None:
    book = _book()
    book.on_status(_report(7, loadtime=0.0), 0.0)
    assert book.pick("e", 0.1) is None
    book.on_status(_report(7), 1.0)
    assert book.pick("e", 20.0) is not None  # silent for 19 s: still ready (not 0.3 s)
    assert book.summary("e", 40.0) == "Ready: 0, Loading: 0, Error: 0, Stopped: 1"


def test_url_and_perf_overrides() -> None:
    book = RouteBook(stale_after_s=0.3)
    book.register_external(7, "e", url="http://proxy", perf=50.0, stale_after_s=30.0)
    book.on_status(_report(7, cur_load=100, max_perf=1e6), 0.0)
    view = book.pick("e", 0.1)
    assert view is not None
    assert view.url == "http://proxy"
    assert view.queue_time_s() == pytest.approx(2.0)


def test_duplicate_or_bad_registration_is_refused() -> None:
    book = _book()
    with pytest.raises(ValueError, match="already registered"):
        book.register_external(7, "e", url=None, perf=None, stale_after_s=30.0)
    with pytest.raises(ValueError, match="perf"):
        book.register_external(8, "e", url=None, perf=0.0, stale_after_s=30.0)


async def test_emulated_worker_ids_skip_external_ones() -> None:
    cfg = EmulatorConfig.model_validate({"endpoints": {"echo": {"workers": 0}}})
    emulator = Emulator(cfg, ["key"])
    emulator.register_external_worker("official", 1)
    async with emulator:
        worker = await emulator.add_worker("echo")
    assert worker.id == 2
    assert emulator.autoscaler.book.workers[1].external
