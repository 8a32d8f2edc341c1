"""Cost estimation: the workload units a job will cost on a worker. Pure.

Estimators (``CostRules.estimator``): ``constant``, ``field`` and ``llm_tokens``. Every
estimate is clamped to the config's [min, max] and is always a finite float: a malformed
payload falls back to what can be counted, or to ``default``, and never raises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

CHAT_TOKENS_PER_MESSAGE = 4  # role and separators of a chat template, per message
COMPLETION_TOKENS_PER_PROMPT = 0
MAX_CHOICES = 128  # ``n`` is clamped to [1, MAX_CHOICES]
MAX_COUNT = 1e15  # token counts are capped here, so weighted sums stay finite
IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})


class CostRules(Protocol):
    """What the estimators read: ``scheduler.config.CostConfig`` satisfies it (core takes plain
    values and imports nothing from the rest of the package)."""

    @property
    def estimator(self) -> str: ...
    @property
    def value(self) -> float: ...
    @property
    def field(self) -> str | None: ...
    @property
    def scale(self) -> float: ...
    @property
    def default(self) -> float: ...
    @property
    def min(self) -> float: ...
    @property
    def max(self) -> float: ...
    @property
    def caller_cost(self) -> str: ...
    @property
    def chars_per_token(self) -> float: ...
    @property
    def tokens_per_message(self) -> int | None: ...
    @property
    def image_tokens(self) -> int: ...
    @property
    def default_max_tokens(self) -> int: ...
    @property
    def prompt_weight(self) -> float: ...
    @property
    def completion_weight(self) -> float: ...


def lookup(payload: Any, dotted: str) -> Any:
    node = payload
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


Rules = TypeVar("Rules", bound=CostRules)


def select(default: Rules, routes: Mapping[str, Rules], route: str) -> Rules:
    """The estimator for a worker route: an exact match in ``routes``, else ``default``."""
    return routes.get(route, default)


def estimate(config: CostRules, payload: Any) -> float:
    if config.estimator == "llm_tokens":
        raw = llm_tokens(config, payload)
    elif config.estimator == "field" and config.field is not None:
        found = as_number(lookup(payload, config.field))
        raw = config.default if found is None else found * config.scale
    else:
        raw = config.value
    return clamp(raw, config)


def clamp(value: float, config: CostRules) -> float:
    """``value`` within [min, max]; nan becomes ``min``, so the result is always finite."""
    if isinstance(value, float) and math.isnan(value):
        return config.min
    return min(config.max, max(config.min, value))


def resolve(config: CostRules, payload: Any, caller_cost: float | None) -> float:
    """The job's cost, honouring the endpoint's policy for a caller-supplied ``cost``.

    ``trust`` takes any finite caller cost as it is, even outside [min, max]; a non-finite
    one (which the API refuses anyway) is clamped, so no policy returns inf or nan.
    """
    if caller_cost is None or config.caller_cost == "ignore":
        return estimate(config, payload)
    if config.caller_cost == "clamp":
        return clamp(caller_cost, config)
    trusted = as_number(caller_cost)
    return clamp(caller_cost, config) if trusted is None else trusted


# --- llm_tokens ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tally:
    """What a prompt holds: text characters, literal token ids, messages or prompts, images."""

    chars: int = 0
    tokens: int = 0
    items: int = 0
    images: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.chars + other.chars,
            self.tokens + other.tokens,
            self.items + other.items,
            self.images + other.images,
        )


def llm_tokens(config: CostRules, payload: Any) -> float:
    """Token-weighted cost of an OpenAI ``/v1/completions`` or ``/v1/chat/completions`` body.

    ``(prompt_tokens * prompt_weight + completion_tokens * completion_weight) * n``, where
    prompt tokens are ``ceil(chars / chars_per_token)`` plus literal token ids, a per-message
    overhead and ``image_tokens`` per image part, and completion tokens are
    ``max_completion_tokens``, else ``max_tokens``, else ``default_max_tokens``.

    The defaults (``prompt_weight`` 0, ``completion_weight`` 1) reproduce the workload
    calculator of the common Vast LLM worker, which counts ``max_tokens`` only, so the cost
    we route with matches the load the worker reports to the autoscaler. A body wrapped as
    ``{"input": {...}}`` (as some Vast SDK examples send it) is unwrapped. Counts are capped
    at MAX_COUNT, so the result is finite; ``estimate`` clamps it to [min, max]. A payload
    that is not an object costs ``default``.
    """
    if not isinstance(payload, dict):
        return config.default
    body = openai_body(payload)
    chat = "messages" in body
    tally = count_messages(body.get("messages")) if chat else count_prompt(body.get("prompt"))
    prompt = prompt_tokens(config, tally, chat)
    completion = completion_tokens(body, config.default_max_tokens)
    return (prompt * config.prompt_weight + completion * config.completion_weight) * choices(body)


def openai_body(payload: dict[str, Any]) -> dict[str, Any]:
    if "messages" in payload or "prompt" in payload:
        return payload
    inner = payload.get("input")
    return inner if isinstance(inner, dict) else payload


def prompt_tokens(config: CostRules, tally: Tally, chat: bool) -> float:
    per_item = config.tokens_per_message
    if per_item is None:
        per_item = CHAT_TOKENS_PER_MESSAGE if chat else COMPLETION_TOKENS_PER_PROMPT
    text = math.ceil(min(tally.chars / config.chars_per_token, MAX_COUNT))
    total = text + tally.tokens + per_item * tally.items + config.image_tokens * tally.images
    return float(min(total, MAX_COUNT))


def completion_tokens(body: dict[str, Any], default: int) -> float:
    for key in ("max_completion_tokens", "max_tokens"):
        found = positive_integer(body.get(key))
        if found is not None:
            return min(found, MAX_COUNT)
    return float(default)


def choices(body: dict[str, Any]) -> int:
    found = positive_integer(body.get("n"))
    return 1 if found is None else int(min(found, MAX_CHOICES))


def positive_integer(value: Any) -> float | None:
    """A positive whole number (``256`` or ``256.0``, not ``True``, ``"256"`` or ``2.5``)."""
    number = as_number(value)
    if number is None or number <= 0 or not number.is_integer():
        return None
    return number


def is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def text_length(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


def count_prompt(prompt: Any) -> Tally:
    """A completions ``prompt``: a string, a list of strings, token ids or lists of ids."""
    if isinstance(prompt, str):
        return Tally(chars=len(prompt), items=1)
    if not isinstance(prompt, list):
        return Tally()
    if prompt and all(is_token_id(item) for item in prompt):
        return Tally(tokens=len(prompt), items=1)
    return sum((count_prompt_item(item) for item in prompt), Tally())


def count_prompt_item(item: Any) -> Tally:
    if isinstance(item, str):
        return Tally(chars=len(item), items=1)
    if isinstance(item, list):
        return Tally(tokens=sum(1 for token in item if is_token_id(token)), items=1)
    return Tally(tokens=1) if is_token_id(item) else Tally()


def count_messages(messages: Any) -> Tally:
    if not isinstance(messages, list):
        return Tally()
    return sum((count_message(m) for m in messages if isinstance(m, dict)), Tally())


def count_message(message: dict[str, Any]) -> Tally:
    # tool_calls[].function and the legacy single function_call: name and arguments
    functions = [*called_functions(message.get("tool_calls")), message.get("function_call")]
    chars = text_length(message.get("name")) + sum(count_function(f) for f in functions)
    return Tally(chars=chars, items=1) + count_content(message.get("content"))


def called_functions(tool_calls: Any) -> list[Any]:
    if not isinstance(tool_calls, list):
        return []
    return [call.get("function") for call in tool_calls if isinstance(call, dict)]


def count_function(function: Any) -> int:
    if not isinstance(function, dict):
        return 0
    return text_length(function.get("name")) + text_length(function.get("arguments"))


def count_content(content: Any) -> Tally:
    if isinstance(content, str):
        return Tally(chars=len(content))
    if not isinstance(content, list):
        return Tally()
    return sum((count_part(part) for part in content), Tally())


def count_part(part: Any) -> Tally:
    """One content part: text counts its characters, an image counts as one image."""
    if isinstance(part, str):
        return Tally(chars=len(part))
    if not isinstance(part, dict):
        return Tally()
    kind = part.get("type")
    if isinstance(kind, str) and kind in IMAGE_PART_TYPES:
        return Tally(images=1)
    if kind in ("text", None):
        return Tally(chars=text_length(part.get("text")))
    return Tally()
