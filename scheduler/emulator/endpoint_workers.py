"""Pure builder of ``/get_endpoint_workers/`` rows from what the autoscaler knows of a worker.

One row per worker, the fields of the official client's ``Worker`` dataclass (``vastai``
1.9.1, ``serverless/client/worker.py``) and of Vast's docs (``docs.vast.ai/serverless/
worker-list``). ``status`` in lower case as ``vastai``'s benchmark command reads it:
``loading`` (no ready report yet), ``idle`` (ready, nothing in flight), ``running`` (ready,
requests in flight), ``error`` (its report carries an ``error_msg``), ``stopped`` (reports
stopped). Taken from the worker's latest ``/worker_status/`` report: ``cur_load``,
``new_load``, ``cur_perf``, ``reqs_working`` (its ``num_requests_working``),
``disk_usage``; ``measured_perf`` is its reported ``max_perf`` once ready, before that
:data:`DLPERF` as on Vast ("set to DLPerf if the instance is not benchmarked").

Emulated, not measured: ``dlperf`` (a constant), ``reliability`` (1.0: emulated hosts never
drop), ``perf`` (``measured_perf * reliability``), ``cur_load_rolling_avg`` (= ``cur_load``:
no history kept). ``started_at`` / ``loaded_at`` are Unix times of the worker's first report
of its current life and of its first ready report (0 until then).
"""

from __future__ import annotations

from typing import Any

from scheduler.emulator.route_book import WorkerStatus, WorkerView

DLPERF = 100.0
RELIABILITY = 1.0
_STATUS: dict[WorkerStatus, str] = {
    "Loading": "loading",
    "Error": "error",
    "Stopped": "stopped",
}


def _number(report: dict[str, Any], name: str) -> float:
    value = report.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def worker_row(view: WorkerView, status: WorkerStatus, to_epoch: float) -> dict[str, Any]:
    """The row for ``view`` whose autoscaler status is ``status``; ``to_epoch`` is added to
    the book's monotonic times to give Unix times."""
    report = view.report or {}
    reqs_working = int(_number(report, "num_requests_working"))
    name = _STATUS.get(status) or ("running" if reqs_working > 0 else "idle")
    max_perf = _number(report, "max_perf")
    measured = max_perf if status == "Ready" and max_perf > 0 else DLPERF
    cur_load = _number(report, "cur_load")
    return {
        "id": view.worker_id,
        "status": name,
        "cur_load": cur_load,
        "new_load": _number(report, "new_load"),
        "cur_load_rolling_avg": cur_load,
        "cur_perf": _number(report, "cur_perf"),
        "perf": measured * RELIABILITY,
        "measured_perf": measured,
        "dlperf": DLPERF,
        "reliability": RELIABILITY,
        "reqs_working": reqs_working,
        "disk_usage": _number(report, "disk_usage"),
        "loaded_at": _epoch(view.loaded_at, to_epoch),
        "started_at": _epoch(view.started_at, to_epoch),
    }


def _epoch(monotonic: float | None, to_epoch: float) -> float:
    return round(monotonic + to_epoch, 3) if monotonic is not None else 0.0
