"""The emulated Vast console and the autoscaler's worker list, on the emulator's port.

As ``vastai`` 1.9.1's client calls them (``serverless/client/client.py``):

- ``GET /api/v0/endptjobs/`` (``?client_id=me``): the account's endpoints,
  ``{"success": true, "results": [row, ...]}`` by id (row: :meth:`Accounts.row`);
- ``GET /api/v0/endptjobs/{id}/``: ``{"success": true, "result": row}``; 404
  ``{"success": false, "error": "not_found", "msg": ...}`` for an id the account lacks;
- both authenticated by the **account** key, as ``Authorization: Bearer <key>`` or the
  ``api_key`` query parameter (the client sends both); a wrong or missing key is 401
  ``{"success": false, "error": "invalid_api_key", "msg": ...}`` (``vastai show endpoints``
  prints ``msg``);
- ``POST /get_endpoint_workers/`` with ``{"id": <endpoint id>, "api_key": <account key>}``
  (or the key as bearer): a JSON list of rows (:mod:`scheduler.emulator.endpoint_workers`);
  ``{"error_msg": ...}`` with 200 while the endpoint has no worker or is not the account's
  (the client logs it and returns no workers); 401 ``{"error_msg": "invalid API key"}`` for
  a wrong account key; 400 ``{"error_msg": ...}`` naming the field for a bad body.

Calls are counted (:class:`ConsoleStats`, in ``/admin/stats`` under ``console``); no key is
logged or counted.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from scheduler.emulator.accounts import Accounts
from scheduler.emulator.autoscaler import bearer_token
from scheduler.emulator.endpoint_workers import worker_row
from scheduler.emulator.envelope import json_object
from scheduler.emulator.route_book import RouteBook

CALLS = ("endpoints_list", "endpoint_get", "endpoint_workers")
RESULTS = ("ok", "401", "404", "400", "error_msg")


@dataclass
class ConsoleStats:
    """Console calls by kind and result (and key rotations, counted by the emulator)."""

    by_call: Counter[tuple[str, str]] = field(default_factory=Counter)
    key_rotations: int = 0

    def record(self, call: str, result: str) -> None:
        self.by_call[(call, result)] += 1

    def count(self, call: str | None = None, result: str | None = None) -> int:
        return sum(
            n for (c, r), n in self.by_call.items() if call in (None, c) and result in (None, r)
        )

    def snapshot(self) -> dict[str, Any]:
        calls = {c: {r: self.by_call[(c, r)] for r in RESULTS} for c in CALLS}
        totals = {c: self.count(c) for c in CALLS}
        return {"calls": calls, "totals": totals, "key_rotations": self.key_rotations}


def _console_error(status: int, error: str, msg: str) -> web.Response:
    return web.json_response({"success": False, "error": error, "msg": msg}, status=status)


class Console:
    """Handlers of the console listing and ``/get_endpoint_workers/`` (no server of its own)."""

    def __init__(self, accounts: Accounts, book: RouteBook, stats: ConsoleStats) -> None:
        self.accounts = accounts
        self.book = book
        self.stats = stats

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v0/endptjobs/", self.list_endpoints),
            web.get("/api/v0/endptjobs/{endpoint_id}/", self.get_endpoint),
            web.post("/get_endpoint_workers/", self.endpoint_workers),
        ]

    def _sync(self) -> None:
        """Endpoints the autoscaler serves that the config did not name join the account."""
        for name in sorted(self.book.endpoints):
            self.accounts.ensure(name)

    def _authorized(self, request: web.Request, body_key: object = None) -> bool:
        candidates = (bearer_token(request), request.query.get("api_key"), body_key)
        return any(self.accounts.is_account_key(c) for c in candidates)

    async def list_endpoints(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            self.stats.record("endpoints_list", "401")
            return _console_error(401, "invalid_api_key", "Invalid or missing API key")
        self._sync()
        rows = [self.accounts.row(e) for e in self.accounts.entries()]
        self.stats.record("endpoints_list", "ok")
        return web.json_response({"success": True, "results": rows})

    async def get_endpoint(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            self.stats.record("endpoint_get", "401")
            return _console_error(401, "invalid_api_key", "Invalid or missing API key")
        text = request.match_info["endpoint_id"]
        if not text.isdigit():
            self.stats.record("endpoint_get", "400")
            return _console_error(400, "invalid_args", "id: must be an integer")
        self._sync()
        entry = self.accounts.by_id(int(text))
        if entry is None:
            self.stats.record("endpoint_get", "404")
            return _console_error(404, "not_found", f"no endpoint with id {int(text)}")
        self.stats.record("endpoint_get", "ok")
        return web.json_response({"success": True, "result": self.accounts.row(entry)})

    async def endpoint_workers(self, request: web.Request) -> web.Response:
        body = json_object(await request.read())
        if not self._authorized(request, (body or {}).get("api_key")):
            self.stats.record("endpoint_workers", "401")
            return web.json_response({"error_msg": "invalid API key"}, status=401)
        endpoint_id = (body or {}).get("id")
        if body is None or isinstance(endpoint_id, bool) or not isinstance(endpoint_id, int):
            self.stats.record("endpoint_workers", "400")
            message = "body must be a JSON object" if body is None else "id: must be an integer"
            return web.json_response({"error_msg": message}, status=400)
        answer = self._worker_rows(endpoint_id)
        self.stats.record("endpoint_workers", "error_msg" if isinstance(answer, dict) else "ok")
        return web.json_response(answer)

    def _worker_rows(self, endpoint_id: int) -> list[dict[str, Any]] | dict[str, str]:
        self._sync()
        entry = self.accounts.by_id(endpoint_id)
        if entry is None:
            return {"error_msg": f"endpoint {endpoint_id} not found for this API key"}
        views = sorted(
            (v for v in self.book.workers.values() if v.endpoint == entry.name),
            key=lambda v: v.worker_id,
        )
        if not views:
            return {"error_msg": f"endpoint {endpoint_id} has no workers to query yet"}
        now = time.monotonic()
        to_epoch = time.time() - now
        return [worker_row(v, v.status(now, self.book.stale_after_s), to_epoch) for v in views]
