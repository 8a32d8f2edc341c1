"""``vast-scheduler endpoints``: the table, and ``--init``'s config (valid, token-costed where
the name says LLM)."""

from __future__ import annotations

from pydantic import SecretStr

from scheduler.config import parse_config
from scheduler.endpoints_cli import init_config, missing_endpoints, table
from scheduler.vast.console import Listing, VastEndpoint

ENDPOINTS = (
    VastEndpoint(12, "vllm-qwen", SecretStr("k1-0123456789"), "active", 30.0, 10.0, 20, 5),
    VastEndpoint(13, "comfy", SecretStr("k2-0123456789"), "suspended", None, None, 4),
    VastEndpoint(14, "bad name\x1b[31m", SecretStr("k3-0123456789")),
)


def test_table_lists_settings_and_no_key() -> None:
    text = table(ENDPOINTS)
    lines = text.splitlines()
    assert lines[0].split() == [
        "name", "id", "state", "max_workers", "cold_workers", "max_queue_time_s",
        "target_queue_time_s", "target_util",
    ]  # fmt: skip
    assert lines[3].split()[:4] == ["vllm-qwen", "12", "active", "20"]
    assert "\x1b" not in text
    assert not any(e.api_key.get_secret_value() in text for e in ENDPOINTS)


def test_init_config_is_accepted_and_costs_llms_by_tokens() -> None:
    text = init_config(ENDPOINTS, "https://run.vast.ai", "https://console.vast.ai")
    config = parse_config(text, env={"VAST_API_KEY": "acct-0123456789"})
    assert sorted(config.endpoints) == ["comfy", "vllm-qwen"]  # the odd name is left out
    assert config.endpoints["vllm-qwen"].cost.estimator == "llm_tokens"
    assert config.endpoints["comfy"].cost.estimator == "constant"
    assert config.vast.account_api_key is not None
    assert "\x1b" not in text
    assert not any(e.api_key.get_secret_value() in text for e in ENDPOINTS)


def test_init_config_without_endpoints_is_still_valid() -> None:
    config = parse_config(init_config((), "https://run.vast.ai", "https://console.vast.ai"),
                          env={"VAST_API_KEY": "acct-0123456789"})  # fmt: skip
    assert config.endpoints == {}


def test_missing_endpoints_ignores_those_with_their_own_key() -> None:
    config = parse_config(
        "endpoints: {comfy: {}, nope: {}, own: {api_key: own-0123456789}}", env={}
    )
    missing = missing_endpoints(config, Listing(ENDPOINTS, 0))
    assert missing is not None
    assert missing.names == ["nope"]
