"""Typed configuration: YAML + ${ENV} interpolation, validated once, frozen.

Every problem is reported with its YAML path (``endpoints.llm.queue.max_depth: must be > 0``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from scheduler.emulator.settings import EmulatorConfig
from scheduler.vast.networks import WorkerNetworks

ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
EMBEDDED = "embedded"
EMULATOR_KEY = "local-emulator-key"
TenantWeight = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class ConfigError(Exception):
    """A config file that cannot be used; ``problems`` holds one ``path: message`` per error."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebhookConfig(Model):
    secret: SecretStr | None = None  # empty means webhooks are off

    @field_validator("secret")
    @classmethod
    def _empty_is_off(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
    max_attempts: int = Field(5, gt=0, le=20)
    timeout_s: float = Field(5.0, gt=0)
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)


class ServerConfig(Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(1_048_576, gt=0)
    max_json_depth: int = Field(64, gt=0, le=1_000)  # deeper request bodies get 400
    max_result_bytes: int = Field(16 * 1_048_576, gt=0)
    grace_period_s: float = Field(30.0, ge=0)
    job_retention_s: float = Field(600.0, gt=0)
    max_jobs_retained: int = Field(100_000, gt=0)
    webhook: WebhookConfig = WebhookConfig()


class VastConfig(Model):
    autoscaler_url: str = EMBEDDED
    api_key: SecretStr = SecretStr(EMULATOR_KEY)
    # Read once at start (e.g. a mounted secret), instead of api_key; setting both is an error.
    api_key_file: Path | None = None
    ca_bundle: Path | None = None
    route_timeout_s: float = Field(10.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    worker_read_timeout_s: float = Field(600.0, gt=0)
    replay_timeout_s: float = Field(60.0, gt=0)
    max_connections: int = Field(256, gt=0)
    max_connections_per_worker: int = Field(64, gt=0)
    # Where route answers may send jobs: CIDRs (IPv4/IPv6; a bare IP is /32 or /128) or exact
    # host names, never resolved (scheduler.vast.networks). None, the default: any host. An
    # answer naming a worker outside is a route error (backed off, routed again), never used.
    worker_networks: tuple[str, ...] | None = None

    @field_validator("worker_networks")
    @classmethod
    def _networks_parse(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("list at least one network, or leave it unset to allow any host")
        if value is not None:
            WorkerNetworks.parse(value)  # ValueError names the bad entry and why
        return value

    @model_validator(mode="before")
    @classmethod
    def _key_from_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("api_key_file"):
            return data
        if "api_key" in data:
            raise ValueError("set api_key or api_key_file, not both")
        path = Path(str(data["api_key_file"]))
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"api_key_file: cannot read {path}: {exc.strerror}") from exc
        return {**data, "api_key": key}

    @field_validator("autoscaler_url")
    @classmethod
    def _url_or_embedded(cls, value: str) -> str:
        if value == EMBEDDED:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be 'embedded' or an http(s) URL")
        return value.rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _real_key_for_real_vast(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        url = info.data.get("autoscaler_url", EMBEDDED)
        if url != EMBEDDED and value.get_secret_value() in ("", EMULATOR_KEY):
            raise ValueError("a real Vast endpoint API key is required")
        return value

    @field_validator("ca_bundle")
    @classmethod
    def _bundle_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value


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


class PollConfig(Model):
    """Back-off of the one poller an endpoint runs while Vast has no worker ready."""

    initial_s: float = Field(0.25, gt=0)
    max_s: float = Field(1.0, gt=0)
    multiplier: float = Field(2.0, ge=1, le=10)
    max_cost: float = Field(1e6, gt=0)  # cap on the backlog cost a poll declares

    @model_validator(mode="after")
    def _range(self) -> PollConfig:
        if self.initial_s > self.max_s:
            raise ValueError("initial_s must be <= max_s")
        return self


class BatchConfig(Model):
    max_jobs: int = Field(16, gt=0, le=4096)
    max_cost: float = Field(1e9, gt=0)
    linger_ms: float = Field(0.0, ge=0, le=10_000)


class LeaseConfig(Model):
    ttl_s: float = Field(300.0, gt=0)
    idle_close_s: float = Field(30.0, gt=0)
    session_lifetime_s: float = Field(120.0, gt=0)
    min_budget_fraction: float = Field(0.05, gt=0, le=1)
    sequential_rest_s: float = Field(0.1, ge=0, le=10)

    @model_validator(mode="after")
    def _lifetime_covers_idle(self) -> LeaseConfig:
        if self.session_lifetime_s <= self.idle_close_s:
            raise ValueError("session_lifetime_s must be > idle_close_s")
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
    # A busy worker takes a job only if it would finish within this long at its measured rate;
    # longer for workers whose throughput grows with concurrency (batching inference servers).
    horizon_s: float = Field(0.1, gt=0, le=3600)
    # While jobs wait for a busy worker, one batch is still routed this often (new workers).
    held_route_interval_s: float = Field(2.0, gt=0, le=3600)


class EndpointConfig(Model):
    default_route: str = "/generate"
    queue: QueueConfig = QueueConfig()
    cost: CostConfig = CostConfig()
    routes: dict[str, CostConfig] = Field(default_factory=dict)  # per worker route estimators
    poll: PollConfig = PollConfig()
    default_timeout_s: float = Field(300.0, gt=0)
    max_timeout_s: float = Field(3600.0, gt=0)
    max_attempts: int = Field(5, gt=0, le=100)
    max_concurrency: int = Field(64, gt=0)
    reuse: Literal["auto", "session", "sequential", "never"] = "auto"
    batch: BatchConfig = BatchConfig()
    lease: LeaseConfig = LeaseConfig()
    max_route_inflight: int = Field(4, gt=0, le=256)
    route_rate_per_s: float = Field(10.0, gt=0)
    route_burst: int = Field(10, gt=0)
    idempotent: bool = False  # 5xx and timeouts may be retried elsewhere
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()
    ejection: EjectionConfig = EjectionConfig()
    placement: PlacementConfig = PlacementConfig()
    # The queue's own rule (finite, > 0), so check-config refuses what start-up would.
    tenant_weights: dict[str, TenantWeight] = Field(default_factory=dict)
    refuse_unmeetable_deadlines: bool = False
    max_caller_sessions: int = Field(1024, gt=0, le=100_000)  # open at once, per endpoint

    @model_validator(mode="after")
    def _timeouts(self) -> EndpointConfig:
        if self.default_timeout_s > self.max_timeout_s:
            raise ValueError("default_timeout_s must be <= max_timeout_s")
        return self

    @field_validator("default_route")
    @classmethod
    def _route_is_path(cls, value: str) -> str:
        if not value.startswith("/") or value.startswith("//"):
            raise ValueError("must be a path starting with a single '/'")
        return value


class RedisConfig(Model):
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")  # may carry a password: a secret
    key_prefix: str = Field("vast-scheduler", pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    # A claimed job not touched for this long is taken over by another replica (XAUTOCLAIM).
    visibility_timeout_s: float = Field(30.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    socket_timeout_s: float = Field(5.0, gt=0)
    max_connections: int = Field(64, gt=1)
    retries: int = Field(5, ge=0)  # per command, with exponential back-off, before giving up


class StoreConfig(Model):
    backend: Literal["memory", "redis"] = "memory"
    redis: RedisConfig = RedisConfig()
    # This replica's consumer name in Redis; default: host name, process id and a random tag.
    replica_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    # Jobs a replica claims ahead of what it runs (redis); more: fewer claims, less sharing.
    prefetch: int = Field(32, gt=0)


class LoggingConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    access_log: bool = True


class MetricsConfig(Model):
    enabled: bool = True


AUTH_OPENABLE_PATHS = ("/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/status")
TOKEN_MIN_CHARS = 16
TENANT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class TokenConfig(Model):
    """One caller: its tenant name, its bearer token, what it may use and how much it may queue.

    An empty ``token`` (an unset ``${VAR:-}``) turns the entry off: that tenant gets 401.
    """

    name: str  # the tenant its jobs count against
    token: SecretStr | None
    endpoints: Literal["*"] | tuple[str, ...] = "*"
    max_queued_jobs: int | None = Field(None, gt=0)
    max_queued_cost: float | None = Field(None, gt=0, allow_inf_nan=False)
    admin: bool = False  # may use /v1/admin/* (config reload)

    @field_validator("name")
    @classmethod
    def _tenant_name(cls, value: str) -> str:
        if not TENANT_NAME.fullmatch(value):
            raise ValueError("letters, digits, . _ - (1-64 characters)")
        return value

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        secret = "" if value is None else value.get_secret_value()
        if not secret:
            return None
        if len(secret) < TOKEN_MIN_CHARS:
            raise ValueError(f"must be at least {TOKEN_MIN_CHARS} characters")
        if any(c.isspace() or not c.isprintable() for c in secret):
            raise ValueError("must be printable, with no whitespace")
        return value


class AuthConfig(Model):
    """Bearer tokens. On unless ``enabled: false`` is written; on with no token denies all."""

    enabled: bool = True
    open_paths: tuple[str, ...] = ("/healthz", "/readyz", "/metrics")
    tokens: tuple[TokenConfig, ...] = ()

    @field_validator("open_paths")
    @classmethod
    def _known_paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(AUTH_OPENABLE_PATHS))
        if unknown:
            raise ValueError(f"{unknown} cannot be open; choose from {list(AUTH_OPENABLE_PATHS)}")
        return value

    @field_validator("tokens")
    @classmethod
    def _unique(cls, value: tuple[TokenConfig, ...]) -> tuple[TokenConfig, ...]:
        names = [t.name for t in value]
        if len(set(names)) != len(names):
            raise ValueError("token names (tenants) must be unique")
        secrets = [t.token.get_secret_value() for t in value if t.token is not None]
        if len(set(secrets)) != len(secrets):
            raise ValueError("two entries share one token")
        return value

    def warnings(self) -> list[str]:
        """What an operator should hear at start: auth off, or callers locked out."""
        if not self.enabled:
            return ["auth.enabled is false: every caller is trusted and X-Tenant names tenants"]
        unset = [f"auth.tokens.{i}.token is empty: tenant {t.name} is off"
                 for i, t in enumerate(self.tokens) if t.token is None]  # fmt: skip
        if len(unset) == len(self.tokens):
            unset.append("auth is on with no token set: every protected path answers 401")
        return unset


class AppConfig(Model):
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    vast: VastConfig = VastConfig()
    emulator: EmulatorConfig = EmulatorConfig()
    endpoint_defaults: EndpointConfig = EndpointConfig()
    endpoints: dict[str, EndpointConfig] = Field(default_factory=dict)
    store: StoreConfig = StoreConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()

    @field_validator("endpoints")
    @classmethod
    def _endpoint_names(cls, value: dict[str, EndpointConfig]) -> dict[str, EndpointConfig]:
        for name in value:
            if not ENDPOINT_NAME.fullmatch(name):
                raise ValueError(f"bad endpoint name {name!r}: use letters, digits, . _ -")
        return value

    @model_validator(mode="after")
    def _token_endpoints_exist(self) -> AppConfig:
        for index, token in enumerate(self.auth.tokens):
            unknown = (
                [] if token.endpoints == "*" else sorted(set(token.endpoints) - {*self.endpoints})
            )
            if unknown:
                raise ValueError(f"auth.tokens.{index}.endpoints: not configured: {unknown}")
        return self

    @property
    def embedded(self) -> bool:
        return self.vast.autoscaler_url == EMBEDDED


ENDPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def interpolate(node: Any, path: str, problems: list[str], env: Mapping[str, str]) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(node, dict):
        return {k: interpolate(v, join_path(path, str(k)), problems, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, join_path(path, str(i)), problems, env) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        problems.append(f"{path or '<root>'}: environment variable {name} is not set")
        return ""

    return ENV_PATTERN.sub(substitute, node)


def join_path(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "literal_error": "must be one of {expected}",
}


_PATH_PREFIXED = re.compile(r"[A-Za-z0-9_.-]+: ")


def format_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in error["loc"])
        template = _MESSAGES.get(error["type"])
        ctx = error.get("ctx") or {}
        message = template.format(**ctx) if template else str(error["msg"])
        message = message.removeprefix("Value error, ")
        if not path and _PATH_PREFIXED.match(message):  # a cross-section check names its path
            problems.append(message)
            continue
        problems.append(f"{join_path(prefix, path) or '<root>'}: {message}")
    return problems


def apply_endpoint_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    defaults = raw.get("endpoint_defaults") or {}
    endpoints = raw.get("endpoints")
    if not isinstance(defaults, Mapping) or not isinstance(endpoints, Mapping):
        return raw
    merged = {
        name: deep_merge(defaults, ep or {}) if isinstance(ep, Mapping | None) else ep
        for name, ep in endpoints.items()
    }
    return {**raw, "endpoints": merged}


def parse_config(text: str, env: Mapping[str, str] | None = None) -> AppConfig:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"<root>: not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError(["<root>: must be a mapping"])
    problems: list[str] = []
    raw = interpolate(raw, "", problems, os.environ if env is None else env)
    try:
        config = AppConfig.model_validate(apply_endpoint_defaults(raw))
    except ValidationError as exc:
        problems.extend(format_errors(exc))
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> AppConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"<file>: cannot read {path}: {exc.strerror}"]) from exc
    return parse_config(text, env)
