"""Cost estimation: the workload units a job will cost on a worker. Pure."""

from __future__ import annotations

import math
from typing import Any

from scheduler.config import CostConfig


def lookup(payload: Any, dotted: str) -> Any:
    node = payload
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def estimate(config: CostConfig, payload: Any) -> float:
    if config.estimator == "field" and config.field is not None:
        found = as_number(lookup(payload, config.field))
        raw = config.default if found is None else found * config.scale
    else:
        raw = config.value
    return clamp(raw, config)


def clamp(value: float, config: CostConfig) -> float:
    return min(config.max, max(config.min, value))


def resolve(config: CostConfig, payload: Any, caller_cost: float | None) -> float:
    """The job's cost, honouring the endpoint's policy for a caller-supplied ``cost``."""
    if caller_cost is None or config.caller_cost == "ignore":
        return estimate(config, payload)
    if config.caller_cost == "clamp":
        return clamp(caller_cost, config)
    return caller_cost
