"""Admission: what a submission becomes (its job, its cost) and the limits it is held to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scheduler import fastjson
from scheduler.core import cost
from scheduler.dispatch import EndpointDispatcher
from scheduler.jobs.model import Job, JobMode, new_job_id
from scheduler.store.base import Admission


class UnknownEndpoint(Exception):
    pass


class DeadlineUnmeetable(Exception):
    def __init__(self, eta_s: float) -> None:
        super().__init__(f"the backlog needs about {eta_s:.0f}s, past the job's deadline")
        self.eta_s = eta_s


class NotAccepting(Exception):
    """The daemon is draining: new jobs go elsewhere."""


class Overloaded(Exception):
    """Admission refused for now (queue depth or cost, a tenant's quota): 429, retry later."""

    def __init__(self, reason: str, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.reason = reason  # also the jobs_rejected label: a bounded set of names
        self.retry_after_s = retry_after_s


class TooCostly(Exception):
    """A job that could never be admitted: its cost alone is over a limit (422, field cost)."""


@dataclass(frozen=True, slots=True)
class Quota:
    """How much one tenant may have queued, over all endpoints; None: unlimited."""

    max_jobs: int | None = None
    max_cost: float | None = None


@dataclass(frozen=True, slots=True)
class Submission:
    endpoint: str
    route: str | None
    payload: Any
    cost: float | None
    priority: int
    timeout_s: float | None
    idempotency_key: str | None
    webhook_url: str | None
    tenant: str = "default"
    session: str | None = None
    quota: Quota | None = None


def limits(dispatcher: EndpointDispatcher, quota: Quota | None) -> Admission:
    """The store counts unfinished jobs; the endpoint's limits are on waiting ones, so the
    jobs running here are allowed on top (other replicas' are not known: with Redis the
    limit is a little stricter while the fleet is busy)."""
    queue = dispatcher.config.queue
    quota = quota or Quota()
    max_cost = None if queue.max_cost is None else queue.max_cost + dispatcher.inflight_cost()
    return Admission(queue.max_depth + dispatcher.inflight, max_cost, quota.max_jobs,
                     quota.max_cost)  # fmt: skip


def new_job(
    dispatcher: EndpointDispatcher, sub: Submission, mode: JobMode, delivery: Any,
    request_id: str | None, now: float,
) -> Job:  # fmt: skip
    """The job a submission makes: its route, its cost (estimated, calibrated, or the caller's
    as the endpoint's policy says), its deadline; ``DeadlineUnmeetable`` when asked for."""
    ep = dispatcher.config
    route = sub.route or ep.default_route
    estimator = cost.select(ep.cost, ep.routes, route)
    job_cost = cost.resolve(estimator, sub.payload, sub.cost)
    if estimator.calibrate and sub.cost is None:
        job_cost = cost.clamp(dispatcher.settling.calibrator.apply(job_cost), estimator)
    timeout_s = sub.timeout_s or ep.default_timeout_s
    eta_s = dispatcher.eta_s()
    if ep.refuse_unmeetable_deadlines and eta_s is not None and eta_s > timeout_s:
        raise DeadlineUnmeetable(eta_s)
    return Job(
        id=new_job_id(),
        endpoint=sub.endpoint,
        route=route,
        payload=fastjson.dumps(sub.payload),  # ASCII: lone surrogates too
        cost=job_cost,
        priority=sub.priority,
        timeout_s=timeout_s,
        mode=mode,
        delivery=delivery,
        created_mono=now,
        idempotency_key=sub.idempotency_key,
        webhook_url=sub.webhook_url,
        request_id=request_id,
        tenant=sub.tenant,
    )


def check_cost(dispatcher: EndpointDispatcher, job: Job, quota: Quota | None) -> None:
    """Refuse a job whose cost alone is over the endpoint's or its tenant's cost limit."""
    for whose, limit in (("the endpoint", dispatcher.config.queue.max_cost),
                         (f"tenant {job.tenant}", (quota or Quota()).max_cost)):  # fmt: skip
        if limit is not None and job.cost > limit:
            raise TooCostly(f"cost {job.cost:g} is over {whose}'s queued-cost limit {limit:g}")
