"""The official Vast worker (PyPI ``vastai``) as a subprocess behind the emulator's autoscaler.

::

    async with Emulator(cfg, [key]) as emu, official_worker(emu, "official") as worker:
        ...  # POST /route/ {"endpoint": "official"} now answers worker.url
        worker.reports()  # every /worker_status/ body the emulator received from it
        await worker.records(http)  # what its model and its handlers saw, with times

The worker runs ``official_worker_app.py`` (read its docstring: the workload of a request is
``payload["cost"]``, default 100; the fake model sleeps ``payload["sleep_s"]`` or waits for
``worker.release(http, payload["hold"])``; ``/fifo`` is a FIFO handler, ``/stream``
streams JSON lines; ``/batch`` (parallel) and ``/batch_fifo`` (FIFO) front a batching
model). It is registered with the emulator as an external worker, started with its own
environment (plain HTTP, signatures checked, reports to the emulator), awaited until the
emulator has a ready report from it (``loadtime`` > 0, empty ``error_msg``), and terminated
(then killed) on the way out. Its output goes to ``worker.log`` in a scratch directory,
quoted in errors. ``official_workers(emu, count)`` starts several at once.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager, closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp

from scheduler.emulator.emulator import Emulator
from scheduler.emulator.route_book import StatusReport

APP = Path(__file__).with_name("official_worker_app.py")
DEFAULT_ENDPOINT = "official"
FIRST_EXTERNAL_ID = 10_000
_POLL_S = 0.05


def vastai_installed() -> bool:
    """Whether the official worker's package is installed (dev dependency ``vastai==1.9.1``)."""
    return importlib.util.find_spec("vastai") is not None


SKIP_REASON = "the official Vast worker is not installed (dev dependency vastai==1.9.1)"


@dataclass
class OfficialWorker:
    """A running official worker, as the emulator's autoscaler sees it."""

    emulator: Emulator
    endpoint: str
    worker_id: int
    url: str
    session_end_url: str
    workdir: Path
    process: asyncio.subprocess.Process

    def reports(self) -> list[StatusReport]:
        """Every ``/worker_status/`` report received from it, oldest first (``.at`` is
        ``time.monotonic()`` at arrival, ``.body`` the JSON as sent: ``cur_load``,
        ``new_load``, ``max_perf``, ``num_requests_working``, ``working_request_idxs``,
        ``loadtime``, ``error_msg``, ``url``, ...)."""
        return self.emulator.autoscaler.book.reports(self.worker_id)

    def finished(self) -> list[dict[str, Any]]:
        """Entries of its ``/delete_requests/`` reports (``request_idx``, ``success``,
        ``status``, timings), oldest first, bounded by the emulator."""
        return list(self.emulator.autoscaler.book.workers[self.worker_id].finished)

    async def wait_for_report(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        since: float = 0.0,
        timeout_s: float = 15.0,
    ) -> StatusReport:
        """The first report received at or after ``since`` (monotonic) whose body satisfies
        ``predicate``; TimeoutError after ``timeout_s``. The official worker reports about
        1 s after a change, else about every 11 s."""
        async with asyncio.timeout(timeout_s):
            while True:
                found = [r for r in self.reports() if r.at >= since and predicate(r.body)]
                if found:
                    return found[0]
                await asyncio.sleep(_POLL_S)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the worker's own output (its DEBUG log), for error messages."""
        return _tail(self.workdir / "worker.log", lines)

    @property
    def model_url(self) -> str:
        """Its fake model server (written by the app before the worker starts)."""
        port = json.loads((self.workdir / "model.json").read_text())["model_port"]
        return f"http://127.0.0.1:{port}"

    async def records(self, http: aiohttp.ClientSession) -> dict[str, list[dict[str, Any]]]:
        """``{"model": [...], "worker": [...]}``: every model call and every request as the
        worker's handlers received it (reqnum, session_id, status, monotonic start/end)."""
        async with http.get(f"{self.model_url}/records") as resp:
            assert resp.status == 200, await resp.text()
            records: dict[str, list[dict[str, Any]]] = await resp.json()
            return records

    async def wait_for_records(
        self,
        http: aiohttp.ClientSession,
        predicate: Callable[[dict[str, list[dict[str, Any]]]], bool],
        timeout_s: float = 10.0,
    ) -> dict[str, list[dict[str, Any]]]:
        """Polls :meth:`records` until ``predicate`` holds; TimeoutError after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while not predicate(records := await self.records(http)):
                await asyncio.sleep(_POLL_S)
            return records

    async def release(self, http: aiohttp.ClientSession, key: str) -> None:
        """Let the model calls holding on ``key`` answer."""
        async with http.post(f"{self.model_url}/release", json={"key": key}) as resp:
            assert resp.status == 200, await resp.text()

    async def kill(self) -> None:
        """SIGKILL: its sockets close at once (connections reset), it never reports again."""
        with suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()


def calls_running(records: dict[str, list[dict[str, Any]]]) -> set[Any]:
    """The ``n`` of the model calls started and not ended, in :meth:`OfficialWorker.records`."""
    return {call["n"] for call in records["model"] if call["end"] is None}


def calls_started(records: dict[str, list[dict[str, Any]]]) -> set[Any]:
    """The ``n`` of every model call started so far (ended or not)."""
    return {call["n"] for call in records["model"]}


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:])


def _free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (held together so that they differ)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    with closing(sockets[0]):
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        ports = [int(sock.getsockname()[1]) for sock in sockets]
        for sock in sockets[1:]:
            sock.close()
    return ports


def _environment(
    emulator: Emulator, worker_id: int, port: int, http_port: int, master_token: str
) -> dict[str, str]:
    """The official worker's variables, read when its objects are built."""
    return {
        **os.environ,
        "WORKER_PORT": str(port),
        "WORKER_HTTP_PORT": str(http_port),
        f"VAST_TCP_PORT_{port}": str(port),
        "PUBLIC_IPADDR": "127.0.0.1",
        "CONTAINER_ID": str(worker_id),
        "REPORT_ADDR": emulator.autoscaler_url,
        "UNSECURED": "false",  # check signatures
        "USE_SSL": "false",  # plain HTTP (else it loads /etc/instance.crt)
        "MASTER_TOKEN": master_token,
        "PYTHONUNBUFFERED": "1",
    }


def _open_log(workdir: Path) -> IO[bytes]:
    return (workdir / "worker.log").open("wb")


def _next_external_id(emulator: Emulator) -> int:
    return max([*emulator.autoscaler.book.workers, FIRST_EXTERNAL_ID - 1]) + 1


@asynccontextmanager
async def official_worker(
    emulator: Emulator, endpoint: str = DEFAULT_ENDPOINT, **options: Any
) -> AsyncIterator[OfficialWorker]:
    """Start one official worker serving ``endpoint`` of a started ``emulator``; see
    :func:`official_workers` for ``options``."""
    async with official_workers(emulator, 1, endpoint, **options) as (worker,):
        yield worker


@asynccontextmanager
async def official_workers(
    emulator: Emulator,
    count: int,
    endpoint: str = DEFAULT_ENDPOINT,
    *,
    max_perf: float | None = None,
    max_queue_time_s: float | None = 30.0,
    fifo_max_queue_time_s: float | None = 30.0,
    max_sessions: int = 10,
    master_token: str = "test-master-token",
    ready_timeout_s: float = 30.0,
    stop_timeout_s: float = 5.0,
) -> AsyncIterator[list[OfficialWorker]]:
    """Start ``count`` official workers serving ``endpoint`` of a started ``emulator``, side
    by side (they get ready together: one start-up's time, not ``count``).

    ``max_perf``: skip the benchmark and have each report exactly this ``max_perf`` (cost
    units/s; it drives the worker's own 429 check); default: it measures one fake request.
    ``max_queue_time_s``, ``fifo_max_queue_time_s``: ``HandlerConfig.max_queue_time`` of
    ``/generate`` and of the FIFO ``/fifo`` (None: never 429).
    """
    args = ["--parent-pid", str(os.getpid()), "--max-sessions", str(max_sessions)]
    args += ["--max-queue-time-s", _queue_time_arg(max_queue_time_s)]
    args += ["--fifo-max-queue-time-s", _queue_time_arg(fifo_max_queue_time_s)]
    args += [] if max_perf is None else ["--max-perf", str(max_perf)]
    workers: list[OfficialWorker] = []
    with ExitStack() as scratch:
        try:
            for _ in range(count):
                workdir = Path(
                    scratch.enter_context(tempfile.TemporaryDirectory(prefix="official-worker-"))
                )
                workers.append(await _spawn(emulator, endpoint, workdir, args, master_token))
            await asyncio.gather(*(_wait_ready(w, ready_timeout_s) for w in workers))
            yield workers
        finally:
            await asyncio.gather(*(_stop(w.process, stop_timeout_s) for w in workers))


def _queue_time_arg(seconds: float | None) -> str:
    return "none" if seconds is None else str(seconds)


async def _spawn(
    emulator: Emulator, endpoint: str, workdir: Path, args: list[str], master_token: str
) -> OfficialWorker:
    """Register a new external worker id and start its process (not yet ready)."""
    worker_id = _next_external_id(emulator)
    emulator.register_external_worker(endpoint, worker_id)
    port, http_port = _free_ports(2)
    with _open_log(workdir) as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(APP),
            *args,
            cwd=workdir,
            env=_environment(emulator, worker_id, port, http_port, master_token),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
        )
    return OfficialWorker(
        emulator,
        endpoint,
        worker_id,
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.1:{http_port}/session/end",
        workdir,
        process,
    )


async def _wait_ready(worker: OfficialWorker, timeout_s: float) -> None:
    """Until the emulator would route to it; fails early if it exits or reports an error."""
    book = worker.emulator.autoscaler.book
    view = book.workers[worker.worker_id]
    deadline = time.monotonic() + timeout_s
    while True:
        now = time.monotonic()
        status = view.status(now, book.stale_after_s)
        if status == "Ready":
            if view.url != worker.url:
                raise RuntimeError(f"official worker reports {view.url!r}, not {worker.url!r}")
            return
        problem = _startup_problem(worker, status, now >= deadline, timeout_s)
        if problem is not None:
            raise problem
        await asyncio.sleep(_POLL_S)


def _startup_problem(
    worker: OfficialWorker, status: str, late: bool, timeout_s: float
) -> Exception | None:
    view = worker.emulator.autoscaler.book.workers[worker.worker_id]
    code = worker.process.returncode
    if code is not None:
        message = f"official worker exited with code {code} before it was ready"
    elif status == "Error":
        message = f"official worker reports an error: {(view.report or {}).get('error_msg')!r}"
    elif late:
        message = f"official worker not ready after {timeout_s} s (reports: {view.reports})"
    else:
        return None
    detail = f"{message}\n--- its output (last lines) ---\n{worker.log_tail()}"
    return TimeoutError(detail) if late and code is None else RuntimeError(detail)


async def _stop(process: asyncio.subprocess.Process, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s`` (or when cancelled); always reaps it."""
    try:
        if process.returncode is None:
            with suppress(ProcessLookupError):
                process.terminate()
            with suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await process.wait()
    finally:
        if process.returncode is None:
            with suppress(ProcessLookupError):
                process.kill()
            await process.wait()
