"""The ways a job reaches a worker: direct (the floor), the official client, the daemon.

Each system answers ``await system.call(job) -> (ok, status)`` and never raises for a failed
job. Every network call has a timeout; every retry loop is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from bench.procs import API_KEY, DAEMON_HEADERS, DAEMON_TOKEN

JOB_TIMEOUT_S = 120.0
DIRECT_MAX_ATTEMPTS = 8
DIRECT_POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class Job:
    index: int
    endpoint: str
    route: str
    payload: dict[str, Any]
    cost: float


class System(Protocol):
    name: str

    async def call(self, job: Job) -> tuple[bool, int]: ...

    async def close(self) -> None: ...


def client_session(limit: int, headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(total=JOB_TIMEOUT_S, sock_connect=10)
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
        headers=headers,
    )


async def _post_read(
    http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """``(status, body)``; status 0 when the call failed."""
    try:
        async with http.post(url, json=body, headers=headers) as resp:
            return resp.status, await resp.read()
    except (aiohttp.ClientError, TimeoutError):
        return 0, b""


async def _post(
    http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[bool, int]:
    status, _ = await _post_read(http, url, body, headers)
    return status == 200, status


# --------------------------------------------------------------------------- the daemon
class DaemonRun:
    """``POST /v1/endpoints/{endpoint}/run``: the daemon estimates the cost itself."""

    name = "vast-scheduler (run)"

    def __init__(self, daemon_url: str, concurrency: int) -> None:
        self.url = daemon_url
        self.http = client_session(concurrency + 16, DAEMON_HEADERS)

    async def call(self, job: Job) -> tuple[bool, int]:
        body = {"route": job.route, "payload": job.payload}
        return await _post(self.http, f"{self.url}/v1/endpoints/{job.endpoint}/run", body)

    async def close(self) -> None:
        await self.http.close()


class DaemonProxy(DaemonRun):
    """``POST /v1/proxy/{endpoint}{route}``: the body is the payload, passed through."""

    name = "vast-scheduler (proxy)"

    async def call(self, job: Job) -> tuple[bool, int]:
        return await _post(self.http, f"{self.url}/v1/proxy/{job.endpoint}{job.route}", job.payload)


class Relay(DaemonRun):
    """``POST /relay/{endpoint}{route}`` on ``bench.relay_proc``: one bare aiohttp hop."""

    name = "aiohttp relay (one hop)"

    async def call(self, job: Job) -> tuple[bool, int]:
        return await _post(self.http, f"{self.url}/relay/{job.endpoint}{job.route}", job.payload)


# --------------------------------------------------------------------------- the official client
def offline_client(**kwargs: Any) -> Any:
    """``vastai.serverless.client.CoroutineServerless(**kwargs)``, quiet and offline."""
    from vastai.serverless.client.client import CoroutineServerless

    # The client stays silent unless the application configures logging; keep Python's
    # last-resort handler from printing its warnings (re-routes) on our stderr.
    logging.getLogger().addHandler(logging.NullHandler())
    client = CoroutineServerless(**kwargs)
    # Offline: on its first call the client downloads Vast's root certificate from
    # https://console.vast.ai/static/jvastai_root.cer to build the SSL context it passes on
    # every request (even plain-HTTP ones, where aiohttp ignores it). Seeding its cache with
    # a default context skips that download; nothing else changes (all traffic here is
    # plain HTTP on 127.0.0.1, so the context is never used for a handshake).
    client._ssl_context = ssl.create_default_context()
    return client


class Official:
    """``vastai.serverless.client.CoroutineServerless``, one ``endpoint.request`` per job."""

    name = "official vastai client"

    def __init__(
        self, autoscaler_url: str, endpoint: str, timeout_s: float = JOB_TIMEOUT_S
    ) -> None:
        from vastai.serverless.client.endpoint import Endpoint

        self.client = offline_client(api_key=API_KEY, autoscaler_url=autoscaler_url)
        self.endpoint: Any = Endpoint(self.client, name=endpoint, id=1, api_key=API_KEY)
        self.timeout_s = timeout_s
        self.errors: Counter[str] = Counter()  # what the client raised, for the report

    async def _endpoint(self) -> Any:
        return self.endpoint

    async def call(self, job: Job) -> tuple[bool, int]:
        try:
            endpoint = await self._endpoint()
            result = await endpoint.request(
                job.route, job.payload, cost=int(job.cost), timeout=self.timeout_s
            )
        except Exception as exc:  # the client raises bare Exceptions (and TimeoutError)
            self.errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
            return False, 0
        status = int(result.get("status") or 0)
        return bool(result.get("ok")) and status == 200, status

    async def close(self) -> None:
        await self.client.close()


class OfficialViaDaemon(Official):
    """The same client with its two URLs pointed at the daemon's front door and a daemon token
    as its key: ``get_endpoint`` reads the daemon's listing, every ``/route/`` is answered by
    the daemon at once, and the job runs through the daemon's queue and leases."""

    name = "vast-scheduler (official client)"

    def __init__(  # the endpoint comes from the daemon's listing: no super().__init__
        self, daemon_url: str, endpoint: str, concurrency: int, timeout_s: float = JOB_TIMEOUT_S
    ) -> None:
        # A request queued in the daemon holds its connection until the job ran (straight to
        # Vast it would be polling instead). Past the client's 500 connections, the route calls
        # of further requests wait for one and fail after the client's 10 s route timeout:
        # the README tells users to raise connection_limit to their concurrency, as here.
        self.client = offline_client(
            api_key=DAEMON_TOKEN,
            autoscaler_url=daemon_url,
            webserver_url=daemon_url,
            connection_limit=max(500, concurrency + 16),
        )
        self.endpoint_name = endpoint
        self.endpoint = None
        self.lock = asyncio.Lock()
        self.timeout_s = timeout_s
        self.errors = Counter()

    async def _endpoint(self) -> Any:
        async with self.lock:  # one listing call, by the first job
            if self.endpoint is None:
                self.endpoint = await self.client.get_endpoint(self.endpoint_name)
        return self.endpoint


# --------------------------------------------------------------------------- direct
@dataclass
class _WorkerSlot:
    answer: dict[str, Any]
    perf: float
    outstanding: float = 0.0


@dataclass
class Direct:
    """The floor: one signed route answer per worker, reused for every job sent to it; jobs go
    to the worker with the least outstanding cost per unit of perf. No queue, no sessions:
    it overlaps requests on one answer, which the real worker's reqnum bookkeeping would
    mis-account (fine for a floor, wrong for production).

    While no worker is ready one poller routes every ``DIRECT_POLL_S``; a worker that fails
    is dropped and a fresh answer fetched (single flight), at most ``DIRECT_MAX_ATTEMPTS``
    tries per job.
    """

    autoscaler_url: str
    endpoint: str
    perfs: dict[str, float]  # worker URL -> perf, from the emulator's admin API
    concurrency: int
    expected_workers: int
    name: str = "direct (floor)"
    slots: dict[str, _WorkerSlot] = field(default_factory=dict)
    route_calls: int = 0
    dead: set[str] = field(default_factory=set)
    _refresh: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.http = client_session(self.concurrency + 16)
        self.route_http = client_session(8)

    async def _route_once(self, cost: float) -> dict[str, Any] | None:
        body = {"endpoint": self.endpoint, "cost": cost}
        headers = {"Authorization": f"Bearer {API_KEY}"}
        self.route_calls += 1
        try:
            async with self.route_http.post(
                f"{self.autoscaler_url}/route/", json=body, headers=headers
            ) as resp:
                answer = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return answer if isinstance(answer, dict) and "url" in answer else None

    async def _collect(self, max_s: float = JOB_TIMEOUT_S) -> None:
        """Poll until one worker is ready, then route a few more times to meet the others."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_s
        extra_calls = 0
        for _ in range(int(max_s / DIRECT_POLL_S) + 4 * self.expected_workers + 1):
            if loop.time() > deadline:
                return
            answer = await self._route_once(100.0)
            if answer is not None:
                url = str(answer["url"])
                if url not in self.slots and url not in self.dead:
                    self.slots[url] = _WorkerSlot(answer, self.perfs.get(url, 1.0))
                extra_calls += 1
                if (
                    len(self.slots) >= self.expected_workers
                    or extra_calls > 4 * self.expected_workers
                ):
                    return
            elif not self.slots:
                await asyncio.sleep(DIRECT_POLL_S)
            else:
                return

    def _kick_refresh(self) -> asyncio.Task[None]:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._collect())
        return self._refresh

    async def ensure_answers(self) -> None:
        if not self.slots:
            await asyncio.shield(self._kick_refresh())

    def _pick(self, cost: float) -> _WorkerSlot | None:
        if not self.slots:
            return None
        return min(self.slots.values(), key=lambda s: (s.outstanding + cost) / s.perf)

    async def call(self, job: Job) -> tuple[bool, int]:
        status, _ = await self.forward(job)
        return status == 200, status

    async def forward(self, job: Job) -> tuple[int, bytes]:
        """The worker's answer, ``(status, body)``; status 0 when no worker answered."""
        status, answer = 0, b""
        for _ in range(DIRECT_MAX_ATTEMPTS):
            await self.ensure_answers()
            slot = self._pick(job.cost)
            if slot is None:
                await asyncio.sleep(DIRECT_POLL_S)
                continue
            body = {"auth_data": slot.answer, "session_id": None, "payload": job.payload}
            slot.outstanding += job.cost
            try:
                status, answer = await _post_read(
                    self.http, f"{slot.answer['url']}{job.route}", body
                )
            finally:
                slot.outstanding -= job.cost
            if status not in (0, 401, 410, 429):
                return status, answer
            url = str(slot.answer["url"])
            if self.slots.pop(url, None) is not None:  # gone or refusing: route again
                self.dead.add(url)
                self._kick_refresh()
        return status, answer

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)
        await self.http.close()
        await self.route_http.close()
