"""The emulated autoscaler holds requests as Vast does: WAITING while every ready worker
is past its queue limit by its last report; waiting request_idx entries live
``replay_timeout`` seconds from their last route call (pure RouteBook, times passed in)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.emulator.route_book import RouteBook


def _report(worker_id: int, cur_load: float) -> dict[str, Any]:
    return {"id": worker_id, "cur_load": cur_load, "max_perf": 100, "loadtime": 1.0,
            "error_msg": "", "url": f"http://w{worker_id}"}  # fmt: skip


def _book(*loads: float, limit_s: float = 2.0) -> RouteBook:
    book = RouteBook(stale_after_s=3)
    for wid, load in enumerate(loads, start=1):
        book.register(wid, "e", legacy=False, queue_limit_s=limit_s)
        book.on_status(_report(wid, load), now=0.0)
    return book


def test_held_while_every_worker_reports_past_its_limit() -> None:
    # max_perf 100, limit 2 s: a reported load of 201 is 2.01 s of queue, past the limit.
    assert _book(201, 300).pick("e", 0.5) is None
    open_one = _book(201, 200).pick("e", 0.5)  # exactly at the limit is not past it
    assert open_one is not None
    assert open_one.worker_id == 2


def test_cost_routed_since_the_report_does_not_close_a_worker() -> None:
    book = _book(0)
    view = book.pick("e", 0.1)
    assert view is not None
    book.assign(view, 10_000, book.request_idx("e", 0, now=0.1))
    assert book.pick("e", 0.2) is view  # its next report decides
    book.on_status(_report(1, 10_000), now=0.3)
    assert book.pick("e", 0.4) is None


def test_waiting_entry_expires_after_replay_timeout_from_its_last_call() -> None:
    book = RouteBook(stale_after_s=3)
    idx = book.request_idx("e", 0, cost=300, now=0.0, replay_timeout_s=10)
    assert book.waiting("e", 5.0) == (1, 300)
    assert book.request_idx("e", idx, cost=200, now=9.0, replay_timeout_s=10) == idx
    assert book.waiting("e", 18.9) == (1, 200)  # renewed at 9 s: lives to 19 s
    assert book.waiting("e", 19.0) == (0, 0)
    assert book.request_idx("e", idx, cost=200, now=19.5, replay_timeout_s=10) != idx


def test_an_index_of_another_endpoint_is_not_carried() -> None:
    book = RouteBook(stale_after_s=3)
    idx = book.request_idx("a", 0, cost=1, now=0.0)
    assert book.request_idx("b", idx, cost=1, now=0.0) != idx
    assert book.waiting("a", 0.0) == (1, 1)


Step = tuple[float, int | None]  # (seconds to advance, index of an earlier answer or None)


@settings(max_examples=200, deadline=None)
@given(
    timeout_s=st.floats(min_value=0.1, max_value=100),
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=50), st.none() | st.integers(0, 20)),
        max_size=40,
    ),
)
def test_an_index_comes_back_iff_its_last_call_is_younger_than_the_timeout(
    timeout_s: float, steps: list[Step]
) -> None:
    book = RouteBook(stale_after_s=3)
    now = 0.0
    issued: list[int] = []
    last_call: dict[int, float] = {}
    for advance, pick in steps:
        now += advance
        carried = issued[pick % len(issued)] if pick is not None and issued else 0
        alive = carried in last_call and last_call[carried] + timeout_s > now
        idx = book.request_idx("e", carried, cost=1, now=now, replay_timeout_s=timeout_s)
        assert (idx == carried) == alive
        if idx != carried:
            issued.append(idx)
        last_call[idx] = now
        live = [i for i, t in last_call.items() if t + timeout_s > now]
        assert book.waiting("e", now) == (len(live), len(live))
