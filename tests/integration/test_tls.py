"""HTTPS workers under Vast's root CA: the root fetched from the (emulated) console or named
in ``vast.ca_bundle``, trusted for worker connections with ``VERIFY_X509_STRICT`` cleared.

The roots are made with Vast's quirk (``tests.integration.certs``: a path length without
keyCertSign), which OpenSSL 3 refuses in strict mode. Python 3.11's default context does not
set the flag, 3.13's does: the ``strict_by_default`` fixture makes every
``ssl.create_default_context()`` set it, so these tests run as they would on 3.13+.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from scheduler.app import EMULATOR
from scheduler.config.base import EMBEDDED
from scheduler.emulator.emulator import Emulator
from scheduler.listen import listen
from scheduler.vast.tls import ConsoleRoot, vast_root_context
from scheduler.vast.types import VastRootUnavailable
from tests.integration.certs import CA, issue_leaf, make_ca, server_context
from tests.integration.harness import (
    API_KEY,
    Daemon,
    daemon_config,
    running_daemon,
    running_emulator,
    wait_for_status,
)
from tests.integration.spies import SpyServer, ready_answer, serving

OK = (200, {"secure": True}, {})


@pytest.fixture
def strict_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ssl.create_default_context()`` as on Python 3.13+: ``VERIFY_X509_STRICT`` set."""
    original = ssl.create_default_context

    def strict(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = original(*args, **kwargs)
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        return context

    monkeypatch.setattr(ssl, "create_default_context", strict)


@asynccontextmanager
async def https_worker(
    spy: SpyServer, ca: CA, directory: Path, named: str = "127.0.0.1"
) -> AsyncIterator[SpyServer]:
    """A worker on 127.0.0.1 serving HTTPS under a leaf for ``named`` that ``ca`` signed."""
    cert, key = issue_leaf(ca, directory, named)
    app = web.Application()
    app.router.add_post("/generate", spy.handle)
    app.router.add_get("/", hello)
    runner, port = await listen(app, "127.0.0.1", 0, ssl_context=server_context(cert, key))
    spy.url = f"https://127.0.0.1:{port}"
    try:
        yield spy
    finally:
        await runner.cleanup()


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@asynccontextmanager
async def console(root: CA | None) -> AsyncIterator[Emulator]:
    """The emulator as Vast's console, serving ``root`` (None: 404); no workers of its own."""
    async with running_emulator({}) as emulator:
        emulator.tls_root.pem = None if root is None else root.pem
        yield emulator


@asynccontextmanager
async def daemon_routing_to(
    worker_url: str, console_url: str, max_attempts: int = 2, **vast: Any
) -> AsyncIterator[tuple[Daemon, SpyServer]]:
    """A daemon whose (spy) autoscaler answers every route call with ``worker_url``."""
    async with serving(SpyServer([(200, ready_answer(worker_url), {})]), "/route/") as autoscaler:
        config = daemon_config(
            autoscaler.url,
            {"spy": {"max_attempts": max_attempts}},
            vast={"console_url": console_url, **vast},
        )
        async with running_daemon(config) as daemon:
            yield daemon, autoscaler


@asynccontextmanager
async def setup(
    served: CA | None, signer: CA, directory: Path, **daemon: Any
) -> AsyncIterator[tuple[Emulator, SpyServer, Daemon]]:
    """The console serving ``served``, an HTTPS worker under ``signer``, a daemon routing to it."""
    async with (
        console(served) as emulator,
        https_worker(SpyServer([OK]), signer, directory) as worker,
        daemon_routing_to(worker.url, emulator.autoscaler_url, **daemon) as (d, _),
    ):
        yield emulator, worker, d


async def run(http: aiohttp.ClientSession, daemon: Daemon) -> int:
    async with http.post(f"{daemon.url}/v1/endpoints/spy/run", json={"payload": {}}) as resp:
        await resp.read()
        return resp.status


async def worker_tls(http: aiohttp.ClientSession, daemon: Daemon) -> dict[str, Any]:
    async with http.get(f"{daemon.url}/v1/status") as resp:
        body: dict[str, Any] = await resp.json()
    return dict(body["worker_tls"])


async def fetches(
    http: aiohttp.ClientSession, daemon: Daemon, emulator: Emulator
) -> tuple[int, int, int]:
    """How often the console served the root; the daemon's refreshes and rotations of it."""
    status = await worker_tls(http, daemon)
    return emulator.tls_root.fetches, status["refreshes"], status["rotations"]


async def get_status(url: str, context: ssl.SSLContext) -> int | str:
    """A GET under ``context``: the status, or OpenSSL's reason for refusing the certificate."""
    try:
        async with aiohttp.ClientSession() as s, s.get(url, ssl=context) as resp:
            return resp.status
    except aiohttp.ClientConnectorCertificateError as exc:
        return str(getattr(exc.certificate_error, "verify_message", exc))


# ------------------------------------------------------------------ the context itself


async def test_strict_context_refuses_the_quirky_root_and_the_worker_context_accepts_it(
    tmp_path: Path, strict_by_default: None
) -> None:
    root = make_ca("vast-like root", vast_quirk=True)
    async with https_worker(SpyServer([OK]), root, tmp_path) as worker:
        strict = ssl.create_default_context(cadata=root.pem.decode())
        assert strict.verify_flags & ssl.VERIFY_X509_STRICT
        refused = await get_status(f"{worker.url}/", strict)
        assert refused == "Path length given without key usage keyCertSign"
        ours = vast_root_context(cadata=root.pem.decode())
        assert await get_status(f"{worker.url}/", ours) == 200
        assert not ours.verify_flags & ssl.VERIFY_X509_STRICT
        assert len(ours.get_ca_certs()) == 1  # Vast's root alone: no system roots beside it


async def test_worker_context_keeps_every_other_check(tmp_path: Path) -> None:
    """Cleared strictness accepts neither another root, a root unfit to sign, nor a
    certificate for another address."""
    root = make_ca("vast-like root", vast_quirk=True)
    ours = vast_root_context(cadata=root.pem.decode())
    other = make_ca("someone else", vast_quirk=True)
    async with https_worker(SpyServer([OK]), other, tmp_path) as worker:
        assert "unable to get local issuer" in str(await get_status(f"{worker.url}/", ours))
    unfit = make_ca("unfit", unfit_to_sign=True)
    with pytest.raises(VastRootUnavailable, match="no CA certificate"):
        vast_root_context(cadata=unfit.pem.decode())  # refused as a root at once
    async with https_worker(SpyServer([OK]), unfit, tmp_path) as worker:
        relaxed = ssl.create_default_context(cadata=unfit.pem.decode())
        relaxed.verify_flags &= ~ssl.VERIFY_X509_STRICT
        assert await get_status(f"{worker.url}/", relaxed) == "invalid CA certificate"
    async with https_worker(SpyServer([OK]), root, tmp_path, named="127.0.0.2") as worker:
        assert "IP address mismatch" in str(await get_status(f"{worker.url}/", ours))


async def test_one_fetch_for_concurrent_callers_and_one_refresh_for_concurrent_failures(
    http: aiohttp.ClientSession,
) -> None:
    old, new = make_ca("root 2025", vast_quirk=True), make_ca("root 2026", vast_quirk=True)
    async with console(old) as emulator:
        now = [100.0]
        root = ConsoleRoot(http, emulator.autoscaler_url, lambda: now[0], random.Random(1))
        contexts = await asyncio.gather(*(root.context() for _ in range(5)))
        assert emulator.tls_root.fetches == 1
        assert all(c is contexts[0] for c in contexts)
        emulator.tls_root.pem = new.pem
        await asyncio.gather(*(root.verification_failed(contexts[0]) for _ in range(5)))
        assert emulator.tls_root.fetches == 2
        rotated = await root.context()
        assert rotated is not contexts[0]  # every caller after the refresh gets the new root
        now[0] += 3_600  # an hour later:
        await root.verification_failed(contexts[0])  # under the replaced root: no fetch
        assert emulator.tls_root.fetches == 2
        await root.verification_failed(rotated)  # under the current one: fetched (the same)
        assert emulator.tls_root.fetches == 3
        assert await root.context() is rotated
        await root.close()


# ------------------------------------------------------------------ through the daemon


async def test_https_worker_trusted_through_ca_bundle(
    tmp_path: Path, http: aiohttp.ClientSession, strict_by_default: None
) -> None:
    root = make_ca("vast-like root", vast_quirk=True)
    bundle = root.write(tmp_path / "jvastai_root.cer")
    async with setup(None, root, tmp_path, ca_bundle=str(bundle)) as (emulator, worker, d):
        assert await run(http, d) == 200
        assert len(worker.received) == 1
        assert (await worker_tls(http, d))["source"] == "ca_bundle"
        assert emulator.tls_root.fetches == 0  # a bundle: the console is never asked


async def test_https_worker_root_fetched_from_the_console(
    tmp_path: Path, http: aiohttp.ClientSession, strict_by_default: None
) -> None:
    root = make_ca("vast-like root", vast_quirk=True)
    async with setup(root, root, tmp_path) as (emulator, worker, daemon):
        with capture_logs() as logs:
            statuses = await asyncio.gather(*(run(http, daemon) for _ in range(4)))
            statuses.append(await run(http, daemon))
        assert statuses == [200] * 5
        assert len(worker.received) == 5
        assert emulator.tls_root.fetches == 1  # fetched on first use, for all four, then kept
        status = await worker_tls(http, daemon)
        assert status["source"] == "console"
        assert status["loaded"] is True
        assert status["fetches"] == 1
        assert "tls.vast_root_loaded" in [entry["event"] for entry in logs]
        assert API_KEY not in repr(logs)
        assert "PRIVATE KEY" not in repr(logs)


async def test_embedded_emulator_is_the_console(
    tmp_path: Path, http: aiohttp.ClientSession, strict_by_default: None
) -> None:
    """``autoscaler_url: embedded``: the root comes from the emulator (``emulator.tls_root_cert``)
    even with ``vast.console_url`` left at Vast's; an HTTPS worker it routes to is served."""
    root = make_ca("vast-like root", vast_quirk=True)
    emulator_section = {"endpoints": {}, "tls_root_cert": str(root.write(tmp_path / "root.cer"))}
    config = daemon_config(EMBEDDED, {"spy": {}}, emulator=emulator_section)
    assert config.vast.console_url == "https://console.vast.ai"
    async with (
        https_worker(SpyServer([OK]), root, tmp_path) as worker,
        running_daemon(config) as daemon,
    ):
        emulator = daemon.app[EMULATOR]
        emulator.register_external_worker("spy", 900, url=worker.url)
        report = {"id": 900, "cur_load": 0, "max_perf": 100, "loadtime": 1.0, "error_msg": ""}
        emulator.autoscaler.book.on_status(report | {"url": worker.url}, time.monotonic())
        assert await run(http, daemon) == 200
        assert len(worker.received) == 1
        assert emulator.tls_root.fetches == 1


async def test_plain_http_workers_never_ask_the_console(http: aiohttp.ClientSession) -> None:
    root = make_ca("vast-like root", vast_quirk=True)
    async with (
        console(root) as emulator,
        serving(SpyServer([OK]), "/generate") as worker,
        daemon_routing_to(worker.url, emulator.autoscaler_url) as (daemon, _),
    ):
        assert await run(http, daemon) == 200
        assert emulator.tls_root.fetches == 0
        assert (await worker_tls(http, daemon))["loaded"] is False


async def test_worker_under_another_root_is_refused_and_the_root_fetched_again_once(
    tmp_path: Path, http: aiohttp.ClientSession, strict_by_default: None
) -> None:
    root, other = make_ca("vast-like root", vast_quirk=True), make_ca("other", vast_quirk=True)
    async with setup(root, other, tmp_path, max_attempts=3) as (emulator, worker, daemon):
        statuses = await asyncio.gather(*(run(http, daemon) for _ in range(4)))
        assert statuses == [502] * 4  # never verified, so never served insecurely
        assert worker.received == []
        # Twelve verification failures, one refetch: the root it got was the same one.
        assert await fetches(http, daemon, emulator) == (2, 1, 0)


async def test_rotated_root_is_fetched_again_and_the_job_fails_over(
    tmp_path: Path, http: aiohttp.ClientSession, strict_by_default: None
) -> None:
    old, new = make_ca("root 2025", vast_quirk=True), make_ca("root 2026", vast_quirk=True)
    async with AsyncExitStack() as first_worker, console(old) as emulator:
        before = await first_worker.enter_async_context(
            https_worker(SpyServer([OK]), old, tmp_path)
        )
        async with (
            https_worker(SpyServer([OK]), new, tmp_path) as after,
            daemon_routing_to(before.url, emulator.autoscaler_url, max_attempts=4) as (d, spy),
        ):
            assert await run(http, d) == 200
            emulator.tls_root.pem = new.pem  # Vast rotates its root; new workers carry it
            spy.script = [(200, ready_answer(after.url, reqnum=2), {})]
            await first_worker.aclose()  # the old worker goes away
            assert await run(http, d) == 200  # gone, refused under the old root, served
            assert len(after.received) == 1
            assert await fetches(http, d, emulator) == (2, 1, 1)


async def test_console_without_the_root_holds_jobs_until_it_serves_one(
    tmp_path: Path, http: aiohttp.ClientSession, strict_by_default: None
) -> None:
    root = make_ca("vast-like root", vast_quirk=True)
    async with setup(None, root, tmp_path) as (emulator, worker, daemon):
        async with http.post(f"{daemon.url}/v1/endpoints/spy/jobs", json={"payload": {}}) as resp:
            job_id = (await resp.json())["id"]
        status = await until(lambda s: s["failures"] >= 2, http, daemon)
        assert status["loaded"] is False
        assert status["last_error"] == "the console answered 404"
        emulator.tls_root.pem = root.pem
        done = await wait_for_status(http, daemon, job_id, {"succeeded", "failed"})
        assert done["status"] == "succeeded"
        assert len(worker.received) == 1
        assert (await worker_tls(http, daemon))["last_error"] is None


async def until(
    wanted: Callable[[dict[str, Any]], bool], http: aiohttp.ClientSession, daemon: Daemon
) -> dict[str, Any]:
    """``worker_tls`` in /v1/status, polled (bounded in time) until ``wanted``."""
    async with asyncio.timeout(10):
        while not wanted(status := await worker_tls(http, daemon)):
            await asyncio.sleep(0.05)
    return status
