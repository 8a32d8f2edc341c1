"""The session journal file (``store.session_journal``) and the reaper that ends what a killed
process left in it (``dispatch.left_sessions``)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from scheduler.dispatch.left_sessions import RETRY_FIRST_S, JournaledForwarder, SessionReaper
from scheduler.observability.metrics import Metrics
from scheduler.store.session_journal import (
    COMPACT_MIN_LINES,
    FileSessionJournal,
    JournalUnavailable,
    SessionRecord,
    read_journal,
)
from scheduler.vast.types import Ready, WorkerGone


def record(n: int, opened_wall: float = 1000.0) -> SessionRecord:
    auth = {"url": f"http://127.0.0.1:{9000 + n}", "cost": 100.0, "signature": f"sig-{n}"}
    return SessionRecord(f"s{n}", auth["url"], 100.0, n, n, auth, opened_wall)


# (True, n): session n opened; (False, n): session n ended (a no-op unless open)
operations = st.lists(st.tuples(st.booleans(), st.integers(0, 30)), max_size=400)


@settings(max_examples=60, deadline=None)
@given(ops=operations)
def test_a_restart_finds_exactly_the_sessions_left_open(ops: list[tuple[bool, int]]) -> None:
    """Whatever the opens and ends (compactions included), a process that starts after one
    killed (no close) takes over exactly the sessions opened and not ended, once."""

    async def scenario(path: Path) -> None:
        first = FileSessionJournal(path)
        await first.start()
        open_now: set[str] = set()
        for opened, n in ops:
            if opened:
                await first.opened(record(n))
                open_now.add(f"s{n}")
            else:
                await first.ended(f"s{n}")
                open_now.discard(f"s{n}")
        await first.close()  # writes nothing: as if killed here
        second = FileSessionJournal(path)
        await second.start()
        left = await second.take_over()
        assert {r.session_id for r in left} == open_now
        assert all(r == record(int(r.session_id[1:])) for r in left)
        assert await second.take_over() == []  # handed over once
        await second.close()  # killed before ending any: a third start finds them all again
        third = FileSessionJournal(path)
        await third.start()
        assert {r.session_id for r in await third.take_over()} == open_now
        await third.close()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(scenario(Path(directory) / "sessions.jsonl"))


async def test_the_file_is_compacted_once_ended_sessions_dominate(tmp_path: Path) -> None:
    path = tmp_path / "sessions.jsonl"
    journal = FileSessionJournal(path)
    await journal.start()
    await journal.opened(record(0))
    for n in range(1, 4 * COMPACT_MIN_LINES):
        await journal.opened(record(n))
        await journal.ended(f"s{n}")
    await journal.close()
    lines = path.read_text().splitlines()
    assert len(lines) < 2 * COMPACT_MIN_LINES, len(lines)
    assert set(read_journal(path)) == {"s0"}


async def test_a_torn_last_line_and_garbage_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "sessions.jsonl"
    journal = FileSessionJournal(path)
    await journal.start()
    await journal.opened(record(1))
    await journal.opened(record(2))
    await journal.close()
    with path.open("a") as out:
        out.write('[1, 2]\n{"open": {"session_id": "s9"}}\n{"end": "s1"')  # torn: not applied
    assert set(read_journal(path)) == {"s1", "s2"}


async def test_a_second_daemon_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sessions.jsonl"
    first = FileSessionJournal(path)
    await first.start()
    with pytest.raises(JournalUnavailable, match="in use by another daemon"):
        await FileSessionJournal(path).start()
    await first.close()
    second = FileSessionJournal(path)  # free again once the first is gone
    await second.start()
    await second.close()


async def test_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(JournalUnavailable, match="cannot open"):
        await FileSessionJournal(blocker / "sessions.jsonl").start()


class Worker:
    """A worker's ``/session/end`` as the forwarder sees it: unreachable ``down`` times."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.ends: list[str] = []

    def post(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("the reaper sends no jobs")

    async def create_session(self, ready: Ready, lifetime_s: float) -> str:
        return "new"

    async def end_session(self, ready: Ready, session_id: str) -> None:
        self.ends.append(session_id)
        if self.down > 0:
            self.down -= 1
            raise WorkerGone("unreachable")


async def reaper_for(
    tmp_path: Path, worker: Worker, now: list[float], wall: float = 2000.0
) -> tuple[SessionReaper, FileSessionJournal]:
    path = tmp_path / "sessions.jsonl"
    before = FileSessionJournal(path)
    await before.start()
    await before.opened(record(1))
    await before.close()
    journal = FileSessionJournal(path)
    await journal.start()
    metrics = Metrics(CollectorRegistry(), "test")
    forwarder = JournaledForwarder(worker, journal, lambda: wall)
    reaper = SessionReaper(journal, forwarder, metrics, 1.0, lambda: now[0], lambda: wall)
    return reaper, journal


async def test_a_left_session_is_tried_with_back_off_until_its_end_goes_through(
    tmp_path: Path,
) -> None:
    now = [0.0]
    worker = Worker(down=2)
    reaper, journal = await reaper_for(tmp_path, worker, now)
    await reaper.round()  # fails: next try after RETRY_FIRST_S
    now[0] = RETRY_FIRST_S - 0.1
    await reaper.round()
    assert worker.ends == ["s1"]
    now[0] = RETRY_FIRST_S
    await reaper.round()  # fails again: the interval doubles
    now[0] = RETRY_FIRST_S + 2 * RETRY_FIRST_S - 0.1
    await reaper.round()
    assert worker.ends == ["s1", "s1"]
    now[0] += 0.1
    await reaper.round()  # goes through
    assert worker.ends == ["s1", "s1", "s1"]
    await journal.close()
    assert read_journal(tmp_path / "sessions.jsonl") == {}  # struck off
    now[0] += 1000
    await reaper.round()
    assert len(worker.ends) == 3  # never tried again


async def test_a_left_session_is_dropped_once_its_worker_would_have_ended_it(
    tmp_path: Path,
) -> None:
    """Opened more than a day ago (the default session_end_bound_s): the worker's own expiry
    has ended it; one failed try and it is struck off."""
    now = [0.0]
    worker = Worker(down=100)
    reaper, journal = await reaper_for(tmp_path, worker, now, wall=1000.0 + 86400.0 + 1)
    await reaper.round()
    await journal.close()
    assert worker.ends == ["s1"]
    assert read_journal(tmp_path / "sessions.jsonl") == {}
