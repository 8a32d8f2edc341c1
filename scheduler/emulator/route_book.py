"""Pure state of the emulated autoscaler: workers' reports, picking, request_idx, limits.

No I/O and no clock reads: ``now`` (monotonic seconds) is passed in.

Routing, after Vast's description of its engine (protocol doc section 3): the ready worker
with the least estimated queue time (its reported ``cur_load`` plus the cost routed to it
since, over its ``max_perf``); when every ready worker is past its queue limit (its
``max_queue_time``, the bound past which it answers 429 itself) by its last report
(``cur_load / max_perf``) the request is held: WAITING, as when no worker is ready.
Assumed: the estimate (Vast does not publish its formula), that the hold reads the reports
alone (cost routed since the last report does not close a worker: routes racing ahead of
reports still meet the worker's own 429), and ``queue time > limit`` (the worker's rule).

Waiting requests (``request_idx``): a WAITING answer gives a request an index that the
caller carries back to keep its place; the entry holds the request's cost (the autoscaler
model counts it as waiting demand) and lives ``replay_timeout`` seconds (the route call's
field; :data:`DEFAULT_REPLAY_TIMEOUT_S` when absent, the official client's value) from its
last route call. An index carried back after its entry expired, or that never existed, gets
a fresh one. Assumed: Vast documents the field, not what it does with it.

Workers are the emulator's own or **external** (a real process, e.g. the official Vast
worker, registered by id). For external workers the book keeps every ``/worker_status/``
body it receives (bounded, :data:`REPORT_HISTORY_LEN`), read with :meth:`RouteBook.reports`.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Literal

WorkerStatus = Literal["Ready", "Loading", "Error", "Stopped"]
STATUS_ORDER: tuple[WorkerStatus, ...] = ("Ready", "Loading", "Error", "Stopped")
_MAX_PENDING = 100_000
DEFAULT_REPLAY_TIMEOUT_S = 60.0
DEFAULT_QUEUE_LIMIT_S = 30.0  # the official worker's and Vast's default max_queue_time
_MAX_FINISHED_PER_WORKER = 1_000
REPORT_HISTORY_LEN = 10_000


@dataclass(frozen=True)
class StatusReport:
    """One ``/worker_status/`` body as received, with its arrival time (monotonic seconds)."""

    at: float
    body: dict[str, Any]


@dataclass
class Waiter:
    """One waiting request: its endpoint, cost and when its entry expires."""

    endpoint: str
    cost: float
    expires_at: float


@dataclass
class WorkerView:
    """What the autoscaler knows of one worker: its latest report and routed cost since.

    External workers may carry overrides: ``url_override`` (route there instead of the
    reported ``url``), ``perf_override`` (cost units/s for queue-time balancing instead of
    the reported ``max_perf``), ``stale_after_s`` (instead of the book's) and ``history``
    (every report received, bounded).
    """

    worker_id: int
    endpoint: str
    legacy: bool = False
    report: dict[str, Any] | None = None
    reported_at: float | None = None
    routed_since_report: float = 0.0
    reports: int = 0
    finished: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=_MAX_FINISHED_PER_WORKER)
    )
    external: bool = False
    url_override: str | None = None
    perf_override: float | None = None
    stale_after_s: float | None = None
    history: deque[StatusReport] | None = None
    started_at: float | None = None  # when this life's first report came (or loadtime before)
    loaded_at: float | None = None  # when its first ready report of this life came
    queue_limit_s: float = DEFAULT_QUEUE_LIMIT_S  # past this queue time it is not routed to

    def status(self, now: float, stale_after_s: float) -> WorkerStatus:
        if self.report is None or self.reported_at is None:
            return "Loading"
        limit_s = self.stale_after_s if self.stale_after_s is not None else stale_after_s
        if now - self.reported_at > limit_s:
            return "Stopped"
        if self.report.get("error_msg"):
            return "Error"
        return "Ready" if _loaded(self.report) and self.url else "Loading"

    def note_life(self, report: dict[str, Any], now: float) -> None:
        """Track start and load times across reports: a not-ready report after a ready one
        is a restart; a first ready report sets ``loaded_at`` (and ``started_at`` from its
        ``loadtime`` when no earlier report was seen)."""
        if not _loaded(report) or report.get("error_msg"):
            if self.loaded_at is not None or self.started_at is None:
                self.started_at, self.loaded_at = now, None
        elif self.loaded_at is None:
            self.loaded_at = now
            if self.started_at is None:
                self.started_at = now - _number(report.get("loadtime"))

    @property
    def url(self) -> str:
        if self.url_override:
            return self.url_override
        url = (self.report or {}).get("url")
        return url if isinstance(url, str) else ""

    def queue_time_s(self, routed: bool = True) -> float:
        """Estimated queue time: reported load (plus, by default, cost routed since) over
        its perf."""
        report = self.report or {}
        load = _number(report.get("cur_load")) + (self.routed_since_report if routed else 0.0)
        perf = self.perf_override or _number(report.get("max_perf"))
        return load / max(perf, 1e-5)

    def past_queue_limit(self) -> bool:
        """Its last report puts its queue time past its limit (routing holds off it)."""
        return self.queue_time_s(routed=False) > self.queue_limit_s


def _loaded(report: dict[str, Any]) -> bool:
    loadtime = report.get("loadtime")
    return isinstance(loadtime, int | float) and loadtime > 0


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


@dataclass
class RouteBook:
    """Workers by endpoint, per-endpoint reqnum, and the stable request_idx of waiters."""

    stale_after_s: float
    endpoints: set[str] = field(default_factory=set)
    workers: dict[int, WorkerView] = field(default_factory=dict)
    reqnums: Counter[str] = field(default_factory=Counter)
    pending: OrderedDict[int, Waiter] = field(default_factory=OrderedDict)
    last_request_idx: int = 0
    received: dict[str, float] = field(default_factory=dict)  # reported new_load, summed
    routed: dict[str, float] = field(default_factory=dict)  # cost of READY answers, summed
    last_route_at: dict[str, float] = field(default_factory=dict)  # last valid route call

    def register(
        self,
        worker_id: int,
        endpoint: str,
        legacy: bool,
        queue_limit_s: float = DEFAULT_QUEUE_LIMIT_S,
    ) -> None:
        self.endpoints.add(endpoint)
        self.workers[worker_id] = WorkerView(worker_id, endpoint, legacy)
        self.workers[worker_id].queue_limit_s = queue_limit_s

    def register_external(
        self,
        worker_id: int,
        endpoint: str,
        *,
        url: str | None,
        perf: float | None,
        stale_after_s: float,
        history_len: int = REPORT_HISTORY_LEN,
        queue_limit_s: float = DEFAULT_QUEUE_LIMIT_S,
    ) -> WorkerView:
        """Accept reports from a worker the emulator does not run; keep its reports."""
        if worker_id in self.workers:
            raise ValueError(f"worker id {worker_id} is already registered")
        if perf is not None and not perf > 0:
            raise ValueError("perf must be > 0")
        if not stale_after_s > 0:
            raise ValueError("stale_after_s must be > 0")
        self.endpoints.add(endpoint)
        view = WorkerView(worker_id, endpoint, external=True, url_override=url)
        view.perf_override, view.stale_after_s = perf, stale_after_s
        view.history = deque(maxlen=history_len)
        view.queue_limit_s = queue_limit_s
        self.workers[worker_id] = view
        return view

    def reports(self, worker_id: int) -> list[StatusReport]:
        """Every report kept for an external worker, oldest first (a copy).

        KeyError for an unknown id or a worker whose reports are not kept (the emulator's
        own workers): an empty answer would make "every report satisfies X" vacuous.
        """
        view = self.workers.get(worker_id)
        if view is None or view.history is None:
            raise KeyError(f"no reports kept for worker {worker_id} (not an external worker)")
        return list(view.history)

    def on_status(self, report: dict[str, Any], now: float) -> bool:
        """Store a ``/worker_status/`` report; False when the worker id is unknown."""
        view = self.workers.get(report.get("id", -1))
        if view is None:
            return False
        if view.history is not None:
            view.history.append(StatusReport(now, report))
        view.note_life(report, now)
        received = self.received.get(view.endpoint, 0.0)
        self.received[view.endpoint] = received + _number(report.get("new_load"))
        view.report, view.reported_at = report, now
        view.routed_since_report = 0.0
        view.reports += 1
        return True

    def on_finished(self, body: dict[str, Any]) -> bool:
        view = self.workers.get(body.get("worker_id", -1))
        requests = body.get("requests")
        if view is None or not isinstance(requests, list):
            return False
        view.finished.extend(r for r in requests if isinstance(r, dict))
        return True

    def summary(self, endpoint: str, now: float) -> str:
        """The WAITING answer's ``status``, e.g. ``"Ready: 0, Loading: 2, ..."``."""
        views = [v for v in self.workers.values() if v.endpoint == endpoint]
        counts = Counter(v.status(now, self.stale_after_s) for v in views)
        return ", ".join(f"{name}: {counts[name]}" for name in STATUS_ORDER)

    def ready(self, endpoint: str, now: float) -> list[WorkerView]:
        """The endpoint's workers whose status is Ready."""
        return [
            v
            for v in self.workers.values()
            if v.endpoint == endpoint and v.status(now, self.stale_after_s) == "Ready"
        ]

    def pick(self, endpoint: str, now: float) -> WorkerView | None:
        """The ready worker with the least estimated queue time, among those not past
        their queue limit; None (hold the request) when there is none."""
        open_ = [v for v in self.ready(endpoint, now) if not v.past_queue_limit()]
        return min(open_, key=lambda v: (v.queue_time_s(), v.worker_id), default=None)

    def request_idx(
        self,
        endpoint: str,
        carried: int,
        *,
        cost: float = 0.0,
        now: float = 0.0,
        replay_timeout_s: float = DEFAULT_REPLAY_TIMEOUT_S,
    ) -> int:
        """Keep a waiter's place: a request_idx given out earlier for this endpoint, and
        not expired, comes back unchanged (its cost and expiry renewed); else a new one."""
        self.expire_waiters(now)
        self.last_route_at[endpoint] = now
        waiter = self.pending.get(carried) if carried else None
        if waiter is not None and waiter.endpoint == endpoint:
            waiter.cost, waiter.expires_at = cost, now + replay_timeout_s
            self.pending.move_to_end(carried)
            return carried
        self.last_request_idx += 1
        self.pending[self.last_request_idx] = Waiter(endpoint, cost, now + replay_timeout_s)
        while len(self.pending) > _MAX_PENDING:
            self.pending.popitem(last=False)
        return self.last_request_idx

    def expire_waiters(self, now: float) -> int:
        """Drop waiting entries past their expiry; return how many. Entries are kept in
        order of their last route call, so the scan stops at the first live one (exact
        when every caller sends the same ``replay_timeout``; a longer one lives at most
        until the entries before it go)."""
        dropped = 0
        while self.pending:
            idx, waiter = next(iter(self.pending.items()))
            if waiter.expires_at > now:
                break
            del self.pending[idx]
            dropped += 1
        return dropped

    def waiting(self, endpoint: str, now: float) -> tuple[int, float]:
        """How many requests wait on ``endpoint`` and their total cost."""
        self.expire_waiters(now)
        costs = [w.cost for w in self.pending.values() if w.endpoint == endpoint]
        return len(costs), sum(costs)

    def assign(self, view: WorkerView, cost: float, request_idx: int) -> int:
        """Route ``cost`` to ``view``; return the endpoint's next reqnum."""
        self.pending.pop(request_idx, None)
        view.routed_since_report += cost
        self.routed[view.endpoint] = self.routed.get(view.endpoint, 0.0) + cost
        self.reqnums[view.endpoint] += 1
        return self.reqnums[view.endpoint]


@dataclass
class RateLimiter:
    """Minimum interval between accepted calls of one identity."""

    last_accepted: dict[str, float] = field(default_factory=dict)

    def check(self, identity: str, now: float, min_interval_s: float) -> int | None:
        """None if allowed (and recorded); else the Retry-After value in whole seconds."""
        last = self.last_accepted.get(identity)
        if min_interval_s > 0 and last is not None and now - last < min_interval_s:
            return max(1, math.ceil(min_interval_s - (now - last)))
        self.last_accepted[identity] = now
        return None
