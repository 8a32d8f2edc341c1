"""In-memory job records: lookup by id and idempotency key, finished jobs kept for a while."""

from __future__ import annotations

from collections import deque

from scheduler.jobs import Job


class MemoryJobStore:
    """Holds every job it was given until ``retention_s`` after it finished (then 404)."""

    def __init__(self, retention_s: float, max_retained: int) -> None:
        self._retention_s = retention_s
        self._max_retained = max_retained
        self._jobs: dict[str, Job] = {}
        self._idempotency: dict[tuple[str, str, str], str] = {}  # (endpoint, tenant, key)
        self._finished: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job: Job) -> None:
        self._jobs[job.id] = job
        if job.idempotency_key is not None:
            self._idempotency[(job.endpoint, job.tenant, job.idempotency_key)] = job.id

    def ids(self) -> list[str]:
        """Every job held, finished or not."""
        return list(self._jobs)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def by_idempotency_key(self, endpoint: str, key: str, tenant: str = "default") -> Job | None:
        """A tenant's job by its key: keys of different tenants never collide."""
        job_id = self._idempotency.get((endpoint, tenant, key))
        return None if job_id is None else self._jobs.get(job_id)

    def mark_finished(self, job: Job, now: float) -> None:
        self._finished.append((now, job.id))
        while len(self._finished) > self._max_retained:
            self._forget(self._finished.popleft()[1])

    def sweep(self, now: float) -> int:
        removed = 0
        while self._finished and now - self._finished[0][0] >= self._retention_s:
            self._forget(self._finished.popleft()[1])
            removed += 1
        return removed

    def _forget(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is not None and job.idempotency_key is not None:
            self._idempotency.pop((job.endpoint, job.tenant, job.idempotency_key), None)
