"""Admin HTTP API of the emulator, served on the autoscaler's port.

It needs **no API key**: the emulator is a local test tool and binds 127.0.0.1 by default.

- ``GET  /admin/workers``                               every worker's summary
- ``POST /admin/endpoints/{endpoint}/workers``          add a worker; optional JSON body of
  EmulatedEndpoint overrides (``{"perf": 500, "cold_start_s": 1}``); 201 with its summary
- ``POST /admin/endpoints/{endpoint}/rotate_key``       a new route key for the endpoint:
  optional body ``{"api_key": "..."}``, else generated; answers ``{"endpoint", "api_key"}``
  (``Emulator.rotate_key``; the only place a key is answered: a loopback test surface);
  404 for an endpoint the emulator does not serve
- ``POST /admin/workers/{worker_id}/stop``              graceful stop (connections refused)
- ``POST /admin/workers/{worker_id}/kill``              reset open connections, stop
- ``POST /admin/workers/{worker_id}/slow``              ``{"factor": n}``: n times slower
- ``POST /admin/workers/{worker_id}/garbage``           answer 200 with non-JSON bytes
- ``POST /admin/workers/{worker_id}/trickle``           ``{"byte_delay_ms": 50}`` (default 50)
- ``POST /admin/workers/{worker_id}/restore``           clear faults; restart if stopped
- ``GET  /admin/stats``                                 Emulator.stats()
- ``POST /admin/faults``                                ``{"route_error_rate", "route_delay_ms",
  "route_min_interval_ms"}`` (any subset); answers the current values
- ``POST /admin/outage``                                ``{"duration_s": 10, "mode": "refuse"}``:
  the autoscaler goes down, then comes back by itself (``Emulator.outage``). ``refuse``
  closes its port, admin API included; ``hang`` accepts but answers nothing but the admin
  API (``{"duration_s": 0}`` ends it early). 202 before it starts
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from scheduler.emulator.envelope import json_object

if TYPE_CHECKING:
    from scheduler.emulator.emulator import Emulator
    from scheduler.emulator.worker import EmulatedWorker

DEFAULT_TRICKLE_BYTE_DELAY_MS = 50.0
DEFAULT_OUTAGE_S = 10.0


async def _body(request: web.Request) -> dict[str, Any]:
    data = json_object(await request.read(), empty={})
    if data is None:
        raise ValueError("body must be a JSON object")
    return data


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


class AdminApi:
    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin/workers", self.list_workers),
            web.post("/admin/endpoints/{endpoint}/workers", self.add_worker),
            web.post("/admin/endpoints/{endpoint}/rotate_key", self.rotate_key),
            web.post("/admin/workers/{worker_id}/{action}", self.worker_action),
            web.get("/admin/stats", self.stats),
            web.post("/admin/faults", self.faults),
            web.post("/admin/outage", self.outage),
        ]

    async def list_workers(self, request: web.Request) -> web.Response:
        return web.json_response([w.info() for w in self._emulator.all_workers()])

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self._emulator.stats())

    async def add_worker(self, request: web.Request) -> web.Response:
        try:
            overrides = await _body(request)
            worker = await self._emulator.add_worker(request.match_info["endpoint"], **overrides)
        except (ValueError, ValidationError) as exc:
            return _bad(str(exc))
        return web.json_response(worker.info(), status=201)

    async def rotate_key(self, request: web.Request) -> web.Response:
        endpoint = request.match_info["endpoint"]
        try:
            new_key = (await _body(request)).get("api_key")
            if new_key is not None and not isinstance(new_key, str):
                raise ValueError("api_key must be a string")
            key = self._emulator.rotate_key(endpoint, new_key)
        except KeyError:
            return web.json_response({"error": f"unknown endpoint {endpoint!r}"}, status=404)
        except ValueError as exc:
            return _bad(str(exc))
        return web.json_response({"endpoint": endpoint, "api_key": key})

    async def faults(self, request: web.Request) -> web.Response:
        faults = self._emulator.autoscaler.faults
        try:
            faults.update(await _body(request))
        except (ValueError, TypeError) as exc:
            return _bad(str(exc))
        return web.json_response({f"route_{k}": v for k, v in asdict(faults).items()})

    async def outage(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            duration_s = float(body.get("duration_s", DEFAULT_OUTAGE_S))
            mode = body.get("mode", "refuse")
            await self._emulator.outage(duration_s, mode)
        except (ValueError, TypeError) as exc:
            return _bad(str(exc))
        return web.json_response({"duration_s": duration_s, "mode": mode}, status=202)

    async def worker_action(self, request: web.Request) -> web.Response:
        worker = self._emulator.worker_by_id(_int(request.match_info["worker_id"]))
        if worker is None:
            return web.json_response({"error": "unknown worker"}, status=404)
        try:
            error = await _apply(worker, request.match_info["action"], await _body(request))
        except (ValueError, TypeError) as exc:
            return _bad(str(exc))
        if error is not None:
            return web.json_response({"error": error}, status=404)
        return web.json_response(worker.info())


def _int(text: str) -> int:
    return int(text) if text.isdigit() else -1


async def _apply(worker: EmulatedWorker, action: str, body: dict[str, Any]) -> str | None:
    """Apply one admin action; return an error message for an unknown action."""
    if action == "stop":
        await worker.stop()
    elif action == "kill":
        await worker.kill()
    elif action == "restore":
        await worker.restore()
    elif action == "slow":
        factor = float(body.get("factor", 10.0))
        if factor <= 0:
            raise ValueError("factor must be > 0")
        worker.slow(factor)
    elif action == "garbage":
        worker.writer.garbage = bool(body.get("on", True))
    elif action == "trickle":
        delay = float(body.get("byte_delay_ms", DEFAULT_TRICKLE_BYTE_DELAY_MS))
        worker.writer.trickle_byte_delay_ms = max(delay, 0.0)
    else:
        return f"unknown action {action!r}"
    return None
