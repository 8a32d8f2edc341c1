"""Three replicas share the poll lease of a cold endpoint through Redis."""

from __future__ import annotations

import asyncio

from pydantic import SecretStr
from redis.asyncio import Redis

from scheduler.store.redis_client import connect
from scheduler.store.redis_fleet import RedisFleetPolling
from tests.integration.redis_support import redis_client, redis_config, redis_prefix

__all__ = ["redis_client", "redis_prefix"]  # fixtures, imported for pytest

EP = "ep"
TTL_S = 1.0


async def routing(replicas: list[RedisFleetPolling]) -> list[bool]:
    return [await r.may_route(EP, TTL_S) for r in replicas]


def fleet(client: Redis, prefix: str) -> list[RedisFleetPolling]:
    return [RedisFleetPolling(client, prefix, f"replica-{i}") for i in range(3)]


async def test_one_poller_while_cold_and_it_renews(redis_client: Redis, redis_prefix: str) -> None:
    replicas = fleet(redis_client, redis_prefix)
    assert await routing(replicas) == [True, False, False]
    for _ in range(5):  # renewed past its TTL: still the poller
        await asyncio.sleep(TTL_S * 0.3)
        assert await routing(replicas) == [True, False, False]


async def test_expired_lease_is_taken_over(redis_client: Redis, redis_prefix: str) -> None:
    first, second, third = fleet(redis_client, redis_prefix)
    assert await first.may_route(EP, TTL_S)
    await asyncio.sleep(TTL_S + 0.3)  # the first replica died: no renewal
    assert await routing([second, third, first]) == [True, False, False]


async def test_warm_fleet_routes_everywhere(redis_client: Redis, redis_prefix: str) -> None:
    replicas = fleet(redis_client, redis_prefix)
    assert await routing(replicas) == [True, False, False]
    await replicas[0].got_worker(EP, warm_s=5.0)
    assert await routing(replicas) == [True, True, True]
    await replicas[2].no_worker(EP)
    # cold again: the lease was given up with the worker found, the first to ask polls
    assert await routing(replicas[::-1]) == [True, False, False]


async def test_warm_flag_expires(redis_client: Redis, redis_prefix: str) -> None:
    replicas = fleet(redis_client, redis_prefix)
    await replicas[1].got_worker(EP, warm_s=1.0)
    assert await routing(replicas) == [True, True, True]
    await asyncio.sleep(1.3)
    assert await routing(replicas) == [True, False, False]


async def test_release_lets_another_acquire(redis_client: Redis, redis_prefix: str) -> None:
    first, second, third = fleet(redis_client, redis_prefix)
    assert await first.may_route(EP, 30.0)
    await second.release(EP)  # not its lease: nothing happens
    assert not await third.may_route(EP, 30.0)
    await first.release(EP)
    assert await third.may_route(EP, 30.0)
    assert not await first.may_route(EP, 30.0)
    assert await first.may_route("other", 30.0)  # leases are per endpoint


async def test_unreachable_redis_fails_open() -> None:
    config = redis_config().model_copy(
        update={"url": SecretStr("redis://127.0.0.1:1/0"), "retries": 0}
    )
    client = connect(config)
    failed: list[str] = []
    replica = RedisFleetPolling(client, "unreachable", "replica-0", on_error=failed.append)
    try:
        assert await replica.may_route(EP, TTL_S)  # every replica polls for itself
        await replica.got_worker(EP, 1.0)
        await replica.no_worker(EP)
        await replica.release(EP)
        assert failed == ["poll_lease", "poll_warm", "poll_release", "poll_cold", "poll_release"]
    finally:
        await client.aclose()
