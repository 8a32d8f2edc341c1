"""The route call: ``POST {autoscaler}/route/`` mapped to ``Ready | Waiting`` or typed errors."""

from __future__ import annotations

import json
import math
from typing import Any, Protocol, TypeGuard
from urllib.parse import urlsplit

import aiohttp
from pydantic import SecretStr

from scheduler.vast.networks import WorkerNetworks, describe_host
from scheduler.vast.types import (
    Ready,
    RouteBadRequest,
    RouteKeyUnknown,
    RouteMalformed,
    RouteRateLimited,
    RouteResult,
    RouteServerError,
    RouteTimeout,
    RouteUnauthorized,
    RouteUnavailable,
    RouteWorkerNotAllowed,
    Waiting,
    parse_status_counts,
)

MAX_ANSWER_BYTES = 64 * 1024
MAX_ERROR_CHARS = 200


class KeyProvider(Protocol):
    """Each endpoint's key (``scheduler.vast.endpoint_keys``), and a fresh one after a 401."""

    def key(self, endpoint: str) -> SecretStr | None: ...

    async def unauthorized(self, endpoint: str, used: SecretStr) -> SecretStr | None: ...


class SharedKey:
    """One key for every endpoint, never refreshed."""

    def __init__(self, key: SecretStr) -> None:
        self._key = key

    def key(self, endpoint: str) -> SecretStr | None:
        return self._key

    async def unauthorized(self, endpoint: str, used: SecretStr) -> SecretStr | None:
        return None


class RouteClient:
    """Speaks the route call exactly as the protocol doc says; one try per call."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        autoscaler_url: str,
        api_key: SecretStr | KeyProvider,
        timeout_s: float,
        replay_timeout_s: float,
        connect_timeout_s: float = 5.0,
        *,
        worker_networks: WorkerNetworks | None = None,
    ) -> None:
        self._session = session
        self._url = f"{autoscaler_url.rstrip('/')}/route/"
        self._keys = SharedKey(api_key) if isinstance(api_key, SecretStr) else api_key
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=min(timeout_s, connect_timeout_s)
        )
        self._replay_timeout_s = replay_timeout_s
        self._networks = worker_networks  # None: a READY answer may name any host

    async def route(
        self, endpoint: str, cost: float, request_idx: int | None = None
    ) -> RouteResult:
        """One call; a 401 with a key that has since changed (or is refetched now) is tried
        once more with the new key."""
        key = self._keys.key(endpoint)
        if key is None:
            raise RouteKeyUnknown(f"no key for endpoint {endpoint} yet (account listing)")
        try:
            return await self._route_with(key, endpoint, cost, request_idx)
        except RouteUnauthorized:
            fresh = await self._keys.unauthorized(endpoint, key)
            if fresh is None:
                raise
        return await self._route_with(fresh, endpoint, cost, request_idx)

    async def _route_with(
        self, api_key: SecretStr, endpoint: str, cost: float, request_idx: int | None
    ) -> RouteResult:
        key = api_key.get_secret_value()
        # The official client repeats the key in the body; the query-string copy is left out
        # on purpose because query strings end up in access logs.
        body: dict[str, Any] = {
            "endpoint": endpoint,
            "cost": cost,
            "request_idx": request_idx or 0,
            "replay_timeout": self._replay_timeout_s,
            "api_key": key,
        }
        headers = {"Authorization": f"Bearer {key}"}
        try:
            async with self._session.post(
                self._url, json=body, headers=headers, timeout=self._timeout
            ) as resp:
                raw = await read_capped(resp, MAX_ANSWER_BYTES)
                return parse_route_answer(resp.status, resp.headers, raw, self._networks)
        except TimeoutError as exc:
            raise RouteTimeout("route call timed out") from exc
        except aiohttp.ClientError as exc:
            raise RouteUnavailable(f"route call failed: {type(exc).__name__}") from exc


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The whole body, or its first ``cap + 1`` bytes when longer (read no further): one
    ``read(n)`` may stop at the first chunk of an answer that came in pieces."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            break
    return b"".join(chunks)[: cap + 1]


def parse_route_answer(
    status: int, headers: Any, raw: bytes, networks: WorkerNetworks | None = None
) -> RouteResult:
    if status == 429:
        raise RouteRateLimited("route call rate-limited", parse_retry_after(headers))
    if status in (401, 403):
        raise RouteUnauthorized(
            f"route call unauthorized ({status}): check the endpoint's key "
            "(vast.account_api_key, endpoints.<name>.api_key or vast.api_key)"
        )
    if status == 400:
        raise RouteBadRequest(f"route call rejected: {error_text(raw)}")
    if status != 200:
        raise RouteServerError(f"route call answered {status}")
    if len(raw) > MAX_ANSWER_BYTES:
        raise RouteMalformed("route answer too large")
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RouteMalformed("route answer is not JSON") from exc
    if not isinstance(answer, dict):
        raise RouteMalformed("route answer is not an object")
    return answer_to_result(answer, networks)


def answer_to_result(answer: dict[str, Any], networks: WorkerNetworks | None = None) -> RouteResult:
    request_idx = answer.get("request_idx")
    if request_idx is not None and not is_int(request_idx):
        raise RouteMalformed("route answer request_idx is not an integer")
    url = answer.get("url")
    if not url:
        status = str(answer.get("status", ""))[:500]
        return Waiting(status, request_idx, parse_status_counts(status))
    if not isinstance(url, str) or not is_worker_url(url):
        raise RouteMalformed("route answer url must be http(s) without user info")
    check_worker_host(url, networks)
    cost, reqnum = answer.get("cost"), answer.get("reqnum")
    if not isinstance(answer.get("signature"), str) or not is_int(reqnum):
        raise RouteMalformed("route answer lacks signature or reqnum")
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not 0 <= cost < math.inf:
        raise RouteMalformed("route answer cost is not a finite number >= 0")
    return Ready(url.rstrip("/"), float(cost), int(reqnum), int(request_idx or 0), answer)


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_worker_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(hostname) and parts.username is None


def check_worker_host(url: str, networks: WorkerNetworks | None) -> None:
    """Raise RouteWorkerNotAllowed unless ``url``'s host is within ``networks`` (None: any).

    ``url`` has passed ``is_worker_url``. The message names the host, never the answer's
    signature or anything else from it."""
    host = urlsplit(url).hostname or ""
    if networks is not None and not networks.allows(host):
        raise RouteWorkerNotAllowed(
            f"route answer worker host {describe_host(host)} is outside vast.worker_networks"
        )


def parse_retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 3600 else None


def error_text(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        message = body.get("error", body) if isinstance(body, dict) else body
    except ValueError:
        message = raw.decode("utf-8", "replace")
    return str(message)[:MAX_ERROR_CHARS]


__all__ = [
    "KeyProvider",
    "RouteClient",
    "SharedKey",
    "answer_to_result",
    "check_worker_host",
    "parse_route_answer",
    "read_capped",
]
