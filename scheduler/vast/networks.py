"""Where a route answer may send jobs: ``vast.worker_networks``. Pure, no I/O.

An entry is an IP network in CIDR notation (IPv4 or IPv6; a bare address is a /32 or /128)
or a host name. A worker URL's host is allowed when it is an IP address inside one of the
networks (an IPv4-mapped IPv6 address also counts as its IPv4 address), or a name equal to one
of the host-name entries (case-insensitive, trailing dot ignored). Names are never
resolved: a name entry trusts DNS for that exact name, and an IP entry never admits a
name (resolving would be I/O on the hot path and open to DNS rebinding). Vast answers with
IP addresses, so CIDRs are the usual choice. No entries configured (``None``): any host.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_LOOKS_NUMERIC = re.compile(r"[0-9.]+")
MAX_NAME_CHARS = 253


def parse_entry(entry: str) -> IPNetwork | str:
    """One config entry as a network or a normalised host name; ValueError says why not.

    Anything with a ``/`` or ``:`` or made only of digits and dots must be a valid network
    (``10.0.0.0/33`` is an error, not a host name); host bits set are an error too
    (``10.0.0.1/8``: write ``10.0.0.0/8``)."""
    text = entry.strip()
    if "/" in text or ":" in text or _LOOKS_NUMERIC.fullmatch(text):
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not a valid IP network: {exc}") from exc
    name = normalise_name(text)
    if name is None:
        raise ValueError(f"{entry!r} is neither an IP network (CIDR) nor a host name")
    return name


def normalise_name(text: str) -> str | None:
    """A DNS host name in lower case without its trailing dot; None if ``text`` is not one."""
    name = text.lower().removesuffix(".")
    if not name or len(name) > MAX_NAME_CHARS:
        return None
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        return None
    return name


def as_addresses(host: str) -> tuple[IPAddress, ...]:
    """``host`` as an IP address, plus its IPv4 address if it is IPv4-mapped IPv6; () if
    it is not an IP address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return ()
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address, address.ipv4_mapped
    return (address,)


@dataclass(frozen=True, slots=True)
class WorkerNetworks:
    """The allowed networks and host names; ``allows(host)`` is the whole check."""

    networks: tuple[IPNetwork, ...]
    names: frozenset[str]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> WorkerNetworks:
        """Every entry parsed; ValueError (naming the entry's index) at the first bad one."""
        networks: list[IPNetwork] = []
        names: set[str] = set()
        for index, entry in enumerate(entries):
            try:
                parsed = parse_entry(entry)
            except ValueError as exc:
                raise ValueError(f"entry {index}: {exc}") from exc
            if isinstance(parsed, str):
                names.add(parsed)
            else:
                networks.append(parsed)
        return cls(tuple(networks), frozenset(names))

    def allows(self, host: str) -> bool:
        """True if a worker at ``host`` (a URL's host, IPv6 without brackets) may get jobs."""
        addresses = as_addresses(host)
        if addresses:
            return any(a in network for a in addresses for network in self.networks)
        name = normalise_name(host)
        return name is not None and name in self.names


def worker_networks_of(entries: Iterable[str] | None) -> WorkerNetworks | None:
    """``vast.worker_networks`` as the route client takes it: None (any host) stays None."""
    return None if entries is None else WorkerNetworks.parse(entries)


def describe_host(host: str, limit: int = 80) -> str:
    """``host`` safe to put in a log line or error: printable ASCII, bounded length."""
    printable = "".join(c if c.isascii() and c.isprintable() else "?" for c in host)
    return printable[:limit] + ("..." if len(printable) > limit else "")


__all__ = [
    "WorkerNetworks",
    "as_addresses",
    "describe_host",
    "normalise_name",
    "parse_entry",
    "worker_networks_of",
]
