"""Cost estimation: lookup, estimate, clamp and the caller-cost policy."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from scheduler.config import CostConfig
from scheduler.core.cost import as_number, estimate, lookup, resolve, select

INF = float("inf")
NAN = float("nan")


def field_config(**overrides: Any) -> CostConfig:
    base: dict[str, Any] = {"estimator": "field", "field": "max_tokens", "default": 50.0}
    return CostConfig(**{**base, **overrides})


@pytest.mark.parametrize(
    ("payload", "dotted", "expected"),
    [
        pytest.param({"a": 1}, "a", 1, id="top-level"),
        pytest.param({"a": {"b": {"c": 7}}}, "a.b.c", 7, id="nested"),
        pytest.param({"a": {"b": 0}}, "a.b", 0, id="falsy-value-found"),
        pytest.param({"a": {"b": [1, 2]}}, "a.b", [1, 2], id="list-value"),
        pytest.param({"a": {"b": None}}, "a.b", None, id="null-value"),
        pytest.param({"a": 1}, "b", None, id="missing"),
        pytest.param({"a": {"b": 1}}, "a.c", None, id="missing-nested"),
        pytest.param({"a": 1}, "a.b", None, id="through-scalar"),
        pytest.param({"a": [{"b": 1}]}, "a.0.b", None, id="through-list"),
        pytest.param([1, 2], "0", None, id="payload-list"),
        pytest.param("text", "a", None, id="payload-str"),
        pytest.param(None, "a", None, id="payload-none"),
        pytest.param({"a.b": 3}, "a.b", None, id="dotted-key-not-special"),
    ],
)
def test_lookup(payload: Any, dotted: str, expected: Any) -> None:
    assert lookup(payload, dotted) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3.0),
        (2.5, 2.5),
        (0, 0.0),
        (-4, -4.0),
        (True, None),
        (False, None),
        (NAN, None),
        (INF, None),
        (-INF, None),
        ("12", None),
        (None, None),
        ([1], None),
        ({"n": 1}, None),
    ],
)
def test_as_number(value: Any, expected: float | None) -> None:
    assert as_number(value) == expected


@pytest.mark.parametrize(
    ("config", "payload", "expected"),
    [
        pytest.param(CostConfig(), {}, 100.0, id="constant-default"),
        pytest.param(CostConfig(value=7), {"max_tokens": 1e6}, 7.0, id="constant-ignores-payload"),
        pytest.param(CostConfig(value=7, min=10), {}, 10.0, id="constant-clamped-min"),
        pytest.param(CostConfig(value=70, max=10), {}, 10.0, id="constant-clamped-max"),
        pytest.param(field_config(), {"max_tokens": 256}, 256.0, id="field"),
        pytest.param(field_config(), {"max_tokens": 12.5}, 12.5, id="field-float"),
        pytest.param(field_config(scale=2.5), {"max_tokens": 4}, 10.0, id="field-scaled"),
        pytest.param(
            field_config(field="input.steps"), {"input": {"steps": 30}}, 30.0, id="dotted"
        ),
        pytest.param(
            field_config(field="input.steps"), {"input": 30}, 50.0, id="dotted-through-scalar"
        ),
        pytest.param(field_config(), {}, 50.0, id="missing-default"),
        pytest.param(field_config(), {"max_tokens": None}, 50.0, id="null-default"),
        pytest.param(field_config(), {"max_tokens": "256"}, 50.0, id="string-default"),
        pytest.param(field_config(), {"max_tokens": True}, 50.0, id="bool-default"),
        pytest.param(field_config(), {"max_tokens": NAN}, 50.0, id="nan-default"),
        pytest.param(field_config(), {"max_tokens": INF}, 50.0, id="inf-default"),
        pytest.param(field_config(), {"max_tokens": -INF}, 50.0, id="neg-inf-default"),
        pytest.param(field_config(), {"max_tokens": [1]}, 50.0, id="list-default"),
        pytest.param(field_config(), ["max_tokens"], 50.0, id="payload-not-object"),
        pytest.param(field_config(scale=2), {}, 50.0, id="default-not-scaled"),
        pytest.param(field_config(min=1), {"max_tokens": 0}, 1.0, id="field-clamped-min"),
        pytest.param(field_config(min=1), {"max_tokens": -5}, 1.0, id="negative-clamped"),
        pytest.param(field_config(max=100), {"max_tokens": 1e6}, 100.0, id="field-clamped-max"),
        pytest.param(field_config(default=500, max=100), {}, 100.0, id="default-clamped-max"),
        pytest.param(field_config(default=0, min=3), {}, 3.0, id="default-clamped-min"),
        pytest.param(
            field_config(scale=1e300, max=1e9), {"max_tokens": 1e300}, 1e9, id="overflow-to-max"
        ),
        pytest.param(
            CostConfig(estimator="field", field=None, value=42), {"x": 1}, 42.0, id="no-field"
        ),
    ],
)
def test_estimate(config: CostConfig, payload: Any, expected: float) -> None:
    assert estimate(config, payload) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("policy", "caller_cost", "expected"),
    [
        pytest.param("trust", None, 50.0, id="trust-none-estimates"),
        pytest.param("clamp", None, 50.0, id="clamp-none-estimates"),
        pytest.param("ignore", None, 50.0, id="ignore-none-estimates"),
        pytest.param("trust", 5_000.0, 5_000.0, id="trust-above-max"),
        pytest.param("trust", 0.0, 0.0, id="trust-below-min"),
        pytest.param("clamp", 5_000.0, 1_000.0, id="clamp-above-max"),
        pytest.param("clamp", 0.0, 10.0, id="clamp-below-min"),
        pytest.param("clamp", 70.0, 70.0, id="clamp-inside"),
        pytest.param("ignore", 70.0, 50.0, id="ignore"),
    ],
)
def test_resolve(policy: str, caller_cost: float | None, expected: float) -> None:
    config = field_config(min=10, max=1_000, caller_cost=policy)
    assert resolve(config, {}, caller_cost) == expected


@pytest.mark.parametrize(
    ("policy", "caller_cost", "expected"),
    [
        pytest.param("trust", INF, 1_000.0, id="trust-inf"),
        pytest.param("trust", -INF, 10.0, id="trust-neg-inf"),
        pytest.param("trust", NAN, 10.0, id="trust-nan"),
        pytest.param("trust", 10**400, 1_000.0, id="trust-huge-int"),
        pytest.param("trust", -5.0, -5.0, id="trust-negative-passes"),
        pytest.param("clamp", INF, 1_000.0, id="clamp-inf"),
        pytest.param("clamp", NAN, 10.0, id="clamp-nan"),
        pytest.param("ignore", NAN, 50.0, id="ignore-nan"),
    ],
)
def test_resolve_never_returns_non_finite(policy: str, caller_cost: float, expected: float) -> None:
    config = field_config(min=10, max=1_000, caller_cost=policy)
    cost = resolve(config, {}, caller_cost)
    assert math.isfinite(cost)
    assert cost == expected


def test_resolve_llm_tokens() -> None:
    config = CostConfig(estimator="llm_tokens", caller_cost="ignore")
    assert resolve(config, {"prompt": "hi", "max_tokens": 64}, 5.0) == 64.0


LLM = CostConfig(estimator="llm_tokens")
EMBED = CostConfig(value=5)


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        pytest.param("/v1/chat/completions", LLM, id="exact"),
        pytest.param("/v1/embeddings", EMBED, id="other-exact"),
        pytest.param("/v1/chat/completions/", CostConfig(), id="trailing-slash-is-other"),
        pytest.param("/v1/chat", CostConfig(), id="prefix-is-not-a-match"),
        pytest.param("/generate", CostConfig(), id="default"),
        pytest.param("", CostConfig(), id="empty"),
    ],
)
def test_select(route: str, expected: CostConfig) -> None:
    routes = {"/v1/chat/completions": LLM, "/v1/embeddings": EMBED}
    assert select(CostConfig(), routes, route) == expected


def test_select_without_routes() -> None:
    default = CostConfig(value=3)
    assert select(default, {}, "/anything") is default


@pytest.mark.parametrize(
    "fields",
    [
        {"estimator": "tokens"},
        {"chars_per_token": 0},
        {"chars_per_token": -1},
        {"chars_per_token": 5_000},
        {"prompt_weight": -0.1},
        {"completion_weight": -1},
        {"default_max_tokens": 0},
        {"tokens_per_message": -1},
        {"image_tokens": -1},
        {"calibration_alpha": 0},
        {"calibration_alpha": 1.5},
        {"max": INF},
        {"value": NAN},
        {"prompt_weight": INF},
        {"chars_per_token": NAN},
        {"min": 10, "max": 5},
    ],
)
def test_cost_config_rejects(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CostConfig(**fields)


def test_cost_config_llm_defaults() -> None:
    config = CostConfig(estimator="llm_tokens")
    assert (
        config.chars_per_token,
        config.tokens_per_message,
        config.image_tokens,
        config.default_max_tokens,
        config.prompt_weight,
        config.completion_weight,
        config.calibrate,
        config.calibration_alpha,
    ) == (4.0, None, 0, 256, 0.0, 1.0, False, 0.1)


# --- properties ---------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**18), 10**18),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["max_tokens", "input", "steps", "n", "x", "prompt", "messages"]),
            inner,
        ),
    ),
    max_leaves=12,
)
non_negative = st.floats(0.0, 1e12)


@st.composite
def cost_configs(draw: st.DrawFn) -> CostConfig:
    low = draw(non_negative)
    high = draw(st.floats(max(low, 1e-9), 1e13))
    return CostConfig(
        estimator=draw(st.sampled_from(["constant", "field", "llm_tokens"])),
        value=draw(non_negative),
        field=draw(st.sampled_from([None, "max_tokens", "input.steps", "input.n.x"])),
        scale=draw(st.floats(1e-6, 1e6)),
        default=draw(non_negative),
        min=low,
        max=high,
        caller_cost=draw(st.sampled_from(["trust", "clamp", "ignore"])),
        chars_per_token=draw(st.floats(0.0, 1_000.0, exclude_min=True)),
        prompt_weight=draw(st.floats(0.0, 1e6)),
        completion_weight=draw(st.floats(0.0, 1e6)),
    )


payloads = st.one_of(
    json_values,
    st.fixed_dictionaries({"max_tokens": json_values, "input": json_values}),
    st.fixed_dictionaries({"input": st.fixed_dictionaries({"steps": json_values})}),
)


@given(cost_configs(), payloads)
@settings(max_examples=100)
def test_estimate_always_within_min_max(config: CostConfig, payload: Any) -> None:
    cost = estimate(config, payload)
    assert math.isfinite(cost)
    assert config.min <= cost <= config.max


@given(cost_configs(), payloads, st.floats(0.0, 1e15))
@settings(max_examples=100)
def test_resolve_policies(config: CostConfig, payload: Any, caller_cost: float) -> None:
    cost = resolve(config, payload, caller_cost)
    if config.caller_cost == "trust":
        assert cost == caller_cost
    elif config.caller_cost == "ignore":
        assert cost == estimate(config, payload)
    else:
        assert config.min <= cost <= config.max
        if config.min <= caller_cost <= config.max:
            assert cost == caller_cost


@given(cost_configs(), st.integers(0, 10**15))
@settings(max_examples=100)
def test_field_estimate_is_scaled_value_when_inside_bounds(config: CostConfig, n: int) -> None:
    assume(config.field is not None)
    config = config.model_copy(update={"estimator": "field"})
    payload: dict[str, Any] = {}
    node = payload
    *parents, leaf = config.field.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = n
    raw = n * config.scale
    assert estimate(config, payload) == min(config.max, max(config.min, raw))


def test_estimate_huge_integer_field_stays_within_bounds() -> None:
    config = field_config(min=1, max=1_000)
    cost = estimate(config, {"max_tokens": 10**400})
    assert 1 <= cost <= 1_000
