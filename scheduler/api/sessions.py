"""Caller sessions: a conversation pinned to one worker (while auth is on, to one tenant)."""

from __future__ import annotations

from aiohttp import web

from scheduler.api.auth import caller
from scheduler.api.context import SERVICE
from scheduler.api.errors import read_json
from scheduler.api.models import SessionRequest
from scheduler.dispatch.pinned import SessionNotFound


async def open_session(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    dispatcher = service.dispatcher(request.match_info["endpoint"])
    body = SessionRequest.model_validate(await read_json(request))
    pinned = await dispatcher.open_session(body.cost, body.lifetime_s, body.wait_s)
    principal = caller(request)
    pinned.owner = None if principal is None else principal.name
    return web.json_response(pinned.public(service.now()), status=201)


def check_owner(request: web.Request) -> None:
    """Another tenant's session is as unknown as a missing one."""
    dispatcher = request.app[SERVICE].dispatcher(request.match_info["endpoint"])
    session_id = request.match_info["session_id"]
    pinned = dispatcher.sessions.find(session_id)
    principal = caller(request)
    owner = None if pinned is None else pinned.owner
    if owner is not None and (principal is None or owner != principal.name):
        raise SessionNotFound(session_id)


async def get_session(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    dispatcher = service.dispatcher(request.match_info["endpoint"])
    check_owner(request)
    pinned = dispatcher.sessions.get(request.match_info["session_id"])
    return web.json_response(pinned.public(service.now()))


async def close_session(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    dispatcher = service.dispatcher(request.match_info["endpoint"])
    check_owner(request)
    pinned = await dispatcher.sessions.close(request.match_info["session_id"])
    return web.json_response(pinned.public(service.now()))
