"""Webhooks over real sockets: one signed POST per finished job, whatever its terminal state,
retried with growing back-off, given up after ``max_attempts``, never redirected, and
awaited by the drain within the grace period.

The receiver is an aiohttp server on 127.0.0.1 that records every request (any method, any
path) and stays up for the whole test, so a duplicate or a followed redirect would be seen.
A test ends on the daemon's own bookkeeping: ``vast_scheduler_webhooks_total{outcome}`` has
counted the webhook and no delivery task is left (``SchedulerService.idle``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from scheduler.config import AppConfig
from scheduler.listen import listen
from tests.integration.harness import (
    Daemon,
    daemon_config,
    running_daemon,
    running_emulator,
    wait_until,
)
from tests.integration.spies import SpyServer, ready_answer, serving, waiting_answer
from tests.integration.test_failover import submit

SECRET = "hook-secret-for-tests"
FAST_RETRY: dict[str, Any] = {"backoff_initial_s": 0.01, "backoff_max_s": 0.02}


@dataclass
class Delivery:
    method: str
    path: str
    body: bytes
    headers: dict[str, str]
    at: float  # time.monotonic() when it arrived


@dataclass
class Receiver:
    """Answers each request with the next scripted status (the last repeats), ``Location:
    location`` with it when set, after holding it up to ``hold_s`` (until ``release``)."""

    statuses: list[int]
    location: str | None = None
    hold_s: float = 0.0
    received: list[Delivery] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Delivery(request.method, request.path, await request.read(),
                                      dict(request.headers), time.monotonic()))  # fmt: skip
        self.arrived.set()
        status = self.statuses[min(len(self.received), len(self.statuses)) - 1]
        if self.hold_s:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), self.hold_s)
        self.answered_at.append(time.monotonic())
        headers = {"Location": self.location} if self.location else {}
        return web.Response(status=status, headers=headers)

    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(d.body) for d in self.received]


@asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[Receiver]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner, port = await listen(app, "127.0.0.1", 0, access_log=None)
    receiver.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield receiver
    finally:
        receiver.release.set()  # a held answer must not hold up the cleanup
        await runner.cleanup()


@asynccontextmanager
async def spy_autoscaler(worker_status: int | None) -> AsyncIterator[str]:
    """A scripted autoscaler (its URL is yielded): every route call names a worker that always
    answers ``worker_status``, or, when None, answers that no worker is ready."""
    async with AsyncExitStack() as stack:
        if worker_status is None:
            script: list[tuple[int, Any, dict[str, str]]] = [(200, waiting_answer(0), {})]
        else:
            answer = {"done": True} if worker_status < 300 else {"error": "model crashed"}
            worker = SpyServer([(worker_status, answer, {})])
            await stack.enter_async_context(serving(worker, "/generate"))
            script = [(200, ready_answer(worker.url), {})]
        autoscaler = await stack.enter_async_context(serving(SpyServer(script), "/route/"))
        yield autoscaler.url


def webhook_config(
    autoscaler_url: str,
    endpoint: dict[str, Any] | None = None,
    grace_s: float = 10.0,
    **webhook: Any,
) -> AppConfig:
    return daemon_config(
        autoscaler_url,
        {"echo": {"default_route": "/generate", **(endpoint or {})}},
        server={
            "grace_period_s": grace_s,
            "webhook": {"secret": SECRET, "allowed_hosts": ["127.0.0.1"], **webhook},
        },
    )


def outcomes(daemon: Daemon) -> dict[str, float]:
    """``vast_scheduler_webhooks_total`` by outcome, read from the daemon's registry."""
    family = daemon.service.metrics.webhooks
    return {s.labels["outcome"]: s.value for m in family.collect() for s in m.samples
            if s.name.endswith("_total")}  # fmt: skip


async def settled(daemon: Daemon, timeout_s: float = 10) -> dict[str, float]:
    """Waits until the daemon has counted a webhook's final outcome and has no delivery left
    (nor job: a second delivery of the same job would have started by then)."""
    await wait_until(lambda: sum(outcomes(daemon).values()) >= 1 and daemon.service.idle(),
                     timeout_s)  # fmt: skip
    return outcomes(daemon)


def only(outcome: str) -> dict[str, float]:
    return {"delivered": 0.0, "abandoned": 0.0, "cut": 0.0, outcome: 1.0}


def assert_signed(delivery: Delivery) -> None:
    expected = hmac.new(SECRET.encode(), delivery.body, hashlib.sha256).hexdigest()
    assert delivery.headers["X-Vast-Scheduler-Signature"] == f"sha256={expected}"
    assert delivery.headers["Content-Type"] == "application/json"
    assert (delivery.method, delivery.path) == ("POST", "/hook")


async def job_view(http: aiohttp.ClientSession, daemon: Daemon, job_id: str) -> dict[str, Any]:
    async with http.get(f"{daemon.url}/v1/jobs/{job_id}") as resp:
        assert resp.status == 200
        view: dict[str, Any] = await resp.json()
        return view


async def test_a_succeeded_job_calls_its_webhook_exactly_once_signed(
    http: aiohttp.ClientSession,
) -> None:
    async with (
        receiving(Receiver([204])) as receiver,
        running_emulator({"echo": {"workers": 1}}) as emulator,
        running_daemon(webhook_config(emulator.autoscaler_url)) as daemon,
    ):
        job_id = await submit(http, daemon.url, "echo", payload={"w": 1},
                              webhook={"url": receiver.url})  # fmt: skip
        counted = await settled(daemon)
        job = await job_view(http, daemon, job_id)
    # The receiver outlived the daemon's shutdown: a late duplicate would be here too.
    assert counted == only("delivered")
    assert len(receiver.received) == 1
    (delivery,) = receiver.received
    assert_signed(delivery)
    document = json.loads(delivery.body)
    assert document == job  # the job as GET /v1/jobs/{id} shows it once finished
    assert document["id"] == job_id
    assert document["status"] == "succeeded"
    assert document["result"]["body"]["echo"] == {"w": 1}


@dataclass(frozen=True)
class Ending:
    worker_status: int | None  # None: no worker is ever ready
    endpoint: dict[str, Any]
    submit: dict[str, Any]
    cancel: bool
    expected: dict[str, Any]  # fields of the webhook's document


ENDINGS = {
    "failed_500_not_idempotent": Ending(
        500, {}, {}, False,
        {"status": "failed", "error": "worker answered 500", "attempts": 1,
         "result": {"status_code": 500, "content_type": "application/json",
                    "body": {"error": "model crashed"}}},
    ),
    "failed_attempts_exhausted": Ending(
        500, {"idempotent": True, "max_attempts": 2,
              "retry_budget": {"ratio": 1.0, "min_retries": 100}}, {}, False,
        {"status": "failed", "error": "worker answered 500", "attempts": 2,
         "history": ["retry:server_error", "fail:server_error"]},
    ),
    "expired_while_queued": Ending(
        None, {}, {"timeout_s": 0.2}, False,
        {"status": "expired", "error": "deadline passed while queued", "attempts": 0},
    ),
    "cancelled_by_caller": Ending(
        None, {}, {}, True, {"status": "cancelled", "error": "cancelled by caller"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("ending", ENDINGS.values(), ids=ENDINGS.keys())
async def test_every_terminal_state_calls_the_webhook_once_with_its_status_and_reason(
    http: aiohttp.ClientSession, ending: Ending
) -> None:
    async with (
        receiving(Receiver([200])) as receiver,
        spy_autoscaler(ending.worker_status) as autoscaler_url,
        running_daemon(webhook_config(autoscaler_url, ending.endpoint)) as daemon,
    ):
        job_id = await submit(http, daemon.url, "echo", webhook={"url": receiver.url},
                              **ending.submit)  # fmt: skip
        if ending.cancel:
            async with http.delete(f"{daemon.url}/v1/jobs/{job_id}") as resp:
                assert resp.status == 202
        counted = await settled(daemon)
        job = await job_view(http, daemon, job_id)
    assert counted == only("delivered")
    assert len(receiver.received) == 1
    assert_signed(receiver.received[0])
    document = receiver.documents()[0]
    assert document == job
    assert document["id"] == job_id
    assert {k: document.get(k) for k in ending.expected} == ending.expected, document


async def test_failed_deliveries_are_retried_with_growing_back_off(
    http: aiohttp.ClientSession,
) -> None:
    initial_s = 0.2
    async with (
        receiving(Receiver([500, 503, 200])) as receiver,
        spy_autoscaler(200) as autoscaler_url,
        running_daemon(
            webhook_config(autoscaler_url, backoff_initial_s=initial_s, backoff_max_s=10.0)
        ) as daemon,  # fmt: skip
    ):
        await submit(http, daemon.url, "echo", webhook={"url": receiver.url})
        counted = await settled(daemon)
    assert counted == only("delivered")
    assert len(receiver.received) == 3
    assert len({d.body for d in receiver.received}) == 1  # the same document each time
    for delivery in receiver.received:
        assert_signed(delivery)
    first, second, third = (d.at for d in receiver.received)
    first_gap, second_gap = second - first, third - second
    # Attempt n waits initial_s * 2**(n-1), jittered over [50%, 100%]: the second wait is at
    # least initial_s, the longest the first may be. Lower bounds only: load only adds time.
    assert first_gap >= initial_s / 2
    assert second_gap >= initial_s


async def test_a_webhook_is_given_up_after_max_attempts_and_counted(
    http: aiohttp.ClientSession,
) -> None:
    async with (
        receiving(Receiver([500])) as receiver,
        spy_autoscaler(200) as autoscaler_url,
        running_daemon(webhook_config(autoscaler_url, max_attempts=3, **FAST_RETRY)) as daemon,
    ):
        await submit(http, daemon.url, "echo", webhook={"url": receiver.url})
        counted = await settled(daemon)
        async with http.get(f"{daemon.url}/metrics") as resp:
            exposition = await resp.text()
    assert counted == only("abandoned")
    assert 'vast_scheduler_webhooks_total{outcome="abandoned"} 1.0' in exposition
    # No task is left and the receiver outlived the daemon: none came after the third.
    assert len(receiver.received) == 3


@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirect_is_a_failed_attempt_and_never_followed(
    http: aiohttp.ClientSession, status: int
) -> None:
    """A 3xx is not a delivery: it is retried like a 5xx, then given up; the redirect target
    (an allowed host, even) never hears of it."""
    async with (
        receiving(Receiver([200])) as target,
        receiving(Receiver([status], location=target.url)) as redirector,
        spy_autoscaler(200) as autoscaler_url,
        running_daemon(webhook_config(autoscaler_url, max_attempts=2, **FAST_RETRY)) as daemon,
    ):
        await submit(http, daemon.url, "echo", webhook={"url": redirector.url})
        counted = await settled(daemon)
    assert target.received == []
    assert len(redirector.received) == 2
    assert counted == only("abandoned")


async def test_drain_waits_for_a_slow_webhook_receiver(http: aiohttp.ClientSession) -> None:
    hold_s = 1.0
    async with (
        receiving(Receiver([200], hold_s=hold_s)) as receiver,
        spy_autoscaler(200) as autoscaler_url,
    ):
        async with running_daemon(webhook_config(autoscaler_url, grace_s=10.0)) as daemon:
            await submit(http, daemon.url, "echo", webhook={"url": receiver.url})
            async with asyncio.timeout(10):
                await receiver.arrived.wait()  # the job ended; its webhook is being answered
        stopped = time.monotonic()  # running_daemon's exit drained and shut down
    assert outcomes(daemon) == only("delivered")
    assert len(receiver.answered_at) == 1
    assert receiver.answered_at[0] <= stopped
    assert receiver.answered_at[0] - receiver.received[0].at >= hold_s  # it was held


async def test_a_grace_period_shorter_than_the_receiver_cuts_the_webhook(
    http: aiohttp.ClientSession,
) -> None:
    grace_s = 0.3
    async with (
        receiving(Receiver([200], hold_s=30.0)) as receiver,
        spy_autoscaler(200) as autoscaler_url,
    ):
        config = webhook_config(autoscaler_url, grace_s=grace_s, timeout_s=30.0)
        async with running_daemon(config) as daemon:
            await submit(http, daemon.url, "echo", webhook={"url": receiver.url})
            async with asyncio.timeout(10):
                await receiver.arrived.wait()
            stopping = time.monotonic()
        stopped = time.monotonic()
        assert receiver.answered_at == []  # still held when the daemon had stopped
    # Nominally grace_s; bounded well below the receiver's hold even on a loaded machine.
    assert grace_s <= stopped - stopping < 10.0
    assert outcomes(daemon) == only("cut")
    assert len(receiver.received) == 1
