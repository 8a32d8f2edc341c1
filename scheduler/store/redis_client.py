"""The Redis client the store and the fleet use: timeouts, a bounded pool, retries, and the
store's Lua scripts registered once."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from scheduler.config import RedisConfig
from scheduler.store import redis_scripts as lua

RETRY_BACKOFF_S = (0.05, 1.0)  # redis-py's per-command retries: base and cap


def connect(config: RedisConfig) -> Redis:
    """A client with the config's timeouts, a bounded pool that waits for a free connection
    (up to the connect timeout), and retries with exponential back-off on connection errors
    and timeouts."""
    base, cap = RETRY_BACKOFF_S
    retry = Retry(ExponentialBackoff(cap=cap, base=base), config.retries,
                  supported_errors=(RedisConnectionError, RedisTimeoutError))  # fmt: skip
    pool = BlockingConnectionPool.from_url(
        config.url.get_secret_value(),
        max_connections=config.max_connections,
        timeout=config.connect_timeout_s,
        socket_timeout=config.socket_timeout_s,
        socket_connect_timeout=config.connect_timeout_s,
        retry=retry,
        decode_responses=True,
    )
    return Redis.from_pool(pool)


class Scripts:
    """The store's scripts (``redis_scripts``), loaded on first use by redis-py."""

    def __init__(self, client: Redis) -> None:
        self.enqueue = client.register_script(lua.ENQUEUE)
        self.mark_claimed = client.register_script(lua.MARK_CLAIMED)
        self.finish = client.register_script(lua.FINISH)
        self.requeue = client.register_script(lua.REQUEUE)
        self.touch = client.register_script(lua.TOUCH)
        self.cancel = client.register_script(lua.CANCEL)
