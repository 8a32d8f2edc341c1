"""The built-in status page at ``/``, rendered by a real headless Chromium (Debian's package).

One daemon in front of the emulator with two endpoints: ``steady`` holds a backlog that stays
put (two long jobs running, three queued) and ``flaky`` has run jobs and lost a worker mid-job.
The page is read three ways: server-rendered (no JS), as Chromium's DOM after the page's JS
has fetched ``/v1/status``, and as a screenshot. A second test feeds the page hostile strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import signal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from scheduler.api import admin, status_page
from scheduler.api.context import SERVICE
from scheduler.serve import bound, start_runner
from tests.integration.harness import (
    daemon_config,
    running_daemon,
    running_emulator,
    wait_for_status,
    wait_until,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_TIMEOUT_S = 45
pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)",
)
EMULATED = {
    # 100 units at 2 units/s: 50 s a job, so the backlog holds still while the page is read.
    "steady": {"workers": 1, "perf": 2, "max_queue_time_s": 600},
    "flaky": {"workers": 2, "perf": 100},  # one second a job: long enough to kill mid-way
}


class DataKeys(HTMLParser):
    """Collects the text of every element carrying ``data-k``, and the root's attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.root: dict[str, str | None] = {}
        self.tags: list[str] = []
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append(tag)
        if found.get("id") == "endpoints":
            self.root = found
        if tag in ("meta", "link", "br", "img", "input"):
            return
        self._open.append((tag, found.get("data-k")))
        if found.get("data-k") is not None:
            self.values[found["data-k"] or ""] = ""

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, key in self._open:
            if key is not None:
                self.values[key] += data


def parse(html: str) -> DataKeys:
    parser = DataKeys()
    parser.feed(html)
    parser.close()
    return parser


def number(text: str) -> float:
    return float(text.removesuffix(" s"))


def stable_view(status: dict[str, Any]) -> dict[str, Any]:
    """What must not move while the page is read (ages and expiries do)."""
    view: dict[str, Any] = {}
    for name, e in status["endpoints"].items():
        for field in ("queue_depth", "queued_cost", "inflight", "leases", "lease_workers",
                      "leased_budget", "leased_inflight_cost"):  # fmt: skip
            view[f"{name}/{field}"] = e[field]
        view[f"{name}/worker_errors_total"] = sum(e["errors"]["worker"].values())
        view[f"{name}/route_errors_total"] = sum(e["errors"]["route"].values())
        for kind, count in e["errors"]["worker"].items():
            view[f"{name}/worker_error/{kind}"] = count
        for kind, count in e["errors"]["route"].items():
            view[f"{name}/route_error/{kind}"] = count
        for lease in e["lease_details"]:
            for field in ("worker_url", "mode", "capacity", "budget", "inflight_cost",
                          "inflight_jobs", "completed"):  # fmt: skip
                view[f"{name}/lease/{lease['lease_id']}/{field}"] = lease[field]
        for worker in e["workers"]:
            for field in ("worker_url", "limit", "phase", "inflight_jobs", "inflight_cost",
                          "throughput_cost_per_s"):  # fmt: skip
                view[f"{name}/worker/{worker['worker_url']}/{field}"] = worker[field]
            view[f"{name}/worker/{worker['worker_url']}/latency_floor"] = worker[
                "latency_floor_s_per_cost"
            ]
        for index, route in enumerate(e["recent_routes"]):
            view[f"{name}/route/{index}/outcome"] = route["outcome"]
            view[f"{name}/route/{index}/cost"] = route["cost"]
    return view


def assert_page_matches(page: DataKeys, status: dict[str, Any]) -> None:
    expected = stable_view(status)
    for key, want in expected.items():
        assert key in page.values, f"{key} is missing from the page"
        got = page.values[key]
        if want is None:
            assert got == status_page.DASH, key
        elif key.endswith("/latency_floor"):  # ms per FLOOR_PER_COST units of cost
            per_cost_ms = float(got.removesuffix(" ms")) / status_page.FLOOR_PER_COST / 1000
            assert per_cost_ms == pytest.approx(want, rel=0.01, abs=1e-7), key
        elif isinstance(want, str):
            assert got == want, key
        else:
            assert number(got) == pytest.approx(want, abs=0.006), key
    # No stale rows: every lease and route answer shown is one of the status.
    volatile = ("/age_s", "/detail", "/expires_in_s")
    shown = {k for k in page.values if "/lease/" in k or "/route/" in k or "/worker/" in k}
    assert {k for k in shown if not k.endswith(volatile)} <= set(expected)


async def chromium(url: str, profile: Path, *mode: str) -> str:
    """Runs headless Chromium once (bounded), returns its stdout; the process group is killed."""
    args = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-proxy-server", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", *mode, url,
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: renderer and zygote die with it
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CHROMIUM_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


async def get_status(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/v1/status") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def lose_a_worker_mid_job(http: aiohttp.ClientSession, daemon: Any, emulator: Any) -> None:
    """As in test_failover: the job (idempotent endpoint) is re-routed and succeeds; a ``lost``
    error is counted."""
    async with http.post(f"{daemon.url}/v1/endpoints/flaky/jobs", json={"payload": {}}) as resp:
        assert resp.status == 202
        job_id = (await resp.json())["id"]
    workers = emulator.workers("flaky")
    await wait_until(lambda: any(w.metrics.requests_working for w in workers), timeout_s=5)
    await next(w for w in workers if w.metrics.requests_working).kill()
    job = await wait_for_status(http, daemon, job_id, {"succeeded", "failed"})
    assert job["status"] == "succeeded", job


@pytest.mark.timeout(150)  # two Chromium runs, each bounded by CHROMIUM_TIMEOUT_S
async def test_status_page_in_headless_chromium(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with running_emulator(EMULATED) as emulator:
        config = daemon_config(
            emulator.autoscaler_url,
            # steady without learnt limits (both jobs run on its one worker at once, and its
            # row shows no limit); flaky learns one, and has no max_concurrency. flaky's idle
            # lease must outlive the page's reads (two Chromium runs; the 2 s default closed
            # it between them on a loaded machine).
            {
                "steady": {"max_concurrency": 2, "capacity": {"enabled": False}},
                "flaky": {"idempotent": True, "lease": {"idle_close_s": 60}},
            },
            server={"grace_period_s": 0.5},
        )
        async with running_daemon(config) as daemon:
            url = daemon.url
            await lose_a_worker_mid_job(http, daemon, emulator)
            for _ in range(3):
                async with http.post(f"{url}/v1/endpoints/flaky/run", json={"payload": {}}) as r:
                    assert r.status == 200
            steady = []
            for _ in range(5):
                async with http.post(f"{url}/v1/endpoints/steady/jobs", json={"payload": {}}) as r:
                    steady.append((await r.json())["id"])
            for job_id in steady[:2]:
                await wait_for_status(http, daemon, job_id, {"running"})
            dispatchers = daemon.service.dispatchers
            await wait_until(lambda: not dispatchers["flaky"].inflight, timeout_s=10)
            before = await get_status(http, url)

            async with http.get(f"{url}/") as resp:
                assert resp.status == 200
                assert resp.content_type == "text/html"
                assert "script-src 'sha256-" in resp.headers["Content-Security-Policy"]
                served = parse(await resp.text())
            assert served.root.get("data-source") == "server"
            assert_page_matches(served, before)

            dom = parse(await chromium(f"{url}/", tmp_path / "profile-dom", "--dump-dom"))
            shot = tmp_path / "page.png"
            await chromium(
                f"{url}/", tmp_path / "profile-shot", f"--screenshot={shot}",
                "--window-size=1280,900", "--hide-scrollbars",
            )  # fmt: skip
            after = await get_status(http, url)

    assert stable_view(before) == stable_view(after), "the state moved while the page was read"
    assert dom.root.get("data-source") == "js", "the page's script did not run"
    assert int(dom.root.get("data-refreshes") or 0) >= 1
    assert_page_matches(dom, after)
    # The numbers the operator came for, as the browser shows them:
    values = dom.values
    assert values["steady/queue_depth"] == "3"
    assert values["steady/inflight"] == "2"
    assert values["steady/queued_cost"] == "300"
    steady_leases = after["endpoints"]["steady"]["lease_details"]
    assert steady_leases, "no cached worker on the steady endpoint"
    lease = steady_leases[0]
    key = f"steady/lease/{lease['lease_id']}"
    assert values[f"{key}/worker_url"] == emulator.workers("steady")[0].url
    assert values[f"{key}/budget"] == "100"
    assert values[f"{key}/inflight_jobs"] == "1"
    assert values["steady/max_concurrency"] == "of 2"
    assert values["flaky/max_concurrency"] == "no cap"
    steady_row = f"steady/worker/{lease['worker_url']}"
    assert values[f"{steady_row}/inflight_jobs"] == "2"
    assert values[f"{steady_row}/limit"] == values[f"{steady_row}/phase"] == status_page.DASH
    (flaky_worker,) = after["endpoints"]["flaky"]["workers"]
    flaky_row = f"flaky/worker/{flaky_worker['worker_url']}"
    assert int(values[f"{flaky_row}/limit"]) >= 1
    assert values[f"{flaky_row}/phase"] in ("startup", "steady", "probing")
    # 100 units at 100 units/s: a second per job, 1000 ms per 100 units of cost
    assert 900 <= float(values[f"{flaky_row}/latency_floor"].removesuffix(" ms")) <= 1500
    assert 50 <= float(values[f"{flaky_row}/throughput_cost_per_s"]) <= 110
    # The kill mid-job is 'lost' (the endpoint is idempotent: the job is re-routed); the new
    # route answer may still name the dead worker (Vast learns of a death from missing
    # reports), a 'gone' on its session create. The page's total is the sum of its kinds.
    kinds = {k: int(v) for k, v in values.items() if k.startswith("flaky/worker_error/")}
    assert kinds.get("flaky/worker_error/lost", 0) >= 1, kinds
    assert set(kinds) <= {"flaky/worker_error/lost", "flaky/worker_error/gone"}, kinds
    assert int(values["flaky/worker_errors_total"]) == sum(kinds.values()), kinds
    assert values["flaky/route/0/outcome"] in ("ready", "no_worker")
    check_screenshot(shot)


def check_screenshot(path: Path) -> None:
    from PIL import Image  # the vastai dev dependency brings Pillow

    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (1280, 900)
        gray = image.convert("L")
        low, high = gray.getextrema()
        histogram = gray.histogram()
    assert high - low > 150, "no contrast: the screenshot is blank"
    background = max(histogram)
    assert background < 0.95 * sum(histogram), "almost every pixel is the background colour"
    dark = sum(histogram[:96])  # text and the header bar
    assert dark > 0.02 * sum(histogram), "too little ink for a page of numbers"


HOSTILE = '"><img src=x onerror="document.body.dataset.pwned=1"><script>pwn()</script>'


def hostile_status() -> dict[str, Any]:
    lease = {
        "lease_id": 1, "worker_url": f"http://w/{HOSTILE}", "mode": HOSTILE, "session": False,
        "capacity": 100, "budget": 50.5, "inflight_cost": 25, "inflight_jobs": 1,
        "completed": 3, "retired": False, "expires_in_s": 12.5,
    }  # fmt: skip
    worker = {"worker_url": f"http://w/{HOSTILE}", "limit": 4, "phase": HOSTILE,
              "inflight_jobs": 1, "inflight_cost": 25, "throughput_cost_per_s": None,
              "latency_floor_s_per_cost": 0.0125}  # fmt: skip
    route = {"age_s": 1.25, "outcome": HOSTILE, "cost": 100, "latency_s": 0.003,
             "detail": HOSTILE}  # fmt: skip
    endpoint = {
        "queue_depth": 7, "queued_cost": 700, "inflight": 1, "max_concurrency": 4,
        "max_depth": 100, "known_workers": [], "leases": 1, "lease_workers": 1,
        "leased_budget": 50.5, "leased_inflight_cost": 25, "lease_details": [lease],
        "workers": [worker],
        "reuse": HOSTILE, "legacy_detected": True, "polling": True, "eta_s": None,
        "throughput_cost_per_s": 0.0, "calibration": {"ratio": 1.0, "samples": 0},
        "last_no_worker": {"status": HOSTILE, "worker_counts": {}, "state": HOSTILE,
                           "request_idx": None},
        "recent_routes": [route],
        "errors": {"worker": {HOSTILE: 2}, "route": {"timeout": 1}, "ejected_workers": 0,
                   "ejections": 0},
        "vast": {"key_source": "account", "id": 5, "state": HOSTILE, "max_workers": 3,
                 "max_queue_time_s": 30, "target_queue_time_s": 7.5,
                 "workers": {"age_s": 1.0, "error": None, "unavailable": HOSTILE, "count": 1,
                             "by_status": {HOSTILE: 1},
                             "workers": [{"id": 11, "status": HOSTILE, "cur_load": 2.5,
                                          "perf": 100, "measured_perf": 90.25,
                                          "reqs_working": 2, "reliability": 0.99,
                                          "loaded_at": 0}]}},
    }  # fmt: skip
    return {"accepting": True, "endpoints": {"evil": endpoint}}


class StubStore:
    shared = False  # the handler asks the store for fleet totals only when it is shared


class StubService:
    store = StubStore()

    def status(self) -> dict[str, Any]:
        return hostile_status()


@pytest.mark.timeout(90)
async def test_status_page_escapes_hostile_strings(tmp_path: Path) -> None:
    app = web.Application()
    app[SERVICE] = StubService()  # type: ignore[assignment]  # only status() and store are read
    app.router.add_get("/", status_page.status_page)
    app.router.add_get("/v1/status", admin.status)
    runner = await start_runner(app, "127.0.0.1", 0, access_log=False)
    host, port = bound(runner)[0]
    try:
        url = f"http://{host}:{port}/"
        served_html = status_page.render(hostile_status())
        dom_html = await chromium(url, tmp_path / "profile", "--dump-dom")
    finally:
        await runner.cleanup()
    for html in (served_html, dom_html):
        page = parse(html)
        assert "img" not in page.tags
        assert page.tags.count("script") == 1  # the page's own
        assert "data-pwned" not in html  # no injected handler ran
        assert page.values["evil/lease/1/worker_url"] == f"http://w/{HOSTILE}"
        assert page.values["evil/route/0/detail"] == HOSTILE
        assert page.values[f"evil/worker_error/{HOSTILE}"] == "2"
        assert page.values["evil/queue_depth"] == "7"
        assert page.values["evil/lease/1/budget"] == "50.5"
        row = f"evil/worker/http://w/{HOSTILE}"
        assert page.values[f"{row}/worker_url"] == f"http://w/{HOSTILE}"
        assert page.values[f"{row}/phase"] == HOSTILE
        assert page.values[f"{row}/latency_floor"] == "1250 ms"
        assert page.values[f"{row}/throughput_cost_per_s"] == status_page.DASH
        assert page.values["evil/max_concurrency"] == "of 4"
        assert page.values["evil/vast/state"] == HOSTILE
        assert page.values["evil/vast/id"] == "5"
        assert page.values["evil/vast/target_queue_time_s"] == "7.5 s"
        assert page.values["evil/vast/workers_note"] == HOSTILE
        assert page.values["evil/vast_worker/11/status"] == HOSTILE
        assert page.values["evil/vast_worker/11/measured_perf"] == "90.25"
    assert parse(dom_html).root.get("data-source") == "js"
