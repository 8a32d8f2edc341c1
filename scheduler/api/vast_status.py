"""The account's part of the status: where keys come from, each endpoint's settings on Vast
and its workers as Vast sees them. ``/v1/status`` and the status page both read ``status``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from scheduler.api.context import ENDPOINT_KEYS, SERVICE, VAST_WORKERS


def status(app: web.Application) -> dict[str, Any]:
    """The service's status with ``vast`` added (top level and per endpoint); a read of it
    keeps the workers poll on for a while."""
    body = app[SERVICE].status()
    keys, watch = app.get(ENDPOINT_KEYS), app.get(VAST_WORKERS)
    if keys is None:
        return body
    if watch is not None:
        watch.touch()
    body["vast"] = keys.status()
    for name, endpoint in body["endpoints"].items():
        workers = watch.view(name) if watch is not None else None
        endpoint["vast"] = {**keys.endpoint_view(name), "workers": workers}
    return body


def not_ready_reason(app: web.Application) -> str | None:
    keys = app.get(ENDPOINT_KEYS)
    return None if keys is None else keys.not_ready_reason()
