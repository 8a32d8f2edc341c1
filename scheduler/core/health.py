"""Protection against failing workers: outlier ejection and a retry budget. Pure."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EjectionPolicy:
    consecutive_failures: int = 5
    base_s: float = 5.0
    max_s: float = 60.0


@dataclass(slots=True)
class _WorkerHealth:
    failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    probing: bool = False


class OutlierDetector:
    """Ejects a worker after consecutive failures; after the ejection one probe is let through
    (half-open): its success restores the worker, its failure ejects it again for longer."""

    def __init__(self, policy: EjectionPolicy, max_workers: int = 4096) -> None:
        self.policy = policy
        self._workers: dict[str, _WorkerHealth] = {}
        self._max_workers = max_workers
        self.ejections_total = 0

    def _state(self, worker: str) -> _WorkerHealth:
        state = self._workers.get(worker)
        if state is None:
            if len(self._workers) >= self._max_workers:
                self._forget_one()
            state = self._workers[worker] = _WorkerHealth()
        return state

    def _forget_one(self) -> None:
        """Drop the oldest entry that is not ejected (the oldest at all if every one is)."""
        victim = next(
            (w for w, s in self._workers.items() if s.ejections == 0),
            next(iter(self._workers)),
        )
        del self._workers[victim]

    def available(self, worker: str, now: float) -> bool:
        state = self._workers.get(worker)
        return state is None or (now >= state.ejected_until and not state.probing)

    def ejected(self, now: float) -> frozenset[str]:
        """Workers not to be given work: ejected, or past ejection with their probe in flight."""
        return frozenset(w for w in self._workers if not self.available(w, now))

    def dispatched(self, worker: str, now: float) -> None:
        """A job went to ``worker``: after an ejection that job is the one half-open probe."""
        state = self._workers.get(worker)
        if state is not None and state.ejections > 0 and now >= state.ejected_until:
            state.probing = True

    def success(self, worker: str) -> None:
        state = self._workers.get(worker)
        if state is not None:
            state.failures = 0
            state.ejections = 0
            state.probing = False

    def failure(self, worker: str, now: float) -> bool:
        """Record a failure; True when it ejects the worker."""
        state = self._state(worker)
        state.failures += 1
        was_probe = state.ejections > 0 and now >= state.ejected_until
        if state.failures < self.policy.consecutive_failures and not was_probe:
            return False
        state.ejections += 1
        duration = min(self.policy.max_s, self.policy.base_s * 2 ** min(state.ejections - 1, 16))
        state.ejected_until = now + duration
        state.failures = 0
        state.probing = False
        self.ejections_total += 1
        return True


class RetryBudget:
    """Retries allowed: ``min_retries`` plus ``ratio`` of the requests in the last ``window_s``."""

    def __init__(self, ratio: float, min_retries: int, window_s: float) -> None:
        self.ratio = ratio
        self.min_retries = min_retries
        self.window_s = window_s
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _trim(self, now: float) -> None:
        for stamps in (self._requests, self._retries):
            while stamps and now - stamps[0] > self.window_s:
                stamps.popleft()

    def record_request(self, now: float) -> None:
        self._trim(now)
        self._requests.append(now)
        if len(self._requests) > 100_000:  # bound memory under extreme rates
            self._requests.popleft()

    def try_retry(self, now: float) -> bool:
        self._trim(now)
        # Whole retries only; the epsilon keeps 0.29 * 100 from truncating to 28.
        allowed = self.min_retries + int(self.ratio * len(self._requests) + 1e-9)
        if len(self._retries) >= allowed:
            return False
        self._retries.append(now)
        return True
