"""The session journal on Redis: each replica's open Vast sessions in a hash of its own, and a
heartbeat key; a replica whose heartbeat lapsed (it died) has its sessions taken over, and
ended, by the next replica to look (``redis_scripts.TAKE_OVER_SESSIONS``, atomic: one taker).

The heartbeat lasts ``alive_s`` (the store's ``visibility_timeout_s``: a replica silent that
long has its claimed jobs taken over too) and is renewed at every ``take_over``, which the
reaper calls several times per ``alive_s``. Redis errors fail open: the session works, only
its record (the crash-safety) is missing; ``on_error`` is told the operation.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from scheduler.store import redis_scripts as lua
from scheduler.store.keys import Keys
from scheduler.store.redis_fleet import ms
from scheduler.store.session_journal import SessionRecord

log = structlog.get_logger("scheduler.store.redis_sessions")


class RedisSessionJournal:
    def __init__(
        self,
        client: Redis,
        prefix: str,
        replica_id: str,
        alive_s: float,
        on_error: Callable[[str], None] = lambda op: None,
    ) -> None:
        self._client = client
        self._keys = Keys(prefix)
        self._prefix = prefix
        self._replica = replica_id
        self._alive_ms = ms(alive_s)
        self._on_error = on_error
        self._take_over = client.register_script(lua.TAKE_OVER_SESSIONS)
        self._left: list[SessionRecord] = []

    @property
    def _mine(self) -> str:
        return self._keys.sessions(self._replica)

    async def start(self) -> None:
        """Beats, and keeps what an earlier process with this replica id left in its hash."""
        try:
            await self._beat()
            left = await self._client.hvals(self._mine)  # type: ignore[misc]  # async
        except RedisError as exc:
            self._failed("session_journal_start", exc)
            return
        self._left = parse(left)

    async def opened(self, record: SessionRecord) -> None:
        try:
            await self._client.hset(self._mine, record.session_id, record.to_json())  # type: ignore[misc]
        except RedisError as exc:
            self._failed("session_opened", exc)

    async def ended(self, session_id: str) -> None:
        try:
            await self._client.hdel(self._mine, session_id)  # type: ignore[misc]  # async
        except RedisError as exc:
            self._failed("session_ended", exc)

    async def take_over(self) -> list[SessionRecord]:
        left, self._left = self._left, []
        try:
            await self._beat()
            moved = await self._take_over(
                keys=[self._keys.session_owners, self._mine], args=[self._prefix, self._replica]
            )
        except RedisError as exc:
            self._failed("session_take_over", exc)
            return left
        return left + parse(moved)

    async def close(self) -> None:
        """The heartbeat goes at once, so that another replica ends what is left here (ends
        lost on the way out) without waiting for it to lapse; an empty hash leaves no owner."""
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._keys.alive(self._replica))
                pipe.hlen(self._mine)
                _, left = await pipe.execute()
            if not left:
                await self._client.srem(self._keys.session_owners, self._replica)  # type: ignore[misc]
        except RedisError as exc:
            self._failed("session_journal_close", exc)

    async def _beat(self) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(self._keys.alive(self._replica), "1", px=self._alive_ms)
            pipe.sadd(self._keys.session_owners, self._replica)
            await pipe.execute()

    def _failed(self, op: str, exc: RedisError) -> None:
        log.warning("store.session_journal_failed", op=op, error=str(exc))
        self._on_error(op)


def parse(values: list[str]) -> list[SessionRecord]:
    records = (SessionRecord.from_json(value) for value in values)
    return [record for record in records if record is not None]
