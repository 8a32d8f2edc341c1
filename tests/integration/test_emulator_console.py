"""The emulated Vast account over real sockets: the console listing, per-endpoint route keys
and their rotation, ``/get_endpoint_workers/``, and the official client (``vastai`` 1.9.1)
driving all of it."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from emulator_fixtures import API_KEY, call_worker, config, route, running
from vastai.serverless.client.client import CoroutineServerless

from scheduler.emulator.emulator import Emulator
from scheduler.emulator.settings import EMULATOR_ACCOUNT_KEY
from tests.integration.test_lifecycle import free_port, start_process

ECHO_KEY = "echo-endpoint-key-0123"
POLL_S = 0.05


def _two_endpoints(**echo: Any) -> Any:
    """``echo`` (with its own key) and ``other`` (global keys), one worker each."""
    return config(
        echo={"workers": 1, "api_key": ECHO_KEY, "max_queue_time_s": 12, **echo},
        other={"workers": 1, "id": 77, "target_queue_time_s": 3, "max_workers": 4},
    )


async def _get(
    http: aiohttp.ClientSession, url: str, key: str | None = EMULATOR_ACCOUNT_KEY, **query: str
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with http.get(url, headers=headers, params=query) as resp:
        return resp.status, await resp.json(content_type=None)


async def _workers(
    http: aiohttp.ClientSession, emu: Emulator, endpoint_id: Any, key: str = EMULATOR_ACCOUNT_KEY
) -> tuple[int, Any]:
    url = f"{emu.autoscaler_url}/get_endpoint_workers/"
    async with http.post(url, json={"id": endpoint_id, "api_key": key}) as resp:
        return resp.status, await resp.json(content_type=None)


async def _eventually(check: Callable[[], Any], timeout_s: float = 10.0) -> None:
    """Poll an async ``check`` until it returns truthy (bounded in time and count)."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / POLL_S) + 1):
        if await check():
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"not true after {timeout_s} s")


# ---------------------------------------------------------------------- the listing
async def test_listing_with_the_account_key_shows_each_endpoint_its_key_and_settings() -> None:
    async with running(_two_endpoints()) as (emu, http):
        url = f"{emu.autoscaler_url}/api/v0/endptjobs/"
        status, body = await _get(http, url, client_id="me")
        assert status == 200
        assert body["success"] is True
        rows = {r["endpoint_name"]: r for r in body["results"]}
        assert [r["id"] for r in body["results"]] == [77, 1000]
        assert rows["echo"]["api_key"] == ECHO_KEY
        assert rows["other"]["api_key"] == API_KEY  # no key of its own: the global one
        assert (rows["echo"]["max_queue_time"], rows["echo"]["endpoint_state"]) == (12, "active")
        assert (rows["other"]["target_queue_time"], rows["other"]["max_workers"]) == (3, 4)
        by_query = await _get(http, url, key=None, api_key=EMULATOR_ACCOUNT_KEY)
        assert by_query == (200, body)
        assert emu.stats()["console"]["totals"]["endpoints_list"] == 2


@pytest.mark.parametrize("key", ["wrong-account-key", ECHO_KEY, API_KEY, None])
async def test_listing_without_the_account_key_is_401_in_vasts_shape(key: str | None) -> None:
    async with running(_two_endpoints()) as (emu, http):
        status, body = await _get(http, f"{emu.autoscaler_url}/api/v0/endptjobs/", key=key)
        assert status == 401
        assert body["success"] is False
        assert set(body) == {"success", "error", "msg"}
        assert EMULATOR_ACCOUNT_KEY not in str(body)
        assert emu.stats()["console"]["calls"]["endpoints_list"]["401"] == 1


async def test_one_endpoint_by_id_unknown_404_bad_id_400() -> None:
    async with running(_two_endpoints()) as (emu, http):
        base = f"{emu.autoscaler_url}/api/v0/endptjobs"
        status, body = await _get(http, f"{base}/77/")
        assert status == 200
        assert body["success"] is True
        assert (body["result"]["endpoint_name"], body["result"]["id"]) == ("other", 77)
        status, body = await _get(http, f"{base}/999/")
        assert status == 404
        assert (body["success"], body["error"]) == (False, "not_found")
        status, body = await _get(http, f"{base}/abc/")
        assert status == 400
        assert "id" in body["msg"]
        status, _ = await _get(http, f"{base}/77/", key="wrong")
        assert status == 401


# ---------------------------------------------------------------------- route keys
async def test_route_accepts_an_endpoints_own_key_and_the_global_keys_elsewhere() -> None:
    async with running(_two_endpoints(), wait_for={"echo": 1, "other": 1}) as (emu, http):
        status, answer = await route(http, emu, "echo", key=ECHO_KEY)
        assert status == 200
        assert "url" in answer
        status, body = await route(http, emu, "echo", key=API_KEY)
        assert (status, body) == (401, {"error": "invalid or missing API key"})
        assert (await route(http, emu, "other", key=API_KEY))[0] == 200
        assert (await route(http, emu, "other", key=ECHO_KEY))[0] == 401
        assert (await route(http, emu, "other", key=EMULATOR_ACCOUNT_KEY))[0] == 401


async def test_rotation_through_the_admin_api_retires_the_old_key() -> None:
    async with running(_two_endpoints(), wait_for={"echo": 1, "other": 1}) as (emu, http):
        url = f"{emu.autoscaler_url}/admin/endpoints/echo/rotate_key"
        async with http.post(url, json={"api_key": "chosen-new-key"}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"endpoint": "echo", "api_key": "chosen-new-key"}
        assert (await route(http, emu, "echo", key=ECHO_KEY))[0] == 401
        assert (await route(http, emu, "echo", key="chosen-new-key"))[0] == 200
        async with http.post(f"{emu.autoscaler_url}/admin/endpoints/other/rotate_key") as resp:
            generated = (await resp.json())["api_key"]
        assert len(generated) == 64
        assert (await route(http, emu, "other", key=API_KEY))[0] == 401
        assert (await route(http, emu, "other", key=generated))[0] == 200
        _, body = await _get(http, f"{emu.autoscaler_url}/api/v0/endptjobs/")
        keys = {r["endpoint_name"]: r["api_key"] for r in body["results"]}
        assert keys == {"echo": "chosen-new-key", "other": generated}
        async with http.post(f"{emu.autoscaler_url}/admin/endpoints/nope/rotate_key") as resp:
            assert resp.status == 404
        async with http.post(url, json={"api_key": 5}) as resp:
            assert resp.status == 400
        assert emu.stats()["console"]["key_rotations"] == 2


async def test_rotate_key_method_and_a_worker_added_at_run_time() -> None:
    async with running(config(echo={"workers": 1}), wait_for={"echo": 1}) as (emu, http):
        await emu.add_worker("late")
        await emu.wait_ready("late", 1, timeout_s=10)
        _, body = await _get(http, f"{emu.autoscaler_url}/api/v0/endptjobs/")
        assert [(r["endpoint_name"], r["id"]) for r in body["results"]] == [
            ("echo", 1000),
            ("late", 1001),
        ]
        new = emu.rotate_key("late")
        assert (await route(http, emu, "late", key=API_KEY))[0] == 401
        assert (await route(http, emu, "late", key=new))[0] == 200
        assert (await route(http, emu, "echo", key=API_KEY))[0] == 200
        with pytest.raises(KeyError):
            emu.rotate_key("nope")


# ---------------------------------------------------------------------- worker list
async def test_endpoint_workers_from_cold_start_to_running() -> None:
    cfg = _two_endpoints(cold_start_s=0.8, perf=100)
    async with running(cfg) as (emu, http):
        status, rows = await _workers(http, emu, 1000)
        assert status == 200
        assert [r["status"] for r in rows] == ["loading"]
        assert rows[0]["loaded_at"] == 0.0
        await emu.wait_ready("echo", 1, timeout_s=10)

        async def status_is(name: str) -> bool:
            _, rows = await _workers(http, emu, 1000)
            return bool(rows[0]["status"] == name)

        await _eventually(lambda: status_is("idle"))
        _, answer = await route(http, emu, "echo", cost=100, key=ECHO_KEY)
        in_flight = asyncio.create_task(call_worker(http, answer, {"id": "slow"}))  # 1 s
        await _eventually(lambda: status_is("running"))
        _, rows = await _workers(http, emu, 1000)
        row = rows[0]
        assert row["reqs_working"] == 1
        assert row["measured_perf"] > 0
        assert row["loaded_at"] >= row["started_at"] > 0
        assert (await in_flight)[0] == 200


async def test_endpoint_workers_error_msg_401_and_400() -> None:
    cfg = config(echo={"workers": 1}, empty={"workers": 0})
    async with running(cfg) as (emu, http):
        status, body = await _workers(http, emu, 1001)  # "empty": no worker
        assert status == 200
        assert set(body) == {"error_msg"}
        status, body = await _workers(http, emu, 4242)  # not the account's
        assert status == 200
        assert set(body) == {"error_msg"}
        status, body = await _workers(http, emu, 1000, key=API_KEY)
        assert (status, set(body)) == (401, {"error_msg"})
        status, body = await _workers(http, emu, "1000")
        assert status == 400
        assert "id" in body["error_msg"]
        counts = emu.stats()["console"]["calls"]["endpoint_workers"]
        assert (counts["error_msg"], counts["401"], counts["400"]) == (2, 1, 1)


# ---------------------------------------------------------------------- the official client
def _official(emu: Emulator, account_key: str = EMULATOR_ACCOUNT_KEY) -> CoroutineServerless:
    logging.getLogger().addHandler(logging.NullHandler())
    client = CoroutineServerless(
        api_key=account_key, autoscaler_url=emu.autoscaler_url, webserver_url=emu.autoscaler_url
    )
    # Offline: the client downloads Vast's root certificate on its first call to build the
    # context it passes on every request (plain HTTP here, so never used in a handshake).
    client._ssl_context = ssl.create_default_context()
    return client


async def test_official_client_finds_the_endpoint_routes_with_its_key_and_lists_workers() -> None:
    async with running(_two_endpoints(), wait_for={"echo": 1, "other": 1}) as (emu, _):
        async with _official(emu) as client:
            endpoint = await client.get_endpoint("echo")
            assert (endpoint.id, endpoint.api_key) == (1000, ECHO_KEY)
            result = await endpoint.request("/generate", {"id": "via-official"}, cost=100)
            assert result["ok"] is True
            assert result["response"]["echo"] == {"id": "via-official"}
            workers = await client.get_endpoint_workers(endpoint)
            assert [(w.id, w.status) for w in workers] == [(1, "idle")]
            assert workers[0].measured_perf > 0

            new = emu.rotate_key("echo")
            await endpoint.refresh(block=True)  # what the client does after 6 days
            assert endpoint.api_key == new
            result = await endpoint.request("/generate", {"id": "after-rotation"}, cost=100)
            assert result["ok"] is True
        assert emu.autoscaler.stats.count("echo", "401") == 0
        assert emu.stats()["console"]["calls"]["endpoint_get"]["ok"] == 1


async def test_official_client_with_a_wrong_account_key_cannot_list() -> None:
    async with running(_two_endpoints()) as (emu, _):
        client = _official(emu, "not-the-account-key")
        async with client:
            with pytest.raises(Exception, match="HTTP 401"):
                await client.get_endpoints()


# ---------------------------------------------------------------------- vast-scheduler emulate
async def test_emulate_command_serves_the_account_and_logs_no_key(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    account, echo_key, port = "account-key-for-emulate-1", "echo-key-for-emulate-1", free_port()
    emulator = {"account_api_key": account, "endpoints": {"echo": {"api_key": echo_key}}}
    path = tmp_path / "emu.yaml"
    path.write_text(yaml.safe_dump({"emulator": emulator, "logging": {"level": "debug"}}))
    proc = await start_process("emulate", "--config", str(path), "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:

        async def listed() -> bool:
            try:
                status, _ = await _get(http, f"{url}/api/v0/endptjobs/", key=account)
            except aiohttp.ClientConnectionError:
                return False
            return status == 200

        await _eventually(listed, timeout_s=20)
        _, body = await _get(http, f"{url}/api/v0/endptjobs/", key=account)
        assert [(r["endpoint_name"], r["api_key"]) for r in body["results"]] == [("echo", echo_key)]
        async with http.post(f"{url}/admin/endpoints/echo/rotate_key") as resp:
            rotated = (await resp.json())["api_key"]
        headers = {"Authorization": f"Bearer {rotated}"}
        async with http.post(f"{url}/route/", json={"endpoint": "echo"}, headers=headers) as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
    output = (stdout + stderr).decode()
    assert "emulator.started" in output
    assert "emulator.endpoint_key_rotated" in output
    for key in (account, echo_key, rotated):
        assert key not in output
