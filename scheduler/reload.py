"""Live reload of the config file, on SIGHUP or ``POST /v1/admin/reload``.

Pure part: ``plan_reload(old, new)`` compares two validated configs and returns a ``Plan``
(what applies live) or ``Refused`` (each setting that needs a restart, by its YAML path).

* Live: new endpoints; every setting of an existing endpoint (queue, cost and per-route
  estimators, limits, batch, poll, lease, rate, retry budget, ejection, tenant weights,
  attempts, timeouts, reuse); ``endpoint_defaults`` (through the endpoints it fills in);
  ``auth.tokens`` (add, rotate or revoke tokens, quotas, the ``admin`` flag).
* Restart: everything else (``server``, ``vast``, ``emulator``, ``store``, ``logging``,
  ``metrics``, ``auth.enabled``, ``auth.open_paths``), and removing an endpoint: its queued
  and running jobs would be lost. A setting not known to be live needs a restart.

I/O part: ``reload(app, source)`` reads the file the daemon was started with (``CONFIG_PATH``),
validates it, plans, applies, and logs ``config.reloaded`` with what changed, or
``config.reload_refused`` with each error and its YAML path; a refused file changes nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import structlog
from aiohttp import web
from pydantic import SecretStr

from scheduler.api.context import SERVICE
from scheduler.api.errors import REQUEST_ID, ApiError
from scheduler.auth import authenticator_of, caller
from scheduler.config import AppConfig, ConfigError, load_config
from scheduler.observability.logging import Redactor

log = structlog.get_logger("scheduler.reload")
CONFIG_PATH: web.AppKey[Path] = web.AppKey("config_path", Path)
RESTART = "changing it needs a restart"
REMOVAL = "removing an endpoint needs a restart (its queued and running jobs would be lost)"
LIVE_SECTIONS = frozenset({"endpoints", "endpoint_defaults"})
LIVE_PATHS = frozenset({("auth", "tokens")})
MAX_VALUE_CHARS = 80


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()
Keys = tuple[str, ...]


# pure -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Difference:
    keys: Keys
    old: Any
    new: Any

    @property
    def path(self) -> str:
        return ".".join(self.keys)


@dataclass(frozen=True, slots=True)
class Plan:
    """A change that applies live; ``changes`` never shows a secret's value."""

    config: AppConfig
    changes: tuple[str, ...]
    added_endpoints: tuple[str, ...]
    updated_endpoints: tuple[str, ...]
    tokens_changed: bool


RefusalCode = Literal["restart_required", "invalid_config", "reload_unavailable"]


@dataclass(frozen=True, slots=True)
class Refused:
    """Nothing was applied; ``problems`` holds one ``path: message`` each."""

    problems: tuple[str, ...]
    code: RefusalCode = "restart_required"


def plan_reload(old: AppConfig, new: AppConfig) -> Plan | Refused:
    diffs = differences(old.model_dump(), new.model_dump(), ())
    refusals = [r for d in diffs if (r := refusal(d)) is not None]
    if refusals:
        return Refused(tuple(refusals))
    return Plan(
        config=new,
        changes=tuple(describe(d) for d in diffs),
        added_endpoints=tuple(n for n in new.endpoints if n not in old.endpoints),
        updated_endpoints=tuple(
            n for n, ep in new.endpoints.items() if n in old.endpoints and old.endpoints[n] != ep
        ),
        tokens_changed=old.auth.tokens != new.auth.tokens,
    )


def differences(old: Any, new: Any, keys: Keys) -> list[Difference]:
    """Leaf differences between two dumped configs; mappings are compared key by key."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found: list[Difference] = []
        for key in [*old, *(k for k in new if k not in old)]:
            found += differences(old.get(key, MISSING), new.get(key, MISSING), (*keys, str(key)))
        return found
    return [] if old == new else [Difference(keys, old, new)]


def refusal(diff: Difference) -> str | None:
    """Why ``diff`` cannot apply live, or None if it can."""
    if diff.keys[0] == "endpoints" and len(diff.keys) == 2 and diff.new is MISSING:
        return f"{diff.path}: {REMOVAL}"
    if diff.keys[0] in LIVE_SECTIONS or diff.keys[:2] in LIVE_PATHS:
        return None
    return f"{diff.path}: {RESTART}"


def describe(diff: Difference) -> str:
    if diff.old is MISSING:
        return f"{diff.path}: added"
    if diff.new is MISSING:
        return f"{diff.path}: removed"
    if holds_secret(diff.old) or holds_secret(diff.new):
        return f"{diff.path}: changed"
    return f"{diff.path}: {render(diff.old)} -> {render(diff.new)}"


def holds_secret(value: Any) -> bool:
    if isinstance(value, SecretStr):
        return True
    if isinstance(value, Mapping):
        return any(holds_secret(v) for v in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return any(holds_secret(v) for v in value)
    return False


def render(value: Any) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def split_problem(problem: str) -> tuple[str, str]:
    """``"endpoints.a.x: must be > 0"`` -> ``("endpoints.a.x", "must be > 0")``."""
    field, sep, message = problem.partition(": ")
    return (field, message) if sep else ("<root>", problem)


# I/O --------------------------------------------------------------------------------------
async def reload(app: web.Application, source: str) -> Plan | Refused:
    """Read, validate, plan and apply the config file; log what happened, whatever it was."""
    path = app.get(CONFIG_PATH)
    outcome = await read_and_apply(app, path)
    where = None if path is None else str(path)
    if isinstance(outcome, Plan):
        log.info("config.reloaded", path=where, source=source, changes=list(outcome.changes),
                 added_endpoints=list(outcome.added_endpoints))  # fmt: skip
    else:
        log.error("config.reload_refused", path=where, source=source, code=outcome.code,
                  errors=list(outcome.problems),
                  fields=[split_problem(p)[0] for p in outcome.problems])  # fmt: skip
    return outcome


async def read_and_apply(app: web.Application, path: Path | None) -> Plan | Refused:
    service = app.get(SERVICE)
    if path is None or service is None:
        return Refused(("<file>: the daemon was not started from a config file",),
                       "reload_unavailable")  # fmt: skip
    try:
        new = await asyncio.to_thread(load_config, path)
    except ConfigError as exc:
        return Refused(tuple(exc.problems), "invalid_config")
    if not service.accepting:
        return Refused(("<daemon>: draining; a config cannot be reloaded now",),
                       "reload_unavailable")  # fmt: skip
    # No await from here on: planning against the live config and applying are one step.
    outcome = plan_reload(service.config, new)
    if isinstance(outcome, Plan):
        apply(app, outcome)
    return outcome


def apply(app: web.Application, plan: Plan) -> None:
    app[SERVICE].reconfigure(plan.config)
    if plan.tokens_changed:
        tokens = plan.config.auth.tokens
        redact_new_secrets([t.token.get_secret_value() for t in tokens if t.token is not None])
        authenticator = authenticator_of(app)
        if authenticator is not None:
            authenticator.replace_tokens(tokens)
    for warning in plan.config.auth.warnings():
        log.warning("config.warning", detail=warning)


def redact_new_secrets(secrets: list[str]) -> None:
    """Log redaction masks the new tokens too (old ones stay masked)."""
    for processor in structlog.get_config().get("processors", []):
        if isinstance(processor, Redactor):
            processor.add(secrets)


async def reload_on_signal(app: web.Application) -> None:
    """The SIGHUP task: every outcome is logged by ``reload``; a bug is logged, not raised."""
    try:
        await reload(app, "sighup")
    except asyncio.CancelledError:
        raise
    except Exception:  # the top of a background task: log it and keep serving
        log.exception("config.reload_failed", source="sighup")


# HTTP -------------------------------------------------------------------------------------
def require_admin(request: web.Request) -> None:
    """403 unless the caller's token has ``admin: true``; always 403 while auth is off."""
    principal = caller(request)
    if principal is None:
        message = "auth is off: reload with SIGHUP, or turn auth on and use an admin token"
        raise ApiError(403, "admin_requires_auth", message)
    if not principal.admin:
        raise ApiError(403, "forbidden", "this token may not use admin operations")


STATUS_OF: dict[RefusalCode, int] = {
    "invalid_config": 422,
    "restart_required": 409,
    "reload_unavailable": 409,
}
MESSAGE_OF: dict[RefusalCode, str] = {
    "invalid_config": "the config file is invalid; the running config is kept",
    "restart_required": "these changes need a restart; nothing was applied",
    "reload_unavailable": "cannot reload now; nothing was applied",
}


def reload_answer(request: web.Request, outcome: Plan | Refused) -> web.Response:
    if isinstance(outcome, Plan):
        return web.json_response({
            "status": "reloaded", "changes": list(outcome.changes),
            "added_endpoints": list(outcome.added_endpoints),
            "updated_endpoints": list(outcome.updated_endpoints),
        })  # fmt: skip
    problems = [{"field": f, "message": m} for f, m in map(split_problem, outcome.problems)]
    error = {"code": outcome.code, "message": MESSAGE_OF[outcome.code],
             "field": problems[0]["field"]}  # fmt: skip
    return web.json_response(
        {"error": error, "request_id": request.get(REQUEST_ID), "problems": problems},
        status=STATUS_OF[outcome.code],
    )
