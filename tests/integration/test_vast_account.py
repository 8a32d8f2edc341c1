"""The daemon with only a Vast account key, over real sockets against the emulator: the keys
come from the console listing, a rotated key is refetched once under load and no job fails,
a wrong account key or an unreachable console keeps the daemon up and not ready with nothing
queued lost, an endpoint the account lacks stops the start, and the status shows each
endpoint's settings and workers as Vast sees them."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from scheduler.api.context import ENDPOINT_KEYS, VAST_WORKERS
from scheduler.config import AppConfig
from scheduler.vast.console import EndpointsMissing
from tests.integration.harness import (
    running_daemon,
    running_emulator,
    submit_many,
    wait_all_finished,
    wait_until,
)
from tests.integration.test_openapi import validator_for
from tests.integration.test_status_page import CHROMIUM, chromium, parse

ACCOUNT = "acct-key-0123456789abcdef"
ECHO_KEY = "echo-endpoint-key-0123456789"
EMULATED = {
    "echo": {"workers": 2, "perf": 20_000, "api_key": ECHO_KEY, "max_queue_time_s": 45,
             "max_workers": 7},
    "other": {"workers": 1, "perf": 20_000},
}  # fmt: skip


def account_config(url: str, endpoints: dict[str, Any], **vast: Any) -> AppConfig:
    """Only the account key: no ``vast.api_key``, no endpoint key."""
    return AppConfig.model_validate({
        "auth": {"enabled": False},
        "vast": {"autoscaler_url": url, "console_url": url, "account_api_key": ACCOUNT, **vast},
        "endpoint_defaults": {"poll": {"initial_s": 0.05, "max_s": 0.2}},
        "endpoints": endpoints,
    })  # fmt: skip


async def run_job(http: aiohttp.ClientSession, url: str, endpoint: str) -> int:
    async with http.post(f"{url}/v1/endpoints/{endpoint}/run", json={"payload": {}}) as resp:
        await resp.read()
        return resp.status


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url) as resp:
        return resp.status, await resp.json()


async def test_only_an_account_key_routes_both_endpoints(http: aiohttp.ClientSession) -> None:
    async with running_emulator(EMULATED, account_api_key=ACCOUNT) as emulator:
        config = account_config(emulator.autoscaler_url, {"echo": {}, "other": {}})
        async with running_daemon(config) as daemon:
            statuses = [await run_job(http, daemon.url, ep) for ep in ("echo", "other") * 3]
            assert statuses == [200] * 6
            code, ready = await get_json(http, f"{daemon.url}/readyz")
            assert (code, ready["status"]) == (200, "ready")
            _, status = await get_json(http, f"{daemon.url}/v1/status")
            echo = status["endpoints"]["echo"]["vast"]
            assert echo["key_source"] == "account"
            assert echo["id"] == emulator.config.endpoint_ids()["echo"]
            assert (echo["max_queue_time_s"], echo["max_workers"]) == (45.0, 7)
            assert echo["state"] == "active"
            assert status["vast"]["listed"] is True
            # the workers as Vast sees them, polled because someone reads the status
            await wait_until(lambda: daemon_workers_seen(daemon, "echo"), timeout_s=10)
            _, status = await get_json(http, f"{daemon.url}/v1/status")
            seen = status["endpoints"]["echo"]["vast"]["workers"]
            _, spec = await get_json(http, f"{daemon.url}/openapi.json")
            validator_for(spec, "Status").validate(status)  # the new fields, as documented
            assert seen["count"] == 2
            assert seen["unavailable"] is None
            assert {w["id"] for w in seen["workers"]} == {w.id for w in emulator.workers("echo")}
        console = emulator.stats()["console"]["totals"]
        assert console["endpoints_list"] == 1  # read once at start; nothing refused since
        assert emulator.stats()["route"]["by_endpoint"]["echo"]["401"] == 0


def daemon_workers_seen(daemon: Any, endpoint: str) -> bool:
    view = daemon.app[VAST_WORKERS].view(endpoint)
    return view is not None and view["count"] > 0


async def test_a_key_rotated_under_load_is_refetched_once_and_no_job_fails(
    http: aiohttp.ClientSession,
) -> None:
    emulated = {"echo": {**EMULATED["echo"], "perf": 4_000}}
    async with running_emulator(emulated, account_api_key=ACCOUNT) as emulator:
        config = account_config(emulator.autoscaler_url, {"echo": {"max_attempts": 2}})
        async with running_daemon(config) as daemon:
            ids = await submit_many(http, f"{daemon.url}/v1/endpoints/echo/jobs", 1000)
            await wait_until(lambda: finished(daemon, ids) >= 150, timeout_s=30)
            assert finished(daemon, ids) < 900, "rotate while jobs are in flight and queued"
            new_key = emulator.rotate_key("echo")
            await wait_all_finished(daemon, ids, timeout_s=90)
            outcomes = Counter(str(daemon.service.get(i).status) for i in ids)
            keys = daemon.app[ENDPOINT_KEYS].status()
    assert outcomes == {"succeeded": 1000}, outcomes
    assert new_key != ECHO_KEY
    route = emulator.stats()["route"]["by_endpoint"]["echo"]
    assert 1 <= route["401"] <= 8, route  # only the calls in flight when it rotated
    assert emulator.stats()["console"]["totals"]["endpoints_list"] == 2  # start + one refresh
    assert keys["refreshes_after_401"] == 1


def finished(daemon: Any, ids: list[str]) -> int:
    return sum(1 for i in ids if (job := daemon.service.get(i)) is not None and job.finished)


async def test_wrong_account_key_keeps_the_daemon_up_not_ready_and_loses_nothing(
    http: aiohttp.ClientSession,
) -> None:
    async with running_emulator(EMULATED, account_api_key="the-real-account-key-0123") as emu:
        config = account_config(emu.autoscaler_url, {"echo": {}})
        async with running_daemon(config) as daemon:
            code, ready = await get_json(http, f"{daemon.url}/readyz")
            assert (code, ready["status"]) == (503, "vast_keys_unavailable")
            assert "check vast.account_api_key" in ready["reason"]
            _, spec = await get_json(http, f"{daemon.url}/openapi.json")
            validator_for(spec, "Health").validate(ready)
            ids = await submit_many(http, f"{daemon.url}/v1/endpoints/echo/jobs", 20)
            await asyncio.sleep(1.5)  # several route attempts' worth of back-off
            for _ in range(50):  # a read during a route attempt finds the batch out of the queue
                _, status = await get_json(http, f"{daemon.url}/v1/status")
                if status["endpoints"]["echo"]["queue_depth"] == 20:
                    break
                await asyncio.sleep(0.1)
            assert status["vast"]["listed"] is False
            assert "401" in status["vast"]["last_error"]
            assert {str(daemon.service.get(i).status) for i in ids} <= {"queued", "routing"}
            assert status["endpoints"]["echo"]["queue_depth"] == 20
            assert ACCOUNT not in str(status)
            assert ACCOUNT not in str(ready)
        assert emu.stats()["route"]["total"] == 0  # no route call without a key


async def test_an_unreachable_console_is_retried_until_it_answers(
    http: aiohttp.ClientSession,
) -> None:
    async with running_emulator(EMULATED, account_api_key=ACCOUNT) as emulator:
        await emulator.outage(30)
        await until_refused(http, emulator.autoscaler_url)
        config = account_config(emulator.autoscaler_url, {"echo": {}})
        async with running_daemon(config) as daemon:
            code, ready = await get_json(http, f"{daemon.url}/readyz")
            assert (code, ready["status"]) == (503, "vast_keys_unavailable")
            queued = await submit_many(http, f"{daemon.url}/v1/endpoints/echo/jobs", 5)
            await emulator.outage(0)
            await wait_until(lambda: daemon_listed(daemon), timeout_s=15, interval_s=0.1)
            code, _ = await get_json(http, f"{daemon.url}/readyz")
            assert code == 200
            await wait_all_finished(daemon, queued, timeout_s=30)
            assert {str(daemon.service.get(i).status) for i in queued} == {"succeeded"}


async def until_refused(http: aiohttp.ClientSession, url: str) -> None:
    """The emulator's port closes a moment after ``outage`` returns."""
    async with asyncio.timeout(10):
        while True:
            try:
                async with http.get(f"{url}/api/v0/endptjobs/") as resp:
                    await resp.read()
            except aiohttp.ClientConnectionError:
                return
            await asyncio.sleep(0.05)


def daemon_listed(daemon: Any) -> bool:
    return bool(daemon.app[ENDPOINT_KEYS].status()["listed"])


async def test_an_endpoint_the_account_lacks_stops_the_start() -> None:
    async with running_emulator(EMULATED, account_api_key=ACCOUNT) as emulator:
        config = account_config(emulator.autoscaler_url, {"echo": {}, "nope": {}})
        with pytest.raises(EndpointsMissing) as raised:
            async with running_daemon(config):
                pass
    assert "endpoints not in the Vast account: nope" in str(raised.value)


async def test_status_page_shows_the_endpoint_as_vast_sees_it(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with running_emulator(EMULATED, account_api_key=ACCOUNT) as emulator:
        config = account_config(emulator.autoscaler_url, {"echo": {}})
        async with running_daemon(config) as daemon:
            assert await run_job(http, daemon.url, "echo") == 200
            await get_json(http, f"{daemon.url}/v1/status")  # someone looks: workers polled
            await wait_until(lambda: daemon_workers_seen(daemon, "echo"), timeout_s=10)
            _, status = await get_json(http, f"{daemon.url}/v1/status")
            async with http.get(f"{daemon.url}/") as resp:
                served = parse(await resp.text())
            pages = [served]
            if os.access(CHROMIUM, os.X_OK):
                pages.append(parse(await chromium(f"{daemon.url}/", tmp_path / "p", "--dump-dom")))
    vast = status["endpoints"]["echo"]["vast"]
    for page in pages:
        values = page.values
        assert values["echo/vast/key_source"] == "account"
        assert values["echo/vast/id"] == str(vast["id"])
        assert values["echo/vast/state"] == "active"
        assert values["echo/vast/max_queue_time_s"] == "45 s"
        assert values["echo/vast/max_workers"] == "7"
        for worker in vast["workers"]["workers"]:
            row = f"echo/vast_worker/{worker['id']}"
            assert values[f"{row}/id"] == str(worker["id"])
            assert values[f"{row}/perf"] == "20000"
    assert len(pages) == 1 or pages[1].root.get("data-source") == "js"


async def test_a_scheduled_refresh_brings_a_rotated_key_before_any_refusal(
    http: aiohttp.ClientSession,
) -> None:
    async with running_emulator(EMULATED, account_api_key=ACCOUNT) as emulator:
        config = account_config(emulator.autoscaler_url, {"echo": {"reuse": "never"}},
                                key_refresh_interval_s=0.3)  # fmt: skip
        async with running_daemon(config) as daemon:
            assert await run_job(http, daemon.url, "echo") == 200
            emulator.rotate_key("echo")
            listed = emulator.stats()["console"]["totals"]["endpoints_list"]
            console = emulator.console.stats
            await wait_until(lambda: console.count("endpoints_list") >= listed + 2, timeout_s=10)
            assert await run_job(http, daemon.url, "echo") == 200
            refreshes = daemon.app[ENDPOINT_KEYS].status()["refreshes_after_401"]
    assert emulator.stats()["route"]["by_endpoint"]["echo"]["401"] == 0
    assert refreshes == 0


async def test_vast_workers_are_polled_only_while_someone_looks(
    http: aiohttp.ClientSession,
) -> None:
    async with running_emulator(EMULATED, account_api_key=ACCOUNT) as emulator:
        config = account_config(emulator.autoscaler_url, {"echo": {}},
                                endpoint_workers_interval_s=0.1)  # fmt: skip
        async with running_daemon(config) as daemon:
            console = emulator.console.stats
            await asyncio.sleep(0.5)  # five intervals with nobody looking and no job waiting
            assert console.count("endpoint_workers") == 0
            await get_json(http, f"{daemon.url}/v1/status")
            await wait_until(lambda: console.count("endpoint_workers") >= 2, timeout_s=5)


async def test_the_embedded_emulator_is_the_account_console(http: aiohttp.ClientSession) -> None:
    config = AppConfig.model_validate({
        "auth": {"enabled": False},
        "vast": {"account_api_key": ACCOUNT},
        "emulator": {"status_interval_s": 0.1, "endpoints": EMULATED},
        "endpoints": {"echo": {}, "other": {}},
    })  # fmt: skip
    async with running_daemon(config) as daemon:
        statuses = [await run_job(http, daemon.url, ep) for ep in ("echo", "other")]
        _, status = await get_json(http, f"{daemon.url}/v1/status")
    assert statuses == [200, 200]
    assert status["endpoints"]["echo"]["vast"]["key_source"] == "account"
    assert status["endpoints"]["echo"]["vast"]["max_queue_time_s"] == 45.0
