"""The emulated autoscaler over real sockets: WAITING while every worker reports it is past
its queue limit, READY with the same request_idx once one is not; ``replay_timeout`` bounds
how long a waiting request_idx is kept; workers take bodies of any size (as the official
worker: ``client_max_size=0``)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import Any

import aiohttp
from emulator_fixtures import API_KEY, call_worker, config, ready_answer, running

from scheduler.emulator.emulator import Emulator


async def route(
    http: aiohttp.ClientSession, emu: Emulator, idx: int = 0, **extra: Any
) -> dict[str, Any]:
    body = {"endpoint": "echo", "cost": 100, "request_idx": idx, **extra}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with http.post(f"{emu.autoscaler_url}/route/", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_waiting_while_the_only_worker_is_past_its_queue_limit() -> None:
    # perf 100, limit 0.5 s: one request of 100 units (1 s of queue) puts it past.
    cfg = config(echo={"workers": 1, "perf": 100, "max_queue_time_s": 0.5})
    async with running(cfg, wait_for={"echo": 1}) as (emu, http):
        worker = emu.workers("echo")[0]
        view = emu.autoscaler.book.workers[worker.id]
        busy = asyncio.create_task(call_worker(http, await ready_answer(http, emu)))
        async with asyncio.timeout(5):  # until a report shows the load
            while not (view.report or {}).get("cur_load"):
                await asyncio.sleep(0.02)
        held = await route(http, emu)
        assert "url" not in held
        assert held["status"].startswith("Ready: 1")
        assert (await busy)[0] == 200
        async with asyncio.timeout(5):
            while "url" not in (answer := await route(http, emu, held["request_idx"])):
                await asyncio.sleep(0.05)
        assert answer["request_idx"] == held["request_idx"]


async def test_replay_timeout_bounds_a_waiting_request_idx() -> None:
    cfg = config(echo={"workers": 0})
    async with running(cfg) as (emu, http):
        short = (await route(http, emu, replay_timeout=0.2))["request_idx"]
        kept = (await route(http, emu, replay_timeout=60))["request_idx"]
        assert emu.autoscaler.book.waiting("echo", time.monotonic()) == (2, 200)
        await asyncio.sleep(0.4)
        assert (await route(http, emu, short, replay_timeout=60))["request_idx"] != short
        assert (await route(http, emu, kept, replay_timeout=60))["request_idx"] == kept
        async with http.post(
            f"{emu.autoscaler_url}/route/",
            json={"endpoint": "echo", "cost": 1, "replay_timeout": "soon"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp:
            assert resp.status == 400
            assert "replay_timeout" in (await resp.json())["error"]


async def test_worker_takes_a_body_past_one_mebibyte() -> None:
    async with running(wait_for={"echo": 1}) as (emu, http):
        answer = await ready_answer(http, emu)
        envelope = {"auth_data": answer, "session_id": None, "payload": {"blob": "x" * 3_000_000}}
        body = io.BytesIO(json.dumps(envelope).encode())
        headers = {"Content-Type": "application/json"}
        async with http.post(f"{answer['url']}/generate", data=body, headers=headers) as resp:
            assert resp.status == 200
