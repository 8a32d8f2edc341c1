"""Emulated worker sessions against the official worker's rule (``vastai`` 1.9.1,
``serverless/server/lib/backend.py``): expiry = creation + ``lifetime``, + ``lifetime`` at
the start of each request on the session (never while one runs); a sweep every
``session_reap_interval_s`` ends expired sessions and closes the connections of requests
still running on them; a malformed ``/session/create`` is answered as that worker does."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from emulator_fixtures import FAST_REPORTS_S, call_worker, ready_answer, running
from official_worker import SKIP_REASON, official_worker, vastai_installed

from scheduler.emulator.settings import EmulatorConfig

REAP_S = 0.1


def session_config(**echo: Any) -> EmulatorConfig:
    return EmulatorConfig.model_validate(
        {
            "endpoints": {"echo": {"workers": 1, **echo}},
            "status_interval_s": FAST_REPORTS_S,
            "session_reap_interval_s": REAP_S,
            "seed": 7,
        }
    )


async def create(http: aiohttp.ClientSession, answer: dict[str, Any], lifetime: float) -> str:
    body = {"auth_data": answer, "payload": {"lifetime": lifetime}}
    async with http.post(f"{answer['url']}/session/create", json=body) as resp:
        assert resp.status == 201
        return str((await resp.json())["session_id"])


async def session_get(
    http: aiohttp.ClientSession, answer: dict[str, Any], sid: str
) -> tuple[int, Any]:
    ref = {"session_id": sid, "session_auth": answer}
    async with http.post(f"{answer['url']}/session/get", json=ref) as resp:
        return resp.status, await resp.json()


async def test_expiry_is_creation_plus_lifetime_plus_lifetime_per_request() -> None:
    lifetime = 2.0
    async with running(session_config(), wait_for={"echo": 1}) as (emu, http):
        answer = await ready_answer(http, emu)
        sid = await create(http, answer, lifetime)
        _, body = await session_get(http, answer, sid)
        assert body["expiration"] - body["created_at"] == pytest.approx(lifetime, abs=0.05)
        for n in range(3):  # each request pushes it back by lifetime, not to now + lifetime
            assert (await call_worker(http, answer, {"n": n}, session_id=sid))[0] == 200
        _, after = await session_get(http, answer, sid)
        assert after["expiration"] == pytest.approx(body["expiration"] + 3 * lifetime, abs=0.05)
        # /session/get reads, it does not extend.
        _, again = await session_get(http, answer, sid)
        assert again["expiration"] == pytest.approx(after["expiration"], abs=0.01)


async def test_sweep_ends_an_expired_idle_session_and_its_load() -> None:
    async with running(session_config(), wait_for={"echo": 1}) as (emu, http):
        worker = emu.workers("echo")[0]
        answer = await ready_answer(http, emu, cost=250)
        sid = await create(http, answer, 0.3)
        assert worker.metrics.cur_load == 250  # the session is one entry of the answer's cost
        async with asyncio.timeout(5):
            while (await session_get(http, answer, sid))[0] == 200:
                await asyncio.sleep(0.05)
        assert (await session_get(http, answer, sid))[0] == 400
        assert worker.metrics.cur_load == 0
        assert (await call_worker(http, answer, session_id=sid))[0] == 410


async def test_sweep_cuts_a_request_still_running_past_the_expiry() -> None:
    # One request of 100 units at 50 units/s takes 2 s; the session (lifetime 0.4 s, pushed
    # to creation + 0.8 s by that request) expires while it runs: the worker closes it.
    async with running(session_config(perf=50), wait_for={"echo": 1}) as (emu, http):
        worker = emu.workers("echo")[0]
        answer = await ready_answer(http, emu)
        sid = await create(http, answer, 0.4)
        with pytest.raises(aiohttp.ClientError):
            await call_worker(http, answer, session_id=sid)
        assert sid not in worker.sessions.table.sessions
        assert worker.metrics.requests_working == {}
        assert worker.counters.by_status[200] == 0


async def test_a_request_keeps_a_short_session_alive_across_sweeps() -> None:
    # Lifetime 0.5 s, three requests of 0.3 s each in a row: every start adds 0.5 s, so the
    # session outlives creation + lifetime and none of them is cut.
    async with running(session_config(perf=330), wait_for={"echo": 1}) as (emu, http):
        answer = await ready_answer(http, emu)
        sid = await create(http, answer, 0.5)
        started = time.monotonic()
        for n in range(3):
            assert (await call_worker(http, answer, {"n": n}, session_id=sid))[0] == 200
        assert time.monotonic() - started > 0.5
        assert (await session_get(http, answer, sid))[0] == 200


MALFORMED: list[tuple[str, bytes]] = [
    ("not JSON", b"{nope"),
    ("empty body", b""),
    ("a JSON list", b"[]"),
    ("no payload", b'{"auth_data": {"cost": 1}}'),
    ("no auth_data", b'{"payload": {"lifetime": 5}}'),
    ("auth_data a string", b'{"auth_data": "x", "payload": {"lifetime": 5}}'),
    ("lifetime a string", b'{"auth_data": {"cost": 1}, "payload": {"lifetime": "5"}}'),
    ("lifetime null", b'{"auth_data": {"cost": 1}, "payload": {"lifetime": null}}'),
]


@pytest.mark.skipif(not vastai_installed(), reason=SKIP_REASON)
async def test_malformed_session_create_is_answered_as_the_official_worker_does() -> None:
    cfg = session_config()
    async with (
        running(cfg, wait_for={"echo": 1}) as (emu, http),
        official_worker(emu, "official") as official,
    ):
        emulated = emu.workers("echo")[0]
        statuses: dict[str, tuple[int, int]] = {}
        for name, raw in MALFORMED:
            pair = []
            for url in (official.url, emulated.url):
                async with http.post(f"{url}/session/create", data=raw) as resp:
                    pair.append(resp.status)
            statuses[name] = (pair[0], pair[1])
        assert {n: o for n, (o, _) in statuses.items()} == {n: e for n, (_, e) in statuses.items()}
        assert statuses["not JSON"] == (422, 422)
        assert statuses["no payload"] == (500, 500)
        assert emulated.sessions.table.sessions == {}  # none of them opened a session
