"""Caller sessions: a conversation pinned to one worker."""

from __future__ import annotations

from aiohttp import web

from scheduler.api.context import SERVICE
from scheduler.api.errors import read_json
from scheduler.api.models import SessionRequest


async def open_session(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    dispatcher = service.dispatcher(request.match_info["endpoint"])
    body = SessionRequest.model_validate(await read_json(request))
    pinned = await dispatcher.open_session(body.cost, body.lifetime_s, body.wait_s)
    return web.json_response(pinned.public(service.now()), status=201)


async def get_session(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    dispatcher = service.dispatcher(request.match_info["endpoint"])
    pinned = dispatcher.sessions.get(request.match_info["session_id"])
    return web.json_response(pinned.public(service.now()))


async def close_session(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    dispatcher = service.dispatcher(request.match_info["endpoint"])
    pinned = await dispatcher.sessions.close(request.match_info["session_id"])
    return web.json_response(pinned.public(service.now()))
