"""The auth: and queue limit sections of the config: defaults, validation with paths, secrets."""

from __future__ import annotations

from textwrap import dedent

import pytest

from scheduler.config import AppConfig, ConfigError, parse_config

TOKEN = "a-long-enough-token-0123"


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(dedent(text), env=env or {})
    return info.value.problems


def test_auth_is_on_by_default_with_no_token_and_the_default_open_paths() -> None:
    config = AppConfig()
    assert config.auth.enabled is True
    assert config.auth.tokens == ()
    assert config.auth.open_paths == ("/healthz", "/readyz", "/metrics")
    assert config.auth.warnings() == [
        "auth is on with no token set: every protected path answers 401"
    ]
    assert config.server.max_json_depth == 64
    assert config.endpoint_defaults.queue.max_cost is None


def test_tokens_from_the_environment_are_secret_and_parsed() -> None:
    config = parse_config(
        dedent("""
        endpoints: {echo: {}, llm: {}}
        auth:
          tokens:
            - {name: team-a, token: "${TOKEN_A}", endpoints: [echo], max_queued_jobs: 10}
            - {name: team.b, token: "${TOKEN_B:-}", max_queued_cost: 5e5}
        """),
        env={"TOKEN_A": TOKEN},
    )
    first, second = config.auth.tokens
    assert first.endpoints == ("echo",)
    assert first.token is not None
    assert first.token.get_secret_value() == TOKEN
    assert TOKEN not in repr(config)
    assert second.endpoints == "*"
    assert second.token is None  # unset: that entry is off
    assert second.max_queued_cost == 5e5
    assert config.auth.warnings() == ["auth.tokens.1.token is empty: tenant team.b is off"]


def test_explicitly_disabled_auth_warns() -> None:
    config = parse_config("auth: {enabled: false}", env={})
    assert config.auth.enabled is False
    assert config.auth.warnings()[0].startswith("auth.enabled is false")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("auth: {tokens: [{name: a, token: short}]}",
         "auth.tokens.0.token: must be at least 16 characters"),
        ("auth: {tokens: [{name: a, token: 'has a space in it 0123'}]}",
         "auth.tokens.0.token: must be printable, with no whitespace"),
        ("auth: {tokens: [{name: 'a b', token: " + TOKEN + "}]}",
         "auth.tokens.0.name: letters, digits, . _ - (1-64 characters)"),
        ("auth: {tokens: [{name: a, token: " + TOKEN + "}, {name: a, token: " + TOKEN + "x}]}",
         "auth.tokens: token names (tenants) must be unique"),
        ("auth: {tokens: [{name: a, token: " + TOKEN + "}, {name: b, token: " + TOKEN + "}]}",
         "auth.tokens: two entries share one token"),
        ("auth: {tokens: [{name: a, token: " + TOKEN + ", endpoints: [nope]}]}",
         "auth.tokens.0.endpoints: not configured: ['nope']"),
        ("auth: {tokens: [{name: a, token: " + TOKEN + ", max_queued_jobs: 0}]}",
         "auth.tokens.0.max_queued_jobs: must be > 0"),
        ("auth: {tokens: [{name: a}]}", "auth.tokens.0.token: is required"),
        ("auth: {open_paths: [/v1/jobs]}",
         "auth.open_paths: ['/v1/jobs'] cannot be open; choose from ['/', '/healthz', "
         "'/readyz', '/metrics', '/openapi.json', '/v1/status']"),
        ("auth: {enabled: maybe}", "auth.enabled: Input should be a valid boolean, unable to "
         "interpret input"),
        ("server: {max_json_depth: 0}", "server.max_json_depth: must be > 0"),
        ("endpoints: {e: {queue: {max_cost: -1}}}", "endpoints.e.queue.max_cost: must be > 0"),
    ],
)  # fmt: skip
def test_bad_auth_and_limits_are_reported_with_their_path(text: str, problem: str) -> None:
    assert any(p.startswith(problem) for p in problems_of(text)), problems_of(text)
