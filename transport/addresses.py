"""Network addresses as operators and users type them, for both ends of a connection."""

from __future__ import annotations

import ipaddress

__all__ = ["IPV6_PREFIX_BITS", "address_scope", "parse_host_port"]

IPV6_PREFIX_BITS = 64
"""An IPv6 client is counted by its /64: one subscriber or site usually holds a whole /64, and
counting single addresses would let it take 2^64 of them."""


def parse_host_port(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:4433`` for IPv6); raise ValueError with a clear message."""
    host, separator, port_text = text.rpartition(":")
    if not separator or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return host.strip("[]"), port


def address_scope(host: str, *, ipv6_prefix: int = IPV6_PREFIX_BITS) -> str:
    """What a per-address limit counts ``host`` as: an IPv4 address (an IPv4-mapped IPv6 one
    too), or an IPv6 address's network of ``ipv6_prefix`` bits. A host that is not an IP
    address (a name, "unknown") is its own scope. An IPv6 scope id (``fe80::1%eth0``) is
    ignored."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)
