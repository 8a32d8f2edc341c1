"""The emulated autoscaler: ``/route/``, ``/pubkey/``, ``/worker_status/``, ``/delete_requests/``.

``/route/`` follows the protocol doc: bearer key (or ``api_key`` in query/body) else 401;
the keys that count are the endpoint's (``Accounts.route_identity``: its own key once it has
one, else the emulator's global keys);
per-identity minimum interval else 429 (plain text, ``Retry-After`` in whole seconds unless
``route_retry_after`` is false: Vast documents none);
injected 500s and delay; 400 for bad parameters (``replay_timeout``, when given, a number
> 0) or an unknown endpoint; READY answers signed (legacy workers: whole message) or
WAITING with a status summary and a stable ``request_idx`` (kept ``replay_timeout`` s from
its last call) while no ready worker is under its queue limit (see ``route_book``).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from scheduler.emulator.accounts import Accounts
from scheduler.emulator.envelope import json_object
from scheduler.emulator.route_book import (
    DEFAULT_REPLAY_TIMEOUT_S,
    RateLimiter,
    RouteBook,
    WorkerView,
)
from scheduler.emulator.settings import EmulatorConfig
from scheduler.emulator.signing import Signer

ROUTE_LOG_LEN = 10_000
UNKNOWN_ENDPOINT = "_unknown"
_MAX_REPLAY_TIMEOUT_S = 86_400.0
RESULTS = ("ready", "waiting", "429", "error", "401", "400")


@dataclass
class RouteFaults:
    """Fault knobs of ``/route/``, changeable at run time (``POST /admin/faults``)."""

    error_rate: float = 0.0
    delay_ms: float = 0.0
    min_interval_ms: float = 0.0

    def update(self, changes: dict[str, Any]) -> None:
        for name in ("error_rate", "delay_ms", "min_interval_ms"):
            key = name if name in changes else f"route_{name}"
            if key in changes:
                value = float(changes[key])
                if value < 0 or (name == "error_rate" and value > 1):
                    raise ValueError(f"{key} out of range")
                setattr(self, name, value)


@dataclass
class RouteStats:
    """Route calls by endpoint and result, plus a bounded time-stamped log."""

    started_at: float = field(default_factory=time.monotonic)
    by_result: Counter[tuple[str, str]] = field(default_factory=Counter)
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=ROUTE_LOG_LEN))

    def record(self, endpoint: str, result: str, cost: float, now: float) -> None:
        self.by_result[(endpoint, result)] += 1
        entry = {"t_s": round(now - self.started_at, 6), "endpoint": endpoint}
        self.log.append({**entry, "result": result, "cost": cost})

    def count(self, endpoint: str | None = None, result: str | None = None) -> int:
        return sum(
            n
            for (ep, res), n in self.by_result.items()
            if endpoint in (None, ep) and result in (None, res)
        )

    def snapshot(self) -> dict[str, Any]:
        endpoints = sorted({ep for ep, _ in self.by_result})
        per_endpoint = {
            ep: {res: self.by_result[(ep, res)] for res in RESULTS} | {"total": self.count(ep)}
            for ep in endpoints
        }
        return {"total": self.count(), "by_endpoint": per_endpoint}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None


@dataclass(frozen=True)
class RouteParams:
    endpoint: str
    cost: float
    request_idx: int
    replay_timeout_s: float


def _parse_params(body: dict[str, Any] | None) -> RouteParams | str:
    """The route call's parameters or the 400 message."""
    if body is None:
        return "body must be a JSON object"
    replay = body.get("replay_timeout")
    replay = DEFAULT_REPLAY_TIMEOUT_S if replay is None else replay
    if isinstance(replay, bool) or not isinstance(replay, int | float) or not replay > 0:
        return "replay_timeout must be a number > 0"
    endpoint, cost, idx = body.get("endpoint"), body.get("cost", 100), body.get("request_idx", 0)
    if not isinstance(endpoint, str) or not endpoint:
        return "endpoint must be a non-empty string"
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not cost >= 0:
        return "cost must be a number >= 0"
    if idx is None:
        idx = 0
    if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
        return "request_idx must be an integer >= 0"
    return RouteParams(endpoint, float(cost), idx, float(min(replay, _MAX_REPLAY_TIMEOUT_S)))


class Autoscaler:
    """State and handlers of the emulated autoscaler (no server of its own)."""

    def __init__(
        self, config: EmulatorConfig, accounts: Accounts, signer: Signer | None = None
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.signer = signer or Signer()
        self.book = RouteBook(stale_after_s=config.worker_stale_after_s)
        self.book.endpoints.update(config.endpoints)
        self.faults = RouteFaults(
            config.route_error_rate, config.route_delay_ms, config.route_min_interval_ms
        )
        self.stats = RouteStats()
        self.limiter = RateLimiter()
        self._rng = random.Random(config.seed)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/route/", self.handle_route),
            web.get("/pubkey/", self.handle_pubkey),
            web.post("/worker_status/", self.handle_worker_status),
            web.post("/delete_requests/", self.handle_delete_requests),
        ]

    async def handle_pubkey(self, request: web.Request) -> web.Response:
        return web.Response(text=self.signer.public_pem, content_type="text/plain")

    async def handle_worker_status(self, request: web.Request) -> web.Response:
        body = json_object(await request.read())
        if body is None or not self.book.on_status(body, time.monotonic()):
            return _error(400, "unknown worker or bad report")
        return web.json_response({"ok": True})

    async def handle_delete_requests(self, request: web.Request) -> web.Response:
        body = json_object(await request.read())
        if body is None or not self.book.on_finished(body):
            return _error(400, "unknown worker or bad report")
        return web.json_response({"ok": True})

    async def handle_route(self, request: web.Request) -> web.Response:
        if self.faults.delay_ms > 0:
            await asyncio.sleep(self.faults.delay_ms / 1000)
        body = json_object(await request.read())
        response, result = self._route(request, body)
        name = (body or {}).get("endpoint")
        label = name if isinstance(name, str) and name in self.book.endpoints else UNKNOWN_ENDPOINT
        cost = (body or {}).get("cost", 0)
        cost = float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else 0.0
        self.stats.record(label, result, cost, time.monotonic())
        return response

    def _identity(self, request: web.Request, body: dict[str, Any] | None) -> str | None:
        candidates = [
            bearer_token(request),
            request.query.get("api_key"),
            (body or {}).get("api_key"),
        ]
        name = (body or {}).get("endpoint")
        endpoint = name if isinstance(name, str) and name in self.book.endpoints else None
        return self.accounts.route_identity(endpoint, candidates)

    def _route(self, request: web.Request, body: dict[str, Any] | None) -> tuple[web.Response, str]:
        identity = self._identity(request, body)
        if identity is None:
            return _error(401, "invalid or missing API key"), "401"
        retry_after = self.limiter.check(
            identity, time.monotonic(), self.faults.min_interval_ms / 1000
        )
        if retry_after is not None:
            headers = {"Retry-After": str(retry_after)} if self.config.route_retry_after else {}
            text = "API requests too frequent"
            return web.Response(status=429, text=text, headers=headers), "429"
        if self.faults.error_rate > 0 and self._rng.random() < self.faults.error_rate:
            return _error(500, "internal error (injected by the emulator)"), "error"
        params = _parse_params(body)
        if isinstance(params, str):
            return _error(400, params), "400"
        if params.endpoint not in self.book.endpoints:
            return _error(400, f"unknown endpoint {params.endpoint!r}"), "400"
        return self._answer(params)

    def _answer(self, params: RouteParams) -> tuple[web.Response, str]:
        now, endpoint, cost = time.monotonic(), params.endpoint, params.cost
        request_idx = self.book.request_idx(
            endpoint,
            params.request_idx,
            cost=cost,
            now=now,
            replay_timeout_s=params.replay_timeout_s,
        )
        view = self.book.pick(endpoint, now)
        if view is None:
            waiting = {
                "endpoint": endpoint,
                "status": self.book.summary(endpoint, now),
                "request_idx": request_idx,
                "__request_id": uuid.uuid4().hex,
            }
            return web.json_response(waiting), "waiting"
        return web.json_response(self._ready(view, endpoint, cost, request_idx)), "ready"

    def _ready(
        self, view: WorkerView, endpoint: str, cost: float, request_idx: int
    ) -> dict[str, Any]:
        reqnum = self.book.assign(view, cost, request_idx)
        answer: dict[str, Any] = {"endpoint": endpoint, "url": view.url, "cost": cost}
        answer |= {"reqnum": reqnum, "request_idx": request_idx}
        if view.legacy:
            answer["signature"] = self.signer.sign_legacy(answer)
        else:
            answer["signature"] = self.signer.sign_url(view.url)
        answer["__request_id"] = uuid.uuid4().hex
        return answer
