"""Sessions outlive a killed daemon only until the next one looks: every session the daemon
opens is recorded in a ``SessionJournal`` (``JournaledForwarder``) and struck off when its end
goes through; ``SessionReaper`` ends the ones a dead process left (an earlier run of this
daemon, or a replica whose heartbeat lapsed), at start and then periodically."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import aiohttp
import structlog

from scheduler.dispatch.seams import Forwarder
from scheduler.observability.metrics import Metrics
from scheduler.store.session_journal import SessionJournal, SessionRecord
from scheduler.vast.types import Ready, WorkerError

log = structlog.get_logger("scheduler.dispatch.left_sessions")
RETRY_FIRST_S = 5.0  # a left session whose worker did not answer: tried again after this,
RETRY_MAX_S = 300.0  # doubling up to this,
GIVE_UP_S = 86400.0  # until it was opened this long ago (the default session_end_bound_s)
MAX_CONCURRENT_ENDS = 16


class JournaledForwarder:
    """A ``Forwarder`` whose sessions are recorded in ``journal`` from their creation until an
    end call goes through."""

    def __init__(
        self, inner: Forwarder, journal: SessionJournal, wall: Callable[[], float] = time.time
    ) -> None:
        self._inner = inner
        self._journal = journal
        self._wall = wall

    def post(
        self, ready: Ready, route: str, payload_json: bytes, session_id: str | None = None
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        return self._inner.post(ready, route, payload_json, session_id)

    async def create_session(self, ready: Ready, lifetime_s: float) -> str:
        session_id = await self._inner.create_session(ready, lifetime_s)
        await self._journal.opened(SessionRecord.of(ready, session_id, self._wall()))
        return session_id

    async def end_session(self, ready: Ready, session_id: str) -> None:
        await self._inner.end_session(ready, session_id)  # a WorkerError keeps it recorded
        await self._journal.ended(session_id)


@dataclass
class _Left:
    record: SessionRecord
    due: float  # monotonic
    interval_s: float = RETRY_FIRST_S


class SessionReaper:
    """Ends the sessions ``journal.take_over`` hands over: each ``/session/end`` tried until
    it goes through (a 4xx is final too: the worker no longer has it), with back-off while the
    worker does not answer, for up to ``GIVE_UP_S`` after the session opened."""

    def __init__(
        self,
        journal: SessionJournal,
        forwarder: JournaledForwarder,
        metrics: Metrics,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._journal = journal
        self._forwarder = forwarder
        self._metrics = metrics
        self._interval_s = interval_s
        self._clock = clock
        self._wall = wall
        self._left: dict[str, _Left] = {}

    async def run(self) -> None:
        while True:
            await self.round()
            await asyncio.sleep(self._interval_s)

    async def round(self) -> None:
        """Takes over what is left, then tries every session whose next try is due."""
        now = self._clock()
        for record in await self._journal.take_over():
            self._left.setdefault(record.session_id, _Left(record, now))
        due = [left for left in self._left.values() if left.due <= now]
        if due:
            gate = asyncio.Semaphore(MAX_CONCURRENT_ENDS)
            await asyncio.gather(*(self._end(left, gate) for left in due))

    async def _end(self, left: _Left, gate: asyncio.Semaphore) -> None:
        record = left.record
        async with gate:
            try:
                await self._forwarder.end_session(record.ready(), record.session_id)
            except WorkerError as exc:
                if self._wall() - record.opened_wall < GIVE_UP_S:
                    left.due = self._clock() + left.interval_s
                    left.interval_s = min(RETRY_MAX_S, left.interval_s * 2)
                    log.info("session.left_end_failed", worker=record.url, kind=exc.kind,
                             retry_in_s=left.due - self._clock())  # fmt: skip
                    return
                await self._journal.ended(record.session_id)
                self._done(record, "gone")
                return
        self._done(record, "ended")

    def _done(self, record: SessionRecord, outcome: str) -> None:
        self._left.pop(record.session_id, None)
        self._metrics.left_sessions.labels(outcome).inc()
        log.info("session.left_ended", worker=record.url, outcome=outcome,
                 opened_s_ago=round(self._wall() - record.opened_wall, 1))  # fmt: skip
