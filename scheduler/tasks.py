"""Background tasks kept in a set, so that they can be cancelled and awaited on the way out
(asyncio keeps only a weak reference to a running task)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import structlog

T = TypeVar("T")
log = structlog.get_logger("scheduler.tasks")


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


# A cancelled task that still runs this long after its cancel is cancelled again; one still
# running after CANCEL_GIVE_UP_S is logged and left behind (the way out goes on).
CANCEL_REPEAT_S = 1.0
CANCEL_GIVE_UP_S = 5.0


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]],
    repeat_s: float = CANCEL_REPEAT_S,
    give_up_s: float = CANCEL_GIVE_UP_S,
) -> None:
    """Cancel ``tasks`` and wait until they end. A library may swallow a cancellation that
    lands mid-call (redis-py's asyncio client does, rarely: redis/redis-py#2028): the task
    then goes on, e.g. into its loop's next sleep, and a single ``cancel`` plus ``gather``
    waits for ever. Seen as about one Redis replica stop in 50 hanging in its shutdown."""
    loop = asyncio.get_running_loop()
    pending = {task for task in tasks if not task.done()}
    deadline = loop.time() + give_up_s
    first = True
    while pending:
        if not first:
            log.info("task.cancel_repeated", tasks=sorted(t.get_name() for t in pending))
        first = False
        for task in pending:
            task.cancel()
        left_s = deadline - loop.time()
        if left_s <= 0:
            log.error("task.not_cancelled", tasks=sorted(t.get_name() for t in pending),
                      after_s=give_up_s)  # fmt: skip
            return
        done, pending = await asyncio.wait(pending, timeout=min(repeat_s, left_s))
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: asyncio does not log it as never retrieved
