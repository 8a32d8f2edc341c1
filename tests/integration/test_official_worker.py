"""The official Vast worker (PyPI ``vastai``) behind the emulator's autoscaler, no daemon.

The tests share one emulator and one worker subprocess (its start-up takes about 2.5 s):
each leaves it idle, and reads only the reports and records that arrive after it starts
(``since``) or that carry its own request_idx. The worker counts a request's workload as
``payload["cost"]``; a model call with ``payload["hold"]`` runs until the test releases it
(see ``official_worker_app.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from emulator_fixtures import call_worker, route, running
from official_worker import (
    SKIP_REASON,
    OfficialWorker,
    calls_running,
    calls_started,
    official_worker,
    vastai_installed,
)

from scheduler.emulator.emulator import Emulator
from scheduler.emulator.settings import EmulatorConfig

pytestmark = [
    pytest.mark.skipif(not vastai_installed(), reason=SKIP_REASON),
    pytest.mark.asyncio(loop_scope="module"),
]

ENDPOINT = "official"
Shared = tuple[Emulator, aiohttp.ClientSession, OfficialWorker]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def official() -> AsyncIterator[Shared]:
    """An emulator with no workers of its own and one ready official worker."""
    cfg = EmulatorConfig.model_validate({"endpoints": {}})
    async with running(cfg) as (emu, http), official_worker(emu, ENDPOINT) as worker:
        yield emu, http, worker


async def routed(http: aiohttp.ClientSession, emu: Emulator, cost: float) -> dict[str, Any]:
    status, answer = await route(http, emu, ENDPOINT, cost)
    assert status == 200, answer
    return answer


async def eventually(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.05)


# Both of the worker's modes: /generate (allow_parallel_requests=True) and /fifo (its
# default, allow_parallel_requests=False: one request at a time, the rest queued in order).
MODES = pytest.mark.parametrize("path", ["/generate", "/fifo"], ids=["parallel", "fifo"])


@MODES
async def test_routed_request_gets_200_and_is_reported_finished(
    official: Shared, path: str
) -> None:
    emu, http, worker = official
    answer = await routed(http, emu, cost=100)
    assert answer["url"] == worker.url
    payload = {"cost": 100, "sleep_s": 0, "prompt": "hello"}
    assert await call_worker(http, answer, payload, path=path) == (200, {"echo": payload})

    def finished_ok() -> bool:
        done = [r for r in worker.finished() if r["request_idx"] == answer["request_idx"]]
        return bool(done) and done[0]["success"] is True

    await eventually(finished_ok)


@MODES
async def test_tampered_signature_gets_401(official: Shared, path: str) -> None:
    emu, http, worker = official
    answer = await routed(http, emu, cost=100)
    tampered = {**answer, "signature": answer["signature"][:-8] + "AAAAAAA="}
    assert (await call_worker(http, tampered, {"sleep_s": 0}, path=path))[0] == 401
    moved = {**answer, "url": worker.url + "/"}  # the signature covers the URL only
    envelope = {"auth_data": moved, "session_id": None, "payload": {"sleep_s": 0}}
    async with http.post(f"{worker.url}{path}", json=envelope) as resp:
        assert resp.status == 401
    assert (await call_worker(http, answer, {"sleep_s": 0}, path=path))[0] == 200


async def test_session_carries_two_concurrent_requests(official: Shared) -> None:
    emu, http, worker = official
    answer = await routed(http, emu, cost=300)
    opened_at = time.monotonic()
    body = {"auth_data": answer, "payload": {"lifetime": 30}}
    async with http.post(f"{worker.url}/session/create", json=body) as resp:
        assert resp.status == 201
        session_id = (await resp.json())["session_id"]
    payloads = [{"cost": 50, "hold": "pair", "n": n} for n in range(2)]
    calls = asyncio.gather(*(call_worker(http, answer, p, session_id=session_id) for p in payloads))
    # Concurrent, not one after the other: the model has both in hand before either may
    # end (each holds until released; a serialised second would never start).
    await worker.wait_for_records(http, lambda r: calls_running(r) == {0, 1})
    # The whole session is one in-flight entry weighing the answer's cost.
    await worker.wait_for_report(lambda b: b["cur_load"] == 300, since=opened_at)
    await worker.release(http, "pair")
    assert await calls == [(200, {"echo": p}) for p in payloads]

    end = {"session_id": session_id, "session_auth": answer}
    async with http.post(f"{worker.url}/session/end", json=end) as resp:
        assert resp.status == 200
        assert (await resp.json())["ended"] is True
    ended_at = time.monotonic()
    assert (await call_worker(http, answer, payloads[0], session_id=session_id))[0] == 410
    await worker.wait_for_report(lambda b: b["cur_load"] == 0, since=ended_at)


async def test_fifo_session_serves_its_requests_one_at_a_time(official: Shared) -> None:
    """The FIFO mode (the worker's default) queues a session's requests like any others:
    the second starts only when the first ends. The emulator's ``fifo`` service does the
    same (test_emulator_worker.py)."""
    emu, http, worker = official
    answer = await routed(http, emu, cost=300)
    body = {"auth_data": answer, "payload": {"lifetime": 30}}
    async with http.post(f"{worker.url}/session/create", json=body) as resp:
        assert resp.status == 201
        session_id = (await resp.json())["session_id"]
    payloads = [{"cost": 50, "hold": f"fifo-{n}", "n": 10 + n} for n in range(2)]
    first = asyncio.create_task(
        call_worker(http, answer, payloads[0], path="/fifo", session_id=session_id)
    )
    await worker.wait_for_records(http, lambda r: calls_running(r) == {10})
    second = asyncio.create_task(
        call_worker(http, answer, payloads[1], path="/fifo", session_id=session_id)
    )
    await asyncio.sleep(0.5)  # time for the second to reach the model, were it passed on
    assert 11 not in calls_started(await worker.records(http))
    await worker.release(http, "fifo-0")
    assert await first == (200, {"echo": payloads[0]})
    await worker.wait_for_records(http, lambda r: calls_running(r) == {11})
    await worker.release(http, "fifo-1")
    assert await second == (200, {"echo": payloads[1]})
    end = {"session_id": session_id, "session_auth": answer}
    async with http.post(f"{worker.url}/session/end", json=end) as resp:
        assert resp.status == 200


async def test_two_requests_on_one_answer_are_one_entry_in_the_workers_books(
    official: Shared,
) -> None:
    """Why the daemon reuses an answer concurrently only inside a session: the worker keys
    its in-flight requests by reqnum, so a second request on the same answer overwrites the
    first's entry (it reports one request and one workload while two run) and the first to
    end removes it (it reports nothing in flight while the other still runs)."""
    emu, http, worker = official
    answer = await routed(http, emu, cost=100)
    sent_at = time.monotonic()
    first = asyncio.create_task(call_worker(http, answer, {"cost": 100, "hold": "first", "n": 1}))
    await worker.wait_for_records(http, lambda r: calls_running(r) == {1})
    alone = await worker.wait_for_report(lambda b: b["num_requests_working"] == 1, since=sent_at)
    second = asyncio.create_task(call_worker(http, answer, {"cost": 100, "hold": "second", "n": 2}))
    await worker.wait_for_records(http, lambda r: calls_running(r) == {1, 2})
    # The first report taken after the second request started: it counts the second's
    # workload as newly received (new_load), while the model runs both.
    both = await worker.wait_for_report(lambda b: b["new_load"] >= 100, since=alone.at + 1e-6)
    assert both.body["num_requests_working"] == 1, both.body
    assert both.body["cur_load"] == 100, both.body

    await worker.release(http, "first")
    assert (await first)[0] == 200
    first_done_at = time.monotonic()
    empty = await worker.wait_for_report(
        lambda b: b["num_requests_working"] == 0, since=first_done_at
    )
    assert empty.body["cur_load"] == 0, empty.body
    records = await worker.records(http)
    assert calls_running(records) == {2}, records  # still running, reported as nothing
    await worker.release(http, "second")
    assert (await second)[0] == 200


@MODES
async def test_in_flight_request_is_reported_in_cur_load(official: Shared, path: str) -> None:
    emu, http, worker = official
    answer = await routed(http, emu, cost=250)
    sent_at = time.monotonic()
    status, _ = await call_worker(http, answer, {"cost": 250, "sleep_s": 2.0}, path=path)
    done_at = time.monotonic()
    assert status == 200
    during = [
        r.body
        for r in worker.reports()
        if sent_at <= r.at <= done_at and answer["request_idx"] in r.body["working_request_idxs"]
    ]
    assert during, [r.body for r in worker.reports()]
    assert all(b["cur_load"] >= 250 and b["num_requests_working"] >= 1 for b in during)
    await worker.wait_for_report(lambda b: b["cur_load"] == 0, since=done_at)


async def _timed_calls(
    http: aiohttp.ClientSession, emu: Emulator, path: str, ns: list[str], cost: float
) -> list[float]:
    """Sends one request per ``n`` to ``path`` together; each one's seconds to its answer."""
    answers = [await routed(http, emu, cost=cost) for _ in ns]
    started = time.monotonic()

    async def timed(answer: dict[str, Any], n: str) -> float:
        payload = {"cost": cost, "n": n}
        assert await call_worker(http, answer, payload, path=path) == (200, {"echo": payload})
        return time.monotonic() - started

    return list(await asyncio.gather(*(timed(a, n) for a, n in zip(answers, ns, strict=True))))


def _most_at_once(records: dict[str, list[dict[str, Any]]], ns: list[str]) -> int:
    """The most model calls among ``ns`` that were in progress at the same instant."""
    calls = [c for c in records["model"] if c["n"] in ns]
    return max(sum(1 for o in calls if o["start"] <= c["start"] < o["end"]) for c in calls)


async def test_parallel_handler_lets_a_batching_model_serve_eight_in_the_time_of_one(
    official: Shared,
) -> None:
    """In front of a batching model server (vLLM-like: a call takes cost / 500 s however
    many run beside it), the worker's parallel handler passes 8 concurrent requests on
    together and they end in about the time of one; its FIFO handler, in front of the same
    model, passes them one at a time and they take about 8 times as long."""
    emu, http, worker = official
    cost = 200.0  # 0.4 s of model time per call
    (alone,) = await _timed_calls(http, emu, "/batch", ["batch-alone"], cost)
    batched_ns = [f"batch-{i}" for i in range(8)]
    batched = await _timed_calls(http, emu, "/batch", batched_ns, cost)
    queued_ns = [f"batch-fifo-{i}" for i in range(8)]
    queued = await _timed_calls(http, emu, "/batch_fifo", queued_ns, cost)
    records = await worker.records(http)
    assert alone >= cost / 500 * 0.95
    assert max(batched) < 3 * alone, (alone, batched)
    assert _most_at_once(records, batched_ns) == 8
    assert _most_at_once(records, queued_ns) == 1
    assert max(queued) >= 8 * cost / 500 * 0.95, queued
    assert max(queued) >= 4 * alone, (alone, queued)
