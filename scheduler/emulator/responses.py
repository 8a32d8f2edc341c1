"""Pure builders of the bodies emulated workers answer with (echo and OpenAI-shaped)."""

from __future__ import annotations

import json
from typing import Any, Literal

Kind = Literal["echo", "completion", "chat"]
SSE_DONE = b"data: [DONE]\n\n"
_DEFAULT_MODEL = "emulated-model"


def echo_body(payload: dict[str, Any], worker_id: int, reqnum: int) -> dict[str, Any]:
    return {"echo": payload, "worker_id": worker_id, "reqnum": reqnum}


def _model(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    return model if isinstance(model, str) else _DEFAULT_MODEL


def _prompt_tokens(payload: dict[str, Any]) -> int:
    text = json.dumps(payload.get("messages", payload.get("prompt", "")))
    return max(1, len(text) // 4)


def token_text(index: int) -> str:
    return f" tok{index}"


def completion_body(
    kind: Kind, payload: dict[str, Any], tokens: int, ident: str, created: int
) -> dict[str, Any]:
    """A non-streaming ``text_completion`` or ``chat.completion`` body."""
    text = "".join(token_text(i) for i in range(tokens))
    prompt_tokens = _prompt_tokens(payload)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": tokens,
        "total_tokens": prompt_tokens + tokens,
    }
    base: dict[str, Any] = {"id": ident, "created": created, "model": _model(payload)}
    if kind == "chat":
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": "length", "logprobs": None}
        return {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
    choice = {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
    return {**base, "object": "text_completion", "choices": [choice], "usage": usage}


def stream_chunk(
    kind: Kind, payload: dict[str, Any], text: str, ident: str, created: int, last: bool
) -> dict[str, Any]:
    """One streaming chunk object (``chat.completion.chunk`` or ``text_completion``)."""
    finish = "length" if last else None
    base: dict[str, Any] = {"id": ident, "created": created, "model": _model(payload)}
    if kind == "chat":
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": text},
            "finish_reason": finish,
            "logprobs": None,
        }
        return {**base, "object": "chat.completion.chunk", "choices": [choice]}
    choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return {**base, "object": "text_completion", "choices": [choice]}


def sse_event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chunk_texts(tokens: int, chunks: int) -> list[str]:
    """Split ``tokens`` generated tokens into at most ``chunks`` non-empty pieces."""
    count = max(1, min(tokens, chunks))
    texts = [""] * count
    for i in range(tokens):
        texts[i * count // max(tokens, 1)] += token_text(i)
    return texts
