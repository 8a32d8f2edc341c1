"""Bearer-token authentication: who is calling, which endpoints it may use, its quotas.

Every presented token is hashed and compared, in constant time, with the hash of *every*
configured token, so neither the time taken nor an early exit tells which token (or how much
of one) matched. Hashing first also hides the configured tokens' lengths, which
``hmac.compare_digest`` would otherwise reveal by returning early on a length mismatch.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from scheduler.api.errors import ApiError, Handler
from scheduler.config import AuthConfig, TokenConfig

log = structlog.get_logger("scheduler.auth")
CHALLENGE = 'Bearer realm="vast-scheduler"'
MAX_TOKEN_CHARS = 4096
# Routes that check their own credentials (the front door's /session/get and /session/end,
# which the official client calls with an empty key and the session's signed ticket).
SELF_AUTHENTICATED_ROUTES = frozenset({"vast_session_get", "vast_session_end"})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a tenant, the endpoints it may use (None: all) and its quotas."""

    name: str
    endpoints: frozenset[str] | None
    max_queued_jobs: int | None = None
    max_queued_cost: float | None = None
    admin: bool = False  # may use /v1/admin/* (config reload)

    def may_use(self, endpoint: str) -> bool:
        return self.endpoints is None or endpoint in self.endpoints


PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)


def caller(request: web.Request) -> Principal | None:
    """The authenticated caller of a request; None while auth is off (or on an open path)."""
    principal: Principal | None = request.get(PRINCIPAL)
    return principal


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class TokenTable:
    """The configured tokens, kept only as SHA-256 digests."""

    def __init__(self, tokens: Sequence[TokenConfig]) -> None:
        self._entries = [
            (_digest(t.token.get_secret_value()), principal_of(t))
            for t in tokens
            if t.token is not None  # an empty token turns its entry off
        ]

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, presented: str) -> Principal | None:
        """The principal whose token equals ``presented``; every entry is compared, always."""
        candidate = _digest(presented)
        found: Principal | None = None
        for digest, principal in self._entries:
            if hmac.compare_digest(candidate, digest):
                found = principal  # no break: the loop's length must not depend on the match
        return found


def principal_of(token: TokenConfig) -> Principal:
    endpoints = None if token.endpoints == "*" else frozenset(token.endpoints)
    return Principal(token.name, endpoints, token.max_queued_jobs, token.max_queued_cost,
                     token.admin)  # fmt: skip


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        return None
    return token


def unauthorized(presented: bool) -> ApiError:
    challenge = f'{CHALLENGE}, error="invalid_token"' if presented else CHALLENGE
    message = "invalid bearer token" if presented else "a bearer token is required"
    return ApiError(401, "unauthorized", message, "Authorization",
                    {"WWW-Authenticate": challenge})  # fmt: skip


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.enabled = config.enabled
        self.open_paths = frozenset(config.open_paths)
        self.table = TokenTable(config.tokens)

    def replace_tokens(self, tokens: Sequence[TokenConfig]) -> None:
        """Live reload: the next request is checked against ``tokens`` only."""
        self.table = TokenTable(tokens)

    def check(self, request: web.Request) -> Principal | None:
        """The caller of a protected request, or raise 401/403; None for open paths.

        Open or not is decided by the route the request matched (as the router decoded the
        path), so no spelling of a path can reach a protected handler as an open one."""
        resource = request.match_info.route.resource
        if resource is not None and resource.canonical in self.open_paths:
            return None
        if request.match_info.route.name in SELF_AUTHENTICATED_ROUTES:
            return None
        token = bearer_token(request)
        principal = None if token is None else self.table.lookup(token)
        if principal is None:
            raise unauthorized(presented=token is not None)
        endpoint = request.match_info.get("endpoint")
        if endpoint is not None and not principal.may_use(endpoint):
            raise ApiError(403, "forbidden", f"this token may not use endpoint {endpoint}",
                           "endpoint")  # fmt: skip
        return principal


def auth_middleware(config: AuthConfig) -> Middleware:
    """The middleware enforcing ``config``; logs at start when auth is off or denies all."""
    authenticator = Authenticator(config)
    if not config.enabled:
        log.warning("auth.disabled", detail="every caller is trusted; X-Tenant names the tenant")
    else:
        for token in config.tokens:
            if token.token is None:
                log.warning("auth.token_unset", tenant=token.name)
        if not len(authenticator.table):
            log.error("auth.no_tokens", detail="every protected path answers 401")

    return AuthMiddleware(authenticator)


class AuthMiddleware:
    """The aiohttp middleware; an object, so a live reload can reach its ``authenticator``."""

    __middleware_version__ = 1  # what ``@web.middleware`` marks: a new-style middleware

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.authenticator.enabled:
            principal = self.authenticator.check(request)
            if principal is not None:
                request[PRINCIPAL] = principal
        return await handler(request)


def authenticator_of(app: web.Application) -> Authenticator | None:
    """The authenticator of ``app``'s auth middleware, if it has one."""
    for middleware in app.middlewares:
        if isinstance(middleware, AuthMiddleware):
            return middleware.authenticator
    return None
