"""Network addresses as operators and users type them, for both ends of a connection."""

from __future__ import annotations

import ipaddress

__all__ = ["IPV6_PREFIX_BITS", "RelayAddressError", "address_scope", "parse_host_port",
           "parse_relay_list"]

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


class RelayAddressError(ValueError):
    """One entry of a relay address list is not ``HOST:PORT``: ``entry`` is that entry as typed
    (empty for an empty one), ``text`` the whole list; the message says what is wrong."""

    def __init__(self, text: str, entry: str, problem: str) -> None:
        super().__init__(problem)
        self.text, self.entry = text, entry


def parse_relay_list(text: str) -> list[tuple[str, int]]:
    """The relay addresses of ``HOST:PORT[,HOST:PORT...]``, in the order given: a client tries
    them in that order (the first is the usual node, the others the ones to fail over to).

    One address is the common case, and its error is `parse_host_port`'s, unchanged.

    Raises:
        RelayAddressError: an entry is empty or not ``HOST:PORT``, or one is listed twice
            (each would cost a client a whole handshake timeout when that relay is down).
    """
    entries = [entry.strip() for entry in text.split(",")]
    addresses: list[tuple[str, int]] = []
    for position, entry in enumerate(entries, start=1):
        where = "" if len(entries) == 1 else f" (entry {position} of the list {text!r})"
        if not entry:
            raise RelayAddressError(text, entry, f"empty relay address{where}: separate "
                                                 f"addresses with single commas, no comma at "
                                                 f"either end")
        try:
            address = parse_host_port(entry)
        except ValueError as error:
            raise RelayAddressError(text, entry, f"{error}{where}") from None
        if address in addresses:
            raise RelayAddressError(text, entry, f"relay address {entry!r} is listed twice "
                                                 f"in {text!r}")
        addresses.append(address)
    return addresses


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
