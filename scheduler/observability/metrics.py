"""Every Prometheus metric, defined once. Labels stay bounded: endpoint, outcome, kind, reason."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

DURATION_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
ROUTE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class EndpointGauges:
    """Live per-endpoint state, read at scrape time."""

    endpoint: str
    queue_depth: int
    queued_cost: float
    inflight: int
    known_workers: int


class LiveStateCollector(Collector):
    def __init__(self, read: Callable[[], Iterable[EndpointGauges]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "queue_depth": GaugeMetricFamily(
                "vast_scheduler_queue_depth", "Jobs waiting in the queue", labels=["endpoint"]
            ),
            "queued_cost": GaugeMetricFamily(
                "vast_scheduler_queued_cost", "Workload units waiting", labels=["endpoint"]
            ),
            "inflight": GaugeMetricFamily(
                "vast_scheduler_inflight_jobs", "Jobs routing or running", labels=["endpoint"]
            ),
            "known_workers": GaugeMetricFamily(
                "vast_scheduler_known_workers", "Workers seen in route answers", labels=["endpoint"]
            ),
        }
        for state in self._read():
            for name, family in families.items():
                family.add_metric([state.endpoint], float(getattr(state, name)))
        yield from families.values()


class Metrics:
    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self.registry = registry
        Info("vast_scheduler_build", "Build information", registry=registry).info(
            {"version": version}
        )
        self.jobs_submitted = Counter(
            "vast_scheduler_jobs_submitted", "Jobs admitted", ["endpoint", "mode"],
            registry=registry,
        )  # fmt: skip
        self.jobs_rejected = Counter(
            "vast_scheduler_jobs_rejected", "Jobs refused at intake", ["endpoint", "reason"],
            registry=registry,
        )  # fmt: skip
        self.jobs_finished = Counter(
            "vast_scheduler_jobs_finished", "Jobs ended", ["endpoint", "outcome"], registry=registry
        )
        self.queue_wait = Histogram(
            "vast_scheduler_queue_wait_seconds", "Time from admission to first route call",
            ["endpoint"], buckets=DURATION_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.job_duration = Histogram(
            "vast_scheduler_job_duration_seconds", "Admission to terminal state",
            ["endpoint", "outcome"], buckets=DURATION_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.route_calls = Counter(
            "vast_scheduler_route_calls", "Route calls by outcome", ["endpoint", "outcome"],
            registry=registry,
        )  # fmt: skip
        self.route_latency = Histogram(
            "vast_scheduler_route_latency_seconds", "Route call latency", ["endpoint", "outcome"],
            buckets=ROUTE_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.worker_latency = Histogram(
            "vast_scheduler_worker_latency_seconds", "Worker request until response headers",
            ["endpoint"], buckets=DURATION_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.worker_errors = Counter(
            "vast_scheduler_worker_errors", "Worker failures by kind", ["endpoint", "kind"],
            registry=registry,
        )  # fmt: skip
        self.retries = Counter(
            "vast_scheduler_retries", "Job re-routes by reason", ["endpoint", "reason"],
            registry=registry,
        )  # fmt: skip
        self.http_requests = Counter(
            "vast_scheduler_http_requests", "API requests", ["handler", "code"], registry=registry
        )

    def watch(self, read: Callable[[], Iterable[EndpointGauges]]) -> None:
        self.registry.register(LiveStateCollector(read))
