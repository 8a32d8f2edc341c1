"""The front door's per-process state: its ticket signer and the sessions opened through it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from scheduler.api.context import METRICS
from scheduler.core.frontdoor_sign import Refusal, TicketSigner

log = structlog.get_logger("scheduler.frontdoor")
MAX_SESSIONS = 10_000


@dataclass(frozen=True, slots=True)
class VastSession:
    """A caller session opened through the front door: its ticket is its credential."""

    auth_data: dict[str, Any]
    tenant: str
    endpoint: str
    lifetime_s: float
    created_at: float


@dataclass
class FrontDoor:
    signer: TicketSigner
    sessions: dict[str, VastSession] = field(default_factory=dict)


FRONTDOOR: web.AppKey[FrontDoor] = web.AppKey("frontdoor", FrontDoor)


def new_frontdoor() -> FrontDoor:
    return FrontDoor(TicketSigner(secrets.token_bytes(32)))


def refused(request: web.Request, reason: Refusal) -> web.Response:
    """The official worker's answer to a bad signature: 401, no body; counted and logged."""
    request.app[METRICS].frontdoor_refusals.labels(reason).inc()
    log.warning("frontdoor.ticket_refused", reason=reason, path=request.path)
    return web.Response(status=401)
