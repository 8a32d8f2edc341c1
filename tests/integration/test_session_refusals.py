"""A worker at its max_sessions answers 429 to /session/create: for now, not for good."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from scheduler.listen import listen
from tests.integration.harness import (
    API_KEY,
    daemon_config,
    run_many,
    running_daemon,
    running_emulator,
    wait_until,
)
from tests.integration.spies import SpyServer, ready_answer, serving


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


@dataclass
class SessionWorker:
    """A worker that opens sessions and answers its jobs by script (the last repeats)."""

    script: list[int]
    answered: list[int] = field(default_factory=list)
    url: str = ""

    async def create(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"session_id": f"s{len(self.answered)}"}, status=201)

    async def end(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    async def generate(self, request: web.Request) -> web.Response:
        await request.read()
        status = self.script[min(len(self.answered), len(self.script) - 1)]
        self.answered.append(status)
        return web.json_response({"n": len(self.answered)}, status=status)


async def test_a_401_on_a_session_lease_evicts_it_and_is_not_taken_for_a_legacy_worker(
    http: aiohttp.ClientSession,
) -> None:
    """Legacy (replay-protecting) workers hold no sessions: a 401 on a session lease that was
    used before (a worker that has not fetched its key yet, a session it lost) drops that lease
    and re-routes the job; the endpoint keeps its sessions (it used to switch to one route
    call per job for good)."""
    worker = SessionWorker([200, 401, 200])
    app = web.Application()
    app.router.add_post("/session/create", worker.create)
    app.router.add_post("/session/end", worker.end)
    app.router.add_post("/generate", worker.generate)
    runner, port = await listen(app, "127.0.0.1", 0, access_log=None)
    worker.url = f"http://127.0.0.1:{port}"
    try:
        async with serving(SpyServer([(200, ready_answer(worker.url), {})]), "/route/") as spy:
            config = daemon_config(spy.url, {"spy": {"reuse": "auto"}})
            async with running_daemon(config) as daemon:
                run = f"{daemon.url}/v1/endpoints/spy/run"
                assert await run_many(http, run, 3, concurrency=1) == [200] * 3
                status = daemon.service.status()["endpoints"]["spy"]
    finally:
        await runner.cleanup()
    assert worker.answered == [200, 401, 200, 200]  # the refused job ran again
    assert (status["reuse"], status["legacy_detected"]) == ("session", False)
