"""The emulated Vast account: endpoint ids, per-endpoint keys, the account key, key rotation.

Pure state (no I/O, no clock reads: times are passed in). What the console listing shows
(``GET /api/v0/endptjobs/``) and which keys ``/route/`` accepts for an endpoint:

- an endpoint with no key of its own (none configured, never rotated) accepts the emulator's
  **global** keys (``Emulator(config, api_keys)``; the daemon's ``vast.api_key``) and the
  listing shows the first of them as its ``api_key``;
- an endpoint with its own key (``endpoints.<name>.api_key``, or after :meth:`rotate`)
  accepts that key alone: the global keys and every older key get 401 for it;
- the account key is not a route key (the official client routes with the endpoint's key);
  it opens the console listing and ``/get_endpoint_workers/``.

Endpoints the config does not name (a worker added at run time, an external worker) get the
next id above every id given out, with the global keys.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from scheduler.emulator.settings import EmulatedEndpoint, EmulatorConfig

EMULATED_USER_ID = 1
MAX_KEY_LEN = 512
_GENERATED_KEY_BYTES = 32  # 64 hex characters, the length of Vast's keys


@dataclass
class EndpointAccount:
    """One endpoint as the account holds it; ``key`` None: the global keys work for it."""

    name: str
    id: int
    settings: EmulatedEndpoint
    key: str | None = None
    rotations: int = 0


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_endpoint_key() -> str:
    return secrets.token_hex(_GENERATED_KEY_BYTES)


class Accounts:
    """The account's endpoints by name and id, their keys, and the account key."""

    def __init__(self, config: EmulatorConfig, global_keys: Sequence[str], created_at: float):
        if not global_keys:
            raise ValueError("the emulator needs at least one API key")
        self.global_keys = tuple(global_keys)
        self.created_at = created_at
        self._account_key = config.account_api_key.get_secret_value()
        self._by_name: dict[str, EndpointAccount] = {}
        for name, endpoint_id in sorted(config.endpoint_ids().items(), key=lambda kv: kv[1]):
            settings = config.endpoints[name]
            own = settings.api_key.get_secret_value() if settings.api_key is not None else None
            self._by_name[name] = EndpointAccount(name, endpoint_id, settings, own)

    # ------------------------------------------------------------------ keys
    def is_account_key(self, candidate: object) -> bool:
        return isinstance(candidate, str) and _same(candidate, self._account_key)

    def route_identity(self, endpoint: str | None, candidates: Iterable[object]) -> str | None:
        """The first candidate key ``/route/`` accepts for ``endpoint`` (None: a name the
        emulator does not serve, for which only the global keys count), else None."""
        entry = self._by_name.get(endpoint) if endpoint is not None else None
        accepted = (entry.key,) if entry is not None and entry.key is not None else None
        keys = accepted or self.global_keys
        for candidate in candidates:
            if isinstance(candidate, str) and any(_same(candidate, k) for k in keys):
                return candidate
        return None

    def listed_key(self, entry: EndpointAccount) -> str:
        return entry.key if entry.key is not None else self.global_keys[0]

    def rotate(self, endpoint: str, new_key: str | None = None) -> str:
        """Give ``endpoint`` a new key (``new_key`` or a generated one) and return it; from
        now on only that key routes to it. KeyError for an endpoint not in the account."""
        entry = self._by_name[endpoint]
        if new_key is None:
            new_key = new_endpoint_key()
        if not new_key.strip() or len(new_key) > MAX_KEY_LEN:
            raise ValueError(f"api_key must be a non-blank string of at most {MAX_KEY_LEN}")
        entry.key = new_key
        entry.rotations += 1
        return new_key

    # ------------------------------------------------------------------ endpoints
    def ensure(self, endpoint: str, settings: EmulatedEndpoint | None = None) -> EndpointAccount:
        """The endpoint's entry, created with the next free id if the account lacks it."""
        entry = self._by_name.get(endpoint)
        if entry is None:
            next_id = max((e.id for e in self._by_name.values()), default=0) + 1
            entry = EndpointAccount(endpoint, next_id, settings or EmulatedEndpoint())
            self._by_name[endpoint] = entry
        return entry

    def get(self, endpoint: str) -> EndpointAccount | None:
        return self._by_name.get(endpoint)

    def by_id(self, endpoint_id: int) -> EndpointAccount | None:
        return next((e for e in self._by_name.values() if e.id == endpoint_id), None)

    def entries(self) -> list[EndpointAccount]:
        """Every endpoint of the account, by id."""
        return sorted(self._by_name.values(), key=lambda e: e.id)

    def row(self, entry: EndpointAccount) -> dict[str, Any]:
        """One result of ``GET /api/v0/endptjobs/``, the fields ``vastai`` 1.9.1 reads
        (``EndpointData.from_dict``; ``vastai show endpoints`` prints them all)."""
        s = entry.settings
        return {
            "id": entry.id,
            "endpoint_name": entry.name,
            "api_key": self.listed_key(entry),
            "user_id": EMULATED_USER_ID,
            "created_at": self.created_at,
            "endpoint_state": s.endpoint_state,
            "autoscaler_instance": "prod",
            "cold_workers": s.cold_workers,
            "max_workers": s.max_workers,
            "min_load": s.min_load,
            "min_cold_load": 0.0,
            "target_util": s.target_util,
            "cold_mult": s.cold_mult,
            "max_queue_time": s.max_queue_time_s,
            "target_queue_time": s.target_queue_time_s,
            "inactivity_timeout": s.inactivity_timeout_s,
            "auto_delete_in_seconds": None,
            "auto_delete_due_24h": False,
        }
