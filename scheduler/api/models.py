"""Validated request bodies of the job API."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, WithJsonSchema

MAX_ROUTE_CHARS = 512
# A worker route is a path only. Characters: RFC 3986 pchar minus '%' (a percent-encoded '..'
# would be decoded by the URL library and climb out of the path). Segments: never '.' or '..';
# the first is not empty ('//host' would name a host) unless the route is just '/'. Written so
# that it matches in linear time and can be published as is in the OpenAPI schema.
_CHAR = r"\-A-Za-z0-9_~!$&'()*+,;=:@"
_SEGMENT = rf"(?:[{_CHAR}][{_CHAR}.]*|\.[{_CHAR}][{_CHAR}.]*|\.\.[{_CHAR}.]+)"
ROUTE_PATTERN = rf"^/(?:{_SEGMENT}(?:/{_SEGMENT}?)*)?$"
PROXY_TAIL_PATTERN = rf"^(?:{_SEGMENT}(?:/{_SEGMENT}?)*)?$"  # the route less its leading '/'
_ROUTE = re.compile(ROUTE_PATTERN)
_ROUTE_CHARS = re.compile(rf"/[{_CHAR}./]*")

MIN_SESSION_LIFETIME_S = 10.0


def check_worker_route(route: str) -> str:
    """A path only: a leading '/', no '//' prefix, no '..' segment, no scheme, host, controls."""
    if len(route) > MAX_ROUTE_CHARS:
        raise ValueError(f"must be at most {MAX_ROUTE_CHARS} characters")
    if _ROUTE.fullmatch(route):
        return route
    if _ROUTE_CHARS.fullmatch(route) and not route.startswith("//"):
        raise ValueError("must not contain '.' or '..' segments")
    raise ValueError("must be a path such as /v1/completions")


WorkerRoute = Annotated[
    str,
    AfterValidator(check_worker_route),
    WithJsonSchema({"type": "string", "maxLength": MAX_ROUTE_CHARS, "pattern": ROUTE_PATTERN}),
]


class WebhookSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2048)


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    route: WorkerRoute | None = None
    payload: dict[str, Any]
    # Strict: "5" or true are mistakes, not numbers.
    cost: Annotated[float, Strict()] | None = Field(None, ge=0, le=1e9, allow_inf_nan=False)
    priority: Annotated[int, Strict()] = Field(5, ge=0, le=9)
    timeout_s: Annotated[float, Strict()] | None = Field(None, gt=0, le=86_400, allow_inf_nan=False)
    idempotency_key: str | None = Field(None, min_length=1, max_length=256)
    webhook: WebhookSpec | None = None
    session: str | None = Field(None, min_length=1, max_length=64)


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cost: Annotated[float, Strict()] = Field(gt=0, le=1e9, allow_inf_nan=False)
    # At least 10 s: a shorter session would expire before the caller's next request reached it
    # (schemathesis found a 0.1 us one swept between its creation and the next GET).
    lifetime_s: Annotated[float, Strict()] = Field(
        120.0, ge=MIN_SESSION_LIFETIME_S, le=86_400, allow_inf_nan=False
    )
    wait_s: Annotated[float, Strict()] = Field(30.0, ge=0, le=600, allow_inf_nan=False)
