"""Background tasks kept in a set, so that they can be cancelled and awaited on the way out
(asyncio keeps only a weak reference to a running task)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def spawn(
    coro: Coroutine[Any, Any, T],
    into: set[asyncio.Task[T]],
    name: str,
    *on_done: Callable[[asyncio.Task[T]], object],
) -> asyncio.Task[T]:
    """Start ``coro`` as a task held in ``into`` until it ends; ``on_done`` run after that."""
    task = asyncio.create_task(coro, name=name)
    into.add(task)
    task.add_done_callback(into.discard)
    for callback in on_done:
        task.add_done_callback(callback)
    return task
