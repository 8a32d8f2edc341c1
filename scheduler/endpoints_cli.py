"""``endpoints`` and ``check-config --online``: the account's endpoints as the console lists
them, a starting config for them, and whether a config's endpoints are all in the account."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import aiohttp
from pydantic import SecretStr

from scheduler.config import AppConfig
from scheduler.config.endpoint import ENDPOINT_NAME
from scheduler.vast.console import ConsoleClient, EndpointsMissing, Listing, VastEndpoint

DEFAULT_AUTOSCALER_URL = "https://run.vast.ai"
# Names that say the endpoint serves a language model (vLLM, TGI, SGLang, Ollama templates
# and the usual model families): its jobs are costed by tokens.
LLM_HINT = re.compile(
    r"llm|vllm|tgi|sglang|ollama|llama|mistral|mixtral|qwen|gemma|deepseek|phi-?\d|gpt|"
    r"chat|instruct|openai|text-generation",
    re.IGNORECASE,
)
LLM_ROUTE = "/v1/chat/completions"


async def list_endpoints(console_url: str, account_key: SecretStr, timeout_s: float) -> Listing:
    connector = aiohttp.TCPConnector(limit=4)  # the console: a public CA's certificate
    async with aiohttp.ClientSession(connector=connector) as session:
        console = ConsoleClient(session, console_url, DEFAULT_AUTOSCALER_URL, account_key,
                                timeout_s)  # fmt: skip
        return await console.list_endpoints()


def missing_endpoints(config: AppConfig, listing: Listing) -> EndpointsMissing | None:
    """The configured endpoints without a key of their own that the account lacks."""
    listed = listing.by_name()
    missing = sorted(name for name, ep in config.endpoints.items()
                     if ep.api_key is None and name not in listed)  # fmt: skip
    return EndpointsMissing(missing, sorted(listed)) if missing else None


COLUMNS = ("name", "id", "state", "max_workers", "cold_workers", "max_queue_time_s",
           "target_queue_time_s", "target_util")  # fmt: skip


def table(endpoints: Iterable[VastEndpoint]) -> str:
    """One line per endpoint, as ``vastai show endpoints`` shows them (without keys)."""
    rows = [list(COLUMNS)]
    for endpoint in sorted(endpoints, key=lambda e: (e.name, e.id)):
        settings = endpoint.settings()
        rows.append([printable(endpoint.name), *(cell(settings[c]) for c in COLUMNS[1:])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)  # fmt: skip


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return printable(str(value))


def printable(text: str) -> str:
    """Console text is untrusted: no control characters reach the terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def serves_llm(endpoint: VastEndpoint) -> bool:
    return bool(LLM_HINT.search(endpoint.name))


def init_config(endpoints: Iterable[VastEndpoint], autoscaler_url: str, console_url: str) -> str:
    """A starting config: the account key from ``VAST_API_KEY``, one section per endpoint
    (token-costed where the name says LLM, else a constant cost)."""
    q = json.dumps  # a JSON string is a YAML double-quoted scalar
    lines = [
        "# Written by `vast-scheduler endpoints --init` from the account's endpoints.",
        "# Check it with `vast-scheduler check-config --online FILE`.",
        "server: {host: 127.0.0.1, port: 8080}",
        "auth:",
        "  enabled: true",
        "  tokens:",
        '    - {name: default, token: "${SCHEDULER_TOKEN:-}"}  # at least 16 characters',
        "vast:",
        f"  autoscaler_url: {q(autoscaler_url)}",
        f"  console_url: {q(console_url)}",
        '  account_api_key: "${VAST_API_KEY}"  # the account key: endpoint keys are listed',
        "endpoints:",
    ]
    names = 0
    for endpoint in sorted(endpoints, key=lambda e: e.name):
        if not ENDPOINT_NAME.fullmatch(endpoint.name):
            lines.append(f"  # left out: {q(printable(endpoint.name))} is not a usable name here")
            continue
        names += 1
        lines.append(f"  {endpoint.name}:  # id {endpoint.id}")
        if serves_llm(endpoint):
            lines.append(f"    default_route: {LLM_ROUTE}")
            lines.append("    cost: {estimator: llm_tokens}  # max_tokens, as Vast's LLM workers")
        else:
            lines.append("    cost: {estimator: constant, value: 100}  # per job; tune it")
    if names == 0:
        lines[-1] = "endpoints: {}  # the account has no endpoint"
    return "\n".join(lines) + "\n"
