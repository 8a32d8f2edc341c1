"""Typed configuration: YAML + ${ENV} interpolation, validated once, frozen.

``base`` (model base, errors), ``endpoint`` (the endpoint section), ``daemon`` (the other
sections and the whole file), ``loading`` (reading, interpolation, validation).
"""

from scheduler.config.base import EMBEDDED, EMULATOR_KEY, ConfigError, Model
from scheduler.config.daemon import (
    AUTH_OPENABLE_PATHS,
    TENANT_NAME,
    TOKEN_MIN_CHARS,
    AppConfig,
    AuthConfig,
    LoggingConfig,
    MetricsConfig,
    RedisConfig,
    ServerConfig,
    StoreConfig,
    TokenConfig,
    VastConfig,
    WebhookConfig,
)
from scheduler.config.endpoint import (
    ENDPOINT_NAME,
    BatchConfig,
    CapacityConfig,
    CostConfig,
    EjectionConfig,
    EndpointConfig,
    LeaseConfig,
    PlacementConfig,
    PollConfig,
    QueueConfig,
    RetryBudgetConfig,
)
from scheduler.config.loading import load_config, parse_config

__all__ = [
    "AUTH_OPENABLE_PATHS",
    "EMBEDDED",
    "EMULATOR_KEY",
    "ENDPOINT_NAME",
    "TENANT_NAME",
    "TOKEN_MIN_CHARS",
    "AppConfig",
    "AuthConfig",
    "BatchConfig",
    "CapacityConfig",
    "ConfigError",
    "CostConfig",
    "EjectionConfig",
    "EndpointConfig",
    "LeaseConfig",
    "LoggingConfig",
    "MetricsConfig",
    "Model",
    "PlacementConfig",
    "PollConfig",
    "QueueConfig",
    "RedisConfig",
    "RetryBudgetConfig",
    "ServerConfig",
    "StoreConfig",
    "TokenConfig",
    "VastConfig",
    "WebhookConfig",
    "load_config",
    "parse_config",
]
