"""Which key each endpoint routes with, and when a refused key may be fetched again. Pure.

Precedence: the endpoint's own key (``endpoints.<name>.api_key``), else the key the account
listing gives (with an account key), else ``vast.api_key`` (without one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class KeySource(StrEnum):
    ENDPOINT = "endpoint"  # endpoints.<name>.api_key
    ACCOUNT = "account"  # the account's endpoint listing
    SHARED = "vast.api_key"


@dataclass(frozen=True, slots=True)
class KeyChoice:
    key: str
    source: KeySource


@dataclass(frozen=True, slots=True)
class Choices:
    keys: dict[str, KeyChoice]
    missing: list[str]  # configured, keyless, and not in the account's listing (sorted)


def choose_keys(
    names: Iterable[str],
    explicit: Mapping[str, str],
    listed: Mapping[str, str] | None,
    shared: str | None,
    *,
    account: bool,
) -> Choices:
    """``listed``: endpoint name -> key from the listing, None while none has been read.
    ``account``: an account key is configured (then ``shared`` is never used)."""
    keys: dict[str, KeyChoice] = {}
    missing: list[str] = []
    for name in names:
        if name in explicit:
            keys[name] = KeyChoice(explicit[name], KeySource.ENDPOINT)
        elif not account:
            if shared is not None:
                keys[name] = KeyChoice(shared, KeySource.SHARED)
        elif listed is not None and name in listed:
            keys[name] = KeyChoice(listed[name], KeySource.ACCOUNT)
        elif listed is not None:
            missing.append(name)
    return Choices(keys, sorted(missing))


def may_refresh(now: float, last_refresh_at: float | None, min_interval_s: float) -> bool:
    """A route call's 401 refetches the keys at most once per ``min_interval_s``."""
    return last_refresh_at is None or now - last_refresh_at >= min_interval_s
