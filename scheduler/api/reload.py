"""Live reload of the config file, on SIGHUP or ``POST /v1/admin/reload``: ``reload(app,
source)`` reads the file the daemon was started with (``CONFIG_PATH``), validates it, plans
(``scheduler.config.reload_plan``), applies, and logs ``config.reloaded`` with what changed, or
``config.reload_refused`` with each error and its YAML path; a refused file changes nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from aiohttp import web

from scheduler.api.auth import authenticator_of, caller
from scheduler.api.context import ENDPOINT_KEYS, SERVICE
from scheduler.api.errors import REQUEST_ID, ApiError
from scheduler.config import ConfigError, load_config
from scheduler.config.reload_plan import Plan, RefusalCode, Refused, plan_reload, split_problem
from scheduler.observability.logging import Redactor

log = structlog.get_logger("scheduler.reload")
CONFIG_PATH: web.AppKey[Path] = web.AppKey("config_path", Path)


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
    keys = app.get(ENDPOINT_KEYS)
    if keys is not None:  # before the service: a new endpoint's loop finds its key
        endpoints = plan.config.endpoints
        redact_new_secrets([e.api_key.get_secret_value() for e in endpoints.values() if e.api_key])
        keys.reconfigure(endpoints)
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
