"""What follows one attempt: success and what it teaches (throughput, calibration, health),
or a failure and its consequence for the job (retry, re-route, fail) and for the worker
(lease shrunk, retired, ejected)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from scheduler.config import EndpointConfig
from scheduler.core.assignments import Lease, ReuseMode
from scheduler.core.calibration import Calibrator, CompletionRate, ThroughputMeter
from scheduler.core.capacity import Sent
from scheduler.core.health import OutlierDetector
from scheduler.core.retry import FINAL, Action, AttemptKind, decide
from scheduler.core.retry import worker_error_kind as error_kind_of
from scheduler.dispatch.attempt import AttemptResult
from scheduler.dispatch.context import EndpointContext, ejection_policy, log, retry_budget
from scheduler.dispatch.leasing import Leasing
from scheduler.dispatch.pinned import PinnedSessions
from scheduler.dispatch.routing import Routing
from scheduler.jobs import Job, JobStatus

FINAL_STATUS = {
    AttemptKind.EXPIRED: JobStatus.EXPIRED,
    AttemptKind.CALLER_GONE: JobStatus.CANCELLED,
}
REROUTES_OFF_THE_WORKER = (Action.REROUTE_GONE, Action.REROUTE_EVICT, Action.REROUTE_LEGACY)
# Outcomes after which the job may have run, asked here whether it may run again (a 5xx was
# asked in the attempt, before its answer was read). A connection lost after the request was
# sent is one: at-most-once unless the endpoint is idempotent.
ASK_BEFORE_RETRY = frozenset({AttemptKind.TIMEOUT, AttemptKind.MALFORMED, AttemptKind.LOST})
MAY_RUN_AGAIN = (Action.RETRY, Action.REROUTE_GONE)
NOT_RE_RUN = " (it may have run: only an idempotent endpoint runs it again)"


def refusals(job: Job) -> int:
    """How often a worker answered the job 429 (queue past its max_queue_time)."""
    return sum(entry.startswith(Action.REROUTE_SHRINK.value) for entry in job.history)


class Settling:
    def __init__(
        self, ctx: EndpointContext, leasing: Leasing, routing: Routing, sessions: PinnedSessions
    ) -> None:
        self._ctx = ctx
        self._leasing = leasing
        self._routing = routing
        self._sessions = sessions
        self.outliers = OutlierDetector(ejection_policy(ctx.config))
        self.retry_budget = retry_budget(ctx.config)
        self.calibrator = Calibrator(ctx.config.cost.calibration_alpha)
        self.meter = ThroughputMeter()
        self.completions = CompletionRate()
        self.worker_error_counts: Counter[str] = Counter()
        # This endpoint's series bound once: ``.labels()`` on every job costs ~1.3 us each.
        self._worker_latency = ctx.metrics.worker_latency.labels(ctx.name)
        self._cost_ratio = ctx.metrics.cost_ratio.labels(ctx.name)

    def reconfigure(self, config: EndpointConfig) -> None:
        self.outliers.policy = ejection_policy(config)
        rb = config.retry_budget
        self.retry_budget.ratio, self.retry_budget.min_retries = rb.ratio, rb.min_retries
        self.retry_budget.window_s = rb.window_s
        self.calibrator.alpha = config.cost.calibration_alpha

    def may_run_again(self, job: Job) -> Callable[[], bool]:
        """Whether a job that may have run (a 5xx, a timeout, a malformed or cut answer) may
        run again: the endpoint is idempotent, attempts are left, the retry budget allows."""

        def allowed() -> bool:
            config = self._ctx.config
            return (
                config.idempotent
                and job.attempts < config.max_attempts
                and self.retry_budget.try_retry(self._ctx.clock())
            )

        return allowed

    def settle(self, job: Job, lease: Lease, result: AttemptResult, sent: Sent | None) -> None:
        ctx = self._ctx
        now = ctx.clock()
        if result.headers_after_s is not None:
            self._worker_latency.observe(result.headers_after_s)
        if result.kind in FINAL:
            self._leasing.release(lease, job.cost, False, sent)
            ctx.finish(job, FINAL_STATUS.get(result.kind, JobStatus.FAILED), result.detail)
            return
        # Was the answer sent before this attempt, outside a session? Only that reuse can
        # meet a replay-protecting legacy worker: those hold no sessions, so a 401 on a
        # session lease (a worker before it has fetched its key, a session it lost) only
        # evicts that lease, never turns the endpoint to one route call per job.
        reused = lease.uses > 1 and lease.mode is not ReuseMode.SESSION
        action = decide(result.kind, result.status, reused, ctx.config.reuse == "auto")
        succeeded = action is Action.SUCCEED
        self._leasing.release(lease, job.cost, succeeded, sent)
        if succeeded:
            self.outliers.success(lease.worker_url)
            self._routing.worker_backoff.completed(lease.worker_url)
            self.completions.completed(job.cost, now)
            self._calibrate(job, lease, result)
            ctx.finish(job, JobStatus.SUCCEEDED)
            return
        self._failed(job, lease, action, result)

    def _failed(self, job: Job, lease: Lease, action: Action, result: AttemptResult) -> None:
        kind = result.error_kind or error_kind_of(result.status or 0)
        self.worker_trouble(lease.worker_url, kind, job)
        job.history += (f"{action.value}:{kind}",)
        detail = result.detail
        if (action in MAY_RUN_AGAIN and result.kind in ASK_BEFORE_RETRY
                and not self.may_run_again(job)()):  # fmt: skip
            if action is Action.REROUTE_GONE:  # the worker is still taken as gone
                self._off_the_worker(job, lease, action)
                self._sessions.mark_gone(lease)
                detail = f"{detail}{NOT_RE_RUN}"
            action = Action.FAIL  # it may have run: only idempotent ones go again
        if action is Action.FAIL:
            answered = result.kind == AttemptKind.ANSWERED and result.status
            error = f"worker answered {result.status}" if answered else detail
            self._ctx.finish(job, JobStatus.FAILED, error)
            return
        if job.pinned_session is not None:
            # A pinned job has nowhere else to go: the conversation lives on that worker.
            if action in REROUTES_OFF_THE_WORKER:
                self._sessions.mark_gone(lease)
            job.error_status = 410 if lease.retired else 503
            self._ctx.finish(job, JobStatus.FAILED, f"session worker unavailable ({kind})")
            return
        self._off_the_worker(job, lease, action)
        if action is Action.REROUTE_SHRINK and self._refused_everywhere(job):
            self._ctx.finish(job, JobStatus.FAILED,
                             f"every worker refused it (429), {refusals(job)} times")  # fmt: skip
            return
        self._requeue(job, action.value)

    def _refused_everywhere(self, job: Job) -> bool:
        """A 429 is not an attempt while the job has somewhere to go: it fails the job only
        after ``max_attempts`` of them with every leased worker in its 429 back-off."""
        if refusals(job) < self._ctx.config.max_attempts:
            return False
        now = self._ctx.clock()
        return not self._leasing.pool.workers() - self._routing.worker_backoff.backed_off(now)

    def _off_the_worker(self, job: Job, lease: Lease, action: Action) -> None:
        """What a re-route does to the worker's leases (and to route calls after a 429)."""
        now = self._ctx.clock()
        pool = self._leasing.pool
        if action is not Action.REROUTE_SHRINK:
            self.record_failure(lease.worker_url, now)
        if action is Action.REROUTE_GONE:
            pool.retire_worker(lease.worker_url)
            self._routing.calls.known_workers.pop(lease.worker_url, None)
        elif action is Action.REROUTE_EVICT:
            pool.retire(lease)
        elif action is Action.REROUTE_SHRINK:
            pool.shrink(lease)
            if lease.mode is not ReuseMode.SESSION:
                pool.retire(lease)  # one job at a time cannot shrink: route elsewhere
            # No job goes to this worker for its back-off (another lease with room takes the
            # job at once), and the autoscaler may well answer the same worker again: no new
            # route call before a back-off either.
            self._routing.worker_refused(lease.worker_url, now)
            self._leasing.refused(lease.worker_url)
            self._routing.delay_until(now + self._ctx.backoff(refusals(job)))
        elif action is Action.REROUTE_LEGACY:
            self._leasing.switch_to_never()

    def _requeue(self, job: Job, reason: str) -> None:
        ctx = self._ctx
        ctx.metrics.retries.labels(ctx.name, reason).inc()
        # A worker's 429 refused the job before running it: not an attempt that counts.
        if job.attempts - refusals(job) >= ctx.config.max_attempts:
            ctx.finish(job, JobStatus.FAILED,
                       f"gave up after {job.attempts} attempts (last: {reason})")  # fmt: skip
            return
        log.info("job.requeued", job_id=job.id, endpoint=ctx.name, reason=reason,
                 attempt=job.attempts)  # fmt: skip
        ctx.requeue_front(job)

    def unreachable(self, worker_url: str, kind: str) -> None:
        """A routed worker could not be reached to open a lease."""
        self.worker_trouble(worker_url, kind)
        self.record_failure(worker_url, self._ctx.clock())

    def worker_trouble(self, worker_url: str, kind: str, job: Job | None = None) -> None:
        ctx = self._ctx
        ctx.metrics.worker_errors.labels(ctx.name, kind).inc()
        self.worker_error_counts[kind] += 1
        event = "worker.gone" if kind in ("gone", "lost", "tls") else "worker.error"
        log.warning(event, endpoint=ctx.name, kind=kind, job_id=job.id if job else None,
                    attempt=job.attempts if job else None)  # fmt: skip

    def record_failure(self, worker_url: str, now: float) -> None:
        if self.outliers.failure(worker_url, now):
            self._ctx.metrics.ejections.labels(self._ctx.name).inc()
            self._leasing.pool.retire_worker(worker_url)
            log.warning("worker.ejected", endpoint=self._ctx.name)

    def _calibrate(self, job: Job, lease: Lease, result: AttemptResult) -> None:
        """Observed cost = the worker's service time x its observed throughput."""
        service_s = result.headers_after_s
        if service_s is None:
            return
        self.meter.observe(lease.worker_url, job.cost, service_s)
        throughput = self.meter.throughput(lease.worker_url)
        if throughput is not None and job.cost > 0:
            self.calibrator.observe(job.cost, service_s, throughput)
            self._cost_ratio.observe(service_s * throughput / job.cost)
