"""Every Prometheus metric, defined once. Labels stay bounded: endpoint, outcome, kind, reason.

Counters and histograms are updated on the hot path; live state (queue depth, leases,
budgets, poller state) is read at scrape time by ``LiveStateCollector``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from scheduler.core.frontdoor_sign import REFUSALS

DURATION_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
ROUTE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
COST_BUCKETS = (1, 10, 50, 100, 250, 500, 1_000, 2_500, 10_000, 50_000, 250_000, 1_000_000)
KNOWN_WORKER_ERRORS = (
    "gone", "tls", "timeout", "unauthorized", "session_gone", "overloaded", "server_error",
    "client_error", "bad_envelope", "session_refused", "malformed",
)  # fmt: skip
WEBHOOK_OUTCOMES = ("delivered", "abandoned", "cut")
RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0, 10.0)


@dataclass(frozen=True, slots=True)
class EndpointGauges:
    """Live per-endpoint state, read at scrape time. Each field is one gauge."""

    endpoint: str
    queue_depth: int
    queued_cost: float
    inflight_jobs: int
    leases: int
    leased_workers: int
    inflight_cost: float
    budget_cost: float
    polling: int
    calibration_ratio: float
    throughput_cost_per_second: float
    concurrency_limit: float  # summed over the leased workers (0 while limits are off)

    @classmethod
    def of(cls, endpoint: str, snapshot: Mapping[str, Any]) -> EndpointGauges:
        """From the endpoint's status snapshot (``EndpointDispatcher.snapshot``)."""
        return cls(
            endpoint=endpoint,
            queue_depth=snapshot["queue_depth"],
            queued_cost=snapshot["queued_cost"],
            inflight_jobs=snapshot["inflight"],
            leases=snapshot["leases"],
            leased_workers=snapshot["lease_workers"],
            inflight_cost=snapshot["leased_inflight_cost"],
            budget_cost=snapshot["leased_budget"],
            polling=int(snapshot["polling"]),
            calibration_ratio=snapshot["calibration"]["ratio"],
            throughput_cost_per_second=snapshot["throughput_cost_per_s"],
            concurrency_limit=sum(w["limit"] or 0 for w in snapshot["workers"]),
        )


_GAUGE_HELP = {
    "queue_depth": "Jobs waiting in the queue",
    "queued_cost": "Workload units waiting in the queue",
    "inflight_jobs": "Jobs routing or running",
    "leases": "Cached worker assignments (leases)",
    "leased_workers": "Distinct workers holding a lease",
    "inflight_cost": "Workload units in flight on leased workers",
    "budget_cost": "Workload units the leases may carry (AIMD budget)",
    "polling": "1 while the endpoint's single poller waits for a ready worker",
    "calibration_ratio": "Observed over estimated cost (EWMA)",
    "throughput_cost_per_second": "Completed workload units per second (EWMA)",
    "concurrency_limit": "Jobs the leased workers may hold at once, summed (learnt limits)",
}


class LiveStateCollector(Collector):
    def __init__(self, read: Callable[[], Iterable[EndpointGauges]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            f.name: GaugeMetricFamily(f"vast_scheduler_{f.name}", _GAUGE_HELP[f.name],
                                      labels=["endpoint"])
            for f in fields(EndpointGauges)
            if f.name != "endpoint"
        }  # fmt: skip
        for state in self._read():
            for name, family in families.items():
                family.add_metric([state.endpoint], float(getattr(state, name)))
        yield from families.values()


Metric = TypeVar("Metric", bound=MetricWrapperBase)


class Metrics:
    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self.registry = registry
        self._bound: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}
        ProcessCollector(registry=registry)
        Info("vast_scheduler_build", "Build information", registry=registry).info(
            {"version": version}
        )

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(f"vast_scheduler_{name}", doc, labels, registry=registry)

        def histogram(
            name: str, doc: str, labels: list[str], buckets: tuple[float, ...]
        ) -> Histogram:
            return Histogram(
                f"vast_scheduler_{name}", doc, labels, buckets=buckets, registry=registry
            )

        ep = ["endpoint"]
        # queue
        self.jobs_submitted = counter("jobs_submitted", "Jobs admitted", [*ep, "mode"])
        self.jobs_redelivered = counter(
            "jobs_redelivered", "Jobs taken over from a replica that stopped renewing its claim", ep
        )
        self.jobs_rejected = counter("jobs_rejected", "Jobs refused at intake", [*ep, "reason"])
        self.jobs_finished = counter("jobs_finished", "Jobs ended", [*ep, "outcome"])
        self.queue_wait = histogram(
            "queue_wait_seconds", "Admission to the first attempt", ep, DURATION_BUCKETS_S
        )
        self.job_duration = histogram(
            "job_duration_seconds", "Admission to a terminal state", [*ep, "outcome"],
            DURATION_BUCKETS_S,
        )  # fmt: skip
        # routing
        self.route_calls = counter("route_calls", "Route calls by outcome", [*ep, "outcome"])
        self.route_latency = histogram(
            "route_latency_seconds", "Route call latency", [*ep, "outcome"], ROUTE_BUCKETS_S
        )
        self.no_worker = counter("no_worker_answers", "Route answers with no worker ready", ep)
        self.route_batch_jobs = histogram(
            "route_batch_jobs", "Jobs carried by one route call", ep, COUNT_BUCKETS
        )
        self.route_batch_cost = histogram(
            "route_batch_cost", "Cost declared by one route call", ep, COST_BUCKETS
        )
        # assignments
        self.lease_lookups = counter(
            "lease_lookups", "Placements on a cached lease (hit) or via a route call (miss)",
            [*ep, "result"],
        )  # fmt: skip
        self.leases_opened = counter("leases_opened", "Leases opened by mode", [*ep, "mode"])
        # outcome: renewed (a session near its bound renewed from a kept route answer, no
        # route call), failed (the create failed: the next route answer renews it)
        self.session_renewals = counter(
            "session_renewals", "Sessions renewed from a kept route answer", [*ep, "outcome"]
        )
        # workers
        self.worker_latency = histogram(
            "worker_latency_seconds", "Worker request until response headers", ep,
            DURATION_BUCKETS_S,
        )  # fmt: skip
        self.worker_errors = counter("worker_errors", "Worker failures by kind", [*ep, "kind"])
        self.retries = counter("retries", "Job re-routes and retries by reason", [*ep, "reason"])
        self.ejections = counter("worker_ejections", "Workers ejected as outliers", ep)
        self.worker_backoffs = counter(
            "worker_backoffs", "Workers kept from jobs for a while after answering 429", ep
        )
        # cost
        self.job_cost = histogram("job_cost", "Estimated cost per job", ep, COST_BUCKETS)
        self.cost_ratio = histogram(
            "cost_observed_ratio", "Observed over estimated cost per job", ep, RATIO_BUCKETS
        )
        # API
        self.http_requests = counter("http_requests", "API requests", ["handler", "code"])
        # per-worker concurrency limits (scheduler.core.capacity); reason: startup,
        # startup_done, startup_unheld, startup_queued, startup_peers, probe, probe_kept,
        # probe_dropped, congestion, refused
        self.limit_changes = counter(
            "worker_limit_changes",
            "Changes of a worker's concurrency limit",
            ["endpoint", "reason"],
        )
        # webhooks, one per finished job with a webhook URL; outcome: delivered, abandoned
        # (every attempt failed), cut (the daemon stopped before it got through)
        self.webhooks = counter("webhooks", "Webhooks by final outcome", ["outcome"])
        for outcome in WEBHOOK_OUTCOMES:
            self.webhooks.labels(outcome)
        # sessions a killed process left open (scheduler.dispatch.left_sessions); outcome:
        # ended, gone (the worker no longer answers: its own expiry ends it)
        self.left_sessions = counter(
            "left_sessions_ended", "Vast sessions left open by a killed process, ended here",
            ["outcome"],
        )  # fmt: skip
        for outcome in ("ended", "gone"):
            self.left_sessions.labels(outcome)
        # shared store (Redis); op: enqueue, claim, finish, requeue, touch, reclaim, cancel,
        # get, backlog, listen
        self.store_errors = counter("store_errors", "Failed shared job store operations", ["op"])
        # the Vast-compatible front door: tickets (signed route answers) refused with 401;
        # reason: malformed, bad_signature (forged or tampered), mismatch, expired, replayed
        self.frontdoor_refusals = counter(
            "frontdoor_refusals", "Front-door tickets refused by reason", ["reason"]
        )
        for reason in REFUSALS:
            self.frontdoor_refusals.labels(reason)

    def series(self, metric: Metric, *values: str) -> Metric:
        """``metric.labels(*values)``, bound once: on a per-request path ``.labels()`` costs
        ~1.3 us a call, a dictionary lookup a tenth of it."""
        key = (metric, values)
        found = self._bound.get(key)
        if found is None:
            found = self._bound[key] = metric.labels(*values)
        return found  # type: ignore[return-value]  # labels() of a Metric is a Metric

    def start_endpoint(self, endpoint: str) -> None:
        """Create an endpoint's known series at 0, so ``rate()`` sees their first event too."""
        for counter, label_values in (
            (self.route_calls, ("ready", "no_worker", "error", "rate_limited")),
            (self.jobs_finished, ("succeeded", "failed", "expired", "cancelled")),
            (self.jobs_rejected, ("queue_full", "draining")),
            (self.lease_lookups, ("hit", "miss")),
            (self.worker_errors, KNOWN_WORKER_ERRORS),
        ):
            for value in label_values:
                counter.labels(endpoint, value)
        self.no_worker.labels(endpoint)
        self.ejections.labels(endpoint)
        self.jobs_redelivered.labels(endpoint)

    def watch(self, read: Callable[[], Iterable[EndpointGauges]]) -> None:
        self.registry.register(LiveStateCollector(read))
