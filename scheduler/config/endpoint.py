"""The endpoint section: queue, cost estimation, routing, leases, retries, placement."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from scheduler.config.base import Model

ENDPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
TenantWeight = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class QueueConfig(Model):
    max_depth: int = Field(10_000, gt=0)
    # Queued cost (workload units) beyond which new jobs get 429; None: no limit but depth.
    max_cost: float | None = Field(None, gt=0, allow_inf_nan=False)


class CostConfig(Model):
    """How a job's cost (worker workload units) is estimated; see ``scheduler.core.cost``.

    ``constant``: ``value``. ``field``: the number at dotted path ``field`` times ``scale``
    (``default`` when absent). ``llm_tokens``: OpenAI completions / chat payloads,
    ``(prompt_tokens * prompt_weight + completion_tokens * completion_weight) * n``; the
    weights default to 0 and 1 because the usual Vast LLM worker counts ``max_tokens``.
    Every estimate is clamped to [``min``, ``max``]. No field accepts inf or nan.
    """

    model_config = ConfigDict(allow_inf_nan=False)  # merged with Model's extra/frozen

    estimator: Literal["constant", "field", "llm_tokens"] = "constant"
    value: float = Field(100.0, ge=0)
    field: str | None = None
    scale: float = Field(1.0, gt=0)
    default: float = Field(100.0, ge=0)
    min: float = Field(0.0, ge=0)
    max: float = Field(1e9, gt=0)
    caller_cost: Literal["trust", "clamp", "ignore"] = "clamp"
    # llm_tokens
    chars_per_token: float = Field(4.0, gt=0, le=1_000)
    tokens_per_message: int | None = Field(None, ge=0, le=1_000)  # None: 4 chat, 0 completions
    image_tokens: int = Field(0, ge=0, le=1_000_000)  # flat, per image content part
    default_max_tokens: int = Field(256, ge=1, le=100_000_000)
    prompt_weight: float = Field(0.0, ge=0, le=1e6)
    completion_weight: float = Field(1.0, ge=0, le=1e6)
    # calibration of estimates against observed service time (scheduler.core.calibration)
    calibrate: bool = False
    calibration_alpha: float = Field(0.1, gt=0, le=1)

    @model_validator(mode="after")
    def _range(self) -> CostConfig:
        if self.min > self.max:
            raise ValueError("min must be <= max")
        return self

    @field_validator("field")
    @classmethod
    def _dotted_path(cls, value: str | None) -> str | None:
        if value is not None and not all(value.split(".")):
            raise ValueError("must be a dotted path such as max_tokens or input.steps")
        return value


class BackoffConfig(Model):
    """Capped exponential back-off (``scheduler.core.backoff``); each step is jittered over
    [50%, 100%] of ``initial_s * multiplier ** (n - 1)``, at most ``max_s``."""

    initial_s: float = Field(1.0, gt=0, le=3600)
    max_s: float = Field(30.0, gt=0, le=3600)
    multiplier: float = Field(2.0, ge=1, le=10)

    @model_validator(mode="after")
    def _range(self) -> BackoffConfig:
        if self.initial_s > self.max_s:
            raise ValueError("initial_s must be <= max_s")
        return self


class PollConfig(BackoffConfig):
    """Back-off of the one poller an endpoint runs while Vast has no worker ready."""

    initial_s: float = Field(0.25, gt=0)
    max_s: float = Field(1.0, gt=0)
    max_cost: float = Field(1e6, gt=0)  # cap on the backlog cost a poll declares


class RouteBackoffConfig(BackoffConfig):
    """Route calls Vast refuses (429 without ``Retry-After``, which Vast documents none of;
    400; 401) wait this back-off; a ``Retry-After`` is honoured up to ``max_retry_after_s``."""

    max_retry_after_s: float = Field(60.0, gt=0, le=3600)


class BatchConfig(Model):
    max_jobs: int = Field(32, gt=0, le=4096)
    max_cost: float = Field(1e9, gt=0)
    linger_ms: float = Field(0.0, ge=0, le=10_000)


class LeaseConfig(Model):
    ttl_s: float = Field(300.0, gt=0)
    idle_close_s: float = Field(2.0, gt=0)
    # An idle lease on a spare worker (running nothing while another, used later, is leased
    # and nothing waits) closes after this long instead: its session is load on the worker
    # that Vast scales on. Capped by idle_close_s.
    spare_close_s: float = Field(0.5, gt=0)
    # The lifetime a lease's Vast session is opened with at least; longer when the jobs at hand
    # need it (a quiet session cuts a job running past creation + 2 lifetimes).
    session_lifetime_s: float = Field(120.0, gt=0)
    # A session whose /session/end is lost frees its worker within this long (plus the
    # worker's 5 s sweep, and at least 2 lifetimes + 5 s): every request start moves the
    # worker's expiry one lifetime on, and no job starts on a session past this bound (a new
    # session takes over, renewed from a kept route answer: ``core.kept_answers``). A lifetime
    # covers half the jobs' longest deadline (5 min by default: ~160 s), so a bound of N
    # lifetimes is about N jobs per session. 24 h: ~550 starts. 6 h (~135) measured as 24 h on
    # the batching bench (f) once renewals stopped costing a route call, but not on (b)
    # (sharing workers at ~50 jobs/s: p99 0.36-0.77x the official client's against 0.36x,
    # twice the route calls); 1 h (~21) made a batching worker at 35 jobs/s renew every 0.4 s,
    # faster than ended sessions gave their answers back (warm (f2) 0.62-0.71x throughput).
    session_end_bound_s: float = Field(86400.0, gt=0)
    # A /session/end that failed its quick tries (the network, the worker busy restarting) is
    # tried again after this long, doubling up to 10x, until the worker has ended the session
    # by its expiry: a worker back within minutes is freed within minutes, not at the bound.
    session_end_retry_s: float = Field(30.0, gt=0, le=3600)
    min_budget_fraction: float = Field(0.05, gt=0, le=1)
    sequential_rest_s: float = Field(0.1, ge=0, le=10)

    @model_validator(mode="after")
    def _lifetime_covers_idle(self) -> LeaseConfig:
        if self.session_lifetime_s <= self.idle_close_s:
            raise ValueError("session_lifetime_s must be > idle_close_s")
        if self.session_end_bound_s < 2 * self.session_lifetime_s:
            raise ValueError("session_end_bound_s must be >= 2 x session_lifetime_s")
        return self


class RetryBudgetConfig(Model):
    ratio: float = Field(0.2, ge=0, le=10)
    min_retries: int = Field(10, ge=0)
    window_s: float = Field(10.0, gt=0)


class EjectionConfig(Model):
    consecutive_failures: int = Field(5, gt=0)
    base_s: float = Field(5.0, gt=0)
    max_s: float = Field(60.0, gt=0)


class PlacementConfig(Model):
    # Optional: a busy worker takes a job only if it would finish within this long at its
    # measured rate, on top of its concurrency limit. None (the default): the limit decides.
    horizon_s: float | None = Field(None, gt=0, le=3600)
    # While jobs wait for a busy worker, one batch is still routed this often (new workers);
    # doubled, up to 16x, while the answers name only workers already at their limit.
    held_route_interval_s: float = Field(0.5, gt=0, le=3600)


class CapacityConfig(Model):
    """Per-worker concurrency limits learnt from completions (``scheduler.core.capacity``)."""

    enabled: bool = True  # false: a worker takes what its leases' budgets allow
    initial_limit: int = Field(4, gt=0, le=10_000)
    max_limit: int = Field(256, gt=0, le=10_000)
    startup_gain: float = Field(1.25, gt=1, le=10)
    probe_every: int = Field(8, gt=0, le=10_000)
    probe_step: float = Field(1.25, gt=1, le=10)
    probe_rounds: int = Field(2, gt=0, le=100)
    probe_efficiency: float = Field(0.5, gt=0, le=1)
    probe_up_efficiency: float = Field(0.35, gt=0, le=1)
    congestion_ratio: float = Field(2.0, gt=1, le=100)
    backoff: float = Field(0.7, gt=0, lt=1)
    # The work a worker holds at most, in cost units: a memory-bound batch (a TGI server's
    # max_batch_total_tokens, a vLLM server's KV cache) where the endpoint's cost counts its
    # tokens. Set, a worker takes jobs while their cost fits (the first always), up to
    # max_limit of them, instead of the learnt limit. None: the learnt limit alone.
    max_worker_cost: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _initial_within_max(self) -> CapacityConfig:
        if self.initial_limit > self.max_limit:
            raise ValueError("initial_limit must be <= max_limit")
        return self


class EndpointConfig(Model):
    # This endpoint's own key (the console shows it): beats the account listing's and
    # vast.api_key. Empty (an unset ``${VAR:-}``) means none.
    api_key: SecretStr | None = None
    default_route: str = "/generate"
    queue: QueueConfig = QueueConfig()
    cost: CostConfig = CostConfig()
    routes: dict[str, CostConfig] = Field(default_factory=dict)  # per worker route estimators
    poll: PollConfig = PollConfig()
    default_timeout_s: float = Field(300.0, gt=0)
    max_timeout_s: float = Field(3600.0, gt=0)
    max_attempts: int = Field(5, gt=0, le=100)
    # Jobs routing or running at once; None (the default): bounded by the leases and the
    # workers' concurrency limits alone.
    max_concurrency: int | None = Field(None, gt=0)
    reuse: Literal["auto", "session", "sequential", "never"] = "auto"
    batch: BatchConfig = BatchConfig()
    lease: LeaseConfig = LeaseConfig()
    max_route_inflight: int = Field(4, gt=0, le=256)
    route_rate_per_s: float = Field(10.0, gt=0)
    route_burst: int = Field(10, gt=0)
    route_backoff: RouteBackoffConfig = RouteBackoffConfig()
    # A worker's 429 (its queue is past max_queue_time): no job goes to it for this back-off.
    worker_backoff: BackoffConfig = BackoffConfig(initial_s=0.5, max_s=15.0)
    idempotent: bool = False  # 5xx and timeouts may be retried elsewhere
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()
    ejection: EjectionConfig = EjectionConfig()
    placement: PlacementConfig = PlacementConfig()
    capacity: CapacityConfig = CapacityConfig()
    # The queue's own rule (finite, > 0), so check-config refuses what start-up would.
    tenant_weights: dict[str, TenantWeight] = Field(default_factory=dict)
    refuse_unmeetable_deadlines: bool = False
    max_caller_sessions: int = Field(1024, gt=0, le=100_000)  # open at once, per endpoint

    @model_validator(mode="after")
    def _timeouts(self) -> EndpointConfig:
        if self.default_timeout_s > self.max_timeout_s:
            raise ValueError("default_timeout_s must be <= max_timeout_s")
        return self

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value().strip() else None

    @field_validator("default_route")
    @classmethod
    def _route_is_path(cls, value: str) -> str:
        if not value.startswith("/") or value.startswith("//"):
            raise ValueError("must be a path starting with a single '/'")
        return value
