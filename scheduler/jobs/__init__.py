"""The job lifecycle: the job itself (``model``), admission (``admission``), the service behind
the API (``service``: job table, waiters, results), how a worker's answer reaches the caller
(``delivery``) and webhooks (``webhooks``)."""

from scheduler.jobs.model import (
    CANCELLED_BY_CALLER,
    SHUTDOWN_REASON,
    TERMINAL,
    Job,
    JobMode,
    JobResult,
    JobStatus,
    new_job_id,
)

__all__ = [
    "CANCELLED_BY_CALLER",
    "SHUTDOWN_REASON",
    "TERMINAL",
    "Job",
    "JobMode",
    "JobResult",
    "JobStatus",
    "new_job_id",
]
