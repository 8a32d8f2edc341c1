"""The ``llm_tokens`` estimator on OpenAI completions and chat payloads."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.config import CostConfig
from scheduler.core.cost import estimate

NAN = float("nan")
INF = float("inf")


def llm(**overrides: Any) -> CostConfig:
    return CostConfig(estimator="llm_tokens", **overrides)


def prompt_only(**overrides: Any) -> CostConfig:
    """Cost = estimated prompt tokens, so the prompt count can be read off directly."""
    return llm(prompt_weight=1.0, completion_weight=0.0, **overrides)


def user(content: Any, **fields: Any) -> dict[str, Any]:
    return {"role": "user", "content": content, **fields}


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},  # 11 + 17 chars
}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param({"model": "m", "prompt": "Hello world!"}, 3, id="string-12-chars"),
        pytest.param({"prompt": "abcde"}, 2, id="string-rounds-up"),
        pytest.param({"prompt": ""}, 0, id="empty-string"),
        pytest.param({"prompt": ["abcd", "abcdefgh"]}, 3, id="list-of-strings"),
        pytest.param({"prompt": ["a", "a", "a", "a", "a"]}, 2, id="chars-summed-then-ceil"),
        pytest.param({"prompt": [1, 2, 3, 4, 5]}, 5, id="token-ids"),
        pytest.param({"prompt": [[1, 2], [3, 4, 5]]}, 5, id="lists-of-token-ids"),
        pytest.param({"prompt": []}, 0, id="empty-list"),
        pytest.param({"prompt": None}, 0, id="null"),
        pytest.param({"prompt": 42}, 0, id="number"),
        pytest.param({"prompt": {"text": "abcd"}}, 0, id="object"),
        pytest.param({"prompt": [True, False]}, 0, id="booleans-are-not-token-ids"),
        pytest.param(
            {"prompt": ["abcd", 7, None, [1, "x", True], {"a": 1}]}, 3, id="mixed-garbage"
        ),
        pytest.param({}, 0, id="no-prompt"),
        pytest.param({"input": {"prompt": "abcdefgh"}}, 2, id="input-wrapper"),
        pytest.param({"input": "abcdefgh", "prompt": "abcd"}, 1, id="input-not-object"),
    ],
)
def test_completions_prompt_tokens(payload: dict[str, Any], expected: float) -> None:
    assert estimate(prompt_only(), payload) == expected


SYSTEM = {"role": "system", "content": "You are helpful."}  # 16 chars


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        pytest.param([SYSTEM, user("Hello!")], 6 + 2 * 4, id="two-strings"),
        pytest.param([], 0, id="no-messages"),
        pytest.param([user("")], 4, id="empty-content"),
        pytest.param(
            [user([{"type": "text", "text": "What is in this image?"}, IMAGE])],
            6 + 4,
            id="text-and-image-parts",
        ),
        pytest.param(
            [user([{"type": "text", "text": "abcd"}, {"type": "text", "text": "efgh"}])],
            2 + 4,
            id="two-text-parts",
        ),
        pytest.param([user("hi", name="alice")], 2 + 4, id="name-counted"),
        pytest.param(
            [{"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}],
            7 + 4,
            id="tool-call-name-and-arguments",
        ),
        pytest.param(
            [{"role": "assistant", "function_call": {"name": "abcd", "arguments": "{}"}}],
            2 + 4,
            id="legacy-function-call",
        ),
        pytest.param(
            [{"role": "tool", "tool_call_id": "call_1", "content": "22C"}], 1 + 4, id="tool"
        ),
        pytest.param(
            [user([{"type": "input_audio", "input_audio": {"data": "AAAA" * 100}}])],
            4,
            id="audio-part-ignored",
        ),
        pytest.param([user([{"text": "abcd"}])], 1 + 4, id="part-without-type"),
        pytest.param([user(["abcd"])], 1 + 4, id="bare-string-part"),
        pytest.param([user([{"type": "text", "text": 5}])], 4, id="text-not-string"),
        pytest.param([user([{"type": ["text"], "text": "abcd"}])], 4, id="type-unhashable"),
        pytest.param([user([None, 3, []])], 4, id="garbage-parts"),
        pytest.param([user(42)], 4, id="content-number"),
        pytest.param([user({"text": "abcd"})], 4, id="content-object"),
        pytest.param(["hello", 5, None, []], 0, id="messages-not-objects"),
        pytest.param(
            [{"role": "assistant", "tool_calls": [None, {"function": "f"}, {"x": 1}]}],
            4,
            id="garbage-tool-calls",
        ),
        pytest.param([user("abcd", name=7, tool_calls="x")], 1 + 4, id="garbage-fields"),
    ],
)
def test_chat_prompt_tokens(messages: list[Any], expected: float) -> None:
    assert estimate(prompt_only(), {"model": "m", "messages": messages}) == expected


@pytest.mark.parametrize(
    ("config", "payload", "expected"),
    [
        pytest.param(
            prompt_only(image_tokens=85), {"messages": [user([IMAGE, IMAGE])]}, 4 + 170, id="images"
        ),
        pytest.param(
            prompt_only(tokens_per_message=0),
            {"messages": [SYSTEM, user("Hello!")]},
            6,
            id="no-message-overhead",
        ),
        pytest.param(
            prompt_only(tokens_per_message=2),
            {"prompt": ["ab", "cd"]},
            1 + 2 * 2,
            id="per-prompt-overhead",
        ),
        pytest.param(prompt_only(chars_per_token=1), {"prompt": "abcde"}, 5, id="chars-per-token"),
        pytest.param(prompt_only(chars_per_token=3.5), {"prompt": "a" * 8}, 3, id="fractional"),
        pytest.param(
            prompt_only(),
            {"messages": [user("abcd")], "prompt": "a" * 400},
            1 + 4,
            id="messages-win-over-prompt",
        ),
        pytest.param(
            prompt_only(), {"messages": "Hello", "prompt": "a" * 400}, 0, id="messages-not-list"
        ),
        pytest.param(
            prompt_only(chars_per_token=1e-300, max=1e18),
            {"prompt": "abc"},
            1e15,
            id="count-capped",
        ),
    ],
)
def test_prompt_options(config: CostConfig, payload: dict[str, Any], expected: float) -> None:
    assert estimate(config, payload) == expected


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param({"prompt": "hi"}, 256, id="default"),
        pytest.param({}, 256, id="empty-object"),
        pytest.param({"prompt": "hi", "max_tokens": 100}, 100, id="max-tokens"),
        pytest.param({"max_tokens": 100, "max_completion_tokens": 50}, 50, id="mct-wins"),
        pytest.param({"max_completion_tokens": 0, "max_tokens": 100}, 100, id="mct-zero"),
        pytest.param({"max_completion_tokens": None, "max_tokens": 100}, 100, id="mct-null"),
        pytest.param({"max_completion_tokens": "50", "max_tokens": 100}, 100, id="mct-string"),
        pytest.param({"max_tokens": 100.0}, 100, id="integral-float"),
        pytest.param({"max_tokens": 2.5}, 256, id="fractional-float"),
        pytest.param({"max_tokens": "100"}, 256, id="string"),
        pytest.param({"max_tokens": True}, 256, id="bool"),
        pytest.param({"max_tokens": -5}, 256, id="negative"),
        pytest.param({"max_tokens": NAN}, 256, id="nan"),
        pytest.param({"max_tokens": INF}, 256, id="inf"),
        pytest.param({"max_tokens": 10**400}, 256, id="huge-int"),
        pytest.param({"max_tokens": [100]}, 256, id="list"),
        pytest.param({"max_tokens": 10, "n": 3}, 30, id="n"),
        pytest.param({"max_tokens": 10, "n": 2.0}, 20, id="n-integral-float"),
        pytest.param({"max_tokens": 10, "n": 0}, 10, id="n-zero"),
        pytest.param({"max_tokens": 10, "n": -2}, 10, id="n-negative"),
        pytest.param({"max_tokens": 10, "n": 1000}, 1280, id="n-clamped-128"),
        pytest.param({"max_tokens": 10, "n": "3"}, 10, id="n-string"),
        pytest.param({"max_tokens": 10, "n": 1.5}, 10, id="n-fractional"),
        pytest.param({"max_tokens": 10, "n": None}, 10, id="n-null"),
        pytest.param({"input": {"prompt": "x", "max_tokens": 64, "n": 2}}, 128, id="wrapped"),
    ],
)
def test_completion_tokens_and_n(payload: dict[str, Any], expected: float) -> None:
    assert estimate(llm(), payload) == expected


@pytest.mark.parametrize(
    ("config", "payload", "expected"),
    [
        pytest.param(
            llm(prompt_weight=0.5, completion_weight=2.0),
            {"messages": [user("Hello!")], "max_tokens": 10, "n": 2},
            (6 * 0.5 + 10 * 2.0) * 2,
            id="weights-and-n",
        ),
        pytest.param(llm(default_max_tokens=16), {"prompt": "hi"}, 16, id="default-max-tokens"),
        pytest.param(llm(max=500), {"max_tokens": 1000}, 500, id="clamped-max"),
        pytest.param(llm(min=1, completion_weight=0.0), {"prompt": "hi"}, 1, id="clamped-min"),
        pytest.param(llm(), "Hello", 100, id="string-payload-default"),
        pytest.param(llm(default=7), ["prompt"], 7, id="list-payload-default"),
        pytest.param(llm(default=7), None, 7, id="null-payload-default"),
        pytest.param(llm(default=7, min=10), 3, 10, id="default-clamped"),
        pytest.param(
            llm(prompt_weight=1e6, completion_weight=1e6, max=1e308),
            {"prompt": "a", "max_tokens": 1e300, "n": 128},
            (1 + 1e15) * 1e6 * 128,
            id="huge-stays-finite",
        ),
    ],
)
def test_llm_cost(config: CostConfig, payload: Any, expected: float) -> None:
    assert estimate(config, payload) == pytest.approx(expected)


def test_real_chat_request() -> None:
    payload = {
        "model": "Qwen/Qwen3-8B",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe this picture in one line."},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 22}'},
        ],
        "max_completion_tokens": 300,
        "temperature": 0.7,
        "stream": True,
        "n": 2,
    }
    chars = 26 + 34 + 28 + 14
    prompt = math.ceil(chars / 4) + 4 * 4 + 64
    config = llm(prompt_weight=0.25, image_tokens=64)
    assert estimate(config, payload) == pytest.approx((prompt * 0.25 + 300) * 2)


# --- property: any JSON payload, any valid config -----------------------------------------

KEYS = [
    "prompt",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "name",
    "tool_calls",
    "function",
    "arguments",
    "function_call",
    "image_url",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "input",
]
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20) | st.sampled_from([10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12) | st.sampled_from(["text", "image_url", "input_image"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=16,
)


@st.composite
def llm_configs(draw: st.DrawFn) -> CostConfig:
    low = draw(st.floats(0.0, 1e12))
    return llm(
        default=draw(st.floats(0.0, 1e12)),
        min=low,
        max=draw(st.floats(max(low, 1e-9), 1.7e308)),
        chars_per_token=draw(st.floats(0.0, 1_000, exclude_min=True)),
        tokens_per_message=draw(st.none() | st.integers(0, 1_000)),
        image_tokens=draw(st.integers(0, 1_000_000)),
        default_max_tokens=draw(st.integers(1, 100_000_000)),
        prompt_weight=draw(st.floats(0.0, 1e6)),
        completion_weight=draw(st.floats(0.0, 1e6)),
    )


messages = st.lists(
    st.fixed_dictionaries(
        {"role": json_values, "content": json_values},
        optional={"name": json_values, "tool_calls": json_values},
    ),
    max_size=4,
)
payloads = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"messages": messages}, optional={"max_tokens": json_values, "n": json_values}
    ),
    st.fixed_dictionaries({"prompt": json_values}, optional={"max_completion_tokens": json_values}),
)


@given(llm_configs(), payloads)
@settings(max_examples=100, deadline=None)
def test_llm_estimate_is_finite_and_bounded(config: CostConfig, payload: Any) -> None:
    cost = estimate(config, payload)
    assert isinstance(cost, float)
    assert math.isfinite(cost)
    assert config.min <= cost <= config.max


@given(st.lists(st.text(max_size=40), max_size=6), st.integers(1, 4096))
@settings(max_examples=100, deadline=None)
def test_chat_cost_grows_with_text(texts: list[str], max_tokens: int) -> None:
    config = llm(prompt_weight=1.0)
    shorter = {"messages": [user(t) for t in texts], "max_tokens": max_tokens}
    longer = {"messages": [user(t + "more") for t in texts], "max_tokens": max_tokens}
    assert estimate(config, shorter) <= estimate(config, longer)
    assert estimate(config, shorter) >= max_tokens + 4 * len(texts)
