"""Whether a route answer's worker may take a lease now: not one that answered a job 429 (its
back-off per worker) or could not be reached a moment ago, and not one a session could not be
used on (held at its limit, funded already, or holding as many of the daemon's sessions as it
allows)."""

from __future__ import annotations

from typing import Literal

from scheduler.config import EndpointConfig
from scheduler.core.assignments import ReuseMode
from scheduler.core.backoff import WorkerBackoff
from scheduler.dispatch.context import MAX_REMEMBERED_WORKERS, EndpointContext, log
from scheduler.dispatch.leasing import Leasing
from scheduler.dispatch.route_calls import backoff_policy
from scheduler.dispatch.session_sizing import SessionSizing

GONE_MEMORY_S = 3.0  # a worker found unreachable gets no new lease for this long
Unusable = Literal["blocked", "full"]


class AnswerCheck:
    def __init__(self, ctx: EndpointContext, leasing: Leasing, sizing: SessionSizing) -> None:
        self._ctx = ctx
        self._leasing = leasing
        self._sizing = sizing
        self.worker_backoff = WorkerBackoff(backoff_policy(ctx.config.worker_backoff))
        self._gone_at: dict[str, float] = {}  # workers found unreachable, and when

    def reconfigure(self, config: EndpointConfig) -> None:
        self.worker_backoff.policy = backoff_policy(config.worker_backoff)

    def worker_refused(self, worker_url: str, now: float) -> float:
        """A worker answered a job 429: no job goes to it until the returned time (its back-off
        doubles with each 429 in a row, up to ``worker_backoff.max_s``)."""
        until = self.worker_backoff.refused(worker_url, now, self._ctx.rng.random())
        self._ctx.metrics.worker_backoffs.labels(self._ctx.name).inc()
        log.info("worker.backed_off", endpoint=self._ctx.name, worker_url=worker_url,
                 streak=self.worker_backoff.streak(worker_url),
                 for_s=round(until - now, 3))  # fmt: skip
        return until

    def unavailable(self, now: float) -> frozenset[str]:
        return self.worker_backoff.backed_off(now)

    def remember_gone(self, url: str) -> None:
        if len(self._gone_at) >= MAX_REMEMBERED_WORKERS:
            self._gone_at.clear()  # rare; forgetting costs one more attempt on a dead worker
        self._gone_at[url] = self._ctx.clock()

    def _just_gone(self, url: str, now: float) -> bool:
        gone_at = self._gone_at.get(url)
        return gone_at is not None and now - gone_at < GONE_MEMORY_S

    def unusable(
        self, url: str, now: float, job_cost: float, session_cost: float | None = None
    ) -> Unusable | None:
        """Why an answer naming ``url`` opens no lease for jobs of ``job_cost`` (a session of
        ``session_cost``; None: the one the queue's next batch would declare): "blocked", the
        worker answered 429, or could not be reached, a moment ago; "full", a session could
        not be used (a worker whose sessions hold its limit's worth of such jobs, ``stocked``,
        and that is held at its limit or funded for it already; or one holding as many of
        our sessions as we allow: its cost would be load on the worker for its life, which
        Vast scales on, or push it to its max_sessions); None: usable."""
        if self.worker_backoff.blocked(url, now) or self._just_gone(url, now):
            return "blocked"
        leasing = self._leasing
        if session_cost is None:
            session_cost = self._sizing.head_session_cost()
        if leasing.mode is ReuseMode.SESSION and (
            (
                self._sizing.stocked(url, job_cost)
                and (leasing.pool.saturated(url) or self._sizing.funded(url, job_cost))
            )
            or not leasing.session_room(url, session_cost)
        ):
            return "full"
        return None
