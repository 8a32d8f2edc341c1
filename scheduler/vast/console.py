"""Vast's console, as the official client reads it: the account's endpoints (id, key, scaling
settings) from ``GET {console}/api/v0/endptjobs/?client_id=me`` and an endpoint's workers from
``POST {autoscaler}/get_endpoint_workers/``, both with the account key.

Answers are untrusted input: sizes are capped, every field is checked, an entry that is not an
endpoint is skipped (counted), and no error message carries text from the answer or a key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import aiohttp
from pydantic import SecretStr

from scheduler.core.cost import as_number
from scheduler.vast.route_client import is_int, read_capped
from scheduler.vast.types import VastError

MAX_LISTING_BYTES = 8 * 1024 * 1024
MAX_ENDPOINTS = 10_000
MAX_WORKERS_BYTES = 2 * 1024 * 1024
MAX_WORKERS = 5_000
MAX_NAME_CHARS = 256
MAX_KEY_CHARS = 512
MAX_TEXT_CHARS = 200
LISTING_PATH = "/api/v0/endptjobs/"


class ConsoleError(VastError):
    """The console (or the autoscaler's workers call) could not answer what was asked."""

    kind = "console_error"


class ConsoleUnauthorized(ConsoleError):
    kind = "unauthorized"


class ConsoleUnavailable(ConsoleError):
    kind = "unavailable"


class ConsoleServerError(ConsoleError):
    kind = "server_error"


class ConsoleMalformed(ConsoleError):
    kind = "malformed"


class EndpointsMissing(ConsoleError):
    """Configured endpoints the account does not have: ``run`` and ``check-config --online``
    stop on it with this one message."""

    kind = "endpoints_missing"

    def __init__(self, names: list[str], available: list[str]) -> None:
        shown = available[:20] + (["..."] if len(available) > 20 else [])
        super().__init__(
            f"endpoints not in the Vast account: {', '.join(names)} "
            f"(the account has: {', '.join(shown) or 'none'}); fix the name under endpoints: "
            "or create the endpoint on Vast"
        )
        self.names = names


@dataclass(frozen=True, slots=True)
class VastEndpoint:
    """One endpoint of the account: what routing needs (id, key) and its scaling settings."""

    id: int
    name: str
    api_key: SecretStr = field(repr=False)
    state: str | None = None
    max_queue_time_s: float | None = None
    target_queue_time_s: float | None = None
    max_workers: int | None = None
    cold_workers: int | None = None
    min_load: float | None = None
    target_util: float | None = None
    cold_mult: float | None = None

    def settings(self) -> dict[str, Any]:
        """Everything but the key, for the status and the CLI."""
        return {
            "id": self.id, "state": self.state, "max_queue_time_s": self.max_queue_time_s,
            "target_queue_time_s": self.target_queue_time_s, "max_workers": self.max_workers,
            "cold_workers": self.cold_workers, "min_load": self.min_load,
            "target_util": self.target_util, "cold_mult": self.cold_mult,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Listing:
    endpoints: tuple[VastEndpoint, ...]
    skipped: int  # entries that were not endpoints (bad id, name or key)

    def by_name(self) -> dict[str, VastEndpoint]:
        found: dict[str, VastEndpoint] = {}
        for endpoint in self.endpoints:
            found.setdefault(endpoint.name, endpoint)  # two of one name: the first listed
        return found


@dataclass(frozen=True, slots=True)
class VastWorker:
    id: int
    status: str
    cur_load: float
    perf: float
    measured_perf: float
    reqs_working: int
    reliability: float
    loaded_at: float

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id, "status": self.status, "cur_load": self.cur_load, "perf": self.perf,
            "measured_perf": self.measured_perf, "reqs_working": self.reqs_working,
            "reliability": self.reliability, "loaded_at": self.loaded_at,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class EndpointWorkers:
    """The workers Vast lists, or ``unavailable``: Vast's ``error_msg`` while the endpoint
    cannot be queried yet (not an error: the official client shows it and lists none)."""

    workers: tuple[VastWorker, ...] = ()
    unavailable: str | None = None


class ConsoleClient:
    """Account-key calls, one try each; the caller decides about retries."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        console_url: str,
        autoscaler_url: str,
        account_key: SecretStr,
        timeout_s: float,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self._session = session
        self._listing_url = f"{console_url.rstrip('/')}{LISTING_PATH}"
        self._workers_url = f"{autoscaler_url.rstrip('/')}/get_endpoint_workers/"
        self._key = account_key
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=min(timeout_s, connect_timeout_s)
        )

    async def list_endpoints(self) -> Listing:
        # Bearer auth only: the official client repeats the key as ?api_key=, which would put
        # it in every proxy's access log.
        headers = {"Authorization": f"Bearer {self._key.get_secret_value()}"}
        raw = await self._call("listing", "GET", self._listing_url, MAX_LISTING_BYTES,
                               headers=headers, params={"client_id": "me"})  # fmt: skip
        return parse_listing(raw)

    async def get_endpoint(self, name: str) -> VastEndpoint:
        found = (await self.list_endpoints()).by_name().get(name)
        if found is None:
            raise EndpointsMissing([name], [])
        return found

    async def endpoint_workers(self, endpoint_id: int) -> EndpointWorkers:
        body = {"id": endpoint_id, "api_key": self._key.get_secret_value()}
        raw = await self._call("get_endpoint_workers", "POST", self._workers_url,
                               MAX_WORKERS_BYTES, json=body)  # fmt: skip
        return parse_workers(raw, self._key.get_secret_value())

    async def _call(self, what: str, method: str, url: str, cap: int, **kwargs: Any) -> Any:
        try:
            async with self._session.request(method, url, timeout=self._timeout,
                                             **kwargs) as resp:  # fmt: skip
                status = resp.status
                raw = await read_capped(resp, cap)
        except TimeoutError as exc:
            raise ConsoleUnavailable(f"{what}: timed out") from exc
        except aiohttp.ClientError as exc:
            raise ConsoleUnavailable(f"{what}: {type(exc).__name__}") from exc
        if status in (401, 403):
            raise ConsoleUnauthorized(
                f"{what}: the account key was refused ({status}): check vast.account_api_key"
            )
        if status != 200:
            raise ConsoleServerError(f"{what}: answered {status}")
        if len(raw) > cap:
            raise ConsoleMalformed(f"{what}: answer larger than {cap} bytes")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ConsoleMalformed(f"{what}: answer is not JSON") from exc


def parse_listing(answer: Any) -> Listing:
    """``{"success": true, "results": [...]}`` -> the endpoints that are well formed."""
    if not isinstance(answer, dict):
        raise ConsoleMalformed("listing: answer is not an object")
    if answer.get("success") is False:
        raise ConsoleServerError("listing: the console answered success: false")
    results = answer.get("results")
    if not isinstance(results, list):
        raise ConsoleMalformed("listing: answer has no results list")
    if len(results) > MAX_ENDPOINTS:
        raise ConsoleMalformed(f"listing: more than {MAX_ENDPOINTS} endpoints")
    endpoints = [parsed for entry in results if (parsed := parse_endpoint(entry)) is not None]
    return Listing(tuple(endpoints), len(results) - len(endpoints))


def parse_endpoint(entry: Any) -> VastEndpoint | None:
    if not isinstance(entry, dict):
        return None
    endpoint_id, name, key = entry.get("id"), entry.get("endpoint_name"), entry.get("api_key")
    if not is_int(endpoint_id) or endpoint_id < 0:
        return None
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
        return None
    if not _is_key(key):
        return None
    state = entry.get("endpoint_state")
    return VastEndpoint(
        endpoint_id, name, SecretStr(key),
        state=state[:MAX_TEXT_CHARS] if isinstance(state, str) else None,
        max_queue_time_s=as_number(entry.get("max_queue_time")),
        target_queue_time_s=as_number(entry.get("target_queue_time")),
        max_workers=_count(entry.get("max_workers")),
        cold_workers=_count(entry.get("cold_workers")),
        min_load=as_number(entry.get("min_load")),
        target_util=as_number(entry.get("target_util")),
        cold_mult=as_number(entry.get("cold_mult")),
    )  # fmt: skip


def parse_workers(answer: Any, account_key: str) -> EndpointWorkers:
    if isinstance(answer, dict) and "error_msg" in answer:
        message = str(answer["error_msg"])[:MAX_TEXT_CHARS]
        return EndpointWorkers(unavailable=message.replace(account_key, "[REDACTED]"))
    if not isinstance(answer, list):
        raise ConsoleMalformed("get_endpoint_workers: answer is not a list")
    if len(answer) > MAX_WORKERS:
        raise ConsoleMalformed(f"get_endpoint_workers: more than {MAX_WORKERS} workers")
    workers = [parsed for item in answer if (parsed := parse_worker(item)) is not None]
    return EndpointWorkers(tuple(workers))


def parse_worker(item: Any) -> VastWorker | None:
    if not isinstance(item, dict) or not is_int(item.get("id")):
        return None
    status = item.get("status")
    return VastWorker(
        id=item["id"],
        status=status[:64] if isinstance(status, str) and status else "UNKNOWN",
        cur_load=as_number(item.get("cur_load")) or 0.0,
        perf=as_number(item.get("perf")) or 0.0,
        measured_perf=as_number(item.get("measured_perf")) or 0.0,
        reqs_working=_count(item.get("reqs_working")) or 0,
        reliability=as_number(item.get("reliability")) or 0.0,
        loaded_at=as_number(item.get("loaded_at")) or 0.0,
    )


def _is_key(value: Any) -> TypeGuard[str]:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_KEY_CHARS
        and value.isprintable()
        and not any(c.isspace() for c in value)
    )


def _count(value: Any) -> int | None:
    number = as_number(value)
    return int(number) if number is not None and number >= 0 and number.is_integer() else None
