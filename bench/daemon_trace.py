"""A kept run's daemon log read back as a timeline: every ``step`` seconds from the first
queued job (and as the log ends), the jobs waiting in the daemon and each worker's jobs in
flight, as they stood at that moment; between them,
each lease opened, route answer and limit change with the round that decided it. How (f)'s slow
runs were traced in sessions 13 and 14 (the daemon at ``BENCH_DAEMON_LOG=info``, the run kept
with ``BENCH_KEEP_DIR``):

    .venv/bin/python -m bench.daemon_trace /tmp/keep/run-<id>/daemon.log [--step 0.25]

Workers are named by the last five characters of their URL (the port, on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

MAX_LINES = 10_000_000  # a bound on what one log may hold


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def _short(url: object) -> str:
    return str(url)[-5:]


def _note(event: dict[str, Any]) -> str | None:
    """The line an event other than a job's gets in the timeline (None: not shown)."""
    kind = event.get("event")
    if kind == "lease.opened":
        return f"LEASE {event['lease_id']} {_short(event['worker'])} cap {event['capacity']:.0f}"
    if kind == "route.ready":
        return f"ROUTE {_short(event.get('worker'))} cost {event['cost']:.0f}"
    if kind == "worker.limit_changed":
        keys = ("rate", "latency", "held", "base_rate")
        figures = " ".join(f"{key} {event.get(key)}" for key in keys)
        return (f"LIMIT {_short(event['worker'])} {event['old']} -> {event['new']} "
                f"{event['reason']} {figures}")  # fmt: skip
    return None


Stamped = tuple[float, dict[str, Any]]  # an event and its time (epoch seconds)


def events(lines: Iterable[str]) -> list[Stamped]:
    """The JSON events among ``lines`` (other lines skipped) with their times, oldest first."""
    parsed: list[Stamped] = []
    for count, line in enumerate(lines):
        if count >= MAX_LINES:
            break
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "timestamp" in event and "event" in event:
            parsed.append((_at(event), event))
    return sorted(parsed, key=lambda stamped: stamped[0])


def timeline(log: list[Stamped], step: float) -> Iterator[str]:
    """The timeline's lines (see the module docstring)."""
    queued = [at for at, e in log if e["event"] == "job.queued"]
    if not queued:
        return
    start, due = min(queued), 0.0
    lease_worker: dict[object, str] = {}
    job_worker: dict[object, str] = {}
    waiting, inflight = 0, Counter[str]()

    def row(at: float) -> str:
        held = " ".join(f"{w}:{inflight[w]}" for w in sorted(inflight))
        return f"{at:7.2f} wait {waiting:4d}  {held}".rstrip()

    for stamp, event in log:
        at = stamp - start
        while at > due:
            yield row(due)
            due += step
        kind = event["event"]
        if kind == "lease.opened":
            lease_worker[event["lease_id"]] = _short(event["worker"])
        if kind == "job.queued":
            waiting += 1
        elif kind == "job.started":
            worker = lease_worker.get(event.get("lease_id"), "?")
            job_worker[event["job_id"]] = worker
            waiting -= 1
            inflight[worker] += 1
        elif kind == "job.finished" and event["job_id"] in job_worker:
            inflight[job_worker[event["job_id"]]] -= 1
        note = _note(event)
        if note is not None:
            yield f"{at:7.2f}   {note}"
    yield row(log[-1][0] - start)  # as the log ends


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.daemon_trace")
    parser.add_argument("log", help="a kept run's daemon.log")
    parser.add_argument("--step", type=float, default=0.25, help="seconds between rows")
    args = parser.parse_args(argv)
    with open(args.log, encoding="utf-8", errors="replace") as handle:
        for line in timeline(events(handle), max(args.step, 0.01)):
            print(line)


if __name__ == "__main__":
    main()
