"""The daemon's sections: server, Vast, store, logging, metrics, auth, and the whole file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from scheduler.config.base import EMBEDDED, EMULATOR_KEY, Model
from scheduler.config.endpoint import ENDPOINT_NAME, EndpointConfig
from scheduler.emulator.settings import EmulatorConfig
from scheduler.vast.networks import WorkerNetworks

AUTH_OPENABLE_PATHS = ("/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/status")
TOKEN_MIN_CHARS = 16
TENANT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


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
    # The account key (``vastai set api-key``, ``VAST_API_KEY``): with it the daemon lists the
    # account's endpoints on the console and learns each endpoint's id, key and settings, as
    # the official client does. Empty (an unset ``${VAST_API_KEY:-}``) means none.
    account_api_key: SecretStr | None = None
    account_api_key_file: Path | None = None  # like api_key_file
    # One endpoint key for every endpoint (the embedded emulator's, or an old config's): used
    # only where there is no account key and no ``endpoints.<name>.api_key``.
    api_key: SecretStr = SecretStr(EMULATOR_KEY)
    # Read once at start (e.g. a mounted secret), instead of api_key; setting both is an error.
    api_key_file: Path | None = None
    # Endpoint keys from the listing are fetched again this often (the official client: 3
    # days), and at once when a route call answers 401, at most once per min interval.
    key_refresh_interval_s: float = Field(3 * 24 * 3600.0, gt=0)
    key_refresh_min_interval_s: float = Field(30.0, ge=0)
    console_timeout_s: float = Field(30.0, gt=0)
    # Workers as Vast sees them (get_endpoint_workers) are asked for this often, and only
    # while someone reads the status or jobs wait.
    endpoint_workers_interval_s: float = Field(10.0, gt=0)
    ca_bundle: Path | None = None
    # Vast's console: the account's endpoint listing and Vast's TLS root. With the embedded
    # emulator, the emulator serves both and this is ignored.
    console_url: str = "https://console.vast.ai"
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
    def _keys_from_files(cls, data: Any) -> Any:
        for field in ("api_key", "account_api_key"):
            data = _key_from_file(data, field)
        return data

    @field_validator("account_api_key")
    @classmethod
    def _empty_account_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value().strip() else None

    @field_validator("autoscaler_url")
    @classmethod
    def _url_or_embedded(cls, value: str) -> str:
        if value == EMBEDDED:
            return value
        return _http_url(value, "must be 'embedded' or an http(s) URL")

    @field_validator("console_url")
    @classmethod
    def _console_url(cls, value: str) -> str:
        return _http_url(value, "must be an http(s) URL")

    @property
    def real_api_key(self) -> bool:
        """``api_key`` is a key of Vast's (not empty, not the emulator's)."""
        return self.api_key.get_secret_value() not in ("", EMULATOR_KEY)

    @field_validator("ca_bundle")
    @classmethod
    def _bundle_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value


def _key_from_file(data: Any, field: str) -> Any:
    """``<field>_file`` read once into ``<field>``; setting both is an error."""
    file_field = f"{field}_file"
    if not isinstance(data, dict) or not data.get(file_field):
        return data
    if field in data:
        raise ValueError(f"set {field} or {file_field}, not both")
    path = Path(str(data[file_field]))
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{file_field}: cannot read {path}: {exc.strerror}") from exc
    return {**data, field: key}


def _http_url(value: str, problem: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(problem)
    return value.rstrip("/")


class RedisConfig(Model):
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")  # may carry a password: a secret
    key_prefix: str = Field("vast-scheduler", pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    # A claimed job not touched for this long is taken over by another replica (XAUTOCLAIM).
    visibility_timeout_s: float = Field(30.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    socket_timeout_s: float = Field(5.0, gt=0)
    max_connections: int = Field(64, gt=1)
    retries: int = Field(5, ge=0)  # per command, with exponential back-off, before giving up
    # Record each replica's open Vast sessions in Redis, so that another replica ends the ones a
    # killed replica left (store.session_journal is the memory store's file).
    session_journal: bool = True


class StoreConfig(Model):
    backend: Literal["memory", "redis"] = "memory"
    redis: RedisConfig = RedisConfig()
    # This replica's consumer name in Redis; default: host name, process id and a random tag.
    replica_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    # Jobs a replica claims ahead of what it runs (redis); more: fewer claims, less sharing.
    prefetch: int = Field(32, gt=0)
    # memory: the file where the daemon records its open Vast sessions, so that the next start
    # ends the ones a killed process left (else each holds a worker's session slot and its
    # declared load until the worker's own expiry, up to lease.session_end_bound_s). One
    # daemon per file. redis: ignored (redis.session_journal records them in Redis, where a
    # replica's are ended by another once its heartbeat, redis.visibility_timeout_s, lapses).
    session_journal: Path | None = None


class LoggingConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    access_log: bool = True


class MetricsConfig(Model):
    enabled: bool = True


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

    @model_validator(mode="after")
    def _every_endpoint_has_a_key(self) -> AppConfig:
        """On real Vast each endpoint needs a key source: its own ``api_key``, the account
        key (the listing gives it; an endpoint the account lacks is caught online), or a real
        ``vast.api_key``. The embedded emulator takes its own key."""
        if self.embedded or self.vast.account_api_key is not None or self.vast.real_api_key:
            return self
        keyless = sorted(name for name, ep in self.endpoints.items() if ep.api_key is None)
        if keyless:
            raise ValueError(
                "vast.account_api_key: a real Vast key is required: set vast.account_api_key "
                "(your account key, VAST_API_KEY) or an endpoint key (endpoints.<name>.api_key "
                f"or vast.api_key); endpoints without one: {keyless}"
            )
        return self

    @property
    def embedded(self) -> bool:
        return self.vast.autoscaler_url == EMBEDDED
