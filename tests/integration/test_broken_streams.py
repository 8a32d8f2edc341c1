"""A worker that breaks off mid-answer, and a caller that leaves mid-stream, over real sockets.

The worker is a scripted aiohttp server (``BreakingWorker``) that sends its headers and some of
its body and then drops the connection; the autoscaler is a spy that always routes to it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import openai
import pytest

from tests.integration.harness import (
    Daemon,
    daemon_config,
    running_daemon,
    wait_for_status,
)
from tests.integration.spies import BreakingWorker, SpyServer, ready_answer, serving

CHAT = "/v1/chat/completions"
STREAMED_CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
# Well past anything the tests wait for: a hang shows as a test timeout, not as an expiry.
BOUND_S = 5
ENDED = {"succeeded", "failed", "cancelled", "expired"}


def sse(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"delta": {"content": text}}]}).encode() + b"\n\n"


@asynccontextmanager
async def daemon_before(
    worker: BreakingWorker, path: str, **endpoint: Any
) -> AsyncIterator[tuple[Daemon, SpyServer]]:
    """The worker on ``path``, an autoscaler that always sends jobs there, a daemon using it."""
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(serving(worker, path))
        autoscaler = SpyServer([(200, ready_answer(worker.url), {})])
        await stack.enter_async_context(serving(autoscaler, "/route/"))
        config = daemon_config(autoscaler.url, {"spy": {"max_attempts": 3, **endpoint}})
        yield await stack.enter_async_context(running_daemon(config)), autoscaler


async def leased_inflight(http: aiohttp.ClientSession, daemon: Daemon) -> tuple[int, float]:
    async with http.get(f"{daemon.url}/v1/status") as resp:
        spy = (await resp.json())["endpoints"]["spy"]
    return spy["inflight"], spy["leased_inflight_cost"]


# A JSON answer whose Content-Length promises more than the worker sends before it dies: the
# daemon reads such an answer whole before passing it on (a synchronous run) or keeping it (an
# async job), so nothing has reached the caller.
def cut_json_worker() -> BreakingWorker:
    return BreakingWorker([b'{"answer": 42}'], "application/json", declared_length=64)


async def run_or_submit(
    http: aiohttp.ClientSession, daemon: Daemon, how: str
) -> tuple[dict[str, Any], int, Any]:
    """A job through ``/run`` (its answer: status and body) or ``/jobs`` (202, then polled);
    returns the finished job and what the caller got."""
    async with (
        asyncio.timeout(BOUND_S),
        http.post(f"{daemon.url}/v1/endpoints/spy/{how}", json={"payload": {"q": 1}}) as resp,
    ):
        status, body = resp.status, await resp.json()
        job_id = resp.headers["X-Job-Id"] if how == "run" else body["id"]
    job = await wait_for_status(http, daemon, job_id, ENDED, BOUND_S)
    return job, status, body


@pytest.mark.parametrize("how", ["run", "jobs"])
async def test_answer_cut_short_fails_cleanly_and_runs_once(
    http: aiohttp.ClientSession, how: str
) -> None:
    worker = cut_json_worker()
    async with daemon_before(worker, "/generate") as (daemon, autoscaler):  # not idempotent
        job, status, body = await run_or_submit(http, daemon, how)
    assert job["status"] == "failed"
    assert job["error"].startswith("worker answer cut short before it reached the caller"), job
    assert job["attempts"] == 1
    assert "result" not in job
    if how == "run":
        assert status == 502
        assert body["error"]["code"] == "job_failed"
        assert body["error"]["message"] == job["error"]
    assert worker.outcomes == ["aborted"]  # the worker saw exactly one request
    assert len(autoscaler.received) == 1


@pytest.mark.parametrize("how", ["run", "jobs"])
async def test_answer_cut_short_is_retried_when_idempotent(
    http: aiohttp.ClientSession, how: str
) -> None:
    # Nothing reached the caller: an idempotent job may run again, as after a malformed answer.
    worker = cut_json_worker()
    async with daemon_before(worker, "/generate", idempotent=True) as (daemon, _):
        job, status, body = await run_or_submit(http, daemon, how)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert job["history"] == ["retry:cut_short"]
    if how == "run":
        assert (status, body) == (200, {"answer": 42})
    else:
        assert job["result"]["body"] == {"answer": 42}
    assert worker.outcomes == ["aborted", "finished"]


async def test_stream_broken_after_chunks_closes_the_callers_connection(
    http: aiohttp.ClientSession,
) -> None:
    chunks = [sse("Hel"), sse("lo")]
    worker = BreakingWorker(chunks, hold=True)
    # Idempotent: even so, nothing is retried once bytes have reached the caller.
    async with daemon_before(worker, CHAT, idempotent=True) as (daemon, autoscaler):
        async with (
            asyncio.timeout(BOUND_S),
            http.post(f"{daemon.url}/v1/proxy/spy{CHAT}", json=STREAMED_CHAT) as resp,
        ):
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            job_id = resp.headers["X-Job-Id"]
            seen = b""
            while seen != b"".join(chunks):
                chunk = await resp.content.readany()
                assert chunk, seen  # the stream must not end before the worker broke off
                seen += chunk
            worker.release.set()
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.content.read()  # cut short: not a clean end of the answer
        job = await wait_for_status(http, daemon, job_id, ENDED, BOUND_S)
        assert await leased_inflight(http, daemon) == (0, 0)
    assert job["status"] == "failed"
    assert job["error"] == "worker stream broke: ClientPayloadError"
    assert job["attempts"] == 1
    assert worker.outcomes == ["aborted"]
    assert len(autoscaler.received) == 1  # no second worker was looked for


async def test_openai_client_sees_a_cut_stream_as_an_error() -> None:
    worker = BreakingWorker([sse("Hel"), sse("lo")])
    async with (
        daemon_before(worker, CHAT) as (daemon, _),
        openai.AsyncOpenAI(
            base_url=f"{daemon.url}/v1/proxy/spy/v1", api_key="unused", max_retries=0
        ) as client,  # fmt: skip
        asyncio.timeout(BOUND_S),
    ):
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        pieces: list[str | None] = []

        async def read_to_the_end() -> None:
            async for chunk in stream:
                pieces.append(chunk.choices[0].delta.content)

        with pytest.raises(openai.APIConnectionError):
            await read_to_the_end()
    assert pieces == ["Hel", "lo"]  # what came before the break, then an error, not an end


async def test_stream_broken_before_its_first_byte_is_a_502(http: aiohttp.ClientSession) -> None:
    # Headers, then nothing: no byte of the answer has reached the caller yet.
    worker = BreakingWorker([])
    async with daemon_before(worker, CHAT) as (daemon, _):
        async with (
            asyncio.timeout(BOUND_S),
            http.post(f"{daemon.url}/v1/proxy/spy{CHAT}", json=STREAMED_CHAT) as resp,
        ):
            assert resp.status == 502
            error = (await resp.json())["error"]
            job_id = resp.headers["X-Job-Id"]
        job = await wait_for_status(http, daemon, job_id, ENDED, BOUND_S)
    assert job["status"] == "failed"
    assert error["code"] == "job_failed"
    assert error["message"] == job["error"]
    assert job["error"].startswith("worker answer cut short before it reached the caller"), job
    assert job["attempts"] == 1
    assert worker.outcomes == ["aborted"]


async def test_stream_broken_before_its_first_byte_runs_again_when_idempotent(
    http: aiohttp.ClientSession,
) -> None:
    chunks = [sse("Hel"), sse("lo"), b"data: [DONE]\n\n"]
    worker = BreakingWorker([], sound=chunks)
    async with daemon_before(worker, CHAT, idempotent=True) as (daemon, _):
        async with (
            asyncio.timeout(BOUND_S),
            http.post(f"{daemon.url}/v1/proxy/spy{CHAT}", json=STREAMED_CHAT) as resp,
        ):
            assert resp.status == 200
            assert await resp.read() == b"".join(chunks)
            job_id = resp.headers["X-Job-Id"]
        job = await wait_for_status(http, daemon, job_id, ENDED, BOUND_S)
    assert job["status"] == "succeeded", job
    assert job["history"] == ["retry:cut_short"]
    assert worker.outcomes == ["aborted", "finished"]


async def test_caller_leaving_mid_stream_cancels_the_worker_request(
    http: aiohttp.ClientSession,
) -> None:
    worker = BreakingWorker([sse("tok")], endless=True)
    async with daemon_before(worker, CHAT) as (daemon, _):
        async with (
            asyncio.timeout(BOUND_S),
            http.post(f"{daemon.url}/v1/proxy/spy{CHAT}", json=STREAMED_CHAT) as resp,
        ):
            assert resp.status == 200
            job_id = resp.headers["X-Job-Id"]
            assert await resp.content.readany()
            assert await leased_inflight(http, daemon) == (1, 100)  # the default cost
            resp.close()  # the caller hangs up mid-stream
        async with asyncio.timeout(BOUND_S):
            await worker.connection_lost.wait()
        job = await wait_for_status(http, daemon, job_id, ENDED, BOUND_S)
        assert await leased_inflight(http, daemon) == (0, 0)
    assert job["status"] == "cancelled"
    assert job["error"] == "caller went away"
    assert worker.outcomes == ["lost"]
    assert len(worker.received) == 1
