"""A worker at its max_sessions answers 429 to /session/create: for now, not for good."""

from __future__ import annotations

import aiohttp

from tests.integration.harness import (
    API_KEY,
    daemon_config,
    run_many,
    running_daemon,
    running_emulator,
    wait_until,
)
from tests.integration.spies import (
    SessionWorker,
    SpyServer,
    ready_answer,
    serving,
    serving_worker,
)


async def test_a_worker_at_max_sessions_gets_sessions_again_once_one_frees(
    http: aiohttp.ClientSession,
) -> None:
    async with running_emulator({"chat": {"workers": 1, "max_sessions": 1}}) as emulator:
        await emulator.wait_ready("chat", 1)
        worker = emulator.workers("chat")[0]
        # Another client holds the worker's only session slot.
        body = {"endpoint": "chat", "cost": 100, "request_idx": 0}
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with http.post(f"{emulator.autoscaler_url}/route/", json=body, headers=headers) as r:
            answer = await r.json()
        create = {"auth_data": answer, "payload": {"lifetime": 60}}
        async with http.post(f"{answer['url']}/session/create", json=create) as resp:
            assert resp.status == 201
            other = (await resp.json())["session_id"]
        lease = {"idle_close_s": 0.3, "session_lifetime_s": 30}
        config = daemon_config(emulator.autoscaler_url, {"chat": {"lease": lease}})
        async with running_daemon(config) as daemon:
            run = f"{daemon.url}/v1/endpoints/chat/run"
            opened = daemon.service.metrics.leases_opened
            assert await run_many(http, run, 3, concurrency=1) == [200] * 3
            assert opened.labels("chat", "session")._value.get() == 0
            assert opened.labels("chat", "sequential")._value.get() >= 1
            end = {"session_id": other, "session_auth": answer}
            async with http.post(f"{answer['url']}/session/end", json=end) as resp:
                assert resp.status == 200
            dispatcher = daemon.service.dispatchers["chat"]
            await wait_until(lambda: len(dispatcher.leasing.pool) == 0, timeout_s=10)
            assert await run_many(http, run, 3, concurrency=1) == [200] * 3
            assert opened.labels("chat", "session")._value.get() >= 1
    assert len(worker.sessions.table.sessions) == 0


async def test_a_401_on_a_session_lease_evicts_it_and_is_not_taken_for_a_legacy_worker(
    http: aiohttp.ClientSession,
) -> None:
    """Legacy (replay-protecting) workers hold no sessions: a 401 on a session lease that was
    used before (a worker that has not fetched its key yet, a session it lost) drops that lease
    and re-routes the job; the endpoint keeps its sessions (it used to switch to one route
    call per job for good)."""
    async with (
        serving_worker(SessionWorker([200, 401, 200])) as worker,
        serving(SpyServer([(200, ready_answer(worker.url), {})]), "/route/") as spy,
    ):
        config = daemon_config(spy.url, {"spy": {"reuse": "auto"}})
        async with running_daemon(config) as daemon:
            run = f"{daemon.url}/v1/endpoints/spy/run"
            assert await run_many(http, run, 3, concurrency=1) == [200] * 3
            status = daemon.service.status()["endpoints"]["spy"]
    assert worker.answered == [200, 401, 200, 200]  # the refused job ran again
    assert (status["reuse"], status["legacy_detected"]) == ("session", False)
