"""Validated request bodies of the job API."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator

# No '%': a percent-encoded '..' would be decoded by the URL library and climb out of the path.
_ROUTE_CHARS = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]*")


def check_worker_route(route: str) -> str:
    """A path only: a leading '/', no '//' prefix, no '..' segment, no scheme, host, controls."""
    if not _ROUTE_CHARS.fullmatch(route) or route.startswith("//"):
        raise ValueError("must be a path such as /v1/completions")
    if {".", ".."} & set(route.split("/")):
        raise ValueError("must not contain '.' or '..' segments")
    return route


class WebhookSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2048)


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    route: str | None = Field(None, max_length=512)
    payload: dict[str, Any]
    # Strict: "5" or true are mistakes, not numbers.
    cost: Annotated[float, Strict()] | None = Field(None, ge=0, le=1e9, allow_inf_nan=False)
    priority: Annotated[int, Strict()] = Field(5, ge=0, le=9)
    timeout_s: Annotated[float, Strict()] | None = Field(None, gt=0, le=86_400, allow_inf_nan=False)
    idempotency_key: str | None = Field(None, min_length=1, max_length=256)
    webhook: WebhookSpec | None = None
    session: str | None = Field(None, min_length=1, max_length=64)

    @field_validator("route")
    @classmethod
    def _route(cls, value: str | None) -> str | None:
        return None if value is None else check_worker_route(value)


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cost: Annotated[float, Strict()] = Field(gt=0, le=1e9, allow_inf_nan=False)
    lifetime_s: Annotated[float, Strict()] = Field(120.0, gt=0, le=86_400, allow_inf_nan=False)
    wait_s: Annotated[float, Strict()] = Field(30.0, ge=0, le=600, allow_inf_nan=False)
