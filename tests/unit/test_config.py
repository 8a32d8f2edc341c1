"""parse_config: interpolation, endpoint defaults, error paths, secrets, shipped configs."""

from __future__ import annotations

import math
from pathlib import Path
from textwrap import dedent

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from scheduler.config import AppConfig, ConfigError, load_config, parse_config
from scheduler.core.queue import JobQueue

REPO = Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted((REPO / "config").glob("*.yaml"))


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(dedent(text), env={} if env is None else env)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# --- defaults and basic shape -------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}", "~"])
def test_empty_document_gives_defaults(text: str) -> None:
    config = parse_config(text, env={})
    assert config == AppConfig()
    assert config.embedded
    assert config.endpoints == {}
    assert config.server.port == 8080


def test_config_is_frozen() -> None:
    config = parse_config("server: {port: 9000}", env={})
    with pytest.raises(ValidationError):
        config.server.port = 1  # type: ignore[misc]


def test_autoscaler_url_trailing_slash_stripped() -> None:
    config = parse_config("vast: {autoscaler_url: 'https://run.vast.ai/'}", env={})
    assert config.vast.autoscaler_url == "https://run.vast.ai"
    assert not config.embedded


# --- ${VAR} interpolation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        pytest.param("${H}", {"H": "example.org"}, "example.org", id="set"),
        pytest.param("${H:-fallback}", {}, "fallback", id="default-when-missing"),
        pytest.param("${H:-fallback}", {"H": ""}, "fallback", id="default-when-empty"),
        pytest.param("${H:-fallback}", {"H": "real"}, "real", id="set-beats-default"),
        pytest.param("${H:-}", {}, "", id="empty-default"),
        pytest.param("a-${X}-${Y:-y}.z", {"X": "x"}, "a-x-y.z", id="several-in-one"),
        pytest.param("plain", {}, "plain", id="no-reference"),
        pytest.param("$H", {"H": "no"}, "$H", id="bare-dollar-left-alone"),
        pytest.param("${H}", {"H": "a: b\n- [c]"}, "a: b\n- [c]", id="value-not-reparsed"),
    ],
)
def test_interpolation(value: str, env: dict[str, str], expected: str) -> None:
    config = parse_config(f'server:\n  host: "{value}"\n', env=env)
    assert config.server.host == expected


def test_interpolated_number_is_coerced() -> None:
    config = parse_config("server:\n  port: ${PORT:-8081}\n", env={"PORT": "9090"})
    assert config.server.port == 9090
    assert parse_config("server:\n  port: ${PORT:-8081}\n", env={}).server.port == 8081


def test_interpolation_uses_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VS_TEST_HOST", "from-environ")
    assert parse_config("server:\n  host: ${VS_TEST_HOST}\n").server.host == "from-environ"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            "vast:\n  api_key: ${VAST_API_KEY}\n",
            "vast.api_key: environment variable VAST_API_KEY is not set",
            id="nested",
        ),
        pytest.param(
            "server:\n  webhook:\n    allowed_hosts:\n      - a\n      - ${HOOK_HOST}\n",
            "server.webhook.allowed_hosts.1: environment variable HOOK_HOST is not set",
            id="list-index",
        ),
        pytest.param(
            "endpoints:\n  llm:\n    default_route: ${ROUTE}\n",
            "endpoints.llm.default_route: environment variable ROUTE is not set",
            id="endpoint",
        ),
    ],
)
def test_missing_variable_names_the_path(text: str, problem: str) -> None:
    assert problem in problems_of(text)


def test_empty_variable_without_default_is_missing() -> None:
    assert problems_of("vast:\n  api_key: ${K}\n", env={"K": ""}) == [
        "vast.api_key: environment variable K is not set"
    ]


def test_interpolated_secret_never_in_repr() -> None:
    key = "sk-live-0123456789abcdef"
    hook = "whsec-fedcba9876543210"
    text = "vast:\n  api_key: ${KEY}\nserver:\n  webhook:\n    secret: ${HOOK}\n"
    config = parse_config(text, env={"KEY": key, "HOOK": hook})
    assert config.vast.api_key.get_secret_value() == key
    assert config.server.webhook.secret is not None
    assert config.server.webhook.secret.get_secret_value() == hook
    for rendered in (repr(config), str(config), repr(config.vast), config.model_dump_json()):
        assert key not in rendered
        assert hook not in rendered


def test_secret_not_in_error_message() -> None:
    key = "sk-live-0123456789abcdef"
    text = "vast:\n  api_key: ${KEY}\n  route_timeout_s: 0\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={"KEY": key})
    assert info.value.problems == ["vast.route_timeout_s: must be > 0.0"]
    assert key not in str(info.value)


# printable ASCII and letters: what survives a single-quoted YAML scalar unchanged
safe_default = st.text(
    st.one_of(
        st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="}'"),
        st.characters(categories=["L", "N"]),
    ),
    max_size=12,
)


@given(
    name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True),
    value=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1),
)
@settings(max_examples=100)
def test_interpolated_value_is_verbatim(name: str, value: str) -> None:
    config = parse_config(f"server:\n  host: ${{{name}}}\n", env={name: value})
    assert config.server.host == value


@given(name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True), default=safe_default)
@settings(max_examples=100)
def test_default_used_verbatim_when_missing(name: str, default: str) -> None:
    config = parse_config(f"server:\n  host: '${{{name}:-{default}}}'\n", env={})
    assert config.server.host == default


# --- endpoint_defaults --------------------------------------------------------------------


def test_endpoint_defaults_deep_merged() -> None:
    text = """
    endpoint_defaults:
      max_concurrency: 7
      queue: {max_depth: 3}
      cost: {estimator: field, field: max_tokens, min: 2, max: 500}
      poll: {initial_s: 0.3}
    endpoints:
      plain: {}
      llm:
        max_concurrency: 9
        cost: {max: 1000}
        poll: {max_s: 9}
    """
    config = parse_config(dedent(text), env={})
    plain, llm = config.endpoints["plain"], config.endpoints["llm"]
    assert plain.max_concurrency == 7
    assert plain.queue.max_depth == 3
    assert (plain.cost.estimator, plain.cost.field, plain.cost.min, plain.cost.max) == (
        "field",
        "max_tokens",
        2,
        500,
    )
    assert llm.max_concurrency == 9
    assert llm.queue.max_depth == 3
    # the override replaced one key of the nested mapping, not the whole mapping
    assert (llm.cost.estimator, llm.cost.field, llm.cost.min, llm.cost.max) == (
        "field",
        "max_tokens",
        2,
        1000,
    )
    assert (llm.poll.initial_s, llm.poll.max_s) == (0.3, 9)
    assert config.endpoint_defaults.queue.max_depth == 3


def test_endpoint_defaults_errors_reported_per_endpoint() -> None:
    text = """
    endpoint_defaults:
      queue: {max_depth: -1}
    endpoints:
      a: {}
      b: {queue: {max_depth: 5}}
    """
    assert problems_of(text) == [
        "endpoint_defaults.queue.max_depth: must be > 0",
        "endpoints.a.queue.max_depth: must be > 0",
    ]


# --- validation errors with YAML paths ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            "endpoints: {llm: {queue: {max_depth: 0}}}",
            "endpoints.llm.queue.max_depth: must be > 0",
            id="max-depth",
        ),
        pytest.param("server: {port: 70000}", "server.port: must be <= 65535", id="port"),
        pytest.param("server: {port: -1}", "server.port: must be >= 0", id="port-negative"),
        pytest.param("bogus: 1", "bogus: unknown field", id="unknown-root"),
        pytest.param("server: {bogus: 1}", "server.bogus: unknown field", id="unknown-nested"),
        pytest.param(
            "endpoints: {llm: {queue: {depth: 3}}}",
            "endpoints.llm.queue.depth: unknown field",
            id="unknown-in-endpoint",
        ),
        pytest.param(
            "vast: {autoscaler_url: 'ftp://run.vast.ai'}",
            "vast.autoscaler_url: must be 'embedded' or an http(s) URL",
            id="ftp-url",
        ),
        pytest.param(
            "vast: {autoscaler_url: 'http://'}",
            "vast.autoscaler_url: must be 'embedded' or an http(s) URL",
            id="url-without-host",
        ),
        pytest.param(
            "vast: {autoscaler_url: run.vast.ai}",
            "vast.autoscaler_url: must be 'embedded' or an http(s) URL",
            id="url-without-scheme",
        ),
        pytest.param(
            "endpoints: {'bad name!': {}}",
            "endpoints: bad endpoint name 'bad name!': use letters, digits, . _ -",
            id="endpoint-name",
        ),
        pytest.param(
            "endpoints: {'-lead': {}}",
            "endpoints: bad endpoint name '-lead': use letters, digits, . _ -",
            id="endpoint-name-leading-dash",
        ),
        pytest.param(
            "logging: {level: loud}",
            "logging.level: must be one of 'debug', 'info', 'warning' or 'error'",
            id="literal",
        ),
        pytest.param(
            "endpoints: {llm: {cost: {field: 'a..b'}}}",
            "endpoints.llm.cost.field: must be a dotted path such as max_tokens or input.steps",
            id="cost-field",
        ),
        pytest.param(
            "endpoints: {llm: {cost: {scale: 0}}}",
            "endpoints.llm.cost.scale: must be > 0",
            id="cost-scale",
        ),
        pytest.param(
            "endpoints: {llm: {cost: {caller_cost: always}}}",
            "endpoints.llm.cost.caller_cost: must be one of 'trust', 'clamp' or 'ignore'",
            id="caller-cost",
        ),
        pytest.param(
            "endpoints: {llm: {default_route: v1}}",
            "endpoints.llm.default_route: must be a path starting with a single '/'",
            id="route-relative",
        ),
        pytest.param(
            "endpoints: {llm: {default_route: '//evil.example/x'}}",
            "endpoints.llm.default_route: must be a path starting with a single '/'",
            id="route-network-path",
        ),
        pytest.param(
            "endpoints: {llm: {poll: {multiplier: 0.5}}}",
            "endpoints.llm.poll.multiplier: must be >= 1",
            id="poll-multiplier",
        ),
        pytest.param(
            "vast: {ca_bundle: /nonexistent/vast-root.cer}",
            "vast.ca_bundle: file not found: /nonexistent/vast-root.cer",
            id="ca-bundle",
        ),
        pytest.param(
            "endpoints: [llm]", "endpoints: Input should be a valid dictionary", id="list"
        ),
    ],
)
def test_validation_problem(text: str, problem: str) -> None:
    problems = problems_of(text)
    assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize(
    "text", ["server: [", "a: b: c", "key: 'unterminated", "x: {a: 1", "@at: 1"]
)
def test_invalid_yaml(text: str) -> None:
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("<root>: not valid YAML")


@pytest.mark.parametrize("text", ["- a\n- b\n", "42", "just a string", "[1, 2]"])
def test_root_must_be_mapping(text: str) -> None:
    assert problems_of(text) == ["<root>: must be a mapping"]


def test_several_problems_reported_together() -> None:
    text = """
    server:
      port: 99999
      bogus: true
    vast:
      api_key: ${MISSING_KEY}
      autoscaler_url: gopher://x
    endpoints:
      llm:
        queue: {max_depth: 0}
        max_attempts: 0
    """
    problems = problems_of(text)
    expected = {
        "vast.api_key: environment variable MISSING_KEY is not set",
        "server.port: must be <= 65535",
        "server.bogus: unknown field",
        "vast.autoscaler_url: must be 'embedded' or an http(s) URL",
        "endpoints.llm.queue.max_depth: must be > 0",
        "endpoints.llm.max_attempts: must be > 0",
    }
    assert set(problems) == expected
    # interpolation problems come first, then validation problems
    assert problems[0] == "vast.api_key: environment variable MISSING_KEY is not set"


def test_load_config_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml", env={})
    assert info.value.problems[0].startswith("<file>: cannot read")


def test_load_config_reads_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  port: ${P}\n", encoding="utf-8")
    assert load_config(path, env={"P": "1234"}).server.port == 1234


def test_cost_min_above_max_rejected() -> None:
    problems = problems_of("endpoints: {llm: {cost: {min: 10, max: 5}}}")
    assert any(p.startswith("endpoints.llm.cost") for p in problems)


# --- the shipped config files -------------------------------------------------------------

_SHIPPED_ENV = {"VAST_API_KEY": "x"}


def _shipped_param(path: Path) -> object:
    return pytest.param(path, id=path.name)


@pytest.mark.skipif(not CONFIG_FILES, reason="no config/*.yaml in the repository")
@pytest.mark.parametrize("path", [_shipped_param(p) for p in CONFIG_FILES] or [None])
def test_shipped_config_parses(path: Path) -> None:
    config = load_config(path, env=_SHIPPED_ENV)
    assert isinstance(config, AppConfig)
    assert config.vast.api_key.get_secret_value()
    assert "x" not in repr(config.vast.api_key)


@pytest.mark.skipif(not CONFIG_FILES, reason="no config/*.yaml in the repository")
@pytest.mark.parametrize("path", CONFIG_FILES or [None], ids=lambda p: getattr(p, "name", "none"))
def test_shipped_config_parses_with_all_variables(path: Path) -> None:
    env = {**_SHIPPED_ENV, "VAST_SCHEDULER_WEBHOOK_SECRET": "whsec"}
    config = load_config(path, env=env)
    for name, endpoint in config.endpoints.items():
        assert endpoint.cost.min <= endpoint.cost.max, name
        assert endpoint.default_timeout_s <= endpoint.max_timeout_s, name


def test_api_key_from_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "vast.key"
    key_file.write_text("file-key-0123456789\n")
    config = parse_config(
        f"vast: {{autoscaler_url: 'https://run.vast.ai', api_key_file: '{key_file}'}}", env={}
    )
    assert config.vast.api_key.get_secret_value() == "file-key-0123456789"
    assert "file-key-0123456789" not in repr(config)


@pytest.mark.parametrize(
    ("vast", "message"),
    [
        ("{api_key_file: '/nonexistent/key'}", "api_key_file: cannot read /nonexistent/key"),
        ("{api_key_file: '/etc/hostname', api_key: x}", "set api_key or api_key_file, not both"),
    ],
)
def test_api_key_file_problems(vast: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(f"vast: {vast}", env={})
    assert any(message in problem for problem in raised.value.problems), raised.value.problems


def test_placement_defaults_and_limits() -> None:
    config = parse_config("endpoints: {a: {}, b: {placement: {horizon_s: 2.5}}}", env={})
    assert config.endpoints["a"].placement.horizon_s is None  # the concurrency limit decides
    assert config.endpoints["a"].placement.held_route_interval_s == 0.5
    assert config.endpoints["b"].placement.horizon_s == 2.5
    problems = problems_of("endpoints: {a: {placement: {horizon_s: 0, speed: 1}}}")
    assert any(p.startswith("endpoints.a.placement.horizon_s:") for p in problems), problems
    assert any(p.startswith("endpoints.a.placement.speed:") for p in problems), problems


def test_capacity_defaults_and_limits() -> None:
    config = parse_config("endpoints: {a: {}, b: {capacity: {enabled: false}}}", env={})
    a, b = config.endpoints["a"], config.endpoints["b"]
    assert a.capacity.enabled
    assert a.capacity.initial_limit == 4
    assert a.max_concurrency is None  # leases and worker limits bound it, not a job count
    assert not b.capacity.enabled
    problems = problems_of("endpoints: {a: {capacity: {initial_limit: 9, max_limit: 4}}}")
    assert any(p.startswith("endpoints.a.capacity") for p in problems), problems
    problems = problems_of("endpoints: {a: {capacity: {backoff: 1}}}")
    assert any(p.startswith("endpoints.a.capacity.backoff:") for p in problems), problems


@settings(max_examples=200, deadline=None)
@given(weight=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 5))
def test_every_tenant_weight_that_validates_also_starts(weight: float) -> None:
    """check-config and start-up apply one rule: a weight the config accepts, the endpoint's
    queue accepts too (a weight of 0, below 0, inf or nan is a problem naming the field)."""
    text = yaml.safe_dump({"endpoints": {"e": {"tenant_weights": {"acme": weight}}}})
    if not (math.isfinite(weight) and weight > 0):
        assert any("endpoints.e.tenant_weights.acme" in p for p in problems_of(text))
        return
    endpoint = parse_config(text, env={}).endpoints["e"]
    JobQueue(endpoint.queue.max_depth, endpoint.tenant_weights)  # raises if it disagrees


# --- the Vast account key and endpoint keys ------------------------------------------------

REAL = "autoscaler_url: 'https://run.vast.ai'"


def test_account_key_from_a_file_and_empty_means_none(tmp_path: Path) -> None:
    key_file = tmp_path / "account.key"
    key_file.write_text("account-key-0123456789\n")
    config = parse_config(
        f"vast: {{{REAL}, account_api_key_file: '{key_file}'}}\nendpoints: {{llm: {{}}}}", env={}
    )
    assert config.vast.account_api_key is not None
    assert config.vast.account_api_key.get_secret_value() == "account-key-0123456789"
    assert "account-key-0123456789" not in repr(config)
    unset = parse_config("vast: {account_api_key: '${VAST_API_KEY:-}'}", env={})
    assert unset.vast.account_api_key is None


def test_account_key_and_its_file_together_is_an_error() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config("vast: {account_api_key: a, account_api_key_file: /etc/hostname}", env={})
    assert any("set account_api_key or account_api_key_file, not both" in p
               for p in raised.value.problems)  # fmt: skip


@pytest.mark.parametrize(
    "config",
    [
        f"vast: {{{REAL}, account_api_key: acct-0123456789}}\nendpoints: {{a: {{}}, b: {{}}}}",
        f"vast: {{{REAL}}}\nendpoints: {{a: {{api_key: ka-0123456789}}}}",
        f"vast: {{{REAL}, api_key: shared-0123456789}}\nendpoints: {{a: {{}}}}",
    ],
)
def test_real_vast_takes_an_account_an_endpoint_or_a_shared_key(config: str) -> None:
    parse_config(config, env={})


def test_real_vast_without_a_key_names_the_keyless_endpoints() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(
            f"vast: {{{REAL}}}\nendpoints: {{a: {{api_key: ka-0123456789}}, b: {{}}}}", env={}
        )
    (problem,) = raised.value.problems
    assert problem.startswith("vast.account_api_key: a real Vast key is required")
    assert "['b']" in problem


def test_endpoint_key_is_a_secret_and_empty_means_none() -> None:
    config = parse_config(
        "endpoints: {a: {api_key: endpoint-key-0123456789}, b: {api_key: '${K:-}'}}", env={}
    )
    key = config.endpoints["a"].api_key
    assert key is not None
    assert key.get_secret_value() == "endpoint-key-0123456789"
    assert "endpoint-key-0123456789" not in repr(config)
    assert config.endpoints["b"].api_key is None
