"""The emulated autoscaler over real sockets: /route/, /pubkey/, reports, faults."""

from __future__ import annotations

import asyncio

from emulator_fixtures import API_KEY, call_worker, config, ready_answer, route, running

from scheduler.emulator.signing import verify_url_signature


async def test_ready_answer_verifies_with_pubkey_and_worker_accepts_it() -> None:
    async with running(wait_for={"echo": 1}) as (emu, http):
        answer = await ready_answer(http, emu)
        async with http.get(f"{emu.autoscaler_url}/pubkey/") as resp:
            pem = await resp.text()
        assert set(answer) == {
            "endpoint",
            "url",
            "cost",
            "reqnum",
            "signature",
            "request_idx",
            "__request_id",
        }
        assert verify_url_signature(pem, answer)
        status, body = await call_worker(http, answer, {"id": "job-1", "x": 1})
        assert status == 200
        assert body == {"echo": {"id": "job-1", "x": 1}, "worker_id": 1, "reqnum": 1}


async def test_reqnum_increases_per_endpoint_and_load_is_spread() -> None:
    cfg = config(echo={"workers": 2}, other={"workers": 1})
    async with running(cfg, wait_for={"echo": 2, "other": 1}) as (emu, http):
        answers = [await ready_answer(http, emu) for _ in range(4)]
        other = await ready_answer(http, emu, "other")
        assert [a["reqnum"] for a in answers] == [1, 2, 3, 4]
        assert other["reqnum"] == 1
        assert len({a["url"] for a in answers}) == 2
        assert emu.autoscaler.stats.count("echo", "ready") == 4


async def test_waiting_during_cold_start_keeps_request_idx_then_ready() -> None:
    cfg = config(echo={"workers": 1, "cold_start_s": 0.6})
    async with running(cfg) as (emu, http):
        status, first = await route(http, emu)
        assert status == 200
        assert "url" not in first
        assert first["status"].startswith("Ready: 0")
        idx = first["request_idx"]
        assert idx > 0
        _, again = await route(http, emu, request_idx=idx)
        assert again["request_idx"] == idx
        await emu.wait_ready("echo", 1, timeout_s=5)
        _, ready = await route(http, emu, request_idx=idx)
        assert "url" in ready
        assert ready["request_idx"] == idx
        assert emu.autoscaler.stats.count("echo", "waiting") == 2


async def test_min_interval_gives_429_with_retry_after() -> None:
    cfg = config().model_copy(update={"route_min_interval_ms": 5_000.0})
    async with running(cfg, wait_for={"echo": 1}) as (emu, http):
        assert (await route(http, emu))[0] == 200
        body = {"endpoint": "echo", "cost": 1}
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with http.post(f"{emu.autoscaler_url}/route/", json=body, headers=headers) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) >= 1
            assert "too frequent" in await resp.text()
        assert emu.autoscaler.stats.count("echo", "429") == 1


async def test_bad_parameters_unknown_endpoint_and_bad_key() -> None:
    async with running(wait_for={"echo": 1}) as (emu, http):
        status, body = await route(http, emu, endpoint="nope")
        assert (status, "error" in body) == (400, True)
        status, body = await route(http, emu, cost=-1)
        assert status == 400
        status, body = await route(http, emu, key="wrong")
        assert (status, "error" in body) == (401, True)
        status, _ = await route(http, emu, key=None)
        assert status == 401
        assert emu.autoscaler.stats.count("_unknown", "400") == 1
        assert emu.autoscaler.stats.count(result="401") == 2


async def test_api_key_in_body_is_accepted_like_the_official_client() -> None:
    async with running(wait_for={"echo": 1}) as (emu, http):
        body = {"endpoint": "echo", "cost": 100, "api_key": API_KEY, "replay_timeout": 60}
        async with http.post(f"{emu.autoscaler_url}/route/", json=body) as resp:
            assert resp.status == 200
            assert "url" in await resp.json()


async def test_error_rate_and_delay_changed_through_admin_faults() -> None:
    async with running(wait_for={"echo": 1}) as (emu, http):
        url = f"{emu.autoscaler_url}/admin/faults"
        async with http.post(url, json={"route_error_rate": 1.0}) as resp:
            assert (await resp.json())["route_error_rate"] == 1.0
        assert (await route(http, emu))[0] == 500
        async with http.post(url, json={"route_error_rate": 0, "route_delay_ms": 200}) as resp:
            assert resp.status == 200
        started = asyncio.get_running_loop().time()
        assert (await route(http, emu))[0] == 200
        assert asyncio.get_running_loop().time() - started >= 0.19
        async with http.post(url, json={"route_error_rate": 2}) as resp:
            assert resp.status == 400


async def test_workers_report_status_and_finished_requests() -> None:
    async with running(wait_for={"echo": 1}) as (emu, http):
        answer = await ready_answer(http, emu)
        assert (await call_worker(http, answer))[0] == 200
        view = emu.autoscaler.book.workers[1]
        for _ in range(50):
            if view.finished:
                break
            await asyncio.sleep(0.05)
        report = view.report or {}
        for name in ("cur_load", "new_load", "max_perf", "num_requests_working", "url", "id"):
            assert name in report
        assert report["loadtime"] > 0
        assert report["error_msg"] == ""
        assert report["working_request_idxs"] == []
        finished = view.finished[0]
        assert finished["request_idx"] == answer["request_idx"]
        assert (finished["success"], finished["status"]) == (True, "Success")


async def test_stale_worker_is_reported_stopped_and_not_routed() -> None:
    cfg = config().model_copy(update={"stale_after_s": 0.3})
    async with running(cfg, wait_for={"echo": 1}) as (emu, http):
        await emu.workers("echo")[0].stop()
        await asyncio.sleep(0.5)
        _, body = await route(http, emu)
        assert "url" not in body
        assert "Stopped: 1" in body["status"]
