"""Helpers shared by the emulator's integration tests (context managers, not fixtures)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from scheduler.emulator.emulator import Emulator
from scheduler.emulator.settings import EmulatedEndpoint, EmulatorConfig

API_KEY = "test-key"
FAST_REPORTS_S = 0.1


def config(**endpoints: EmulatedEndpoint | dict[str, Any]) -> EmulatorConfig:
    """A config with fast status reports; ``endpoints`` default to one ``echo`` worker."""
    eps = endpoints or {"echo": {"workers": 1}}
    return EmulatorConfig.model_validate(
        {"endpoints": eps, "status_interval_s": FAST_REPORTS_S, "seed": 7}
    )


@asynccontextmanager
async def running(
    cfg: EmulatorConfig | None = None, wait_for: dict[str, int] | None = None
) -> AsyncIterator[tuple[Emulator, aiohttp.ClientSession]]:
    """A started emulator and an HTTP client; optionally wait for ready workers."""
    emulator = Emulator(cfg or config(), [API_KEY])
    timeout = aiohttp.ClientTimeout(total=20, connect=2)
    async with emulator, aiohttp.ClientSession(timeout=timeout) as http:
        for endpoint, count in (wait_for or {}).items():
            await emulator.wait_ready(endpoint, count, timeout_s=10)
        yield emulator, http


async def route(
    http: aiohttp.ClientSession,
    emulator: Emulator,
    endpoint: str = "echo",
    cost: float = 100,
    request_idx: int = 0,
    key: str | None = API_KEY,
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    body = {"endpoint": endpoint, "cost": cost, "request_idx": request_idx}
    async with http.post(f"{emulator.autoscaler_url}/route/", json=body, headers=headers) as resp:
        data = await resp.json(content_type=None) if resp.status != 429 else {}
        return resp.status, data


async def ready_answer(
    http: aiohttp.ClientSession, emulator: Emulator, endpoint: str = "echo", cost: float = 100
) -> dict[str, Any]:
    status, answer = await route(http, emulator, endpoint, cost)
    assert status == 200, answer
    assert "url" in answer, answer
    return answer


async def call_worker(
    http: aiohttp.ClientSession,
    auth_data: dict[str, Any],
    payload: dict[str, Any] | None = None,
    path: str = "/generate",
    session_id: str | None = None,
) -> tuple[int, Any]:
    body = {"auth_data": auth_data, "session_id": session_id, "payload": payload or {}}
    async with http.post(f"{auth_data['url']}{path}", json=body) as resp:
        raw = await resp.read()
    try:
        return resp.status, json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        return resp.status, raw
