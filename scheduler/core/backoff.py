"""Back-off after refusals: route calls Vast refuses (429, 400, 401) and workers that answer
429. Pure: the caller passes ``now`` and the jitter."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.core.retry import backoff_s

# Route errors that mean "Vast will not route for us as configured" (a bad key, a bad
# endpoint name): the daemon is not ready while its last route call ended so.
REFUSED_KINDS = frozenset({"bad_request", "unauthorized"})


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential back-off: the ``streak``-th refusal in a row waits about
    ``initial_s * multiplier ** (streak - 1)``, at most ``max_s`` (jittered down to half)."""

    initial_s: float
    max_s: float
    multiplier: float

    def delay_s(self, streak: int, jitter: float) -> float:
        return backoff_s(streak, self.initial_s, self.max_s, self.multiplier, jitter)


def route_refusal_delay_s(
    policy: Backoff,
    streak: int,
    retry_after_s: float | None,
    max_retry_after_s: float,
    jitter: float,
) -> float:
    """How long no route call goes out after a refused one: Vast's ``Retry-After`` when it
    sent one (capped at ``max_retry_after_s``), else the back-off for the ``streak``-th
    refusal in a row (Vast documents no ``Retry-After`` on its 429s)."""
    if retry_after_s is not None and retry_after_s > 0:
        return min(retry_after_s, max_retry_after_s)
    return policy.delay_s(streak, jitter)


@dataclass(slots=True)
class _Refused:
    streak: int
    until: float


class WorkerBackoff:
    """Workers that answered a job 429 (queue past their ``max_queue_time``): each one gets
    no job until its back-off ends; a refusal in a row doubles it (capped), a job it
    completes clears it. At most ``max_workers`` remembered (the oldest dropped first)."""

    def __init__(self, policy: Backoff, max_workers: int = 4096) -> None:
        self.policy = policy
        self._max_workers = max_workers
        self._workers: dict[str, _Refused] = {}

    def refused(self, worker: str, now: float, jitter: float) -> float:
        """A 429 from ``worker``: returns when it may be given a job again."""
        state = self._workers.pop(worker, None)
        streak = 1 if state is None else state.streak + 1
        until = now + self.policy.delay_s(streak, jitter)
        if len(self._workers) >= self._max_workers:
            self._workers.pop(next(iter(self._workers)))
        self._workers[worker] = _Refused(streak, until)
        return until

    def completed(self, worker: str) -> None:
        self._workers.pop(worker, None)

    def blocked(self, worker: str, now: float) -> bool:
        state = self._workers.get(worker)
        return state is not None and now < state.until

    def backed_off(self, now: float) -> frozenset[str]:
        return frozenset(w for w, s in self._workers.items() if now < s.until)

    def next_release(self, now: float) -> float | None:
        """When the first backed-off worker may take jobs again (None: none backed off)."""
        return min((s.until for s in self._workers.values() if now < s.until), default=None)

    def streak(self, worker: str) -> int:
        state = self._workers.get(worker)
        return 0 if state is None else state.streak


@dataclass(frozen=True, slots=True)
class RouteTrouble:
    """Route calls failing in a row: the last one's error ``kind``, when the first failed
    (``since``), how many (``streak``) and when the next may go out (``retry_at``)."""

    kind: str
    since: float
    streak: int
    retry_at: float

    @property
    def refused(self) -> bool:
        """Vast refuses the calls as configured (400/401): nothing routes until that changes."""
        return self.kind in REFUSED_KINDS


def route_failed(
    trouble: RouteTrouble | None, kind: str, now: float, retry_at: float
) -> RouteTrouble:
    """The trouble after one more failed route call (a new streak if there was none)."""
    if trouble is None:
        return RouteTrouble(kind, now, 1, retry_at)
    return RouteTrouble(kind, trouble.since, trouble.streak + 1, retry_at)
