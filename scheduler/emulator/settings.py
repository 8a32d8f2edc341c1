"""Typed configuration of the emulator: the ``emulator:`` section of the daemon's YAML.

Example::

    emulator:
      port: 8081
      route_min_interval_ms: 50
      endpoints:
        echo: {workers: 2, perf: 10000}
        llm: {workers: 1, cold_start_s: 5, workload: max_tokens, service: batching}
        comfy: {workers: 1, service: fifo}
        old: {workers: 1, mode: legacy}

The account (what Vast's console knows; see :class:`EmulatorConfig` and
:class:`EmulatedEndpoint`)::

    emulator:
      account_api_key: ${EMULATOR_ACCOUNT_KEY}   # default: EMULATOR_ACCOUNT_KEY below
      endpoints:
        echo: {workers: 2, id: 4242, api_key: ${ECHO_ENDPOINT_KEY}, max_queue_time_s: 30}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

# The emulator's account key when none is configured (a public test value, like the
# daemon's EMULATOR_KEY): what the console listing and get_endpoint_workers accept.
EMULATOR_ACCOUNT_KEY = "emulator-account-key"
# An endpoint without an explicit id gets FIRST_ENDPOINT_ID + its index among the
# endpoints' names in sorted order (the next free id if an explicit id holds that one).
FIRST_ENDPOINT_ID = 1000
EndpointState = Literal["active", "suspended", "stopped"]
WorkerMode = Literal["current", "legacy"]
WorkloadKind = Literal["constant", "max_tokens"]
ServiceModel = Literal["processor_sharing", "fifo", "batching"]
BatchMemory = Literal["reserve", "grow"]
_PARALLEL_SERVICE: dict[bool, ServiceModel] = {True: "processor_sharing", False: "fifo"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EmulatedEndpoint(_Frozen):
    """One emulated endpoint and the workers that serve it.

    Workload (cost units a request puts on a worker, as the worker computes it):
    ``constant`` = ``workload_units`` per request (the official default is 100);
    ``max_tokens`` = the payload's ``max_tokens`` (``default_max_tokens`` when absent or
    not a positive number) times ``workload_units_per_token``.

    Service model (``service``; ``perf`` is the rate of one request alone, cost units/s, so
    a request alone always takes ``workload / perf`` seconds):

    - ``fifo`` (default): one request at a time at ``perf``, the others wait in arrival
      order (the official worker's default, ``allow_parallel_requests=False``; a model that
      serves one at a time);
    - ``processor_sharing``: n requests in flight each progress at ``perf / n``;
    - ``batching``: a continuous-batching inference server (vLLM, TGI): up to ``max_batch``
      requests progress at once, each at ``perf / (1 + batch_slowdown * (n - 1))`` with n
      the number in the batch; the rest wait FIFO and join as soon as a slot frees. With
      ``max_batch_cost``, a batch also holds at most that much workload (each request's
      whole workload, as a vLLM server reserves KV cache for a request's tokens): large
      requests make the batch smaller; the oldest waiting request joins first, and one that
      does not fit holds those behind it back. ``batch_memory: grow`` (vLLM's paged KV
      cache): a request holds ``prompt_share`` of its workload from its start plus what it
      has served; it joins while that fits, and when the batch's memory is full the newest
      request in it is preempted (its progress lost; it waits first in line), and none joins
      until one finishes.

    ``parallel`` is the older spelling: ``true`` = ``processor_sharing``, ``false`` =
    ``fifo``; giving both ``parallel`` and a ``service`` that disagrees is an error.

    What the worker reports, after the official worker (``vastai`` 1.9.1,
    ``serverless/server/lib/backend.py`` and ``data_types.py``):

    - ``max_perf`` is what its load-time benchmark measures: ``BenchmarkConfig.concurrency``
      requests (default 10) sent together when the handler has
      ``allow_parallel_requests``, else 1, and ``throughput = total_workload /
      time_elapsed`` (the best of its runs). The emulated worker computes that same
      measurement on its own service model, at ``benchmark_concurrency`` for
      ``processor_sharing`` and ``batching`` and at 1 for ``fifo``: ``perf`` for the first
      two, and for ``batching`` its throughput with that many in the batch,
      ``c * perf / (1 + batch_slowdown * (c - 1))`` when ``c <= max_batch`` (10 requests,
      slowdown 0.02: 8.47 x ``perf``);
    - the 429 check is the official one: refused when the in-flight workload (session
      entries left out) over ``max_perf`` exceeds ``max_queue_time_s``.

    Assumed, not taken from the worker: a real benchmark's requests are all alike and its
    timing noise is absent here (one exact run); the batch slowdown is linear in the batch
    size, and a waiting request costs nothing until it joins the batch.

    The endpoint as the account holds it (Vast's console, ``GET /api/v0/endptjobs/``):

    - ``id``: its numeric id; default :data:`FIRST_ENDPOINT_ID` + its index in the sorted
      names (see :meth:`EmulatorConfig.endpoint_ids`); ids are unique;
    - ``api_key``: its own key for ``/route/``. Without one, the keys the emulator was
      started with (``Emulator(config, api_keys)``, the daemon's ``vast.api_key``) work for
      it and the listing shows the first of them. With one (or after a rotation, admin
      ``POST /admin/endpoints/{name}/rotate_key``), only that key works for it;
    - the scaling settings the listing shows, under Vast's names: ``endpoint_state``,
      ``max_workers``, ``cold_workers``, ``min_load``, ``target_util``, ``cold_mult``,
      ``max_queue_time`` (= ``max_queue_time_s``, also the workers' 429 bound) and
      ``target_queue_time`` (= ``target_queue_time_s``). Defaults are Vast's (``vastai
      update endpoint --help``). ``max_queue_time_s`` is the workers' 429 bound and the
      queue limit past which the autoscaler holds requests (WAITING); the others drive the
      autoscaler model below when ``autoscale`` is on, and are only listed otherwise.

    The autoscaler model (``autoscale: true``; off by default: the fleet stays as
    configured). Every ``autoscale_interval_s`` it computes the workers the endpoint wants
    (:mod:`scheduler.emulator.scaling`), starts the missing ones (a stopped worker first,
    else a new one; each takes ``cold_start_s`` before it is ready) and stops excess
    workers that have had nothing in flight (no request, no session) for
    ``scale_down_idle_s``. ``workers`` is the fleet at start.

    - From Vast's documentation and code (``vastai`` 1.9.1 CLI help, ``api/endpoints.py``,
      protocol doc section 3): the settings' names, meanings and defaults (``min_load``
      floor load in perf units/s, ``target_util`` target utilisation, ``target_queue_time``
      seconds to clear the queue, ``inactivity_timeout`` seconds of no traffic before it
      may scale to zero active workers, ``max_workers``); that Vast scales on the load
      workers report and the demand it holds; that it bills an instance from start to stop.
    - Assumed: the formula (see :mod:`scheduler.emulator.scaling`), the load as reported
      ``new_load`` per second over ``load_window_s``, the tick, the idle time before a
      stop, one cold-start delay whether the instance was stopped or new, and
      ``inactivity_timeout_s`` default 60 (Vast's listing leaves it unset).
      ``cold_mult``/``cold_workers`` (stopped instances kept warm) are listed, not modelled:
      stopped instances cost nothing here.

    Billing (always on, shown in ``/admin/stats``): worker-seconds from each start to its
    stop or kill, per worker and per endpoint.
    """

    workers: int = Field(default=2, ge=0, le=256)
    perf: float = Field(default=10_000.0, gt=0)
    cold_start_s: float = Field(default=0.0, ge=0)
    max_queue_time_s: float = Field(default=30.0, gt=0)
    max_sessions: int = Field(default=10, ge=0)
    service: ServiceModel = "fifo"
    max_batch: int = Field(default=32, ge=1, le=4096)
    batch_slowdown: float = Field(default=0.02, ge=0, le=1)
    # batching: the work a batch holds at most (a KV cache's tokens); None: max_batch alone
    max_batch_cost: float | None = Field(default=None, gt=0)
    # How a request holds that memory: all of it from its start (TGI), or its prompt's share
    # and what it has served, the newest preempted when the batch is full (vLLM)
    batch_memory: BatchMemory = "reserve"
    prompt_share: float = Field(default=0.1, ge=0, le=1)
    benchmark_concurrency: int = Field(default=10, ge=1, le=4096)
    mode: WorkerMode = "current"
    workload: WorkloadKind = "constant"
    workload_units: float = Field(default=100.0, gt=0)
    workload_units_per_token: float = Field(default=1.0, gt=0)
    default_max_tokens: int = Field(default=16, gt=0)
    stream_chunks_max: int = Field(default=16, gt=0, le=1000)
    id: int | None = Field(default=None, ge=1)
    api_key: SecretStr | None = None
    endpoint_state: EndpointState = "active"
    max_workers: int = Field(default=20, ge=0)
    cold_workers: int = Field(default=5, ge=0)
    min_load: float = Field(default=0.0, ge=0)
    target_util: float = Field(default=0.9, gt=0, le=1)
    cold_mult: float = Field(default=2.5, gt=0)
    target_queue_time_s: float = Field(default=10.0, gt=0)
    inactivity_timeout_s: float = Field(default=60.0, ge=0)
    autoscale: bool = False
    autoscale_interval_s: float = Field(default=1.0, gt=0)
    scale_down_idle_s: float = Field(default=10.0, ge=0)
    load_window_s: float = Field(default=10.0, gt=0)

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty: leave it out to use the emulator's keys")
        return value

    @model_validator(mode="before")
    @classmethod
    def _parallel_is_an_alias(cls, data: Any) -> Any:
        """``parallel: true|false`` stands for ``service: processor_sharing|fifo``."""
        if not isinstance(data, dict) or "parallel" not in data:
            return data
        data = dict(data)
        parallel = data.pop("parallel")
        if not isinstance(parallel, bool):
            raise ValueError("parallel must be true or false")
        implied = _PARALLEL_SERVICE[parallel]
        if data.setdefault("service", implied) != implied:
            raise ValueError(
                f"parallel: {str(parallel).lower()} means service: {implied},"
                f" not {data['service']!r}: give service alone"
            )
        return data

    def with_overrides(self, overrides: dict[str, Any]) -> EmulatedEndpoint:
        """A validated copy with some fields replaced (used when adding a worker)."""
        base = self.model_dump()
        if "parallel" in overrides:  # the alias replaces the endpoint's service
            base.pop("service")
        return EmulatedEndpoint.model_validate({**base, **overrides})


def _default_endpoints() -> dict[str, EmulatedEndpoint]:
    return {"echo": EmulatedEndpoint()}


class EmulatorConfig(_Frozen):
    """The whole emulator: one autoscaler and the endpoints' workers."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    endpoints: dict[str, EmulatedEndpoint] = Field(default_factory=_default_endpoints)
    route_min_interval_ms: float = Field(default=0.0, ge=0)
    route_error_rate: float = Field(default=0.0, ge=0, le=1)
    route_delay_ms: float = Field(default=0.0, ge=0)
    # Vast documents no Retry-After on its 429s: false answers them without one, as Vast may.
    route_retry_after: bool = True
    status_interval_s: float = Field(default=1.0, gt=0)
    stale_after_s: float | None = Field(default=None, gt=0)
    session_reap_interval_s: float = Field(default=5.0, gt=0)
    seed: int | None = None
    account_api_key: SecretStr = SecretStr(EMULATOR_ACCOUNT_KEY)
    # A PEM root served at /static/jvastai_root.cer, as Vast's console serves its own; unset: 404.
    tls_root_cert: Path | None = None

    @field_validator("tls_root_cert")
    @classmethod
    def _root_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @field_validator("account_api_key")
    @classmethod
    def _account_key_not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _ids_unique(self) -> EmulatorConfig:
        self.endpoint_ids()  # raises ValueError naming both endpoints
        return self

    def endpoint_ids(self) -> dict[str, int]:
        """Every endpoint's id: its own ``id``, else :data:`FIRST_ENDPOINT_ID` + its index
        among the sorted names, moved up to the next free id if another endpoint holds it."""
        return assign_endpoint_ids({name: ep.id for name, ep in self.endpoints.items()})

    def secrets(self) -> list[str]:
        """The account key and the configured endpoint keys (for a log redactor)."""
        keys = [ep.api_key for ep in self.endpoints.values() if ep.api_key is not None]
        return [k.get_secret_value() for k in [self.account_api_key, *keys]]

    @property
    def worker_stale_after_s(self) -> float:
        """A worker whose last report is older than this is no longer routed to."""
        return self.stale_after_s if self.stale_after_s is not None else 3 * self.status_interval_s


def assign_endpoint_ids(explicit: dict[str, int | None]) -> dict[str, int]:
    """Ids for endpoints by name (pure): explicit ones kept (ValueError if two share one),
    the others :data:`FIRST_ENDPOINT_ID` + index in sorted order, or the next free id."""
    owners: dict[int, str] = {}
    for name in sorted(explicit):
        wanted = explicit[name]
        if wanted is None:
            continue
        if wanted in owners:
            raise ValueError(f"endpoints {owners[wanted]!r} and {name!r} both have id {wanted}")
        owners[wanted] = name
    ids = {owners[i]: i for i in owners}
    for index, name in enumerate(sorted(explicit)):
        if name in ids:
            continue
        candidate = FIRST_ENDPOINT_ID + index
        while candidate in owners:
            candidate += 1
        owners[candidate], ids[name] = name, candidate
    return ids
