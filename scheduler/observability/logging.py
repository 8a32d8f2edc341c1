"""structlog set-up: contextvars, ISO UTC timestamps, JSON off a terminal, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"
# Whole words at the end of a key: "x-api-key", "access_token", "Authorization" are secret;
# "max_tokens" or "prompt_tokens" are not.
_QUERY_SECRET = re.compile(
    r"([?&](?:api_key|apikey|access_token|token|key|secret|session_auth)=)[^&\s\"']+", re.IGNORECASE
)
_SECRET_KEYS = re.compile(
    r"(?:^|[-_])(?:api[-_]?key|token|secret|password|authorization|signature)$", re.I
)


class Redactor:
    """Drops values of secret-looking keys and masks every known secret wherever it appears."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        known = set(self._secrets) | {s for s in secrets if len(s) >= 4}
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted(known, key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            # A key in a URL's query (the official client sends ?api_key=): masked even when it
            # is no known secret, as a mistyped or foreign key in an access log line would be.
            return _QUERY_SECRET.sub(rf"\1{REDACTED}", value)
        if isinstance(value, MutableMapping):
            return {k: REDACTED if _is_secret_key(k) else self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        return {k: REDACTED if _is_secret_key(k) else self.scrub(v) for k, v in event_dict.items()}


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEYS.search(key))


def configure_logging(level: str, fmt: str, redactor: Redactor) -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redactor,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # Configured once, before the first event: each module's logger is built on first use
        # and kept (a filtered-out event then costs ~0.3 us instead of ~4 us per call).
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer
        ])
    )  # fmt: skip
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
