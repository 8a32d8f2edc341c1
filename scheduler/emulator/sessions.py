"""Worker sessions: the table (pure, times passed in) and the four session routes.

As the official worker: ``/session/create`` does not check the signature and answers 429
past ``max_sessions`` (0 = unlimited); the whole session is one in-flight entry keyed by
the answer's ``reqnum`` with the answer's ``cost`` as workload; each session request adds
``lifetime`` to the expiry; ``/session/get`` and ``/session/end`` answer 400 for an unknown
session and ``/session/health`` ``{"ok": false}``; ``session_auth`` must equal the
``auth_data`` the session was created with (else 401). A session expires at creation +
``lifetime`` (default 60), pushed back by ``lifetime`` at the start of each request on it;
the worker's sweep (every ``session_reap_interval_s``, the official worker's 5 s) ends
expired sessions and closes the connections of requests still running on them. A
``/session/create`` that is not JSON gets 422; valid JSON the official worker cannot read
(not an object, ``auth_data``/``payload`` missing or not objects, a non-numeric
``lifetime``) gets 500, as its handler raises there.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from scheduler.emulator.envelope import json_object
from scheduler.emulator.worker_state import RequestEntry, WorkerMetrics

_ID_CHARS = string.ascii_letters + string.digits
_DEFAULT_LIFETIME_S = 60.0


@dataclass
class Session:
    session_id: str
    lifetime_s: float
    auth_data: dict[str, Any]
    expires_at: float
    created_at: float
    entry: RequestEntry
    on_close_route: str | None = None
    on_close_payload: Any = None
    transports: set[asyncio.BaseTransport] = field(default_factory=set)
    session_reqnum: int = 0

    def expiration_epoch(self, now: float, now_epoch: float) -> float:
        return now_epoch + (self.expires_at - now)


@dataclass
class SessionTable:
    max_sessions: int
    rng: random.Random
    sessions: dict[str, Session] = field(default_factory=dict)

    def full(self) -> bool:
        return self.max_sessions > 0 and len(self.sessions) >= self.max_sessions

    def create(self, auth_data: dict[str, Any], payload: dict[str, Any], now: float) -> Session:
        lifetime = float(payload.get("lifetime", _DEFAULT_LIFETIME_S))
        sid = "".join(self.rng.choices(_ID_CHARS, k=13))
        entry = _session_entry(auth_data, time.time())
        session = Session(
            session_id=sid,
            lifetime_s=lifetime,
            auth_data=auth_data,
            expires_at=now + lifetime,
            created_at=time.time(),
            entry=entry,
            on_close_route=payload.get("on_close_route"),
            on_close_payload=payload.get("on_close_payload"),
        )
        self.sessions[sid] = session
        return session

    def expired(self, now: float) -> list[str]:
        return [sid for sid, s in self.sessions.items() if s.expires_at <= now]


def _number(value: object, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _session_entry(auth_data: dict[str, Any], now_epoch: float) -> RequestEntry:
    request_idx = auth_data.get("request_idx")
    reqnum = auth_data.get("reqnum")
    return RequestEntry(
        request_idx=request_idx if isinstance(request_idx, int) else 0,
        reqnum=reqnum if isinstance(reqnum, int) else 0,
        workload=_number(auth_data.get("cost"), 0.0),
        status="SessionActive",
        is_session=True,
        entered_queue_at=now_epoch,
        work_started_at=now_epoch,
    )


def _invalid_json() -> web.Response:
    return web.json_response({"error": "invalid JSON"}, status=422)


def _internal_error() -> web.Response:
    """What aiohttp answers when a handler raises (the official worker on a malformed
    ``/session/create``: a missing or non-object ``auth_data``/``payload``, a non-numeric
    ``lifetime``)."""
    return web.Response(
        status=500, text="500 Internal Server Error\n\nServer got itself in trouble"
    )


OnClose = Callable[[Session], Awaitable[None]]


class SessionHandlers:
    """aiohttp handlers for ``/session/{create,get,health,end}`` over a SessionTable."""

    def __init__(self, table: SessionTable, metrics: WorkerMetrics, on_close: OnClose) -> None:
        self.table = table
        self._metrics = metrics
        self._on_close = on_close

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/session/create", self.create),
            web.post("/session/get", self.get),
            web.post("/session/health", self.health),
            web.post("/session/end", self.end),
        ]

    async def create(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            data = json.loads(raw.decode())  # as aiohttp's request.json(): b"" is bad JSON
        except json.JSONDecodeError:
            return _invalid_json()
        except UnicodeDecodeError:
            return _internal_error()
        if not isinstance(data, dict):
            return _internal_error()
        auth_data, payload = data.get("auth_data"), data.get("payload")
        # The official worker reads these unchecked (auth_data.get, payload.get, now +
        # lifetime): anything else raises inside its handler and aiohttp answers 500.
        lifetime = (payload or {}).get("lifetime", _DEFAULT_LIFETIME_S)
        if not isinstance(auth_data, dict) or not isinstance(payload, dict):
            return _internal_error()
        if not isinstance(lifetime, int | float):
            return _internal_error()
        if self.table.full():
            self._metrics.reject(_session_entry(auth_data, time.time()))
            return web.Response(status=429)
        now = time.monotonic()
        session = self.table.create(auth_data, payload, now)
        self._metrics.start(session.entry)
        expiration = session.expiration_epoch(now, time.time())
        return web.json_response(
            {"session_id": session.session_id, "expiration": expiration}, status=201
        )

    async def _lookup(self, request: web.Request) -> tuple[Session | None, web.Response | None]:
        data = json_object(await request.read())
        if data is None:
            return None, _invalid_json()
        sid = data.get("session_id")
        if not sid:
            return None, web.json_response({"error": "missing session_id"}, status=422)
        session = self.table.sessions.get(sid) if isinstance(sid, str) else None
        if session is None:
            return None, None
        if data.get("session_auth") != session.auth_data:
            return None, web.json_response({"error": "session_auth is not valid"}, status=401)
        return session, None

    async def get(self, request: web.Request) -> web.Response:
        session, error = await self._lookup(request)
        if error is not None:
            return error
        if session is None:
            return web.json_response({"error": "session does not exist"}, status=400)
        body = {
            "session_id": session.session_id,
            "auth_data": session.auth_data,
            "lifetime": session.lifetime_s,
            "expiration": session.expiration_epoch(time.monotonic(), time.time()),
            "created_at": session.created_at,
            "on_close_route": session.on_close_route,
            "on_close_payload": session.on_close_payload,
        }
        return web.json_response(body)

    async def health(self, request: web.Request) -> web.Response:
        session, error = await self._lookup(request)
        if error is not None:
            return error
        return web.json_response({"ok": session is not None})

    async def end(self, request: web.Request) -> web.Response:
        session, error = await self._lookup(request)
        if error is not None:
            return error
        if session is None:
            return web.json_response({"error": "session not found"}, status=400)
        if not await self.close(session.session_id):
            return web.json_response({"error": "session already closed"}, status=410)
        return web.json_response({"ended": True, "removed_session": session.session_id})

    async def close(self, session_id: str) -> bool:
        """Remove a session, cut its in-flight requests, end its entry, run on_close."""
        session = self.table.sessions.pop(session_id, None)
        if session is None:
            return False
        for transport in list(session.transports):
            if not transport.is_closing():
                transport.close()
        session.transports.clear()
        self._metrics.succeed(session.entry, time.time())
        self._metrics.end(session.entry)
        await self._on_close(session)
        return True

    async def reap(self) -> int:
        """Close expired sessions; return how many."""
        expired = self.table.expired(time.monotonic())
        for sid in expired:
            await self.close(sid)
        return len(expired)
