"""What goes over the wire to the autoscaler and to workers, recorded by scripted spies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import (
    API_KEY,
    Daemon,
    daemon_config,
    running_daemon,
    wait_for_status,
)
from tests.integration.spies import SpyServer, ready_answer, serving, waiting_answer

OK = (200, {"done": True}, {})


@asynccontextmanager
async def spied(
    route_script: list[tuple[int, object, dict[str, str]]] | None,
    worker_scripts: list[list[tuple[int, object, dict[str, str]]]],
    **endpoint: object,
) -> AsyncIterator[tuple[Daemon, SpyServer, list[SpyServer]]]:
    """Workers first (their URLs go in the route answers), then the autoscaler, then the daemon."""
    async with AsyncExitStack() as stack:
        workers = [
            await stack.enter_async_context(serving(SpyServer(script), "/generate"))
            for script in worker_scripts
        ]
        script = route_script or [(200, ready_answer(w.url, i + 1), {}) for i, w in
                                  enumerate(workers)]  # fmt: skip
        autoscaler = await stack.enter_async_context(serving(SpyServer(script), "/route/"))
        config = daemon_config(autoscaler.url, {"spy": {"max_attempts": 3, **endpoint}})
        daemon = await stack.enter_async_context(running_daemon(config))
        yield daemon, autoscaler, workers


async def run(
    http: aiohttp.ClientSession, daemon: Daemon, **body: object
) -> aiohttp.ClientResponse:
    async with http.post(
        f"{daemon.url}/v1/endpoints/spy/run", json={"payload": {"q": 1}, **body}
    ) as resp:
        await resp.read()
        return resp


async def test_route_answer_goes_verbatim_as_auth_data(http: aiohttp.ClientSession) -> None:
    async with spied(None, [[OK]]) as (daemon, autoscaler, (worker,)):
        resp = await run(http, daemon, cost=42)
        assert resp.status == 200
    route_call = autoscaler.received[0]
    assert route_call.headers["Authorization"] == f"Bearer {API_KEY}"
    assert route_call.body["endpoint"] == "spy"
    assert route_call.body["cost"] == 42
    assert route_call.body["request_idx"] == 0
    sent = worker.received[0]
    assert sent.body == {
        "auth_data": ready_answer(worker.url, 1),
        "session_id": None,
        "payload": {"q": 1},
    }
    assert "Authorization" not in sent.headers
    assert API_KEY not in str(sent.headers)
    assert API_KEY not in str(sent.body)


async def test_waiting_then_ready_carries_request_idx(http: aiohttp.ClientSession) -> None:
    async with AsyncExitStack() as stack:
        worker = await stack.enter_async_context(serving(SpyServer([OK]), "/generate"))
        script = [(200, waiting_answer(77), {}), (200, waiting_answer(77), {}),
                  (200, ready_answer(worker.url, 5, 77), {})]  # fmt: skip
        autoscaler = await stack.enter_async_context(serving(SpyServer(script), "/route/"))
        daemon = await stack.enter_async_context(
            running_daemon(daemon_config(autoscaler.url, {"spy": {}}))
        )
        resp = await run(http, daemon)
        assert resp.status == 200
        async with http.get(f"{daemon.url}/v1/status") as status:
            last = (await status.json())["endpoints"]["spy"]["last_no_worker"]
    assert [c.body["request_idx"] for c in autoscaler.received] == [0, 77, 77]
    assert last["status"] == "Loading: 1, Ready: 0"
    assert last["worker_counts"] == {"loading": 1, "ready": 0}
    assert last["state"] == "loading"
    assert len(worker.received) == 1


async def test_rate_limited_route_call_waits_for_retry_after(http: aiohttp.ClientSession) -> None:
    async with AsyncExitStack() as stack:
        worker = await stack.enter_async_context(serving(SpyServer([OK]), "/generate"))
        script = [(429, "API requests too frequent", {"Retry-After": "1"}),
                  (200, ready_answer(worker.url), {})]  # fmt: skip
        autoscaler = await stack.enter_async_context(serving(SpyServer(script), "/route/"))
        daemon = await stack.enter_async_context(
            running_daemon(daemon_config(autoscaler.url, {"spy": {}}))
        )
        assert (await run(http, daemon)).status == 200
    first, second = autoscaler.received
    assert second.at - first.at >= 0.95


async def test_route_server_errors_are_retried_and_unauthorized_fails_cleanly(
    http: aiohttp.ClientSession,
) -> None:
    async with AsyncExitStack() as stack:
        worker = await stack.enter_async_context(serving(SpyServer([OK]), "/generate"))
        script = [(500, "boom", {}), (502, "bad gateway", {}), (200, ready_answer(worker.url), {})]
        autoscaler = await stack.enter_async_context(serving(SpyServer(script), "/route/"))
        # reuse: never, so that the second job routes again rather than reuse the answer.
        daemon = await stack.enter_async_context(
            running_daemon(daemon_config(autoscaler.url, {"spy": {"reuse": "never"}}))
        )
        assert (await run(http, daemon)).status == 200
        assert len(autoscaler.received) == 3
        autoscaler.script = [(401, {"error": "bad key"}, {})]
        autoscaler.received.clear()
        async with http.post(f"{daemon.url}/v1/endpoints/spy/run", json={"payload": {}}) as resp:
            assert resp.status == 502
            error = (await resp.json())["error"]
    assert "unauthorized" in error["message"]
    assert API_KEY not in error["message"]
    assert len(autoscaler.received) == 1


async def job_through(http: aiohttp.ClientSession, daemon: Daemon) -> dict[str, Any]:
    """One async job, followed (bounded) until it ends; its public view."""
    async with http.post(f"{daemon.url}/v1/endpoints/spy/jobs", json={"payload": {}}) as resp:
        job_id = (await resp.json())["id"]
    return await wait_for_status(http, daemon, job_id, {"succeeded", "failed"})


async def test_worker_429_reroutes_to_another_worker(http: aiohttp.ClientSession) -> None:
    overloaded = [(429, {"error": "queue full"}, {})]
    async with spied(None, [overloaded, [OK]]) as (daemon, autoscaler, (busy, healthy)):
        job = await job_through(http, daemon)
    assert job["status"] == "succeeded"
    assert job["attempts"] == 2
    assert job["history"] == ["reroute_shrink:overloaded"]
    assert len(busy.received) == 1
    assert len(healthy.received) == 1
    assert len(autoscaler.received) == 2


@pytest.mark.parametrize(
    ("reuse", "history"),
    [("sequential", "reroute_gone:gone"), ("auto", "reroute_gone:session_open")],
)
async def test_gone_worker_reroutes_to_another_worker(
    http: aiohttp.ClientSession, reuse: str, history: str
) -> None:
    # The first answer names a worker whose port is closed: the connection is refused before
    # anything is sent, on the job's POST (sequential) or on the session create (auto).
    async with serving(SpyServer([OK]), "/generate") as stopped:
        pass
    async with spied(None, [[OK]], reuse=reuse) as (daemon, autoscaler, (healthy,)):
        autoscaler.script = [(200, ready_answer(stopped.url, 1), {}),
                             (200, ready_answer(healthy.url, 2), {})]  # fmt: skip
        job = await job_through(http, daemon)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert job["history"] == [history]
    assert job["result"]["body"] == {"done": True}
    assert stopped.received == []
    assert len(healthy.received) == 1
    assert len(autoscaler.received) == 2


async def test_worker_500_is_passed_through_not_retried(http: aiohttp.ClientSession) -> None:
    broken = [(500, {"error": "model crashed"}, {})]
    async with spied(None, [broken, [OK]]) as (daemon, _autoscaler, (_bad, good)):
        async with http.post(f"{daemon.url}/v1/endpoints/spy/run", json={"payload": {}}) as resp:
            assert resp.status == 500
            assert (await resp.json()) == {"error": "model crashed"}
            job_id = resp.headers["X-Job-Id"]
        async with http.get(f"{daemon.url}/v1/jobs/{job_id}") as resp:
            job = await resp.json()
    assert job["status"] == "failed"
    assert job["result"]["status_code"] == 500
    assert len(good.received) == 0
