"""Vast's status codes as Vast means them, over real sockets: a worker's 429 backs that worker
off and sends the job elsewhere; a route 429 without Retry-After (Vast documents none) backs
off exponentially, one with it is honoured up to a cap; refused route calls (400/401) back off
and show on /readyz and /v1/status; every WAITING batch keeps its own request_idx."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.integration.harness import (
    API_KEY,
    daemon_config,
    run_many,
    running_daemon,
    running_emulator,
    submit_many,
    wait_all_finished,
    wait_until,
)
from tests.integration.spies import (
    SessionWorker,
    SpyServer,
    ready_answer,
    serving,
    serving_worker,
    waiting_answer,
)
from tests.integration.test_openapi import validator_for

FAST_POLL = {"initial_s": 0.05, "max_s": 0.2}  # what route errors other than refusals wait
BIG_COST = 10_000  # a session answer with room for many jobs: a 429 does not empty it
NO_LIMITS = {"enabled": False}


def ready(worker_url: str, cost: float = BIG_COST) -> tuple[int, Any, dict[str, str]]:
    return (200, {**ready_answer(worker_url), "cost": cost}, {})


async def test_a_workers_429_backs_it_off_and_the_job_runs_elsewhere_without_an_attempt(
    http: aiohttp.ClientSession,
) -> None:
    """The 429 sends the job to the next worker Vast names, and the refusing worker (whose
    session lease still has room) is not asked again while backed off."""
    async with (
        serving_worker(SessionWorker([429])) as refusing,
        serving_worker(SessionWorker([200])) as sound,
        serving(SpyServer([ready(refusing.url), ready(sound.url)]), "/route/") as spy,
    ):
        endpoint = {"max_attempts": 2, "capacity": NO_LIMITS,
                    "worker_backoff": {"initial_s": 5.0, "max_s": 5.0}}  # fmt: skip
        async with running_daemon(daemon_config(spy.url, {"spy": endpoint})) as daemon:
            run = f"{daemon.url}/v1/endpoints/spy/run"
            assert await run_many(http, run, 1, concurrency=1) == [200]
            assert await run_many(http, run, 3, concurrency=1) == [200] * 3
            status = daemon.service.status()["endpoints"]["spy"]
    assert refusing.answered == [429]
    assert sound.answered == [200] * 4
    assert status["errors"]["backed_off_workers"] == 1
    assert status["errors"]["worker"] == {"overloaded": 1}


async def test_a_job_every_worker_refuses_fails_after_max_attempts_spaced_refusals(
    http: aiohttp.ClientSession,
) -> None:
    async with (
        serving_worker(SessionWorker([429])) as refusing,
        serving(SpyServer([ready(refusing.url)]), "/route/") as spy,
    ):
        endpoint = {"max_attempts": 3, "capacity": NO_LIMITS,
                    "worker_backoff": {"initial_s": 0.2, "max_s": 0.4}}  # fmt: skip
        async with running_daemon(daemon_config(spy.url, {"spy": endpoint})) as daemon:
            [job_id] = await submit_many(http, f"{daemon.url}/v1/endpoints/spy/jobs", 1)
            await wait_all_finished(daemon, [job_id], timeout_s=20)
            async with http.get(f"{daemon.url}/v1/jobs/{job_id}") as resp:
                job = await resp.json()
    assert job["status"] == "failed"
    assert job["error"] == "every worker refused it (429), 3 times"
    assert refusing.answered == [429] * 3


@dataclass
class Calls:
    """When each route call came (monotonic s)."""

    at: list[float] = field(default_factory=list)

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.at, self.at[1:], strict=False)]


def route_times(spy: SpyServer) -> Calls:
    return Calls([r.at for r in spy.received])


async def test_a_route_429_without_retry_after_backs_off_exponentially(
    http: aiohttp.ClientSession,
) -> None:
    """Vast documents no Retry-After on its 429s: the waits double (each at least half its
    step: jitter) until Vast answers; the job then runs."""
    async with serving_worker(SessionWorker([200])) as worker:
        throttled = (429, "API requests too frequent", {})
        script = [throttled] * 4 + [ready(worker.url)]
        async with serving(SpyServer(script), "/route/") as spy:
            endpoint = {"route_backoff": {"initial_s": 0.2, "max_s": 5.0}, "poll": FAST_POLL}
            async with running_daemon(daemon_config(spy.url, {"spy": endpoint})) as daemon:
                run = f"{daemon.url}/v1/endpoints/spy/run"
                assert await run_many(http, run, 1, concurrency=1) == [200]
                assert daemon.service.status()["endpoints"]["spy"]["route_error"] is None
    gaps = route_times(spy).gaps()
    assert len(gaps) == 4
    for index, gap in enumerate(gaps):
        assert gap >= 0.2 * 2**index / 2 - 0.01, gaps  # 0.1, 0.2, 0.4, 0.8 at least


async def test_a_route_429_retry_after_is_honoured_up_to_its_cap(
    http: aiohttp.ClientSession,
) -> None:
    async with serving_worker(SessionWorker([200])) as worker:
        script = [(429, "API requests too frequent", {"Retry-After": "3600"}), ready(worker.url)]
        async with serving(SpyServer(script), "/route/") as spy:
            endpoint = {"route_backoff": {"initial_s": 0.05, "max_retry_after_s": 0.6}}
            async with running_daemon(daemon_config(spy.url, {"spy": endpoint})) as daemon:
                run = f"{daemon.url}/v1/endpoints/spy/run"
                assert await run_many(http, run, 1, concurrency=1) == [200]
    [gap] = route_times(spy).gaps()
    assert gap >= 0.6 - 0.01  # the capped Retry-After, not the 0.05 s back-off


async def readyz(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{url}/readyz") as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(("status", "kind"), [(401, "unauthorized"), (400, "bad_request")])
async def test_a_refused_poller_backs_off_and_the_daemon_says_not_ready_until_vast_answers(
    http: aiohttp.ClientSession, status: int, kind: str
) -> None:
    """No worker yet (WAITING), then Vast refuses the calls (a bad key, a bad request): the
    poller's calls back off (not the poll's 0.05-0.2 s), /readyz is 503 with the reason and
    /v1/status names the error and since when (both as the OpenAPI spec says); the job waits,
    and runs once Vast answers again."""
    async with serving_worker(SessionWorker([200])) as worker:
        refused = (status, {"error": "refused"}, {})
        async with serving(SpyServer([(200, waiting_answer(7), {}), refused]), "/route/") as spy:
            endpoint = {"route_backoff": {"initial_s": 0.2, "max_s": 1.6}, "poll": FAST_POLL}
            async with running_daemon(daemon_config(spy.url, {"spy": endpoint})) as daemon:
                [job_id] = await submit_many(http, f"{daemon.url}/v1/endpoints/spy/jobs", 1)
                await wait_until(lambda: len(spy.received) >= 2)
                started = spy.received[1].at
                await asyncio.sleep(2.5)
                calls = [r.at for r in spy.received if r.at >= started]
                code, ready_body = await readyz(http, daemon.url)
                async with http.get(f"{daemon.url}/v1/status") as resp:
                    status_body = await resp.json()
                async with http.get(f"{daemon.url}/openapi.json") as resp:
                    spec = await resp.json()
                spy.script[:] = [ready(worker.url)]
                await wait_all_finished(daemon, [job_id], timeout_s=10)
                job = daemon.service.status()["endpoints"]["spy"]
                after = await readyz(http, daemon.url)
    # at least 0.1, 0.2, 0.4, 0.8, 0.8 s apart: at most 6 calls in 2.5 s (~15 at the poll's)
    assert 2 <= len(calls) <= 6, Calls(calls).gaps()
    assert all(r.body["request_idx"] == 7 for r in spy.received[1:])  # the poller's own
    validator_for(spec, "Health").validate(ready_body)
    validator_for(spec, "Status").validate(status_body)
    trouble = status_body["endpoints"]["spy"]["route_error"]
    assert code == 503
    assert ready_body["status"] == "route_refused"
    assert f"endpoint spy: route calls refused ({kind})" in ready_body["reason"]
    assert trouble["kind"] == kind
    assert trouble["refused"] is True
    assert trouble["streak"] >= 2
    assert trouble["for_s"] >= 2.0
    assert job["route_error"] is None
    assert after == (200, {"status": "ready"})


@dataclass
class HoldingAutoscaler:
    """Names ``first`` once; then answers every new request WAITING with a fresh request_idx
    (after ``delay_s``, so that several batches are in flight together) and a carried one
    WAITING with the same index until ``open`` is set, then names ``later``."""

    first: str
    later: str
    delay_s: float = 0.3
    issued: list[int] = field(default_factory=list)
    carried: list[int] = field(default_factory=list)
    open: asyncio.Event = field(default_factory=asyncio.Event)
    first_named: bool = False
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if not self.first_named:
            self.first_named = True
            return web.json_response({**ready_answer(self.first), "cost": 100.5})
        if self.open.is_set():
            return web.json_response({**ready_answer(self.later), "cost": BIG_COST})
        idx = body["request_idx"]
        if idx == 0:
            self.issued.append(idx := 100 + len(self.issued))
            await asyncio.sleep(self.delay_s)
        else:
            self.carried.append(idx)
        return web.json_response(waiting_answer(idx))


async def test_every_waiting_batch_keeps_its_own_request_idx(
    http: aiohttp.ClientSession,
) -> None:
    """A slow worker holds the one job its answer has room for; the next jobs go out as four
    batches at once and all get WAITING: each index is asked with again (one went to the
    poller, the others used to be dropped), and every job runs once Vast names a worker."""
    async with (
        serving_worker(SessionWorker([200], delay_s=1.5)) as slow,
        serving_worker(SessionWorker([200])) as later,
    ):
        autoscaler = HoldingAutoscaler(slow.url, later.url)
        async with serving(autoscaler, "/route/"):
            endpoint = {"capacity": NO_LIMITS, "batch": {"max_jobs": 2},
                        "max_route_inflight": 4}  # fmt: skip
            async with running_daemon(daemon_config(autoscaler.url, {"spy": endpoint})) as daemon:
                jobs = f"{daemon.url}/v1/endpoints/spy/jobs"
                first = await submit_many(http, jobs, 1)
                await wait_until(lambda: len(slow.answered) == 1)
                rest = await submit_many(http, jobs, 8, concurrency=1)
                await wait_until(lambda: len(autoscaler.issued) >= 2, timeout_s=5)
                await wait_until(
                    lambda: set(autoscaler.issued) <= set(autoscaler.carried), timeout_s=5
                )
                autoscaler.open.set()
                await wait_all_finished(daemon, first + rest, timeout_s=20)
                statuses = [daemon.service.get(j) for j in first + rest]
    assert len(autoscaler.issued) >= 2
    assert len(slow.answered) + len(later.answered) == 9
    assert all(job is not None and job.status == "succeeded" for job in statuses)


async def test_route_429s_without_retry_after_from_the_emulator_are_backed_off(
    http: aiohttp.ClientSession,
) -> None:
    """The emulator set to answer its rate limit (one call a second per key) as Vast
    documents it, without Retry-After; its worker is ready after 3 s. The daemon's poller
    (polling every 0.05-0.2 s) meets 429s and waits doubling steps instead of asking again
    at its poll rate; the job runs once the worker is ready."""
    async with running_emulator(
        {"echo": {"workers": 1, "cold_start_s": 3.0}},
        route_min_interval_ms=1000,
        route_retry_after=False,
    ) as emulator:
        for _ in range(2):
            body = {"endpoint": "echo", "cost": 1}
            headers = {"Authorization": f"Bearer {API_KEY}"}
            async with http.post(
                f"{emulator.autoscaler_url}/route/", json=body, headers=headers
            ) as resp:
                status, retry_after = resp.status, resp.headers.get("Retry-After")
        assert (status, retry_after) == (429, None)
        await asyncio.sleep(1.0)  # the probes' interval is over
        endpoint = {"route_backoff": {"initial_s": 0.4, "max_s": 3.0}, "poll": FAST_POLL}
        config = daemon_config(emulator.autoscaler_url, {"echo": endpoint})
        async with running_daemon(config) as daemon:
            run = f"{daemon.url}/v1/endpoints/echo/run"
            assert await run_many(http, run, 1, concurrency=1) == [200]
        throttled = emulator.autoscaler.stats.count("echo", "429") - 1  # less the probe's
    assert 1 <= throttled <= 8, throttled  # at its poll rate: about 15 (6 seen on a loaded CI)


async def test_a_refusal_with_nothing_waiting_is_not_ready_only_for_its_back_off(
    http: aiohttp.ClientSession,
) -> None:
    """A 401 fails the batch it answered; with no job left to ask again, /readyz turns ready
    once the back-off is over (it would otherwise stay 503 for good: a balancer sends no job
    to a replica that is not ready, so no route call would ever clear it)."""
    refused = (401, {"error": "invalid api key"}, {})
    async with serving(SpyServer([refused]), "/route/") as spy:
        endpoint = {"route_backoff": {"initial_s": 3.0, "max_s": 3.0}}
        async with running_daemon(daemon_config(spy.url, {"spy": endpoint})) as daemon:
            run = f"{daemon.url}/v1/endpoints/spy/run"
            assert await run_many(http, run, 1, concurrency=1) == [502]
            code, body = await readyz(http, daemon.url)
            await asyncio.sleep(3.0)
            after = await readyz(http, daemon.url)
    assert (code, body["status"]) == (503, "route_refused")
    assert after == (200, {"status": "ready"})
    assert len(spy.received) == 1


async def test_a_waiting_batch_stops_asking_once_its_jobs_are_gone(
    http: aiohttp.ClientSession,
) -> None:
    """Vast never names a worker again: the WAITING batches' jobs expire at their deadline
    (reserved jobs are not in the queue, whose sweep would expire them) and no index is
    asked with after that."""
    async with serving_worker(SessionWorker([200], delay_s=6.0)) as slow:
        autoscaler = HoldingAutoscaler(slow.url, slow.url)
        async with serving(autoscaler, "/route/"):
            endpoint = {"capacity": NO_LIMITS, "batch": {"max_jobs": 2},
                        "max_route_inflight": 4}  # fmt: skip
            async with running_daemon(daemon_config(autoscaler.url, {"spy": endpoint})) as daemon:
                jobs = f"{daemon.url}/v1/endpoints/spy/jobs"
                await submit_many(http, jobs, 1)
                await wait_until(lambda: len(slow.answered) == 1)
                body = {"payload": {}, "timeout_s": 1.5}
                rest = await submit_many(http, jobs, 8, body=body, concurrency=1)
                await wait_all_finished(daemon, rest, timeout_s=4)  # the slow job holds 6 s
                expired = [daemon.service.get(job_id) for job_id in rest]
                await asyncio.sleep(0.3)  # a call sent as the last job expired is answered
                calls = len(autoscaler.issued) + len(autoscaler.carried)
                await asyncio.sleep(1.0)
                later = len(autoscaler.issued) + len(autoscaler.carried)
    assert len(autoscaler.issued) >= 2
    assert all(job is not None and job.status == "expired" for job in expired)
    assert later == calls
