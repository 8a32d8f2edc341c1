"""The Vast-compatible front door: what ``vastai`` 1.9.1's client asks of ``webserver_url``
and ``autoscaler_url``, answered by the daemon, so code written for the official client runs
through the daemon's queue with only those two arguments changed.

- ``GET /api/v0/endptjobs/`` (and ``/{id}/``): the daemon's endpoints the caller's bearer token
  may use, as console rows; each row's ``api_key`` is the caller's own token, which the client
  then presents on ``/route/`` and to the "worker";
- ``POST /route/``: at once, a ready answer naming the daemon itself as the worker
  (``url`` = ``{daemon}/vast/{endpoint}``) with a one-time ticket signed by this process
  (:mod:`scheduler.core.frontdoor_sign`); never "waiting": the daemon queues instead;
- ``POST /vast/{endpoint}/{route}`` with the official envelope ``{auth_data, payload,
  session_id}``: the ticket is checked (forged, tampered, expired or replayed: 401 and
  nothing runs, counted in ``vast_scheduler_frontdoor_refusals``), then the payload runs as a
  job on that endpoint with the ticket's cost (as the endpoint's ``caller_cost`` allows) and
  the worker's answer streams back. A full queue or quota answers 429 with no body, as the
  official worker does past ``max_queue_time``: the client then routes again and retries.
- the ``/session/*`` calls: :mod:`scheduler.api.frontdoor_sessions`.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from scheduler.api.auth import bearer_token, caller
from scheduler.api.context import SERVICE
from scheduler.api.errors import ApiError, read_json
from scheduler.api.frontdoor_sessions import create_session
from scheduler.api.frontdoor_state import FRONTDOOR, refused
from scheduler.api.jobs import parse_submission, tenant_of
from scheduler.api.streaming import endpoint_and_route, stream_job
from scheduler.core.queue import QueueFull
from scheduler.dispatch.pinned import SessionGone, SessionNotFound
from scheduler.jobs.admission import DeadlineUnmeetable, Overloaded

PREFIX = "/vast"
SESSION_CREATE = "session/create"


def endpoint_rows(request: web.Request) -> list[dict[str, Any]]:
    principal = caller(request)
    key = bearer_token(request) or request.query.get("api_key", "")
    names = sorted(request.app[SERVICE].dispatchers)
    return [
        {
            "id": index,
            "endpoint_name": name,
            "api_key": key,
            "user_id": 0,
            "created_at": 0.0,
            "endpoint_state": "active",
        }
        for index, name in enumerate(names, start=1)
        if principal is None or principal.may_use(name)
    ]


async def list_endpoints(request: web.Request) -> web.Response:
    return web.json_response({"success": True, "results": endpoint_rows(request)})


async def get_endpoint(request: web.Request) -> web.Response:
    wanted = request.match_info["endpoint_id"]
    for row in endpoint_rows(request):
        if str(row["id"]) == wanted:
            return web.json_response({"success": True, "result": row})
    raise ApiError(404, "not_found", f"no endpoint with id {wanted}", "endpoint_id")


async def route(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_field", "body: must be a JSON object", "body")
    endpoint = body.get("endpoint")
    if not isinstance(endpoint, str):
        raise ApiError(422, "invalid_field", "endpoint: must be a string", "endpoint")
    request.app[SERVICE].dispatcher(endpoint)  # unknown: 404
    principal = caller(request)
    if principal is not None and not principal.may_use(endpoint):
        raise ApiError(403, "forbidden", f"this token may not use endpoint {endpoint}",
                       "endpoint")  # fmt: skip
    cost = body.get("cost", 0)
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not 0 <= cost <= 1e9:
        raise ApiError(422, "invalid_field", "cost: a number from 0 to 1e9", "cost")
    url = f"{request.scheme}://{request.host}{PREFIX}/{endpoint}"
    signer = request.app[FRONTDOOR].signer
    return web.json_response(signer.issue(url, endpoint, cost, tenant_of(request), time.time()))


async def worker_call(request: web.Request) -> web.StreamResponse:
    """The official worker's side of a request: the envelope, its ticket, then the job."""
    endpoint, worker_route = endpoint_and_route(request)
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("payload"), dict):
        return web.json_response({"error": "payload: must be a JSON object"}, status=422)
    auth_data, session_id = body.get("auth_data"), body.get("session_id")
    door = request.app[FRONTDOOR]
    expect = {"endpoint": endpoint, "tenant": tenant_of(request)}
    if session_id is None:
        refusal = door.signer.spend(auth_data, expect, time.time())
    else:
        refusal = door.signer.verify(auth_data, expect)
        known = door.sessions.get(str(session_id))
        if refusal is None and known is None:
            return web.json_response({"error": "invalid session"}, status=410)
        if refusal is None and known is not None and known.auth_data != auth_data:
            refusal = "mismatch"
    if refusal is not None:
        return refused(request, refusal)
    assert isinstance(auth_data, dict)  # a good ticket is a mapping
    if worker_route == "/" + SESSION_CREATE:
        return await create_session(request, auth_data, body["payload"])
    fields: dict[str, Any] = {"route": worker_route, "payload": body["payload"],
                              "cost": float(auth_data["cost"])}  # fmt: skip
    if session_id is not None:
        fields["session"] = str(session_id)
    try:
        return await stream_job(request, parse_submission(request, endpoint, fields), "proxy")
    except (Overloaded, QueueFull, DeadlineUnmeetable):
        return web.Response(status=429)  # the official worker past max_queue_time
    except (SessionNotFound, SessionGone):
        return web.json_response({"error": "invalid session"}, status=410)
