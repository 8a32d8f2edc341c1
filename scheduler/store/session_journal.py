"""The daemon's open Vast sessions, written where the next run of the daemon (or, on Redis, a
surviving replica) finds them.

A session the daemon never ended holds one of the worker's session slots and its declared
cost in the worker's load reports until the worker's own expiry, which every request start
moves one lifetime on (``core.sessions.SessionClock``; up to ``lease.session_end_bound_s``,
a day by default, ahead). Graceful shutdown ends every session; a killed process (OOM,
SIGKILL, a lost host) cannot. With a journal, the sessions it left are ended by the next
start (file) or, on Redis, by any replica once the dead one's heartbeat lapses.

``memory`` store: ``FileSessionJournal`` at ``store.session_journal`` (an append-only JSON
lines file, one daemon per file, held by a lock). ``redis`` store:
``redis_sessions.RedisSessionJournal``.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from scheduler.vast.types import Ready

COMPACT_MIN_LINES = 256  # the file is rewritten once it has this many lines and 2x the live ones


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What ending a session takes: the worker, the session id and the route answer it was
    opened on (``/session/end`` is authorised by it; no API key is in it)."""

    session_id: str
    url: str
    cost: float
    reqnum: int
    request_idx: int
    auth_data: dict[str, Any]
    opened_wall: float

    @classmethod
    def of(cls, ready: Ready, session_id: str, opened_wall: float) -> SessionRecord:
        return cls(session_id, ready.url, ready.cost, ready.reqnum, ready.request_idx,
                   ready.auth_data, opened_wall)  # fmt: skip

    def ready(self) -> Ready:
        return Ready(self.url, self.cost, self.reqnum, self.request_idx, self.auth_data)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | dict[str, Any]) -> SessionRecord | None:
        """None for anything but a well-formed record (a line torn by a crash, a stranger's)."""
        try:
            data = json.loads(raw) if isinstance(raw, str) else raw
            record = cls(
                session_id=str(data["session_id"]), url=str(data["url"]),
                cost=float(data["cost"]), reqnum=int(data["reqnum"]),
                request_idx=int(data["request_idx"]), auth_data=dict(data["auth_data"]),
                opened_wall=float(data["opened_wall"]),
            )  # fmt: skip
        except (ValueError, TypeError, KeyError):
            return None
        return record


class SessionJournal(Protocol):
    async def start(self) -> None:
        """Open it; the sessions an earlier process left become ``take_over``'s first answer."""

    async def opened(self, record: SessionRecord) -> None: ...

    async def ended(self, session_id: str) -> None: ...

    async def take_over(self) -> list[SessionRecord]:
        """Sessions opened by a process that is gone (an earlier run of this daemon; on Redis,
        a replica whose heartbeat lapsed), now this process's to end. Called periodically: it
        is also this process's heartbeat where there is one."""

    async def close(self) -> None:
        """Sessions still in it (their end was lost) stay for the next process to end."""


class JournalUnavailable(Exception):
    """The journal file cannot be used: another daemon holds it, or it cannot be opened."""


class FileSessionJournal:
    """One JSON object per line: ``{"open": record}`` or ``{"end": session_id}``. Appended and
    flushed per change (a killed process loses nothing the kernel has); rewritten with the live
    records at start and when ended ones dominate. A ``.lock`` beside it keeps a second daemon
    from sharing it (both would end each other's sessions)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._live: dict[str, SessionRecord] = {}
        self._left: list[SessionRecord] = []
        self._lines = 0
        self._file: IO[str] | None = None
        self._lock: IO[bytes] | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self._path.with_name(self._path.name + ".lock"), "ab")  # noqa: SIM115
        except OSError as exc:
            raise JournalUnavailable(f"store.session_journal: cannot open {self._path}: "
                                     f"{exc.strerror}") from exc  # fmt: skip
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock.close()
            raise JournalUnavailable(f"store.session_journal: {self._path} is in use by another "
                                     "daemon; give each daemon its own file") from exc  # fmt: skip
        self._lock = lock
        try:
            self._live = read_journal(self._path)
            self._rewrite()
        except OSError as exc:
            self._lock.close()
            raise JournalUnavailable(f"store.session_journal: cannot write {self._path}: "
                                     f"{exc.strerror}") from exc  # fmt: skip
        self._left = list(self._live.values())

    async def opened(self, record: SessionRecord) -> None:
        self._live[record.session_id] = record
        self._append({"open": asdict(record)})

    async def ended(self, session_id: str) -> None:
        if self._live.pop(session_id, None) is None:
            return
        self._append({"end": session_id})
        if self._lines >= COMPACT_MIN_LINES and self._lines > 2 * len(self._live):
            self._rewrite()

    async def take_over(self) -> list[SessionRecord]:
        left, self._left = self._left, []
        return left

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def _append(self, entry: dict[str, Any]) -> None:
        if self._file is None:
            return  # closed: the process is on its way out
        self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._file.flush()
        self._lines += 1

    def _rewrite(self) -> None:
        """The live records alone, swapped in atomically (a crash leaves the old or the new)."""
        if self._file is not None:
            self._file.close()
        temporary = self._path.with_name(self._path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for record in self._live.values():
                out.write(json.dumps({"open": asdict(record)}, separators=(",", ":")) + "\n")
        os.replace(temporary, self._path)
        self._lines = len(self._live)
        self._file = self._path.open("a", encoding="utf-8")


def read_journal(path: Path) -> dict[str, SessionRecord]:
    """The sessions a journal file says are open (a missing file: none; bad lines skipped)."""
    live: dict[str, SessionRecord] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return live
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("end"), str):
            live.pop(entry["end"], None)
        elif isinstance(entry.get("open"), dict):
            record = SessionRecord.from_json(entry["open"])
            if record is not None:
                live[record.session_id] = record
    return live
