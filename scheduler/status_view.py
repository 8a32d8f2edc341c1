"""The live state of one endpoint as ``GET /v1/status`` and the status page show it."""

from __future__ import annotations

from typing import Any

from scheduler.core.assignments import Lease
from scheduler.dispatch import EndpointDispatcher, RouteRecord
from scheduler.vast.types import summarise_counts


def endpoint_status(d: EndpointDispatcher, now: float) -> dict[str, Any]:
    """One endpoint's live state for ``GET /v1/status`` and the status page."""
    return {
        "queue_depth": len(d.queue),
        "queued_cost": d.queue.queued_cost,
        "inflight": d.inflight,
        "max_concurrency": d.config.max_concurrency,
        "max_depth": d.config.queue.max_depth,
        "known_workers": sorted(d.known_workers),
        "leases": len(d.pool),
        "lease_workers": len(d.pool.workers()),
        "leased_budget": d.pool.budget(),
        "leased_inflight_cost": d.pool.inflight_cost(),
        "lease_details": [lease_view(lease, now) for lease in d.pool],
        "reuse": str(d.mode),
        "legacy_detected": d.legacy_detected,
        "polling": d.polling,
        "eta_s": d.eta_s(),
        "throughput_cost_per_s": d.throughput_cost_per_s,
        "calibration": {"ratio": d.calibrator.ratio, "samples": d.calibrator.samples},
        "last_no_worker": None
        if d.last_waiting is None
        else {
            "status": d.last_waiting.status,
            "worker_counts": d.last_waiting.worker_counts,
            "state": summarise_counts(d.last_waiting.worker_counts),
            "request_idx": d.last_waiting.request_idx,
        },
        "recent_routes": [route_view(r, now) for r in reversed(d.recent_routes)],  # newest first
        "errors": {
            "worker": dict(sorted(d.worker_error_counts.items())),
            "route": dict(sorted(d.route_error_counts.items())),
            "ejected_workers": len(d.outliers.ejected(now)),
            "ejections": d.outliers.ejections_total,
        },
    }


def lease_view(lease: Lease, now: float) -> dict[str, Any]:
    return {
        "lease_id": lease.lease_id,
        "worker_url": lease.worker_url,
        "mode": str(lease.mode),
        "session": lease.session_id is not None,
        "capacity": lease.capacity,
        "budget": lease.budget,
        "inflight_cost": lease.inflight_cost,
        "inflight_jobs": lease.inflight_jobs,
        "completed": lease.completed,
        "retired": lease.retired,
        "expires_in_s": round(max(0.0, lease.expires_at - now), 3),
    }


def route_view(record: RouteRecord, now: float) -> dict[str, Any]:
    return {
        "age_s": round(max(0.0, now - record.at), 3),
        "outcome": record.outcome,
        "cost": record.cost,
        "latency_s": round(record.latency_s, 6),
        "detail": record.detail,
    }
