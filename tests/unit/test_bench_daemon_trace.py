"""``bench.daemon_trace``: a daemon log read back as jobs waiting and in flight per worker."""

from __future__ import annotations

import json

from bench.daemon_trace import events, timeline

W = "http://127.0.0.1:40001"


def line(at: float, event: str, **fields: object) -> str:
    stamp = f"2026-12-06T12:00:{at:09.6f}Z"
    return json.dumps({"event": event, "timestamp": stamp, **fields})


def test_jobs_are_counted_waiting_then_on_their_leases_worker() -> None:
    log = [
        line(0.0, "job.queued", job_id="a"),
        line(0.1, "job.queued", job_id="b"),
        "not json: a traceback line",
        line(0.2, "lease.opened", lease_id=1, worker=W, capacity=200.0),
        line(0.3, "job.started", job_id="a", lease_id=1),
        line(
            0.6,
            "worker.limit_changed",
            worker=W,
            old=4,
            new=8,
            reason="startup",
            rate=700.0,
            latency=0.0057,
            held=3.99,
            base_rate=0.0,
        ),
        line(0.7, "job.finished", job_id="a"),
    ]
    assert list(timeline(events(reversed(log)), 0.25)) == [  # the order in the file is not needed
        "   0.00 wait    1",
        "   0.20   LEASE 1 40001 cap 200",
        "   0.25 wait    2",
        "   0.50 wait    1  40001:1",
        "   0.60   LIMIT 40001 4 -> 8 startup rate 700.0 latency 0.0057 held 3.99 base_rate 0.0",
        "   0.70 wait    1  40001:0",
    ]


def test_a_log_without_jobs_gives_no_timeline() -> None:
    assert list(timeline(events([line(0.0, "daemon.started")]), 0.25)) == []
