"""vast.worker_networks: the pure check, the route answer mapping, the config errors."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.config import ConfigError, parse_config
from scheduler.vast.networks import (
    WorkerNetworks,
    describe_host,
    normalise_name,
    parse_entry,
    worker_networks_of,
)
from scheduler.vast.route_client import answer_to_result, parse_route_answer
from scheduler.vast.types import Ready, RouteError, RouteWorkerNotAllowed

SIGNATURE = "c2VjcmV0LXNpZ25hdHVyZQ=="
PRIVATE = WorkerNetworks.parse(["10.0.0.0/8", "fd00::/8", "Worker-1.Example.com."])


def ready(url: str) -> dict[str, Any]:
    return {"url": url, "reqnum": 3, "signature": SIGNATURE, "cost": 100, "request_idx": 1}


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("10.0.0.1", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("127.0.0.1", False),
        ("fd00::1", True),
        ("fe80::1", False),
        ("::ffff:10.1.2.3", True),  # IPv4-mapped: counts as 10.1.2.3
        ("::ffff:11.1.2.3", False),
        ("worker-1.example.com", True),
        ("WORKER-1.example.com.", True),
        ("worker-2.example.com", False),
        ("example.com", False),
        ("10.0.0.1.nip.io", False),  # a name is never an address
        ("", False),
    ],
)
def test_allows(host: str, allowed: bool) -> None:
    assert PRIVATE.allows(host) is allowed


@pytest.mark.parametrize(
    "entry",
    ["10.0.0.0/33", "10.0.0.1/8", "300.1.1.1", "1.2.3", "fd00::/129", "fd00::zz", "a..b",
     "-x.example", "", "under_score.example", "x" * 300, "10.0.0.0/8 # comment"],
)  # fmt: skip
def test_bad_entries_are_value_errors(entry: str) -> None:
    with pytest.raises(ValueError, match="entry 1"):
        WorkerNetworks.parse(["192.168.0.0/16", entry])


def test_entries_parse_to_networks_and_names() -> None:
    assert parse_entry("10.0.0.0/8") == ipaddress.ip_network("10.0.0.0/8")
    assert parse_entry("10.0.0.7") == ipaddress.ip_network("10.0.0.7/32")
    assert parse_entry(" Host.Example. ") == "host.example"
    assert worker_networks_of(None) is None
    assert worker_networks_of(["10.0.0.0/8"]) == WorkerNetworks.parse(["10.0.0.0/8"])


ipv4_networks = st.builds(
    lambda address, prefix: ipaddress.ip_network(f"{address}/{prefix}", strict=False),
    st.ip_addresses(v=4),
    st.integers(0, 32),
)
ipv6_networks = st.builds(
    lambda address, prefix: ipaddress.ip_network(f"{address}/{prefix}", strict=False),
    st.ip_addresses(v=6),
    st.integers(0, 128),
)
networks = st.lists(st.one_of(ipv4_networks, ipv6_networks), min_size=1, max_size=5)


@given(networks, st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_allows_matches_membership(nets: list[Any], address: Any) -> None:
    table = WorkerNetworks.parse([str(n) for n in nets])
    mapped = getattr(address, "ipv4_mapped", None)
    expected = any(address in n or (mapped is not None and mapped in n) for n in nets)
    assert table.allows(str(address)) is expected


@given(networks)
def test_every_network_admits_its_own_edges(nets: list[Any]) -> None:
    table = WorkerNetworks.parse([str(n) for n in nets])
    for network in nets:
        assert table.allows(str(network.network_address))
        assert table.allows(str(network.broadcast_address))


@given(st.text(max_size=300))
def test_arbitrary_hosts_never_crash_and_only_addresses_match_networks(host: str) -> None:
    ten = ipaddress.ip_network("10.0.0.0/8")
    address = _as_ip(host)
    mapped = getattr(address, "ipv4_mapped", None)
    expected = address is not None and (address in ten or (mapped is not None and mapped in ten))
    assert WorkerNetworks.parse([str(ten)]).allows(host) is expected
    shown = describe_host(host)
    assert len(shown) <= 83
    assert all(c.isascii() and c.isprintable() for c in shown)


@given(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,10}){1,3}", fullmatch=True))
def test_a_name_entry_admits_exactly_that_name(name: str) -> None:
    table = WorkerNetworks.parse([name.upper() + "."])
    assert normalise_name(name) == name
    assert table.allows(name)
    assert not table.allows("x" + name)
    assert not table.allows(name + ".evil")


def _as_ip(host: str) -> Any:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def test_route_answer_outside_is_a_typed_retryable_route_error() -> None:
    with pytest.raises(RouteWorkerNotAllowed) as caught:
        answer_to_result(ready("http://192.168.1.5:41000"), PRIVATE)
    assert isinstance(caught.value, RouteError)
    assert caught.value.kind == "worker_not_allowed"
    message = str(caught.value)
    assert "192.168.1.5" in message
    assert SIGNATURE not in message


@pytest.mark.parametrize(
    "url",
    ["http://10.2.3.4:41000/", "https://[fd00::5]:8443", "http://worker-1.example.com:80",
     "http://[::ffff:10.0.0.9]:9000"],
)  # fmt: skip
def test_route_answer_inside_is_ready(url: str) -> None:
    result = answer_to_result(ready(url), PRIVATE)
    assert isinstance(result, Ready)
    assert result.url == url.rstrip("/")


def test_no_networks_allows_any_host() -> None:
    assert isinstance(answer_to_result(ready("http://203.0.113.9:1")), Ready)
    raw = json.dumps(ready("http://203.0.113.9:1")).encode()
    assert isinstance(parse_route_answer(200, {}, raw), Ready)
    with pytest.raises(RouteWorkerNotAllowed):
        parse_route_answer(200, {}, raw, PRIVATE)


def test_waiting_answers_are_not_checked() -> None:
    raw = json.dumps({"status": "Loading: 1", "request_idx": 2}).encode()
    assert not isinstance(parse_route_answer(200, {}, raw, PRIVATE), Ready)


def test_hostile_host_is_shown_bounded_and_printable() -> None:
    host = "\u0432\u043e\u0440\u043a\u0435\u0440" + "b" * 200 + ".example"
    with pytest.raises(RouteWorkerNotAllowed) as caught:
        answer_to_result(ready(f"http://{host}:1"), PRIVATE)
    message = str(caught.value)
    assert message.isascii()
    assert len(message) < 200


@pytest.mark.parametrize(
    ("yaml_text", "problem"),
    [
        ("vast: {worker_networks: [10.0.0.0/8, 10.0.0.0/33]}",
         "vast.worker_networks: entry 1: '10.0.0.0/33' is not a valid IP network"),
        ("vast: {worker_networks: [10.0.0.1/8]}", "has host bits set"),
        ("vast: {worker_networks: [a..b]}", "vast.worker_networks: entry 0: 'a..b' is neither"),
        ("vast: {worker_networks: []}", "vast.worker_networks: list at least one network"),
        ("vast: {worker_networks: [1]}", "vast.worker_networks.0: "),
    ],
)  # fmt: skip
def test_config_errors_name_the_yaml_path(yaml_text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml_text)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_config_default_is_any_and_entries_are_kept() -> None:
    assert parse_config("{}").vast.worker_networks is None
    config = parse_config("vast: {worker_networks: [10.0.0.0/8, 'fd00::/8', w.example]}")
    assert config.vast.worker_networks == ("10.0.0.0/8", "fd00::/8", "w.example")
