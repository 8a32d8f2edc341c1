"""Live reload: SIGHUP to a real daemon process (a raised limit applies under load, a broken
file is refused with every path, a new endpoint takes jobs), and ``POST /v1/admin/reload``
in-process with auth on (401 / 403 / 200, 422 and 409 answers, token rotation)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from scheduler.api.reload import CONFIG_PATH
from scheduler.app import create_app
from scheduler.config import load_config
from scheduler.serve import bound, shutdown, start_runner
from tests.integration.harness import (
    API_KEY,
    Daemon,
    run_many,
    running_emulator,
    wait_all_finished,
    wait_until,
)
from tests.integration.test_lifecycle import (
    DaemonProcess,
    endpoint_status,
    free_port,
    launched,
    write,
)

SLOW: dict[str, Any] = {"workers": 2, "perf": 400}  # cost 100: 0.25 s a job alone


def process_config(port: int, endpoints: dict[str, Any]) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": port, "grace_period_s": 10},
        "auth": {"enabled": False},
        "vast": {"autoscaler_url": "embedded"},
        "logging": {"format": "json", "level": "info", "access_log": False},
        "emulator": {"status_interval_s": 0.2, "endpoints": {"slow": SLOW, "extra": SLOW}},
        "endpoint_defaults": {"poll": {"initial_s": 0.05, "max_s": 0.2}},
        "endpoints": endpoints,
    }


def daemon_process(
    tmp_path: Path, http: aiohttp.ClientSession, endpoints: dict[str, Any]
) -> AbstractAsyncContextManager[tuple[DaemonProcess, Path]]:
    return launched(tmp_path, http, process_config(0, endpoints))  # the port is chosen there


async def submit(http: aiohttp.ClientSession, url: str, endpoint: str, count: int) -> list[str]:
    ids = []
    for index in range(count):
        body = {"payload": {"n": index}}
        async with http.post(f"{url}/v1/endpoints/{endpoint}/jobs", json=body) as resp:
            assert resp.status == 202, await resp.text()
            ids.append((await resp.json())["id"])
    return ids


async def statuses(http: aiohttp.ClientSession, url: str, ids: list[str]) -> list[str]:
    found = []
    for job_id in ids:
        async with http.get(f"{url}/v1/jobs/{job_id}") as resp:
            found.append((await resp.json())["status"])
    return found


FINAL = {"succeeded", "failed", "cancelled", "expired"}


async def all_succeed(http: aiohttp.ClientSession, url: str, ids: list[str]) -> None:
    async with asyncio.timeout(30):
        found = await statuses(http, url, ids)
        while not FINAL.issuperset(found):
            await asyncio.sleep(0.1)
            found = await statuses(http, url, ids)
    assert found == ["succeeded"] * len(ids)


async def test_sighup_raises_a_limit_under_load_and_loses_no_job(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with daemon_process(tmp_path, http, {"slow": {"max_concurrency": 2}}) as (daemon, path):
        ids = await submit(http, daemon.url, "slow", 24)
        status = await endpoint_status(http, daemon.url, "slow")
        assert status["max_concurrency"] == 2
        assert status["inflight"] <= 2
        assert status["queue_depth"] > 0  # jobs are queued and running while it reloads
        raw = yaml.safe_load(path.read_text())
        raw["endpoints"]["slow"]["max_concurrency"] = 5
        write(path, raw)
        event = await daemon.sighup_and_wait("config.reloaded")
        assert event["changes"] == ["endpoints.slow.max_concurrency: 2 -> 5"]
        assert (event["path"], event["source"]) == (str(path), "sighup")
        status = await endpoint_status(http, daemon.url, "slow")
        assert status["max_concurrency"] == 5
        peak = 0
        async with asyncio.timeout(20):  # the raised limit is used, not only shown
            while peak <= 2 and status["queue_depth"]:
                status = await endpoint_status(http, daemon.url, "slow")
                peak = max(peak, status["inflight"])
                await asyncio.sleep(0.02)
        assert 2 < peak <= 5
        await all_succeed(http, daemon.url, ids)


BROKEN = """
server: {{host: 127.0.0.1, port: {port}}}
auth: {{enabled: false}}
endpoints:
  slow:
    max_concurrency: 0
    queue: {{max_depth: -1}}
"""


async def test_sighup_with_a_broken_file_keeps_the_old_config_and_logs_each_path(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with daemon_process(tmp_path, http, {"slow": {"max_concurrency": 2}}) as (daemon, path):
        before = await endpoint_status(http, daemon.url, "slow")
        write(path, BROKEN.format(port=daemon.url.rsplit(":", 1)[1]))
        event = await daemon.sighup_and_wait("config.reload_refused")
        assert event["code"] == "invalid_config"
        assert sorted(event["errors"]) == [
            "endpoints.slow.max_concurrency: must be > 0",
            "endpoints.slow.queue.max_depth: must be > 0",
        ]
        assert set(event["fields"]) == {
            "endpoints.slow.queue.max_depth", "endpoints.slow.max_concurrency"
        }  # fmt: skip
        after = await endpoint_status(http, daemon.url, "slow")
        assert after["max_concurrency"] == before["max_concurrency"] == 2
        assert after["max_depth"] == before["max_depth"]
        # A valid file with a restart-only change is refused too, by path.
        raw = process_config(free_port(), {"slow": {"max_concurrency": 3}})
        write(path, raw)
        event = await daemon.sighup_and_wait("config.reload_refused")
        assert event["errors"] == ["server.port: changing it needs a restart"]
        assert (await endpoint_status(http, daemon.url, "slow"))["max_concurrency"] == 2
        ids = await submit(http, daemon.url, "slow", 2)  # still serving
        await all_succeed(http, daemon.url, ids)


async def test_sighup_adds_an_endpoint_that_takes_jobs(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with daemon_process(tmp_path, http, {"slow": {}}) as (daemon, path):
        async with http.post(f"{daemon.url}/v1/endpoints/extra/jobs", json={"payload": {}}) as r:
            assert r.status == 404
        running = await submit(http, daemon.url, "slow", 4)
        raw = yaml.safe_load(path.read_text())
        raw["endpoints"]["extra"] = {"max_concurrency": 3}
        write(path, raw)
        event = await daemon.sighup_and_wait("config.reloaded")
        assert event["added_endpoints"] == ["extra"]
        assert (await endpoint_status(http, daemon.url, "extra"))["max_concurrency"] == 3
        ids = await submit(http, daemon.url, "extra", 3)
        await all_succeed(http, daemon.url, ids + running)
        async with http.get(f"{daemon.url}/openapi.json") as resp:
            spec = await resp.json()
        enum = spec["paths"]["/v1/endpoints/{endpoint}/jobs"]["post"]["parameters"][0]
        assert enum["schema"]["enum"] == ["extra", "slow"]


# POST /v1/admin/reload, in-process ---------------------------------------------------------
ADMIN = "admin-token-0123456789abcdef"
USER = "user-token-0123456789abcdef"
ROTATED = "rotated-token-0123456789abcdef"


def admin_file(
    autoscaler_url: str, tokens: list[dict[str, Any]], endpoint: str = "echo", **settings: Any
) -> dict[str, Any]:
    return {
        "auth": {"tokens": tokens},
        "vast": {"autoscaler_url": autoscaler_url, "api_key": API_KEY},
        "endpoint_defaults": {"poll": {"initial_s": 0.05, "max_s": 0.2}},
        "endpoints": {endpoint: settings},
    }


TOKENS = [{"name": "ops", "token": ADMIN, "admin": True}, {"name": "team", "token": USER}]


@asynccontextmanager
async def daemon_with_file(
    path: Path, attach: bool = True, grace_s: float = 5
) -> AsyncIterator[Daemon]:
    """What ``serve`` does: the app knows the file it came from (unless not ``attach``)."""
    config = load_config(path)
    app = create_app(config)
    if attach:
        app[CONFIG_PATH] = path
    runner = await start_runner(app, "127.0.0.1", 0, access_log=False)
    host, port = bound(runner)[0]
    try:
        yield Daemon(f"http://{host}:{port}", app, runner, config)
    finally:
        await shutdown(app, runner, grace_s=grace_s)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post_reload(
    http: aiohttp.ClientSession, daemon: Daemon, token: str | None
) -> tuple[int, dict[str, Any]]:
    headers = bearer(token) if token else {}
    async with http.post(f"{daemon.url}/v1/admin/reload", headers=headers) as resp:
        return resp.status, await resp.json()


async def test_admin_reload_needs_an_admin_token_and_answers_what_changed(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    path = tmp_path / "daemon.yaml"
    async with running_emulator({"echo": {"workers": 1}}) as emulator:
        write(path, admin_file(emulator.autoscaler_url, TOKENS, max_concurrency=2))
        async with daemon_with_file(path) as daemon:
            assert (await post_reload(http, daemon, None))[0] == 401
            assert (await post_reload(http, daemon, "not-a-token-0123456789"))[0] == 401
            code, body = await post_reload(http, daemon, USER)
            assert (code, body["error"]["code"]) == (403, "forbidden")
            write(path, admin_file(emulator.autoscaler_url, TOKENS, max_concurrency=4))
            code, body = await post_reload(http, daemon, ADMIN)
            assert code == 200, body
            assert body["changes"] == ["endpoints.echo.max_concurrency: 2 -> 4"]
            assert body["updated_endpoints"] == ["echo"]
            async with http.get(f"{daemon.url}/v1/status", headers=bearer(USER)) as resp:
                assert (await resp.json())["endpoints"]["echo"]["max_concurrency"] == 4


async def test_admin_reload_refusals_keep_the_config(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    path = tmp_path / "daemon.yaml"
    async with running_emulator({"echo": {"workers": 1}}) as emulator:
        good = admin_file(emulator.autoscaler_url, TOKENS, max_concurrency=2)
        write(path, good)
        async with daemon_with_file(path) as daemon:
            broken = admin_file(emulator.autoscaler_url, TOKENS, max_concurrency=0, bogus=1)
            write(path, broken)
            code, body = await post_reload(http, daemon, ADMIN)
            assert (code, body["error"]["code"]) == (422, "invalid_config")
            assert {p["field"] for p in body["problems"]} == {
                "endpoints.echo.max_concurrency", "endpoints.echo.bogus"
            }  # fmt: skip
            write(path, {**good, "server": {"port": 1}})
            code, body = await post_reload(http, daemon, ADMIN)
            assert (code, body["error"]["code"]) == (409, "restart_required")
            assert body["problems"] == [
                {"field": "server.port", "message": "changing it needs a restart"}
            ]
            write(path, {**good, "endpoints": {}})
            code, body = await post_reload(http, daemon, ADMIN)
            assert (code, body["problems"][0]["field"]) == (409, "endpoints.echo")
            assert daemon.service.config == daemon.config
            assert daemon.service.dispatchers["echo"].config.max_concurrency == 2


async def test_admin_reload_rotates_tokens(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    path = tmp_path / "daemon.yaml"
    async with running_emulator({"echo": {"workers": 1}}) as emulator:
        write(path, admin_file(emulator.autoscaler_url, TOKENS))
        async with daemon_with_file(path) as daemon:
            rotated = [TOKENS[0], {"name": "team", "token": ROTATED}]
            write(path, admin_file(emulator.autoscaler_url, rotated))
            code, body = await post_reload(http, daemon, ADMIN)
            assert (code, body["changes"]) == (200, ["auth.tokens: changed"])
            url = f"{daemon.url}/v1/endpoints/echo/jobs"
            async with http.post(url, json={"payload": {}}, headers=bearer(USER)) as resp:
                assert resp.status == 401
            async with http.post(url, json={"payload": {}}, headers=bearer(ROTATED)) as resp:
                assert resp.status == 202


@pytest.mark.parametrize("with_path", [True, False], ids=["auth-off", "no-file"])
async def test_admin_reload_is_refused_without_auth_or_without_a_file(
    tmp_path: Path, http: aiohttp.ClientSession, with_path: bool
) -> None:
    path = tmp_path / "daemon.yaml"
    async with running_emulator({"echo": {"workers": 1}}) as emulator:
        raw = admin_file(emulator.autoscaler_url, TOKENS)
        if with_path:
            raw["auth"] = {"enabled": False}
        write(path, raw)
        async with daemon_with_file(path, attach=with_path) as daemon:
            if with_path:
                code, body = await post_reload(http, daemon, None)
                assert (code, body["error"]["code"]) == (403, "admin_requires_auth")
            else:
                code, body = await post_reload(http, daemon, ADMIN)
                assert (code, body["error"]["code"]) == (409, "reload_unavailable")


async def test_reconfigure_adjusts_every_component_and_keeps_queued_jobs(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    path = tmp_path / "daemon.yaml"
    async with running_emulator({"echo": {"workers": 0}}) as emulator:  # cold: jobs stay queued
        write(path, admin_file(emulator.autoscaler_url, TOKENS))
        async with daemon_with_file(path, grace_s=0.1) as daemon:  # its jobs never run
            ids = await submit_as(http, daemon, 5)
            dispatcher = daemon.service.dispatchers["echo"]
            await wait_until(lambda: len(dispatcher.queue) == 5)
            changed = {
                "max_concurrency": 9, "queue": {"max_depth": 50}, "route_rate_per_s": 3.0,
                "route_burst": 4, "tenant_weights": {"team": 2.0}, "reuse": "sequential",
                "retry_budget": {"ratio": 0.5, "min_retries": 1, "window_s": 2.0},
                "ejection": {"consecutive_failures": 2, "base_s": 1.0, "max_s": 2.0},
                "lease": {"ttl_s": 10.0, "idle_close_s": 1.0, "session_lifetime_s": 5.0},
                "cost": {"calibration_alpha": 0.5},
            }  # fmt: skip
            write(path, admin_file(emulator.autoscaler_url, TOKENS, **changed))
            code, body = await post_reload(http, daemon, ADMIN)
            assert code == 200, body
            assert dispatcher is daemon.service.dispatchers["echo"]
            assert len(dispatcher.queue) == 5  # nothing dropped
            assert dispatcher.queue.max_depth == 50
            assert dispatcher.queue.weight_of("team") == 2.0
            bucket = dispatcher.routing.calls.bucket
            assert (bucket.rate_per_s, bucket.burst) == (3.0, 4)
            assert str(dispatcher.leasing.mode) == "sequential"
            budget = dispatcher.settling.retry_budget
            assert (budget.ratio, budget.min_retries, budget.window_s) == (0.5, 1, 2.0)
            assert dispatcher.settling.outliers.policy.consecutive_failures == 2
            limits = dispatcher.leasing.pool.limits
            assert (limits.ttl_s, limits.idle_close_s) == (10, 1)
            assert dispatcher.settling.calibrator.alpha == 0.5
            for job_id in ids:
                job = daemon.service.get(job_id)
                assert job is not None
                assert str(job.status) == "queued"


async def submit_as(http: aiohttp.ClientSession, daemon: Daemon, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        url = f"{daemon.url}/v1/endpoints/echo/jobs"
        async with http.post(url, json={"payload": {}}, headers=bearer(USER)) as resp:
            assert resp.status == 202, await resp.text()
            ids.append((await resp.json())["id"])
    return ids


async def reload_to(
    http: aiohttp.ClientSession, daemon: Daemon, path: Path, raw: dict[str, Any]
) -> list[str]:
    """Write ``raw`` and reload it with the admin token; the changes the daemon applied."""
    write(path, raw)
    code, body = await post_reload(http, daemon, ADMIN)
    assert code == 200, body
    changes: list[str] = body["changes"]
    return changes


async def status_of(http: aiohttp.ClientSession, daemon: Daemon, endpoint: str) -> dict[str, Any]:
    async with http.get(f"{daemon.url}/v1/status", headers=bearer(USER)) as resp:
        assert resp.status == 200
        found: dict[str, Any] = (await resp.json())["endpoints"][endpoint]
        return found


async def test_reload_from_session_to_sequential_under_load_retires_the_session_leases(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """README: a changed ``reuse`` retires the current leases: they finish what they run,
    then close (their Vast sessions end on the worker); new leases use the new mode."""
    path = tmp_path / "daemon.yaml"
    async with running_emulator({"echo": {"workers": 2, "perf": 400}}) as emulator:
        await emulator.wait_ready("echo", 2)
        workers = emulator.workers("echo")

        def open_sessions() -> set[str]:
            return {sid for worker in workers for sid in worker.sessions.table.sessions}

        # Sessions outlive the test (lifetime 120 s, idle close 30 s): only retirement ends them.
        raw = admin_file(emulator.autoscaler_url, TOKENS, max_concurrency=4, reuse="auto")
        write(path, raw)
        async with daemon_with_file(path) as daemon:
            dispatcher = daemon.service.dispatchers["echo"]
            before = await submit_as(http, daemon, 12)  # 0.25 s a job alone: ~1 s of work
            await wait_until(lambda: dispatcher.inflight > 0 and bool(open_sessions()))
            old_sessions = open_sessions()
            assert dispatcher.queue, "the reload should land with jobs still queued"
            changes = await reload_to(http, daemon, path, {**raw, "endpoints": {"echo": {
                "max_concurrency": 4, "reuse": "sequential"}}})  # fmt: skip
            assert changes == ['endpoints.echo.reuse: "auto" -> "sequential"']
            assert (await status_of(http, daemon, "echo"))["reuse"] == "sequential"
            after = await submit_as(http, daemon, 8)
            await wait_all_finished(daemon, before + after, timeout_s=30)
            jobs = [daemon.service.get(job_id) for job_id in before + after]
            # None failed, and none was cut off and retried when its lease was retired.
            assert [(str(j.status), j.attempts) for j in jobs if j is not None] == [
                ("succeeded", 1)
            ] * 20
            # The old leases close and end their sessions on the workers; no new one opens.
            await wait_until(lambda: not open_sessions(), timeout_s=10)
            opened = daemon.service.metrics.leases_opened
            assert opened.labels("echo", "sequential")._value.get() > 0
            sessions_opened = opened.labels("echo", "session")._value.get()
            assert sessions_opened >= len(old_sessions)
            # New jobs keep using sequential leases: still no session on any worker.
            more = await submit_as(http, daemon, 4)
            await wait_all_finished(daemon, more, timeout_s=30)
            assert opened.labels("echo", "session")._value.get() == sessions_opened
            assert not open_sessions()


async def test_reload_keeping_reuse_auto_keeps_the_legacy_detection(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A reload that leaves ``reuse: auto`` on an endpoint found to have legacy workers must
    not go back to reusing answers (each reuse is a 401 from a replay-protecting worker)."""
    path = tmp_path / "daemon.yaml"
    async with running_emulator({"old": {"workers": 1, "mode": "legacy"}}) as emulator:
        await emulator.wait_ready("old", 1)

        def rejected() -> int:
            return sum(w.counters.by_status.get(401, 0) for w in emulator.workers("old"))

        # No rest between jobs on a sequential answer: the second job reuses the first's answer.
        lease = {"sequential_rest_s": 0}
        raw = admin_file(emulator.autoscaler_url, TOKENS, "old", reuse="auto", lease=lease)
        write(path, raw)
        async with daemon_with_file(path) as daemon:
            run = f"{daemon.url}/v1/endpoints/old/run"
            statuses = await run_many(http, run, 4, concurrency=1, headers=bearer(USER))
            assert statuses == [200] * 4
            status = await status_of(http, daemon, "old")
            assert (status["reuse"], status["legacy_detected"], rejected()) == ("never", True, 1)
            changes = await reload_to(http, daemon, path, {**raw, "endpoints": {"old": {
                "reuse": "auto", "lease": lease, "max_concurrency": 4}}})  # fmt: skip
            assert changes == ["endpoints.old.max_concurrency: null -> 4"]
            statuses = await run_many(http, run, 12, concurrency=4, headers=bearer(USER))
            assert statuses == [200] * 12
            status = await status_of(http, daemon, "old")
    assert (status["reuse"], status["legacy_detected"]) == ("never", True)
    assert rejected() == 1  # no new 401 after the reload
    assert emulator.autoscaler.stats.count("old", "ready") == 16  # still one route per job
