"""Caller sessions: a conversation pinned to one worker through a Vast session."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from scheduler.core.assignments import Lease
from scheduler.core.sessions import SESSION_MARGIN_S
from scheduler.vast.types import Ready, RouteResult, Waiting

RouteCall = Callable[[float, int | None], Awaitable[RouteResult]]


class PinnedLeases(Protocol):
    """How caller sessions get and end their leases (``dispatch.leasing.Leasing``)."""

    async def open_pinned(self, ready: Ready, lifetime_s: float) -> Lease: ...

    async def end_session(self, lease: Lease) -> None: ...


WAIT_POLL_S = 0.5


class SessionNotFound(Exception):
    pass


class SessionGone(Exception):
    """The session's worker went away or the session expired: its jobs cannot run."""


class SessionBusy(Exception):
    """The job would put more cost in flight than the session declared to its worker."""


class NoWorkerReady(Exception):
    def __init__(self, status: str | None) -> None:
        super().__init__(status or "no worker ready")
        self.status = status


@dataclass(eq=False, slots=True)
class PinnedSession:
    id: str
    lease: Lease
    lifetime_s: float
    gone: bool = False
    owner: str | None = None  # the tenant that opened it while auth is on; None: anyone

    def expires_in_s(self, now: float) -> float:
        """Until the worker ends it by its own rule (``core.assignments.SessionClock``:
        creation + lifetime, + lifetime at each job's start), less the sweep's margin."""
        clock = self.lease.session
        if clock is None:
            return max(0.0, self.lifetime_s - (now - self.lease.last_used))
        return max(0.0, clock.expires_at - SESSION_MARGIN_S - now)

    def expired(self, now: float) -> bool:
        return self.expires_in_s(now) <= 0

    def public(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "cost": self.lease.capacity,
            "inflight_cost": self.lease.inflight_cost,
            "inflight_jobs": self.lease.inflight_jobs,
            "expires_in_s": round(self.expires_in_s(now), 3),
            "gone": self.gone,
        }


class PinnedSessions:
    """The caller sessions of one endpoint (bounded)."""

    def __init__(self, leases: PinnedLeases, clock: Callable[[], float], limit: int = 1024):
        self._leases = leases
        self._clock = clock
        self.limit = limit
        self._sessions: dict[str, PinnedSession] = {}
        self._opening = 0  # opens between the limit check and the session being kept

    def __len__(self) -> int:
        return len(self._sessions)

    async def open(
        self, route: RouteCall, cost: float, lifetime_s: float, wait_s: float
    ) -> PinnedSession:
        # The limit is checked before anything is asked of Vast: a refused caller must not
        # leave a session open on a worker (it would hold one of the worker's few slots).
        if len(self._sessions) + self._opening >= self.limit:
            raise SessionBusy(f"too many caller sessions (limit {self.limit})")
        self._opening += 1
        try:
            ready = await self._route_until_ready(route, cost, wait_s)
            lease = await self._leases.open_pinned(ready, lifetime_s)
        finally:
            self._opening -= 1
        pinned = PinnedSession("ses_" + secrets.token_urlsafe(12), lease, lifetime_s)
        self._sessions[pinned.id] = pinned
        return pinned

    async def _route_until_ready(self, route: RouteCall, cost: float, wait_s: float) -> Ready:
        request_idx: int | None = None
        last: Waiting | None = None
        deadline = self._clock() + wait_s
        while True:
            result = await route(cost, request_idx)
            if isinstance(result, Ready):
                return result
            last = result
            request_idx = result.request_idx if result.request_idx is not None else request_idx
            if self._clock() + WAIT_POLL_S > deadline:
                raise NoWorkerReady(last.status if last else None)
            await asyncio.sleep(WAIT_POLL_S)

    def find(self, session_id: str) -> PinnedSession | None:
        """The session by id, live or not."""
        return self._sessions.get(session_id)

    def get(self, session_id: str) -> PinnedSession:
        pinned = self._sessions.get(session_id)
        if pinned is None:
            raise SessionNotFound(session_id)
        if pinned.gone or pinned.expired(self._clock()):
            raise SessionGone(f"session {session_id} is gone")
        return pinned

    def admit(self, session_id: str, cost: float) -> Lease:
        """The lease a pinned job runs on; raises when the session cannot take it."""
        pinned = self.get(session_id)
        if not pinned.lease.has_room(cost, self._clock()):
            raise SessionBusy(
                f"session has {pinned.lease.capacity - pinned.lease.inflight_cost:g} "
                f"of {pinned.lease.capacity:g} cost units free"
            )
        return pinned.lease

    def mark_gone(self, lease: Lease) -> None:
        for pinned in self._sessions.values():
            if pinned.lease is lease:
                pinned.gone = True
                lease.retired = True

    async def close(self, session_id: str) -> PinnedSession:
        pinned = self._sessions.pop(session_id, None)
        if pinned is None:
            raise SessionNotFound(session_id)
        await self._end(pinned)
        return pinned

    async def close_expired(self) -> None:
        now = self._clock()
        for session_id, pinned in list(self._sessions.items()):
            if pinned.lease.idle and (pinned.gone or pinned.expired(now)):
                del self._sessions[session_id]
                await self._end(pinned)

    async def close_all(self) -> None:
        for session_id in list(self._sessions):
            await self.close(session_id)

    async def _end(self, pinned: PinnedSession) -> None:
        pinned.gone = True
        pinned.lease.retired = True
        await self._leases.end_session(pinned.lease)
