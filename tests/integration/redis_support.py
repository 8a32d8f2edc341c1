"""Fixtures for tests against the Redis at 127.0.0.1:6379 (import them explicitly).

No skipping: without Redis these tests fail. Every test gets its own key prefix, and every key
under it is deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from scheduler.config import RedisConfig
from scheduler.store.redis_client import connect

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_config() -> RedisConfig:
    return RedisConfig.model_validate(
        {"url": REDIS_URL, "connect_timeout_s": 2.0, "socket_timeout_s": 5.0, "retries": 2}
    )


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = connect(redis_config())
    try:
        await client.ping()
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def redis_prefix(redis_client: Redis) -> AsyncIterator[str]:
    prefix = f"test-{uuid.uuid4().hex}"
    yield prefix
    keys = [key async for key in redis_client.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await redis_client.delete(*keys)
