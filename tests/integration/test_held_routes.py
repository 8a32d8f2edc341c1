"""While every worker is at its learnt limit and jobs wait, the daemon still routes now and
then (Vast should see the demand, new workers should be found), but backs off while the
answers only name workers already at their limit."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.integration.harness import daemon_config, running_daemon, running_emulator, submit_many

HELD_INTERVAL_S = 0.25
WATCH_S = 3.0


async def test_held_route_calls_back_off_while_answers_name_saturated_workers(
    http: aiohttp.ClientSession,
) -> None:
    """One FIFO worker (1 s a job, limit 1-2) and 20 queued jobs for 3 s. At a fixed 0.25 s
    the held route calls would be about 12; doubling from 0.25 s (0.25, 0.5, 1, 2) they are
    4 or 5, plus the call that opened the first lease."""
    emulated = {"slow": {"workers": 1, "perf": 100.0, "service": "fifo"}}
    endpoint = {
        "default_route": "/generate",
        "cost": {"estimator": "constant", "value": 100},
        "placement": {"held_route_interval_s": HELD_INTERVAL_S},
    }
    async with running_emulator(emulated) as emulator:
        await emulator.wait_ready("slow", 1)
        config = daemon_config(
            emulator.autoscaler_url, {"slow": endpoint}, server={"grace_period_s": 0.5}
        )
        async with running_daemon(config) as d:
            await submit_many(http, f"{d.url}/v1/endpoints/slow/jobs", 20)
            before = len(emulator.route_log())
            await asyncio.sleep(WATCH_S)
            held_calls = len(emulator.route_log()) - before
    assert 1 <= held_calls <= 7, held_calls  # a fixed interval: ~12
