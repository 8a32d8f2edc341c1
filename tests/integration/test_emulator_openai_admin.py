"""OpenAI-shaped routes, SSE streaming, garbage/trickle faults, the admin API and the CLI."""

from __future__ import annotations

import asyncio
import json

import structlog
from emulator_fixtures import API_KEY, call_worker, config, ready_answer, running
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from scheduler.emulator.cli import run_emulator


async def test_chat_and_completion_bodies_parse_as_openai_types() -> None:
    async with running(wait_for={"echo": 1}) as (emu, http):
        answer = await ready_answer(http, emu)
        payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        status, body = await call_worker(http, answer, payload, "/v1/chat/completions")
        assert status == 200
        chat = ChatCompletion.model_validate(body)
        assert chat.usage is not None
        assert chat.usage.completion_tokens == 5
        status, body = await call_worker(http, answer, {"prompt": "x"}, "/v1/completions")
        assert Completion.model_validate(body).choices[0].text


async def test_sse_stream_yields_paced_chunks_ending_in_done() -> None:
    cfg = config(llm={"workers": 1, "perf": 100, "workload": "max_tokens"})
    async with running(cfg, wait_for={"llm": 1}) as (emu, http):
        answer = await ready_answer(http, emu, "llm")
        payload = {"messages": [], "max_tokens": 8, "stream": True}
        body = {"auth_data": answer, "session_id": None, "payload": payload}
        loop = asyncio.get_running_loop()
        arrivals: list[float] = []
        lines: list[bytes] = []
        async with http.post(f"{answer['url']}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            for _ in range(100):
                line = await resp.content.readline()
                if not line:
                    break
                if line.strip():
                    lines.append(line.strip())
                    arrivals.append(loop.time())
        assert lines[-1] == b"data: [DONE]"
        chunks = [ChatCompletionChunk.model_validate(json.loads(x[6:])) for x in lines[:-1]]
        assert len(chunks) == 8
        assert chunks[-1].choices[0].finish_reason == "length"
        assert arrivals[-1] - arrivals[0] >= 0.05  # 8 tokens at 100/s: paced, not one burst


async def test_garbage_and_trickle_modes_through_admin_then_restore() -> None:
    async with running(wait_for={"echo": 1}) as (emu, http):
        answer = await ready_answer(http, emu)
        admin = f"{emu.autoscaler_url}/admin/workers/1"
        async with http.post(f"{admin}/garbage") as resp:
            assert (await resp.json())["garbage"] is True
        status, body = await call_worker(http, answer)
        assert status == 200
        assert isinstance(body, bytes)
        async with http.post(f"{admin}/trickle", json={"byte_delay_ms": 5}) as resp:
            assert resp.status == 200
        async with http.post(f"{admin}/garbage", json={"on": False}) as resp:
            assert resp.status == 200
        started = asyncio.get_running_loop().time()
        status, body = await call_worker(http, answer, {"k": "v"})
        assert (status, body["echo"]) == (200, {"k": "v"})
        assert asyncio.get_running_loop().time() - started >= 0.1
        async with http.post(f"{admin}/restore") as resp:
            info = await resp.json()
        assert (info["garbage"], info["trickle_byte_delay_ms"]) == (False, 0.0)


async def test_admin_lists_adds_stops_and_reports_stats() -> None:
    async with running(wait_for={"echo": 1}) as (emu, http):
        base = f"{emu.autoscaler_url}/admin"
        async with http.post(f"{base}/endpoints/echo/workers", json={"perf": 500}) as resp:
            assert resp.status == 201
            added = await resp.json()
        assert added["perf"] == 500
        await emu.wait_ready("echo", 2)
        async with http.get(f"{base}/workers") as resp:
            assert len(await resp.json()) == 2
        async with http.post(f"{base}/workers/{added['id']}/stop") as resp:
            assert (await resp.json())["state"] == "stopped"
        async with http.post(f"{base}/workers/{added['id']}/slow", json={"factor": 0}) as resp:
            assert resp.status == 400
        async with http.post(f"{base}/workers/999/kill") as resp:
            assert resp.status == 404
        async with http.post(f"{base}/endpoints/echo/workers", json={"perf": -1}) as resp:
            assert resp.status == 400
        await ready_answer(http, emu)
        async with http.get(f"{base}/stats") as resp:
            stats = await resp.json()
        assert stats["route"]["by_endpoint"]["echo"]["ready"] == 1
        assert len(stats["endpoints"]["echo"]["workers"]) == 2
        assert emu.route_log()[-1]["result"] == "ready"


async def test_run_emulator_logs_started_and_stops_on_cancel() -> None:
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(run_emulator(config(), [API_KEY]))
        for _ in range(200):
            if any(e["event"] == "emulator.started" for e in logs):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    started = next(e for e in logs if e["event"] == "emulator.started")
    assert started["url"].startswith("http://127.0.0.1:")
    assert any(e["event"] == "emulator.stopped" for e in logs)
