"""Typed configuration of the emulator: the ``emulator:`` section of the daemon's YAML.

Example::

    emulator:
      port: 8081
      route_min_interval_ms: 50
      endpoints:
        echo: {workers: 2, perf: 10000}
        llm: {workers: 1, cold_start_s: 5, workload: max_tokens, parallel: false}
        old: {workers: 1, mode: legacy}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

WorkerMode = Literal["current", "legacy"]
WorkloadKind = Literal["constant", "max_tokens"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EmulatedEndpoint(_Frozen):
    """One emulated endpoint and the workers that serve it.

    Workload (cost units a request puts on a worker, as the worker computes it):
    ``constant`` = ``workload_units`` per request (the official default is 100);
    ``max_tokens`` = the payload's ``max_tokens`` (``default_max_tokens`` when absent or
    not a positive number) times ``workload_units_per_token``.
    A request takes ``workload / perf`` seconds of service; ``parallel`` workers share
    ``perf`` between the requests in flight (processor sharing), others serve FIFO.
    """

    workers: int = Field(default=2, ge=0, le=256)
    perf: float = Field(default=10_000.0, gt=0)
    cold_start_s: float = Field(default=0.0, ge=0)
    max_queue_time_s: float = Field(default=30.0, gt=0)
    max_sessions: int = Field(default=10, ge=0)
    parallel: bool = True
    mode: WorkerMode = "current"
    workload: WorkloadKind = "constant"
    workload_units: float = Field(default=100.0, gt=0)
    workload_units_per_token: float = Field(default=1.0, gt=0)
    default_max_tokens: int = Field(default=16, gt=0)
    stream_chunks_max: int = Field(default=16, gt=0, le=1000)

    def with_overrides(self, overrides: dict[str, Any]) -> EmulatedEndpoint:
        """A validated copy with some fields replaced (used when adding a worker)."""
        return EmulatedEndpoint.model_validate({**self.model_dump(), **overrides})


def _default_endpoints() -> dict[str, EmulatedEndpoint]:
    return {"echo": EmulatedEndpoint()}


class EmulatorConfig(_Frozen):
    """The whole emulator: one autoscaler and the endpoints' workers."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    endpoints: dict[str, EmulatedEndpoint] = Field(default_factory=_default_endpoints)
    route_min_interval_ms: float = Field(default=0.0, ge=0)
    route_error_rate: float = Field(default=0.0, ge=0, le=1)
    route_delay_ms: float = Field(default=0.0, ge=0)
    status_interval_s: float = Field(default=1.0, gt=0)
    stale_after_s: float | None = Field(default=None, gt=0)
    session_reap_interval_s: float = Field(default=5.0, gt=0)
    seed: int | None = None

    @property
    def worker_stale_after_s(self) -> float:
        """A worker whose last report is older than this is no longer routed to."""
        return self.stale_after_s if self.stale_after_s is not None else 3 * self.status_interval_s
