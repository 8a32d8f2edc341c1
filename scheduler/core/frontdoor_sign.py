"""Signed route answers of the Vast-compatible front door (pure: no I/O, no clock reads).

The daemon's ``POST /route/`` answers name the daemon itself as the worker. Like Vast's
own answers they carry a signature the "worker" (the daemon again) checks before it runs
anything. Here it is an HMAC-SHA256 with a per-process secret over every field the daemon
later trusts: ``url``, ``endpoint``, ``reqnum``, ``request_idx``, ``cost``, ``tenant`` and
``expires_at`` (epoch seconds). A ticket is good once: its ``reqnum`` (unique per process)
goes into a seen-set when it is spent, kept until the ticket would have expired anyway and
bounded in size; overflowing evicts the lowest reqnum and raises a floor below which every
reqnum counts as spent (a refusal the client answers with a fresh route call).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
from collections.abc import Mapping
from typing import Any, Literal

Refusal = Literal["malformed", "bad_signature", "mismatch", "expired", "replayed"]
REFUSALS: tuple[Refusal, ...] = ("malformed", "bad_signature", "mismatch", "expired", "replayed")
SIGNED_FIELDS = ("url", "endpoint", "reqnum", "request_idx", "cost", "tenant", "expires_at")
_TYPES: dict[str, tuple[type, ...]] = {
    "url": (str,),
    "endpoint": (str,),
    "reqnum": (int,),
    "request_idx": (int,),
    "cost": (int, float),
    "tenant": (str,),
    "expires_at": (int, float),
}


def _canonical(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(
        {name: fields[name] for name in SIGNED_FIELDS}, sort_keys=True, separators=(",", ":")
    ).encode()


class TicketSigner:
    """Issues signed route answers and checks them; one per process (its secret with it)."""

    def __init__(self, secret: bytes, ttl_s: float = 60.0, max_seen: int = 100_000) -> None:
        if len(secret) < 16:
            raise ValueError("secret: at least 16 bytes")
        self._secret = secret
        self.ttl_s = ttl_s
        self.max_seen = max_seen
        self._next_reqnum = 1
        self._seen: dict[int, float] = {}  # spent reqnum -> its ticket's expiry
        self._heap: list[int] = []  # the keys of _seen, lowest first
        self._floor = 0  # every reqnum <= floor counts as spent

    def _mac(self, fields: Mapping[str, Any]) -> str:
        return hmac.new(self._secret, _canonical(fields), hashlib.sha256).hexdigest()

    def issue(
        self, url: str, endpoint: str, cost: float, tenant: str, now: float
    ) -> dict[str, Any]:
        """A ready route answer for one request: the fields and their signature."""
        reqnum = self._next_reqnum
        self._next_reqnum += 1
        fields: dict[str, Any] = {
            "url": url,
            "endpoint": endpoint,
            "reqnum": reqnum,
            "request_idx": reqnum,
            "cost": cost,
            "tenant": tenant,
            "expires_at": round(now + self.ttl_s, 3),
        }
        fields["signature"] = self._mac(fields)
        return fields

    def verify(self, auth_data: Any, expect: Mapping[str, Any]) -> Refusal | None:
        """Whether ``auth_data`` is a ticket this signer made, unchanged, whose fields match
        ``expect`` (e.g. the endpoint and tenant of the request presenting it); expiry and
        reuse are not checked: a caller session presents its ticket on every request."""
        if not isinstance(auth_data, Mapping):
            return "malformed"
        for name, types in _TYPES.items():
            value = auth_data.get(name)
            if isinstance(value, bool) or not isinstance(value, types):
                return "malformed"
        signature = auth_data.get("signature")
        if not isinstance(signature, str):
            return "malformed"
        if not hmac.compare_digest(signature.encode(), self._mac(auth_data).encode()):
            return "bad_signature"
        if any(auth_data.get(name) != value for name, value in expect.items()):
            return "mismatch"
        return None

    def spend(self, auth_data: Any, expect: Mapping[str, Any], now: float) -> Refusal | None:
        """Checks a ticket and, if good, marks it spent: the second use is ``replayed``."""
        refusal = self.verify(auth_data, expect)
        if refusal is not None:
            return refusal
        expires_at = float(auth_data["expires_at"])
        if now >= expires_at:
            return "expired"
        self._forget_expired(now)
        reqnum = int(auth_data["reqnum"])
        if reqnum <= self._floor or reqnum in self._seen:
            return "replayed"
        self._seen[reqnum] = expires_at
        heapq.heappush(self._heap, reqnum)
        while len(self._heap) > self.max_seen:
            self._floor = max(self._floor, self._drop_lowest())
        return None

    def _drop_lowest(self) -> int:
        reqnum = heapq.heappop(self._heap)
        del self._seen[reqnum]
        return reqnum

    def _forget_expired(self, now: float) -> None:
        """Tickets are issued in reqnum order with one ttl, so the lowest expires first;
        an expired one is refused by its expiry, whatever the seen-set says."""
        while self._heap and self._seen[self._heap[0]] <= now:
            self._floor = max(self._floor, self._drop_lowest())

    @property
    def seen_count(self) -> int:
        return len(self._seen)
