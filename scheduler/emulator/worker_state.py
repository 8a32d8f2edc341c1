"""Pure bookkeeping of one worker, mirroring the official worker's ModelMetrics.

In-flight requests are keyed by ``reqnum`` exactly as the official worker does: two
requests in flight with the same route answer overwrite each other's entry, and the first
one to end removes it. Timestamps (``*_at``) are wall-clock epochs, passed in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from scheduler.emulator.workload import queue_time_s

VERSION = "emulator-1"
_MAX_IDS_TRACKED = 1_000_000


@dataclass
class RequestEntry:
    request_idx: int
    reqnum: int
    workload: float
    status: str = "Created"
    success: bool = False
    is_session: bool = False
    in_session: bool = False
    entered_queue_at: float = 0.0
    work_started_at: float = 0.0
    work_completed_at: float = 0.0

    def finished_report(self) -> dict[str, Any]:
        """One item of a ``/delete_requests/`` report."""
        return {
            "request_idx": self.request_idx,
            "success": self.success,
            "status": self.status,
            "entered_queue_at": self.entered_queue_at,
            "work_started_at": self.work_started_at,
            "work_completed_at": self.work_completed_at,
        }


@dataclass
class WorkerMetrics:
    max_perf: float = 0.0
    loadtime_s: float = 0.0
    error_msg: str = ""
    workload_served: float = 0.0
    workload_received: float = 0.0
    workload_cancelled: float = 0.0
    workload_errored: float = 0.0
    workload_rejected: float = 0.0
    requests_received: set[int] = field(default_factory=set)
    requests_working: dict[int, RequestEntry] = field(default_factory=dict)
    requests_deleting: list[RequestEntry] = field(default_factory=list)
    update_pending: bool = False

    @property
    def wait_time_s(self) -> float:
        """Queue time as the official worker computes it (session entries left out)."""
        loads = [e.workload for e in self.requests_working.values() if not e.is_session]
        return queue_time_s(loads, self.max_perf) if loads else 0.0

    @property
    def cur_load(self) -> float:
        return sum(e.workload for e in self.requests_working.values())

    def start(self, entry: RequestEntry) -> None:
        entry.status = "Started"
        self.workload_received += entry.workload
        if not entry.in_session:
            self.requests_received.add(entry.reqnum)
            self.requests_working[entry.reqnum] = entry
        self.update_pending = True

    def end(self, entry: RequestEntry) -> None:
        if not entry.in_session:
            self.requests_working.pop(entry.reqnum, None)
            self.requests_deleting.append(entry)

    def succeed(self, entry: RequestEntry, now_epoch: float) -> None:
        entry.work_completed_at = now_epoch
        self.workload_served += entry.workload
        entry.status, entry.success = "Success", True
        self.update_pending = True

    def error(self, entry: RequestEntry, now_epoch: float) -> None:
        entry.work_completed_at = now_epoch
        self.workload_errored += entry.workload
        entry.status, entry.success = "Error", False
        self.update_pending = True

    def cancel(self, entry: RequestEntry) -> None:
        self.workload_cancelled += entry.workload
        entry.status, entry.success = "Cancelled", True

    def reject(self, entry: RequestEntry) -> None:
        self.workload_rejected += entry.workload
        if not entry.in_session:
            self.requests_received.add(entry.reqnum)
            self.requests_deleting.append(entry)
        entry.status, entry.success = "Rejected", False
        self.update_pending = True

    def status_report(self, worker_id: int, url: str) -> dict[str, Any]:
        """The ``/worker_status/`` body, field for field as the official worker sends it."""
        working = list(self.requests_working.values())
        return {
            "id": worker_id,
            "mtoken": "",
            "version": VERSION,
            "loadtime": self.loadtime_s,
            "cur_load": self.cur_load,
            "rej_load": self.workload_rejected,
            "new_load": max(self.workload_received - self.workload_cancelled, 0.0),
            "error_msg": self.error_msg,
            "max_perf": self.max_perf,
            "cur_perf": self.workload_served,
            "cur_capacity": 0,
            "max_capacity": 0,
            "num_requests_working": len(working),
            "num_requests_recieved": len(self.requests_received),
            "additional_disk_usage": 0.0,
            "disk_usage": 0.0,
            "working_request_idxs": [e.request_idx for e in working],
            "url": url,
        }

    def reset_after_report(self) -> None:
        self.workload_served = self.workload_received = self.workload_cancelled = 0.0
        self.workload_errored = self.workload_rejected = 0.0
        self.update_pending = False

    def take_finished(self) -> list[RequestEntry]:
        taken, self.requests_deleting = self.requests_deleting, []
        return taken


@dataclass
class WorkerCounters:
    """Test-facing counters: answers by status, reqnums seen, duplicate payload ids."""

    by_status: Counter[int] = field(default_factory=Counter)
    reqnums_seen: Counter[int] = field(default_factory=Counter)
    payload_ids: set[str] = field(default_factory=set)
    duplicate_payload_ids: int = 0

    def saw_request(self, reqnum: int, payload: dict[str, Any]) -> None:
        self.reqnums_seen[reqnum] += 1
        if "id" not in payload:
            return
        key = repr(payload["id"])
        if key in self.payload_ids:
            self.duplicate_payload_ids += 1
        elif len(self.payload_ids) < _MAX_IDS_TRACKED:
            self.payload_ids.add(key)

    def snapshot(self) -> dict[str, Any]:
        return {
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "requests_total": sum(self.by_status.values()),
            "distinct_reqnums": len(self.reqnums_seen),
            "reused_reqnums": sum(1 for n in self.reqnums_seen.values() if n > 1),
            "distinct_payload_ids": len(self.payload_ids),
            "duplicate_payload_ids": self.duplicate_payload_ids,
        }
