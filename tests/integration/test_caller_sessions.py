"""Caller sessions: jobs pinned to one worker through a Vast session."""

from __future__ import annotations

import aiohttp

from tests.integration.harness import daemon_config, running_daemon, running_emulator


async def test_session_pins_jobs_to_one_worker_then_ends(http: aiohttp.ClientSession) -> None:
    async with running_emulator({"chat": {"workers": 3}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"chat": {}})
        async with running_daemon(config) as daemon:
            base = f"{daemon.url}/v1/endpoints/chat"
            async with http.post(f"{base}/sessions", json={"cost": 500}) as resp:
                assert resp.status == 201, await resp.text()
                session = await resp.json()
            worker_ids = set()
            for turn in range(5):
                body = {"payload": {"turn": turn}, "session": session["id"]}
                async with http.post(f"{base}/run", json=body) as resp:
                    assert resp.status == 200
                    worker_ids.add((await resp.json())["worker_id"])
            assert len(worker_ids) == 1
            pinned = next(w for w in emulator.workers("chat") if w.id in worker_ids)
            assert len(pinned.sessions.table.sessions) == 1
            async with http.get(f"{base}/sessions/{session['id']}") as resp:
                assert (await resp.json())["inflight_jobs"] == 0
            async with http.delete(f"{base}/sessions/{session['id']}") as resp:
                assert resp.status == 200
            assert len(pinned.sessions.table.sessions) == 0
            body = {"payload": {}, "session": session["id"]}
            async with http.post(f"{base}/run", json=body) as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["field"] == "session"


async def test_session_whose_worker_is_gone_fails_jobs_with_410(
    http: aiohttp.ClientSession,
) -> None:
    async with running_emulator({"chat": {"workers": 2}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"chat": {}})
        async with running_daemon(config) as daemon:
            base = f"{daemon.url}/v1/endpoints/chat"
            async with http.post(f"{base}/sessions", json={"cost": 300}) as resp:
                session = await resp.json()
            body = {"payload": {}, "session": session["id"]}
            async with http.post(f"{base}/run", json=body) as resp:
                worker_id = (await resp.json())["worker_id"]
            victim = next(w for w in emulator.workers("chat") if w.id == worker_id)
            await victim.kill()
            async with http.post(f"{base}/run", json=body) as resp:
                assert resp.status == 410
                error = (await resp.json())["error"]
            assert error["code"] == "session_gone"
            async with http.post(f"{base}/run", json=body) as resp:
                assert resp.status == 410  # and it stays gone
            # Jobs without the session still run on the surviving worker.
            async with http.post(f"{base}/run", json={"payload": {}}) as resp:
                assert resp.status == 200


async def test_session_refuses_more_cost_than_it_declared(http: aiohttp.ClientSession) -> None:
    async with running_emulator({"chat": {"workers": 1}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"chat": {}})
        async with running_daemon(config) as daemon:
            base = f"{daemon.url}/v1/endpoints/chat"
            async with http.post(f"{base}/sessions", json={"cost": 50}) as resp:
                session = await resp.json()
            body = {"payload": {}, "session": session["id"], "cost": 80}
            async with http.post(f"{base}/jobs", json=body) as resp:
                assert resp.status == 429
                assert (await resp.json())["error"]["code"] == "session_busy"


async def test_session_open_without_ready_worker_is_503(http: aiohttp.ClientSession) -> None:
    async with running_emulator({"cold": {"workers": 1, "cold_start_s": 30}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"cold": {}})
        async with (
            running_daemon(config) as daemon,
            http.post(
                f"{daemon.url}/v1/endpoints/cold/sessions", json={"cost": 100, "wait_s": 0.6}
            ) as resp,
        ):
            assert resp.status == 503
            assert resp.headers["Retry-After"]


async def test_session_refused_at_the_limit_opens_nothing_on_a_worker(
    http: aiohttp.ClientSession,
) -> None:
    async with running_emulator({"chat": {"workers": 1}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"chat": {"max_caller_sessions": 1}})
        async with running_daemon(config) as daemon:
            base = f"{daemon.url}/v1/endpoints/chat"
            async with http.post(f"{base}/sessions", json={"cost": 100}) as resp:
                assert resp.status == 201, await resp.text()
            async with http.post(f"{base}/sessions", json={"cost": 100}) as resp:
                assert resp.status == 429
                assert (await resp.json())["error"]["code"] == "session_busy"
            worker = emulator.workers("chat")[0]
            assert len(worker.sessions.table.sessions) == 1


async def test_a_session_shorter_than_ten_seconds_is_refused_naming_the_field(
    http: aiohttp.ClientSession,
) -> None:
    async with running_emulator({"chat": {"workers": 1}}) as emulator:
        config = daemon_config(emulator.autoscaler_url, {"chat": {}})
        async with running_daemon(config) as daemon:
            url = f"{daemon.url}/v1/endpoints/chat/sessions"
            async with http.post(url, json={"cost": 100, "lifetime_s": 1.2e-07}) as resp:
                assert resp.status == 422
                assert (await resp.json())["error"]["field"] == "lifetime_s"
            worker = emulator.workers("chat")[0]
            assert len(worker.sessions.table.sessions) == 0
