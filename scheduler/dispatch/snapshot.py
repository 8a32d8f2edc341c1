"""The live state of one endpoint, read from its collaborators in one place: ``GET /v1/status``,
the status page and the Prometheus gauges all come from this one view."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scheduler.core.assignments import Lease
from scheduler.core.backoff import RouteTrouble
from scheduler.dispatch.route_calls import RouteRecord
from scheduler.vast.types import Waiting, summarise_counts

if TYPE_CHECKING:  # the dispatcher imports this module to build its snapshot
    from scheduler.dispatch.endpoint import EndpointDispatcher
    from scheduler.dispatch.leasing import Leasing

MAX_WORKER_VIEWS = 64


def endpoint_snapshot(d: EndpointDispatcher, now: float) -> dict[str, Any]:
    pool, routing, settling = d.leasing.pool, d.routing, d.settling
    return {
        "queue_depth": len(d.queue),
        "queued_cost": d.queue.queued_cost,
        "inflight": d.inflight,
        "max_concurrency": d.config.max_concurrency,
        "max_worker_cost": d.config.capacity.max_worker_cost if d.config.capacity.enabled else None,
        "max_depth": d.config.queue.max_depth,
        "known_workers": sorted(routing.calls.known_workers),
        "leases": len(pool),
        "lease_workers": len(pool.workers()),
        "leased_budget": pool.budget(),
        "leased_inflight_cost": pool.inflight_cost(),
        "lease_details": [lease_view(lease, now) for lease in pool],
        "workers": worker_views(d.leasing),
        "reuse": str(d.leasing.mode),
        "legacy_detected": d.leasing.legacy_detected,
        "polling": routing.polling,
        "eta_s": d.eta_s(),
        "throughput_cost_per_s": settling.completions.cost_per_s,
        "calibration": {
            "ratio": settling.calibrator.ratio,
            "samples": settling.calibrator.samples,
        },
        "last_no_worker": waiting_view(routing.calls.last_waiting),
        "route_error": trouble_view(routing.calls.trouble, now),
        # newest first
        "recent_routes": [route_view(r, now) for r in reversed(routing.calls.recent)],
        "errors": {
            "worker": dict(sorted(settling.worker_error_counts.items())),
            "route": dict(sorted(routing.calls.error_counts.items())),
            "ejected_workers": len(settling.outliers.ejected(now)),
            "ejections": settling.outliers.ejections_total,
            "backed_off_workers": len(routing.worker_backoff.backed_off(now)),
        },
    }


def worker_views(leasing: Leasing) -> list[dict[str, Any]]:
    """Per leased worker: its concurrency limit (None when limits are off), what it holds,
    what it delivers and its latency floor; at most ``MAX_WORKER_VIEWS``, busiest first."""
    pool, capacity = leasing.pool, leasing.pool.capacity
    loads = pool.loads()
    held = {lease.worker_url: loads.get(lease.worker_url, (0.0, 0)) for lease in pool}
    views = []
    for url, (cost, jobs) in sorted(held.items(), key=lambda item: (-item[1][1], item[0])):
        state = capacity.state(url) if capacity is not None else None
        views.append({
            "worker_url": url,
            "limit": capacity.limit(url) if capacity is not None else None,
            "phase": str(state.phase) if state is not None else None,
            "inflight_jobs": int(jobs),
            "inflight_cost": cost,
            "throughput_cost_per_s": pool.meter.throughput(url),
            "latency_floor_s_per_cost": state.floor if state is not None else None,
        })  # fmt: skip
        if len(views) == MAX_WORKER_VIEWS:
            break
    return views


def waiting_view(waiting: Waiting | None) -> dict[str, Any] | None:
    if waiting is None:
        return None
    return {
        "status": waiting.status,
        "worker_counts": waiting.worker_counts,
        "state": summarise_counts(waiting.worker_counts),
        "request_idx": waiting.request_idx,
    }


def trouble_view(trouble: RouteTrouble | None, now: float) -> dict[str, Any] | None:
    """Route calls failing in a row (None: the last one was answered): the last error's kind,
    for how long, how many, when the next call may go, and whether Vast refuses them."""
    if trouble is None:
        return None
    return {
        "kind": trouble.kind,
        "for_s": round(max(0.0, now - trouble.since), 3),
        "streak": trouble.streak,
        "retry_in_s": round(max(0.0, trouble.retry_at - now), 3),
        "refused": trouble.refused,
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
