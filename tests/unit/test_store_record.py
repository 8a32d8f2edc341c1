"""A job survives ``to_record`` / ``from_record`` (what the Redis store keeps) unchanged."""

from __future__ import annotations

import math
import string
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from scheduler.jobs import Job, JobResult, JobStatus
from scheduler.jobs.delivery import BufferedDelivery
from scheduler.store.base import from_record, to_record

texts = st.text(max_size=40)
finite = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | texts
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
results = st.builds(JobResult, status_code=st.integers(100, 599),
                    content_type=st.none() | texts, body=json_values)  # fmt: skip
payloads = st.none() | st.text(string.printable, min_size=1, max_size=200).map(str.encode)
maybe = st.none


@st.composite
def jobs(draw: st.DrawFn) -> Job:
    created_mono = draw(st.floats(min_value=0, max_value=1e6))
    started = draw(maybe() | finite.map(lambda d: created_mono + d))
    job = Job(
        id=draw(st.text(min_size=1, max_size=30)),
        endpoint=draw(st.text(min_size=1, max_size=30)),
        route=draw(texts),
        payload=draw(payloads),
        cost=draw(finite),
        priority=draw(st.integers(-100, 100)),
        timeout_s=draw(st.floats(min_value=0.001, max_value=1e6)),
        mode=draw(st.sampled_from(["async", "sync", "proxy"])),
        delivery=BufferedDelivery(16),
        created_mono=created_mono,
        idempotency_key=draw(maybe() | texts),
        webhook_url=draw(maybe() | texts),
        request_id=draw(maybe() | texts),
        tenant=draw(st.text(min_size=1, max_size=20)),
        error_status=draw(maybe() | st.integers(100, 599)),
        history=tuple(draw(st.lists(texts, max_size=3))),
        created_wall=draw(st.floats(min_value=1e9, max_value=2e9)),
        status=draw(st.sampled_from(list(JobStatus))),
        attempts=draw(st.integers(0, 50)),
        started_mono=started,
        finished_mono=draw(maybe() | finite.map(lambda d: created_mono + d)),
        error=draw(maybe() | texts),
    )
    job.result = draw(maybe() | results)
    return job


SAME = ("id", "endpoint", "route", "payload", "cost", "priority", "timeout_s", "mode",
        "idempotency_key", "webhook_url", "request_id", "tenant", "error_status", "history",
        "created_wall", "status", "attempts", "result", "error")  # fmt: skip


def offset(job: Job, name: str) -> float | None:
    value: Any = getattr(job, name)
    return None if value is None else value - job.created_mono


@given(jobs(), st.floats(min_value=0, max_value=1e5), st.floats(min_value=0, max_value=1e5))
def test_record_round_trips(job: Job, age_s: float, elsewhere_mono: float) -> None:
    record = to_record(job, job.created_mono + age_s)
    assert all(isinstance(v, str) for v in record.values())
    # read back on a replica whose monotonic clock has another origin
    back = from_record(record, BufferedDelivery(16), elsewhere_mono, job.created_wall + age_s)
    for name in SAME:
        assert getattr(back, name) == getattr(job, name), name
    assert math.isclose(back.created_mono, elsewhere_mono - age_s, abs_tol=1e-6)
    for name in ("started_mono", "finished_mono"):
        ours, theirs = offset(job, name), offset(back, name)
        assert (ours is None) == (theirs is None), name
        if ours is not None and theirs is not None:
            assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-3), name


@given(jobs())
def test_a_wall_clock_behind_never_makes_a_job_younger_than_zero(job: Job) -> None:
    back = from_record(to_record(job, 0.0), BufferedDelivery(16), 100.0, job.created_wall - 5)
    assert back.created_mono == 100.0
