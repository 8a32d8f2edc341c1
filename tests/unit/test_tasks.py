"""``cancel_and_wait``: the way out ends tasks even when a library swallowed a cancellation
(redis-py's asyncio client can, rarely: the session reaper of a Redis replica was then seen
asleep in its loop, 'cancelling', and the shutdown waited for ever)."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from scheduler.tasks import cancel_and_wait


async def loop_that_swallows(to_swallow: list[int]) -> None:
    """A background loop whose awaited call eats cancels while ``to_swallow[0]`` > 0."""
    while True:
        try:
            await asyncio.sleep(0.05)  # the library call, where the loop spends its time
        except asyncio.CancelledError:
            if to_swallow[0] <= 0:
                raise
            to_swallow[0] -= 1
        await asyncio.sleep(0)


async def test_a_task_that_swallowed_its_cancel_is_cancelled_again() -> None:
    to_swallow = [1]
    task = asyncio.create_task(loop_that_swallows(to_swallow), name="reaper")
    await asyncio.sleep(0.03)
    async with asyncio.timeout(10):  # one cancel and a gather would wait for ever
        await cancel_and_wait([task], repeat_s=0.2, give_up_s=5)
    assert task.cancelled()
    assert to_swallow == [0]  # it did swallow one


async def test_a_task_that_never_ends_is_logged_and_left_after_the_bound() -> None:
    to_swallow = [10_000]
    task = asyncio.create_task(loop_that_swallows(to_swallow), name="stubborn")
    await asyncio.sleep(0.03)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with capture_logs() as logs:
        await cancel_and_wait([task], repeat_s=0.1, give_up_s=0.5)
    assert 0.5 <= loop.time() - started < 3
    assert not task.done()
    events = [e for e in logs if e["event"] == "task.not_cancelled"]
    assert [e["tasks"] for e in events] == [["stubborn"]]
    to_swallow[0] = 0  # the test's own clean-up
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_tasks_that_end_at_once_are_waited_for_without_delay() -> None:
    tasks = [asyncio.create_task(asyncio.sleep(10)) for _ in range(3)]
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await cancel_and_wait(tasks, repeat_s=1.0, give_up_s=5)
    assert all(t.cancelled() for t in tasks)
    assert loop.time() - started < 0.5
