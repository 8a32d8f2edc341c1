"""The official client's sessions, mapped onto the daemon's caller sessions.

- ``/session/create`` (a worker route: it comes with a fresh ticket, spent like any other):
  opens a caller session (``dispatch.pinned``) with the ticket's cost and the payload's
  ``lifetime`` (at least ``MIN_SESSION_LIFETIME_S``); answers 201 ``{session_id,
  expiration}``. The ticket becomes the session's credential: later requests, ``/session/get``
  and ``/session/end`` must present exactly it (else 401, as the official worker).
- ``/session/get``, ``/session/end``: unknown session 400, already ended 410, as the official
  worker answers. ``on_close_route`` is not supported (ignored).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from scheduler.api.context import SERVICE
from scheduler.api.errors import read_json
from scheduler.api.frontdoor_state import FRONTDOOR, MAX_SESSIONS, FrontDoor, VastSession
from scheduler.api.models import MIN_SESSION_LIFETIME_S, SessionRequest
from scheduler.dispatch.pinned import SessionNotFound
from scheduler.jobs.service import SchedulerService


def _prune(door: FrontDoor, service: SchedulerService) -> None:
    """Forget sessions the daemon no longer has (expired and swept, or ended)."""
    for session_id, known in list(door.sessions.items()):
        dispatcher = service.dispatchers.get(known.endpoint)
        if dispatcher is None or dispatcher.sessions.find(session_id) is None:
            del door.sessions[session_id]


async def create_session(
    request: web.Request, auth_data: dict[str, Any], payload: dict[str, Any]
) -> web.Response:
    service = request.app[SERVICE]
    door = request.app[FRONTDOOR]
    endpoint = request.match_info["endpoint"]
    _prune(door, service)
    if len(door.sessions) >= MAX_SESSIONS:
        return web.Response(status=429)  # the official worker at max_sessions
    lifetime = payload.get("lifetime", 60.0)
    if isinstance(lifetime, int | float) and not isinstance(lifetime, bool):
        lifetime = max(float(lifetime), MIN_SESSION_LIFETIME_S)
    cost = float(auth_data["cost"]) or 1.0
    parsed = SessionRequest.model_validate({"cost": cost, "lifetime_s": lifetime})
    pinned = await service.dispatcher(endpoint).open_session(
        parsed.cost, parsed.lifetime_s, parsed.wait_s
    )
    tenant = str(auth_data["tenant"])
    pinned.owner = tenant
    now = time.time()
    door.sessions[pinned.id] = VastSession(auth_data, tenant, endpoint, parsed.lifetime_s, now)
    expiration = now + pinned.expires_in_s(service.now())
    return web.json_response({"session_id": pinned.id, "expiration": expiration}, status=201)


async def _known(request: web.Request) -> tuple[str, VastSession] | web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        return web.json_response({"error": "invalid JSON"}, status=422)
    session_id = body.get("session_id")
    if not session_id or not isinstance(session_id, str):
        return web.json_response({"error": "missing session_id"}, status=422)
    known = request.app[FRONTDOOR].sessions.get(session_id)
    if known is None or known.endpoint != request.match_info["endpoint"]:
        return web.json_response({"error": "session does not exist"}, status=400)
    if body.get("session_auth") != known.auth_data:
        return web.json_response({"error": "session_auth is not valid"}, status=401)
    return session_id, known


async def get_session(request: web.Request) -> web.Response:
    found = await _known(request)
    if isinstance(found, web.Response):
        return found
    session_id, known = found
    service = request.app[SERVICE]
    pinned = service.dispatcher(known.endpoint).sessions.find(session_id)
    if pinned is None or pinned.gone:
        return web.json_response({"error": "session does not exist"}, status=400)
    return web.json_response({
        "session_id": session_id,
        "auth_data": known.auth_data,
        "lifetime": known.lifetime_s,
        "expiration": time.time() + pinned.expires_in_s(service.now()),
        "created_at": known.created_at,
        "on_close_route": None,
        "on_close_payload": None,
    })  # fmt: skip


async def end_session(request: web.Request) -> web.Response:
    found = await _known(request)
    if isinstance(found, web.Response):
        return found
    session_id, known = found
    request.app[FRONTDOOR].sessions.pop(session_id, None)
    try:
        await request.app[SERVICE].dispatcher(known.endpoint).sessions.close(session_id)
    except SessionNotFound:
        return web.json_response({"error": "session already closed"}, status=410)
    return web.json_response({"ended": True, "removed_session": session_id})
