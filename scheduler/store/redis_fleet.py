"""Fleet-wide poll leases in Redis: one replica calls ``/route/`` for a cold endpoint.

``{prefix}:poll:{endpoint}`` holds the poller's replica id (``SET NX PX``, renewed and
released only by its holder); ``{prefix}:warm:{endpoint}`` is set for ``warm_s`` after a route
call found a worker, so every replica may route while it is there.

Redis errors fail open: ``may_route`` answers True (each replica polls for itself, as with
``LocalPolling``) and the others do nothing; ``on_error`` is told the operation.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from scheduler.store import redis_scripts as lua
from scheduler.store.keys import Keys

log = structlog.get_logger("scheduler.store.redis_fleet")


class RedisFleetPolling:
    """``FleetPolling`` shared through Redis by the replicas using the same ``prefix``."""

    def __init__(
        self,
        client: Redis,
        prefix: str,
        replica_id: str,
        on_error: Callable[[str], None] = lambda op: None,
    ) -> None:
        self._client = client
        self._keys = Keys(prefix)
        self._replica_id = replica_id
        self._on_error = on_error
        self._lease = client.register_script(lua.LEASE)
        self._release = client.register_script(lua.RELEASE)

    async def may_route(self, endpoint: str, ttl_s: float) -> bool:
        try:
            if await self._client.exists(self._keys.warm(endpoint)):
                return True
            ours = await self._lease(keys=[self._keys.poll(endpoint)],
                                     args=[self._replica_id, ms(ttl_s)])  # fmt: skip
        except RedisError as exc:
            self._failed("poll_lease", endpoint, exc)
            return True
        return bool(ours)

    async def got_worker(self, endpoint: str, warm_s: float) -> None:
        try:
            await self._client.set(self._keys.warm(endpoint), self._replica_id, px=ms(warm_s))
        except RedisError as exc:
            self._failed("poll_warm", endpoint, exc)
        await self.release(endpoint)

    async def no_worker(self, endpoint: str) -> None:
        try:
            await self._client.delete(self._keys.warm(endpoint))
        except RedisError as exc:
            self._failed("poll_cold", endpoint, exc)

    async def release(self, endpoint: str) -> None:
        try:
            await self._release(keys=[self._keys.poll(endpoint)], args=[self._replica_id])
        except RedisError as exc:
            self._failed("poll_release", endpoint, exc)

    def _failed(self, op: str, endpoint: str, exc: RedisError) -> None:
        log.warning("store.fleet_polling_failed", op=op, endpoint=endpoint, error=str(exc))
        self._on_error(op)


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds for PX/PEXPIRE (at least 1)."""
    return max(1, round(seconds * 1000))
