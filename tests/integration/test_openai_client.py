"""The official OpenAI client, pointed at the proxy, works unchanged: streamed and not."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from tests.integration.harness import Daemon, daemon_config, running_daemon, running_emulator


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    async with running_emulator({"llm": {"workers": 2, "workload": "max_tokens"}}) as emulator:
        config = daemon_config(
            emulator.autoscaler_url,
            {"llm": {"cost": {"estimator": "field", "field": "max_tokens", "default": 64}}},
        )
        async with running_daemon(config) as daemon:
            yield daemon


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{daemon.url}/v1/proxy/llm/v1", api_key="not-used-by-the-proxy", max_retries=0
    ) as client:
        yield client


async def test_chat_completion(client: openai.AsyncOpenAI, daemon: Daemon) -> None:
    answer = await client.chat.completions.create(
        model="emulated", messages=[{"role": "user", "content": "hello"}], max_tokens=8
    )
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 8
    finished = daemon.service.metrics.jobs_finished.labels("llm", "succeeded")._value.get()
    assert finished == 1


async def test_streamed_chat_completion(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="emulated",
        messages=[{"role": "user", "content": "count"}],
        max_tokens=10,
        stream=True,
    )
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert len(pieces) >= 3
    assert "".join(pieces).split() == [f"tok{i}" for i in range(10)]


async def test_legacy_completion(client: openai.AsyncOpenAI) -> None:
    answer = await client.completions.create(model="emulated", prompt="hi", max_tokens=4)
    assert answer.object == "text_completion"
    assert answer.choices[0].text
