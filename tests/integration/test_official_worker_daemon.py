"""The daemon in front of the official Vast worker (PyPI ``vastai``): its reported load never
falls below what the daemon has in flight on it, it never puts two concurrent requests on one
route answer outside a session, the worker's own 429 and its death do not fail a job, and a
streamed answer reaches the caller chunk by chunk; a job whose worker dies under it runs at
most once unless the endpoint is idempotent.

Held model calls (``payload["hold"]``, released by the test) make orderings causal instead of
timed: see ``official_worker_app.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from official_worker import (
    SKIP_REASON,
    OfficialWorker,
    calls_started,
    official_worker,
    official_workers,
    vastai_installed,
)

from tests.integration.harness import (
    Daemon,
    daemon_config,
    metric,
    run_many,
    running_daemon,
    running_emulator,
    wait_for_status,
)

pytestmark = pytest.mark.skipif(not vastai_installed(), reason=SKIP_REASON)
ENDPOINT = "official"
JOB_COST = 100  # the worker's workload calculator reads payload["cost"]; the estimator matches
MAX_ATTEMPTS = 3
COST_FIELD = {"estimator": "field", "field": "cost", "default": JOB_COST}


async def sample_inflight(daemon: Daemon, url: str, out: list[tuple[float, float]]) -> None:
    """Every 10 ms: the cost the daemon has in flight on the worker at ``url``."""
    dispatcher = daemon.service.dispatchers[ENDPOINT]
    for _ in range(6000):  # bounded: at most 60 s
        pool = dispatcher.leasing.pool
        cost = sum(lease.inflight_cost for lease in pool if lease.worker_url == url)
        out.append((time.monotonic(), cost))
        await asyncio.sleep(0.01)


@asynccontextmanager
async def daemon_for(emulator_url: str, **endpoint: Any) -> AsyncIterator[Daemon]:
    config = daemon_config(emulator_url, {ENDPOINT: {"cost": COST_FIELD, **endpoint}})
    async with running_daemon(config) as daemon:
        yield daemon


async def submit(http: aiohttp.ClientSession, daemon: Daemon, **body: Any) -> str:
    async with http.post(f"{daemon.url}/v1/endpoints/{ENDPOINT}/jobs", json=body) as resp:
        assert resp.status == 202, await resp.text()
        job_id: str = (await resp.json())["id"]
        return job_id


def overlapping_pairs(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], ...]]:
    """Pairs of requests the worker received on the same route answer (reqnum) and had in
    hand at the same time."""
    done = [r for r in records if r["end"] is not None]
    return [
        (a, b)
        for i, a in enumerate(done)
        for b in done[i + 1 :]
        if a["reqnum"] == b["reqnum"] and a["start"] < b["end"] and b["start"] < a["end"]
    ]


@pytest.mark.parametrize("reuse", ["auto", "sequential"])
async def test_reported_load_covers_the_daemons_inflight_cost(
    reuse: str, http: aiohttp.ClientSession
) -> None:
    """Under concurrent load the worker's reports never show less than the daemon has in
    flight on it, and the daemon never triggers the worker's one-entry-per-reqnum quirk
    (``test_official_worker.py`` shows it): two requests it has in hand at once on one
    answer always ride in one session (``auto``, the default), or never happen
    (``sequential``)."""
    async with running_emulator({}) as emulator, official_worker(emulator, ENDPOINT) as worker:
        # A long placement horizon: the daemon keeps 6 jobs on the worker (its fake model
        # runs them side by side) instead of holding them for a measured FIFO rate.
        endpoint = {"reuse": reuse, "max_concurrency": 6, "batch": {"max_jobs": 3},
                    "placement": {"horizon_s": 10}}  # fmt: skip
        async with daemon_for(emulator.autoscaler_url, **endpoint) as daemon:
            samples: list[tuple[float, float]] = []
            sampler = asyncio.create_task(sample_inflight(daemon, worker.url, samples))
            body = {"payload": {"cost": JOB_COST, "sleep_s": 1.0}}
            started = time.monotonic()
            try:
                statuses = await run_many(
                    http, f"{daemon.url}/v1/endpoints/{ENDPOINT}/run", 24, 6, body
                )
                # One more status report after the last job (it reports ~1 s after a change).
                await worker.wait_for_report(lambda _: True, since=time.monotonic())
            finally:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
            received = (await worker.records(http))["worker"]
    assert statuses == [200] * 24
    reports = [r for r in worker.reports() if r.at >= started]
    assert len(reports) >= 3
    busy = 0
    for report in reports:
        # What the daemon had in flight through the 500 ms before the report arrived (jobs
        # last 1 s; a report reaches the autoscaler well within 500 ms of its snapshot): all
        # of it was in flight when the worker took its snapshot.
        window = [cost for at, cost in samples if report.at - 0.5 <= at <= report.at]
        if not window:
            continue
        held = min(window)
        busy += held > 0
        assert report.body["cur_load"] >= held - 1e-6, (reuse, report.body, held)
    assert busy >= 2, "no report fell inside a busy stretch: the test checked nothing"

    jobs = [r for r in received if r["route"] == "/generate"]
    assert len(jobs) == 24, jobs
    pairs = overlapping_pairs(jobs)
    if reuse == "auto":
        assert pairs, "no two jobs ran at once on one answer: the test checked nothing"
        outside = [p for p in pairs if p[0]["session_id"] is None or p[1]["session_id"] is None]
        assert not outside, outside
        assert all(a["session_id"] == b["session_id"] for a, b in pairs)
    else:
        assert not pairs, pairs
        assert all(r["session_id"] is None for r in jobs)


async def test_workers_429_past_max_queue_time_requeues_the_job(
    http: aiohttp.ClientSession,
) -> None:
    """The worker's FIFO handler answers 429 once its queue time (in-flight workload over its
    max_perf: 1 s here) passes max_queue_time (0.5 s). Behind the daemon the affected job is
    not failed by the busy worker's refusals (they are not attempts: here as many as
    max_attempts allows before "every worker refused it", test_status_codes): it is routed
    again after the worker's back-off, and runs once the worker has room."""
    refusals_wanted = MAX_ATTEMPTS - 1
    endpoint = {
        "reuse": "sequential",  # requests in a session are left out of the worker's 429 check
        # Per-worker limits would hold the second job in the daemon while the worker is busy
        # (no 429 at all); off, as when other clients fill the worker.
        "capacity": {"enabled": False},
        "default_route": "/fifo",
        "max_attempts": MAX_ATTEMPTS,
        "poll": {"initial_s": 0.05, "max_s": 0.2},  # the back-off between refusals
    }
    async with (
        running_emulator({}) as emulator,
        official_worker(emulator, ENDPOINT, max_perf=100, fifo_max_queue_time_s=0.5) as worker,
        daemon_for(emulator.autoscaler_url, **endpoint) as daemon,
    ):
        first = await submit(http, daemon, payload={"cost": JOB_COST, "hold": "first", "n": 1})
        await worker.wait_for_records(http, lambda r: 1 in calls_started(r))
        second = await submit(http, daemon, payload={"cost": JOB_COST, "n": 2})

        def refused(records: dict[str, Any]) -> bool:
            return finished(daemon, second) or len(refusals(records["worker"])) >= refusals_wanted

        await worker.wait_for_records(http, refused)  # the worker itself answered 429
        await worker.release(http, "first")
        jobs = [await wait_for_status(http, daemon, j, {"succeeded", "failed"}, 20)
                for j in (first, second)]  # fmt: skip
        overloaded = await metric(http, daemon, "vast_scheduler_worker_errors_total",
                                  endpoint=ENDPOINT, kind="overloaded")  # fmt: skip
        received = (await worker.records(http))["worker"]
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], jobs
    assert jobs[1]["result"]["body"] == {"echo": {"cost": JOB_COST, "n": 2}}
    assert overloaded >= refusals_wanted
    assert jobs[1]["history"].count("reroute_shrink:overloaded") >= refusals_wanted, jobs[1]
    assert [r["status"] for r in received if r["n"] == 2][-1] == 200, received
    # Each refusal is followed by a back-off (at least half of poll.initial_s), not by an
    # immediate route call and a new request: a machine under load only lengthens the gaps.
    starts = [r["start"] for r in refusals(received)]
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.02, starts


def finished(daemon: Daemon, job_id: str) -> bool:
    """Whether the job has ended (a wait for its next step stops early: the asserts say why)."""
    job = daemon.service.get(job_id)
    return job is not None and job.finished


def refusals(received: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The requests of the job with ``n`` 2 that the worker answered 429."""
    return [r for r in received if r["n"] == 2 and r["status"] == 429]


@pytest.mark.parametrize("idempotent", [False, True])
async def test_worker_killed_mid_request_runs_the_job_at_most_once_unless_idempotent(
    http: aiohttp.ClientSession, idempotent: bool
) -> None:
    """SIGKILL of the worker running a job: the request was sent, so the job may have run.
    Not idempotent: it ends ``failed`` with the reason, the other worker never sees it (README,
    Failover: at-most-once unless idempotent). Idempotent: the worker's leases are dropped and
    the job runs again on the other worker. Either way the dead worker counts as gone."""
    async with (
        running_emulator({}) as emulator,
        official_workers(emulator, 2, ENDPOINT) as workers,
        daemon_for(emulator.autoscaler_url, idempotent=idempotent) as daemon,
    ):
        job_id = await submit(http, daemon, payload={"cost": JOB_COST, "hold": "job", "n": 1})
        victim = await running_on(http, workers, 1)
        await victim.kill()
        survivor = next(w for w in workers if w is not victim)
        if idempotent:
            await survivor.wait_for_records(
                http, lambda r: 1 in calls_started(r) or finished(daemon, job_id)
            )
            await survivor.release(http, "job")
        job = await wait_for_status(http, daemon, job_id, {"succeeded", "failed"}, 20)
        lost = await metric(http, daemon, "vast_scheduler_worker_errors_total",
                            endpoint=ENDPOINT, kind="lost")  # fmt: skip
        survivor_calls = [c for c in (await survivor.records(http))["model"] if c.get("n") == 1]
        leases = [x for x in daemon.service.dispatchers[ENDPOINT].leasing.pool
                  if x.worker_url == victim.url and not x.retired]  # fmt: skip
    assert lost >= 1
    assert job["history"][0] == "reroute_gone:lost", job
    assert leases == []  # the dead worker's leases are dropped either way
    if idempotent:
        assert job["status"] == "succeeded", job
        assert job["result"]["body"] == {"echo": {"cost": JOB_COST, "hold": "job", "n": 1}}
        assert job["attempts"] == 2, job
        assert len(survivor_calls) == 1
    else:
        assert job["status"] == "failed", job
        assert job["attempts"] == 1, job
        assert "connection lost after the request was sent" in job["error"], job
        assert "only an idempotent endpoint runs it again" in job["error"], job
        assert survivor_calls == []  # ran once: on the victim only


async def test_streamed_answer_passes_through_as_it_comes(http: aiohttp.ClientSession) -> None:
    """The model streams JSON lines through the worker's streaming passthrough; the daemon's
    proxy hands each to the caller as it comes: the first line arrives while the model still
    holds back the last one (it produces it only when the test has read the first)."""
    async with (
        running_emulator({}) as emulator,
        official_worker(emulator, ENDPOINT) as worker,
        daemon_for(emulator.autoscaler_url) as daemon,
    ):
        payload = {"cost": JOB_COST, "chunks": 4, "hold": "last"}
        url = f"{daemon.url}/v1/proxy/{ENDPOINT}/stream"
        # A daemon that waited for the whole answer would pass nothing on before the model's
        # own hold limit (30 s): the caller would see no first line within 10 s.
        async with asyncio.timeout(10), http.post(url, json=payload) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.content_type == "application/x-ndjson"
            first = json.loads(await resp.content.readline())
            first_at = time.monotonic()
            await worker.release(http, "last")
            rest = [json.loads(line) for line in (await resp.content.read()).splitlines()]
    lines = [first, *rest]
    assert [line["i"] for line in lines] == [0, 1, 2, 3], lines
    assert first_at < lines[-1]["produced_at"]


async def running_on(
    http: aiohttp.ClientSession, workers: list[OfficialWorker], n: int, timeout_s: float = 10
) -> OfficialWorker:
    """The worker whose model is running the call with payload ``n`` (polled, bounded)."""
    async with asyncio.timeout(timeout_s):
        while True:
            for worker in workers:
                if n in calls_started(await worker.records(http)):
                    return worker
            await asyncio.sleep(0.05)
