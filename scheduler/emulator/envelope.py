"""Pure parsing of request bodies (the worker envelope, JSON objects) and the legacy worker's
replay guard."""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from scheduler.emulator.signing import CURRENT_AUTH_FIELDS, LEGACY_AUTH_FIELDS, legacy_message

LEGACY_HISTORY_LEN = 100


def json_object(raw: bytes, empty: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """A body that should hold a JSON object: the object, ``empty`` for a blank body, or
    None when it is not JSON or not an object."""
    if not raw.strip():
        return empty
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Envelope:
    auth_data: dict[str, Any]
    payload: dict[str, Any]
    session_id: str | None

    @property
    def reqnum(self) -> int:
        value = self.auth_data.get("reqnum")
        return value if isinstance(value, int) else 0

    @property
    def request_idx(self) -> int:
        value = self.auth_data.get("request_idx")
        return value if isinstance(value, int) else 0


class EnvelopeError(Exception):
    """The body the official worker answers with 422."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(json.dumps(body))
        self.body = body


def _auth_errors(auth_data: object, fields: tuple[str, ...]) -> dict[str, Any] | str | None:
    if not isinstance(auth_data, dict):
        return "must be an object"
    missing = {name: "missing parameter" for name in fields if name not in auth_data}
    return missing or None


def parse_envelope(raw: bytes, legacy: bool = False) -> Envelope:
    """Parse ``{"auth_data", "session_id", "payload"}``; raise EnvelopeError like a 422."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EnvelopeError({"error": "invalid JSON"}) from exc
    if not isinstance(data, dict):
        raise EnvelopeError({"error": "invalid JSON"})
    errors: dict[str, Any] = {}
    fields = LEGACY_AUTH_FIELDS if legacy else CURRENT_AUTH_FIELDS
    if "auth_data" not in data:
        errors["auth_data"] = "field missing"
    elif (auth_errors := _auth_errors(data["auth_data"], fields)) is not None:
        errors["auth_data"] = auth_errors
    if "payload" not in data:
        errors["payload"] = "field missing"
    elif not isinstance(data["payload"], dict):
        errors["payload"] = "must be an object"
    session_id = data.get("session_id")
    if session_id is not None and not isinstance(session_id, str):
        errors["session_id"] = "must be a string or null"
    if errors:
        raise EnvelopeError(errors)
    return Envelope(auth_data=data["auth_data"], payload=data["payload"], session_id=session_id)


@dataclass
class ReplayGuard:
    """The legacy worker's rule: refuse a message seen among the last 100, or a reqnum
    more than 100 below the highest accepted one. Call ``admit`` only for messages whose
    signature is valid (``check`` first, as the legacy worker does)."""

    highest_reqnum: int = -1
    history: deque[str] = field(default_factory=lambda: deque(maxlen=LEGACY_HISTORY_LEN))

    def is_replay(self, auth_data: dict[str, Any]) -> bool:
        reqnum = auth_data.get("reqnum")
        if isinstance(reqnum, int) and reqnum < self.highest_reqnum - LEGACY_HISTORY_LEN:
            return True
        return legacy_message(auth_data) in self.history

    def admit(self, auth_data: dict[str, Any]) -> None:
        reqnum = auth_data.get("reqnum")
        if isinstance(reqnum, int):
            self.highest_reqnum = max(self.highest_reqnum, reqnum)
        self.history.append(legacy_message(auth_data))
