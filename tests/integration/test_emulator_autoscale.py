"""The emulator's autoscaler model over real sockets: starts workers for waiting demand
(WAITING requests' cost over target_queue_time) and for routed cost, up to max_workers, each
after its cold start; stops them once traffic is older than inactivity_timeout and they are
idle; bills worker-seconds from each start to its stop (``/admin/stats``). Off by default."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from emulator_fixtures import API_KEY, call_worker, config, running

from scheduler.emulator.emulator import Emulator

SCALED = {
    "workers": 0, "perf": 1000, "cold_start_s": 0.3, "autoscale": True,
    "autoscale_interval_s": 0.1, "scale_down_idle_s": 0.2, "inactivity_timeout_s": 0.5,
    "target_queue_time_s": 1.0, "max_workers": 3, "load_window_s": 1.0,
}  # fmt: skip


async def route(
    http: aiohttp.ClientSession, emu: Emulator, cost: float, idx: int = 0
) -> dict[str, Any]:
    body = {"endpoint": "echo", "cost": cost, "request_idx": idx}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with http.post(f"{emu.autoscaler_url}/route/", json=body, headers=headers) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
        return answer


async def stats(http: aiohttp.ClientSession, emu: Emulator) -> dict[str, Any]:
    async with http.get(f"{emu.autoscaler_url}/admin/stats") as resp:
        endpoint: dict[str, Any] = (await resp.json())["endpoints"]["echo"]
        return endpoint


async def test_waiting_demand_starts_workers_and_idleness_stops_them() -> None:
    async with running(config(echo=SCALED)) as (emu, http):
        held = await route(http, emu, cost=100)
        assert "url" not in held
        # One request of 100 units: one worker (100 / 1 s < 1000 units/s).
        async with asyncio.timeout(10):
            while "url" not in (answer := await route(http, emu, 100, held["request_idx"])):
                await asyncio.sleep(0.05)
        assert answer["request_idx"] == held["request_idx"]
        assert (await call_worker(http, answer))[0] == 200
        assert len(emu.workers("echo")) == 1
        # Then quiet: past inactivity_timeout and scale_down_idle_s it is stopped, and
        # its bill stops growing.
        async with asyncio.timeout(10):
            while (await stats(http, emu))["billing"]["running"]:
                await asyncio.sleep(0.05)
        first = (await stats(http, emu))["billing"]["worker_seconds"]
        await asyncio.sleep(0.3)
        second = await stats(http, emu)
        assert second["billing"]["worker_seconds"] == first > 0.3  # at least its cold start
        assert second["autoscale"]["starts"] == second["autoscale"]["stops"] == 1
        assert emu.workers("echo")[0].state == "stopped"


async def test_a_large_backlog_starts_up_to_max_workers() -> None:
    async with running(config(echo=SCALED)) as (emu, http):
        # 5,000 units to clear in 1 s at 1,000 units/s each: 5 wanted, 3 allowed.
        await route(http, emu, cost=5000)
        async with asyncio.timeout(10):
            while emu.ready_count("echo") < 3:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert len(emu.workers("echo")) == 3
        assert (await stats(http, emu))["autoscale"]["wanted"] == 3


async def test_routed_cost_starts_workers_before_any_worker_reports_it() -> None:
    """Vast scales on routed cost (protocol doc, section 3): READY answers of 200 units every
    0.1 s (2,000 units/s over 1,000 units/s per worker at target_util 0.9) want 3 workers,
    though no request reaches the worker and no answer is WAITING."""
    async with running(config(echo=SCALED)) as (emu, http):
        held = await route(http, emu, cost=100)
        async with asyncio.timeout(10):
            while "url" not in await route(http, emu, 100, held["request_idx"]):
                await asyncio.sleep(0.05)
        for _ in range(60):  # at most 6 s
            answer = await route(http, emu, cost=200)
            assert "url" in answer  # never held: the worker is far from its queue limit
            if (await stats(http, emu))["autoscale"]["starts"] >= 3:
                break
            await asyncio.sleep(0.1)
        assert (await stats(http, emu))["autoscale"]["starts"] == 3


async def test_off_by_default_the_fleet_stays_as_configured() -> None:
    cfg = config(echo={"workers": 1, "max_workers": 5, "target_queue_time_s": 1.0})
    async with running(cfg, wait_for={"echo": 1}) as (emu, http):
        await route(http, emu, cost=50_000)
        await asyncio.sleep(0.5)
        assert len(emu.workers("echo")) == 1
        assert "autoscale" not in await stats(http, emu)
        assert (await stats(http, emu))["billing"]["running"] == 1
