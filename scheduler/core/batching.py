"""Forming a batch for one route call. Pure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_jobs: int = 16
    max_cost: float = 1e9


def take_batch(
    peek: Callable[[], tuple[str, float] | None],
    pop: Callable[[], str | None],
    limits: BatchLimits,
) -> tuple[list[str], float]:
    """Pops jobs while they fit; the first job is always taken even if it alone is too costly
    (it must run somehow; the route call then declares its true cost)."""
    taken: list[str] = []
    total = 0.0
    while len(taken) < limits.max_jobs:
        head = peek()
        if head is None:
            break
        _, cost = head
        if taken and total + cost > limits.max_cost:
            break
        job_id = pop()
        if job_id is None:
            break
        taken.append(job_id)
        total += cost
    return taken, total
