"""The pure reload plan: what applies live, what needs a restart, and that it never leaks a
secret. Table-driven, plus hypothesis over live endpoint limits."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.config import AppConfig
from scheduler.config.reload_plan import Plan, Refused, plan_reload, split_problem

TOKEN = "old-token-0123456789abcdef"
NEW_TOKEN = "new-token-0123456789abcdef"
BASE: dict[str, Any] = {
    "auth": {"tokens": [{"name": "team", "token": TOKEN}]},
    "endpoints": {"chat": {"max_concurrency": 2}, "echo": {}},
}


def config(**overrides: Any) -> AppConfig:
    """BASE with top-level sections replaced by ``overrides``."""
    return AppConfig.model_validate({**BASE, **overrides})


def with_endpoint(name: str, **fields: Any) -> AppConfig:
    endpoints = {**BASE["endpoints"], name: {**BASE["endpoints"].get(name, {}), **fields}}
    return config(endpoints=endpoints)


LIVE = [
    ("max_concurrency", with_endpoint("chat", max_concurrency=5),
     "endpoints.chat.max_concurrency: 2 -> 5"),
    ("queue depth", with_endpoint("chat", queue={"max_depth": 7}),
     "endpoints.chat.queue.max_depth: 10000 -> 7"),
    ("queue cost", with_endpoint("chat", queue={"max_cost": 5e3}),
     "endpoints.chat.queue.max_cost: null -> 5000.0"),
    ("estimator", with_endpoint("echo", cost={"estimator": "field", "field": "n"}),
     'endpoints.echo.cost.estimator: "constant" -> "field"'),
    ("route estimator", with_endpoint("echo", routes={"/x": {"value": 3}}),
     "endpoints.echo.routes./x: added"),
    ("batch", with_endpoint("echo", batch={"max_jobs": 2}),
     "endpoints.echo.batch.max_jobs: 32 -> 2"),
    ("rate", with_endpoint("echo", route_rate_per_s=2.5), "endpoints.echo.route_rate_per_s"),
    ("tenant weights", with_endpoint("echo", tenant_weights={"a": 2.0}),
     "endpoints.echo.tenant_weights.a: added"),
    ("reuse", with_endpoint("echo", reuse="never"), "endpoints.echo.reuse"),
    ("new endpoint", with_endpoint("new"), "endpoints.new: added"),
    ("defaults", config(endpoint_defaults={"max_attempts": 3}),
     "endpoint_defaults.max_attempts: 5 -> 3"),
]  # fmt: skip


@pytest.mark.parametrize(("new", "change"), [c[1:] for c in LIVE], ids=[c[0] for c in LIVE])
def test_live_changes_make_a_plan(new: AppConfig, change: str) -> None:
    plan = plan_reload(config(), new)
    assert isinstance(plan, Plan), plan
    assert plan.config is new
    assert any(c.startswith(change) for c in plan.changes), plan.changes


RESTART = [
    ("port", config(server={"port": 9000}), ["server.port: changing it needs a restart"]),
    ("host and grace", config(server={"host": "0.0.0.0", "grace_period_s": 1}),
     ["server.host: changing it needs a restart",
      "server.grace_period_s: changing it needs a restart"]),
    ("store", config(store={"prefetch": 4}), ["store.prefetch: changing it needs a restart"]),
    ("redis", config(store={"redis": {"key_prefix": "x"}}),
     ["store.redis.key_prefix: changing it needs a restart"]),
    ("vast", config(vast={"route_timeout_s": 1}),
     ["vast.route_timeout_s: changing it needs a restart"]),
    ("emulator", config(emulator={"port": 1234}),
     ["emulator.port: changing it needs a restart"]),
    ("logging", config(logging={"level": "debug"}),
     ["logging.level: changing it needs a restart"]),
    ("auth off", config(auth={**BASE["auth"], "enabled": False}),
     ["auth.enabled: changing it needs a restart"]),
    ("open paths", config(auth={**BASE["auth"], "open_paths": ["/healthz"]}),
     ["auth.open_paths: changing it needs a restart"]),
    ("removal", config(endpoints={"chat": {"max_concurrency": 2}}),
     ["endpoints.echo: removing an endpoint needs a restart (its queued and running jobs "
      "would be lost)"]),
]  # fmt: skip


@pytest.mark.parametrize(("new", "problems"), [c[1:] for c in RESTART], ids=[c[0] for c in RESTART])
def test_restart_only_changes_are_refused_by_path(new: AppConfig, problems: list[str]) -> None:
    outcome = plan_reload(config(), new)
    assert outcome == Refused(tuple(problems))


def test_a_refusal_lists_every_path_and_applies_nothing_live_either() -> None:
    new = config(server={"port": 9000}, endpoints={**BASE["endpoints"], "new": {}})
    outcome = plan_reload(config(), new)
    assert outcome == Refused(("server.port: changing it needs a restart",))


def test_the_same_config_is_an_empty_plan() -> None:
    plan = plan_reload(config(), config())
    assert plan == Plan(config(), (), (), (), tokens_changed=False)


def test_tokens_apply_live_and_never_show_their_value() -> None:
    auth = {"tokens": [{"name": "team", "token": NEW_TOKEN, "admin": True},
                       {"name": "ops", "token": TOKEN}]}  # fmt: skip
    plan = plan_reload(config(), config(auth=auth))
    assert isinstance(plan, Plan)
    assert plan.tokens_changed
    assert plan.changes == ("auth.tokens: changed",)
    assert TOKEN not in repr(plan.changes)
    assert NEW_TOKEN not in repr(plan.changes)


def test_secrets_outside_auth_are_refused_without_their_value() -> None:
    outcome = plan_reload(config(), config(vast={"api_key": "another-key-123456"}))
    assert outcome == Refused(("vast.api_key: changing it needs a restart",))


def test_endpoint_names_with_dots_keep_their_path() -> None:
    old = config(endpoints={"a.b": {}})
    plan = plan_reload(old, config(endpoints={"a.b": {"max_attempts": 2}}))
    assert isinstance(plan, Plan)
    assert plan.updated_endpoints == ("a.b",)
    assert plan.changes == ("endpoints.a.b.max_attempts: 5 -> 2",)


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        (
            "endpoints.a.max_concurrency: must be > 0",
            ("endpoints.a.max_concurrency", "must be > 0"),
        ),
        ("<root>: not valid YAML: x: y", ("<root>", "not valid YAML: x: y")),
        ("no path here", ("<root>", "no path here")),
    ],
)
def test_split_problem(problem: str, expected: tuple[str, str]) -> None:
    assert split_problem(problem) == expected


LIMITS = st.fixed_dictionaries(
    {},
    optional={
        "max_concurrency": st.integers(1, 10_000),
        "max_attempts": st.integers(1, 100),
        "route_burst": st.integers(1, 1_000),
        "route_rate_per_s": st.floats(0.01, 1e4),
        "queue": st.fixed_dictionaries({"max_depth": st.integers(1, 10**6)}),
        "batch": st.fixed_dictionaries({"max_jobs": st.integers(1, 4096)}),
        "retry_budget": st.fixed_dictionaries({"ratio": st.floats(0, 10)}),
        "tenant_weights": st.dictionaries(st.sampled_from("abc"), st.floats(0.01, 100)),
        "reuse": st.sampled_from(["auto", "session", "sequential", "never"]),
    },
)


@given(chat=LIMITS, new=st.booleans())
def test_any_endpoint_limit_applies_live_and_is_reported(chat: dict[str, Any], new: bool) -> None:
    endpoints = {"chat": chat, "echo": {}, **({"extra": chat} if new else {})}
    target = config(endpoints=endpoints)
    plan = plan_reload(config(), target)
    assert isinstance(plan, Plan), plan
    assert plan.added_endpoints == (("extra",) if new else ())
    changed = target.endpoints["chat"] != config().endpoints["chat"]
    assert plan.updated_endpoints == (("chat",) if changed else ())
    assert all(c.startswith("endpoints.") for c in plan.changes)
    assert len(plan.changes) >= changed + new
