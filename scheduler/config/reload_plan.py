"""Which changes a config reload may apply live. Pure: ``plan_reload(old, new)`` compares two
validated configs and returns a ``Plan`` (what applies live) or ``Refused`` (each setting that
needs a restart, by its YAML path); ``scheduler.api.reload`` reads the file and applies it.

* Live: new endpoints; every setting of an existing endpoint (queue, cost and per-route
  estimators, limits, batch, poll, lease, rate, retry budget, ejection, tenant weights,
  attempts, timeouts, reuse); ``endpoint_defaults`` (through the endpoints it fills in);
  ``auth.tokens`` (add, rotate or revoke tokens, quotas, the ``admin`` flag).
* Restart: everything else (``server``, ``vast``, ``emulator``, ``store``, ``logging``,
  ``metrics``, ``auth.enabled``, ``auth.open_paths``), and removing an endpoint: its queued
  and running jobs would be lost. A setting not known to be live needs a restart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import SecretStr

from scheduler.config.daemon import AppConfig

RESTART = "changing it needs a restart"
REMOVAL = "removing an endpoint needs a restart (its queued and running jobs would be lost)"
LIVE_SECTIONS = frozenset({"endpoints", "endpoint_defaults"})
LIVE_PATHS = frozenset({("auth", "tokens")})
MAX_VALUE_CHARS = 80


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()
Keys = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Difference:
    keys: Keys
    old: Any
    new: Any

    @property
    def path(self) -> str:
        return ".".join(self.keys)


@dataclass(frozen=True, slots=True)
class Plan:
    """A change that applies live; ``changes`` never shows a secret's value."""

    config: AppConfig
    changes: tuple[str, ...]
    added_endpoints: tuple[str, ...]
    updated_endpoints: tuple[str, ...]
    tokens_changed: bool


RefusalCode = Literal["restart_required", "invalid_config", "reload_unavailable"]


@dataclass(frozen=True, slots=True)
class Refused:
    """Nothing was applied; ``problems`` holds one ``path: message`` each."""

    problems: tuple[str, ...]
    code: RefusalCode = "restart_required"


def plan_reload(old: AppConfig, new: AppConfig) -> Plan | Refused:
    diffs = differences(old.model_dump(), new.model_dump(), ())
    refusals = [r for d in diffs if (r := refusal(d)) is not None]
    if refusals:
        return Refused(tuple(refusals))
    return Plan(
        config=new,
        changes=tuple(describe(d) for d in diffs),
        added_endpoints=tuple(n for n in new.endpoints if n not in old.endpoints),
        updated_endpoints=tuple(
            n for n, ep in new.endpoints.items() if n in old.endpoints and old.endpoints[n] != ep
        ),
        tokens_changed=old.auth.tokens != new.auth.tokens,
    )


def differences(old: Any, new: Any, keys: Keys) -> list[Difference]:
    """Leaf differences between two dumped configs; mappings are compared key by key."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found: list[Difference] = []
        for key in [*old, *(k for k in new if k not in old)]:
            found += differences(old.get(key, MISSING), new.get(key, MISSING), (*keys, str(key)))
        return found
    return [] if old == new else [Difference(keys, old, new)]


def refusal(diff: Difference) -> str | None:
    """Why ``diff`` cannot apply live, or None if it can."""
    if diff.keys[0] == "endpoints" and len(diff.keys) == 2 and diff.new is MISSING:
        return f"{diff.path}: {REMOVAL}"
    if diff.keys[0] in LIVE_SECTIONS or diff.keys[:2] in LIVE_PATHS:
        return None
    return f"{diff.path}: {RESTART}"


def describe(diff: Difference) -> str:
    if diff.old is MISSING:
        return f"{diff.path}: added"
    if diff.new is MISSING:
        return f"{diff.path}: removed"
    if holds_secret(diff.old) or holds_secret(diff.new):
        return f"{diff.path}: changed"
    return f"{diff.path}: {render(diff.old)} -> {render(diff.new)}"


def holds_secret(value: Any) -> bool:
    if isinstance(value, SecretStr):
        return True
    if isinstance(value, Mapping):
        return any(holds_secret(v) for v in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return any(holds_secret(v) for v in value)
    return False


def render(value: Any) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def split_problem(problem: str) -> tuple[str, str]:
    """``"endpoints.a.x: must be > 0"`` -> ``("endpoints.a.x", "must be > 0")``."""
    field, sep, message = problem.partition(": ")
    return (field, message) if sep else ("<root>", problem)
