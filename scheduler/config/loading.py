"""Reading a config file: YAML, ``${ENV}`` interpolation, endpoint defaults, one validation.

Every problem is reported with its YAML path (``endpoints.llm.queue.max_depth: must be > 0``).
``check-config`` and start-up both call ``load_config``: one rule, one place.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from scheduler.config.base import ConfigError
from scheduler.config.daemon import AppConfig

ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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
