"""Each API's happy path and its errors, over real sockets: emulator, daemon and client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import (
    Daemon,
    daemon_config,
    running_daemon,
    running_emulator,
    wait_for_status,
)

WEBHOOK_SECRET = "hook-secret-for-tests"


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    async with running_emulator(
        {"echo": {"workers": 2}, "llm": {"workers": 1, "workload": "max_tokens"}}
    ) as emulator:
        config = daemon_config(
            emulator.autoscaler_url,
            {
                "echo": {"default_route": "/generate"},
                "llm": {
                    "default_route": "/v1/chat/completions",
                    "cost": {"estimator": "field", "field": "max_tokens", "default": 64},
                },
            },
            server={
                "max_body_bytes": 4096,
                "webhook": {"secret": WEBHOOK_SECRET, "allowed_hosts": ["127.0.0.1"]},
            },
        )
        async with running_daemon(config) as daemon:
            yield daemon


async def test_async_job_reaches_succeeded_with_the_workers_answer(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{daemon.url}/v1/endpoints/echo/jobs", json={"payload": {"n": 7}, "priority": 3}
    ) as resp:
        assert resp.status == 202
        created = await resp.json()
        assert resp.headers["X-Request-ID"]
        assert resp.headers["Location"] == f"/v1/jobs/{created['id']}"
    assert created["status"] == "queued"
    assert created["cost"] == 100.0
    job = await wait_for_status(http, daemon, created["id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded"
    assert job["attempts"] == 1
    assert job["result"]["status_code"] == 200
    assert job["result"]["body"]["echo"] == {"n": 7}
    assert job["timings"]["total_s"] >= job["timings"]["queued_s"] >= 0


async def test_field_estimator_sets_cost_and_caller_cost_is_clamped(
    http: aiohttp.ClientSession,
) -> None:
    # A narrow range [10, 1000]: under the default caller_cost (clamp) both the estimate and
    # a caller's own cost are held inside it; "trust" takes the caller's cost as it is.
    cost = {"estimator": "field", "field": "max_tokens", "default": 64, "min": 10, "max": 1000}
    endpoints = {"llm": {"cost": cost}, "trusting": {"cost": {**cost, "caller_cost": "trust"}}}
    async with running_emulator({name: {"workers": 1} for name in endpoints}) as emulator:
        config = daemon_config(emulator.autoscaler_url, endpoints)
        async with running_daemon(config) as daemon:

            async def cost_of(endpoint: str, max_tokens: int, caller: float | None = None) -> Any:
                body: dict[str, Any] = {"payload": {"max_tokens": max_tokens}}
                if caller is not None:
                    body["cost"] = caller
                url = f"{daemon.url}/v1/endpoints/{endpoint}/jobs"
                async with http.post(url, json=body) as resp:
                    assert resp.status == 202, await resp.text()
                    return (await resp.json())["cost"]

            assert await cost_of("llm", 40) == 40.0
            assert await cost_of("llm", 5000) == 1000.0
            assert await cost_of("llm", 40, caller=5e8) == 1000.0
            assert await cost_of("llm", 40, caller=1) == 10.0
            assert await cost_of("llm", 40, caller=500) == 500.0
            assert await cost_of("trusting", 40, caller=5e8) == 5e8


async def test_idempotency_key_returns_the_same_job(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    body = {"payload": {"x": 1}, "idempotency_key": "order-42"}
    url = f"{daemon.url}/v1/endpoints/echo/jobs"
    async with http.post(url, json=body) as first:
        assert first.status == 202
        first_id = (await first.json())["id"]
    async with http.post(url, json=body) as second:
        assert second.status == 200
        assert second.headers["Idempotent-Replayed"] == "true"
        assert (await second.json())["id"] == first_id
    await wait_for_status(http, daemon, first_id, {"succeeded"})
    assert daemon.service.metrics.jobs_submitted.labels("echo", "async")._value.get() == 1


async def test_sync_run_passes_the_workers_answer_through(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{daemon.url}/v1/endpoints/echo/run", json={"payload": {"hello": "world"}}
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        body = await resp.json()
        job_id = resp.headers["X-Job-Id"]
    assert body["echo"] == {"hello": "world"}
    job = await wait_for_status(http, daemon, job_id, {"succeeded"})
    assert job["result"]["status_code"] == 200


async def test_proxy_streams_sse_chunks_as_they_come(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": 12,
        "stream": True,
    }
    reads: list[bytes] = []
    async with http.post(f"{daemon.url}/v1/proxy/llm/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        async for chunk in resp.content.iter_any():
            reads.append(chunk)
    events = [e for e in b"".join(reads).decode().split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert len(events) >= 4
    assert len(reads) >= 2, "the stream arrived in one piece: it was buffered somewhere"
    first = json.loads(events[0].removeprefix("data: "))
    assert first["object"] == "chat.completion.chunk"


async def test_proxy_non_streaming_and_job_headers(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    body = {"model": "m", "prompt": "hello", "max_tokens": 5}
    async with http.post(
        f"{daemon.url}/v1/proxy/llm/v1/completions", json=body, headers={"X-Job-Priority": "9"}
    ) as resp:
        assert resp.status == 200
        answer = await resp.json()
        job_id = resp.headers["X-Job-Id"]
    assert answer["object"] == "text_completion"
    job = await wait_for_status(http, daemon, job_id, {"succeeded"})
    assert job["priority"] == 9
    assert job["route"] == "/v1/completions"


async def test_health_ready_status_and_metrics(daemon: Daemon, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{daemon.url}/v1/endpoints/echo/run", json={"payload": {}}) as resp:
        assert resp.status == 200
    async with http.get(f"{daemon.url}/healthz") as resp:
        assert resp.status == 200
    async with http.get(f"{daemon.url}/readyz") as resp:
        assert resp.status == 200
    async with http.get(f"{daemon.url}/v1/status") as resp:
        status = await resp.json()
    assert status["accepting"] is True
    assert status["endpoints"]["echo"]["queue_depth"] == 0
    assert len(status["endpoints"]["echo"]["known_workers"]) >= 1
    async with http.get(f"{daemon.url}/metrics") as resp:
        text = await resp.text()
    assert 'vast_scheduler_jobs_finished_total{endpoint="echo",outcome="succeeded"} 1.0' in text
    assert 'vast_scheduler_route_calls_total{endpoint="echo",outcome="ready"} 1.0' in text
    assert 'vast_scheduler_queue_depth{endpoint="echo"} 0.0' in text


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/endpoints/nope/jobs", {"payload": {}}, 404, "endpoint"),
        ("/v1/endpoints/echo/jobs", {"payload": []}, 422, "payload"),
        ("/v1/endpoints/echo/jobs", {}, 422, "payload"),
        ("/v1/endpoints/echo/jobs", {"payload": {}, "priority": 10}, 422, "priority"),
        ("/v1/endpoints/echo/jobs", {"payload": {}, "cost": -1}, 422, "cost"),
        ("/v1/endpoints/echo/jobs", {"payload": {}, "timeout_s": -5}, 422, "timeout_s"),
        ("/v1/endpoints/echo/jobs", {"payload": {}, "timeout_s": 999999}, 422, "timeout_s"),
        ("/v1/endpoints/echo/jobs", {"payload": {}, "route": "/../admin"}, 422, "route"),
        ("/v1/endpoints/echo/jobs", {"payload": {}, "route": "//evil.com/x"}, 422, "route"),
        ("/v1/endpoints/echo/jobs", {"payload": {}, "bogus": 1}, 422, "bogus"),
        (
            "/v1/endpoints/echo/jobs",
            {"payload": {}, "webhook": {"url": "http://example.com/h"}},
            422,
            "webhook.url",
        ),
        ("/v1/endpoints/echo/run", {"payload": {}, "idempotency_key": "k"}, 422, "idempotency_key"),
    ],
)
async def test_bad_input_gets_a_4xx_naming_the_field(
    daemon: Daemon, http: aiohttp.ClientSession, path: str, body: Any, status: int, field: str
) -> None:
    async with http.post(f"{daemon.url}{path}", json=body) as resp:
        assert resp.status == status
        error = (await resp.json())["error"]
    assert error["field"] == field
    assert field.split(".")[0] in error["message"] or status == 404


async def test_malformed_and_oversized_bodies(daemon: Daemon, http: aiohttp.ClientSession) -> None:
    url = f"{daemon.url}/v1/endpoints/echo/jobs"
    async with http.post(url, data=b"{not json") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["field"] == "body"
    async with http.post(url, data=b"\xff\xfe\xfa") as resp:
        assert resp.status == 400
    async with http.post(url, json={"payload": {"blob": "x" * 10_000}}) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "body_too_large"
    async with http.get(f"{daemon.url}/v1/jobs/job_missing") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["field"] == "job_id"
    async with http.get(f"{daemon.url}/healthz") as resp:
        assert resp.status == 200


async def test_finished_jobs_are_forgotten_after_retention(http: aiohttp.ClientSession) -> None:
    async with running_emulator({"echo": {"workers": 1}}) as emulator:
        config = daemon_config(
            emulator.autoscaler_url, {"echo": {}}, server={"job_retention_s": 0.3}
        )
        async with running_daemon(config) as daemon:
            body = {"payload": {}, "idempotency_key": "once"}
            async with http.post(f"{daemon.url}/v1/endpoints/echo/jobs", json=body) as resp:
                job_id = (await resp.json())["id"]
            await wait_for_status(http, daemon, job_id, {"succeeded"})
            await asyncio.sleep(0.4)
            async with http.get(f"{daemon.url}/v1/jobs/{job_id}") as resp:
                assert resp.status == 404
            assert len(daemon.service.store) == 0
            # The idempotency key is forgotten with the job: the same key makes a new job.
            async with http.post(f"{daemon.url}/v1/endpoints/echo/jobs", json=body) as resp:
                assert resp.status == 202
                assert (await resp.json())["id"] != job_id
