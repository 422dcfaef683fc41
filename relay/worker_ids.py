"""Connection ids that name a worker process, and where a stray datagram goes.

Several worker processes (``serve --workers N``, relay/supervisor.py) share one
UDP port: the kernel hands each datagram to one of them by a hash of the
client's address and port (SO_REUSEPORT). A client whose address changes (NAT
rebinding, migration) then reaches a worker that does not hold its connection.
So that any worker can tell where a connection lives, every connection id a
worker issues starts with the worker's index, and a datagram whose destination
id names another worker is forwarded there (relay/forwarding.py) with the
client's address.

Pure: no sockets, no clock; the random source is passed in.
"""

from __future__ import annotations

import enum
import os
import socket
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from aioquic.quic.packet import QuicHeader, QuicPacketType

from relay.settings import MAX_WORKERS

__all__ = [
    "MAX_WORKERS",
    "ForwardingError",
    "Route",
    "RouteDecision",
    "WorkerConnectionIds",
    "decode_forwarded",
    "encode_forwarded",
    "route_unrouted",
    "worker_of",
]

FORWARD_FORMAT_VERSION = 1
"""First byte of a forwarded datagram's envelope (changes if the layout does)."""

_IPV4, _IPV6 = 4, 6
_PORT = struct.Struct(">H")
_IPV6_EXTRA = struct.Struct(">II")  # flowinfo, scope_id: the rest of an AF_INET6 address


class ForwardingError(ValueError):
    """A forwarded datagram's envelope is malformed (a bug or a foreign sender)."""


class WorkerConnectionIds:
    """Issues connection ids whose first byte is this worker's index.

    Args:
        worker_index: 0 to MAX_WORKERS - 1.
        random_bytes: the random source for the rest of each id.
    """

    def __init__(self, worker_index: int, *,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        if not 0 <= worker_index < MAX_WORKERS:
            raise ValueError(f"worker index {worker_index} is out of range 0-{MAX_WORKERS - 1}")
        self.worker_index = worker_index
        self._prefix = bytes([worker_index])
        self._random_bytes = random_bytes

    def new(self, length: int) -> bytes:
        """A fresh id of ``length`` bytes (at least 2): the index, then random bytes."""
        if length < 2:
            raise ValueError(f"a connection id naming a worker needs 2 bytes, not {length}")
        return self._prefix + self._random_bytes(length - 1)


def worker_of(connection_id: bytes) -> int | None:
    """The worker index a connection id names (None for an empty id)."""
    return connection_id[0] if connection_id else None


class Route(enum.Enum):
    LOCAL = "local"
    """Handle here: a new connection (any worker may answer it), one of ours, or a
    packet the endpoint answers statelessly (Version Negotiation)."""
    FORWARD = "forward"
    """Another worker issued the destination id: hand the datagram to it."""
    DROP = "drop"
    """Names no worker of this relay: ignore, never answer."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteDecision:
    route: Route
    """What to do with the datagram."""
    worker_index: int | None = None
    """The owner, when ``route`` is FORWARD."""


_LOCAL = RouteDecision(route=Route.LOCAL)
_DROP = RouteDecision(route=Route.DROP)


def route_unrouted(header: QuicHeader, *, own_index: int, worker_count: int,
                   connection_id_length: int, supported_versions: Collection[int]
                   ) -> RouteDecision:
    """Where a datagram goes whose destination id names no connection of this worker.

    Never FORWARD to ``own_index``, so a datagram is forwarded at most once (the
    owner handles or drops it, never sends it on).
    """
    if header.version is not None and header.version not in supported_versions:
        return _LOCAL  # Version Negotiation is stateless: whoever got it answers
    if header.packet_type == QuicPacketType.INITIAL and not header.token:
        return _LOCAL  # a new client: its destination id is its own random choice
    owner = worker_of(header.destination_cid)
    if len(header.destination_cid) != connection_id_length or owner is None \
            or owner >= worker_count:
        return _DROP
    if owner == own_index:
        return _LOCAL  # e.g. an Initial carrying our Retry token
    return RouteDecision(route=Route.FORWARD, worker_index=owner)


def encode_forwarded(datagram: bytes, address: tuple[Any, ...]) -> bytes:
    """A datagram and the client address it came from, as one message between workers.

    Layout: version, family (4 or 6), packed address, port, for IPv6 flowinfo and
    scope id (so the owner sees exactly the tuple its own socket would give), datagram.
    """
    host, port = address[0], address[1]
    if len(address) == 2:
        packed = socket.inet_pton(socket.AF_INET, host)
        return bytes([FORWARD_FORMAT_VERSION, _IPV4]) + packed + _PORT.pack(port) + datagram
    packed = socket.inet_pton(socket.AF_INET6, host)
    return (bytes([FORWARD_FORMAT_VERSION, _IPV6]) + packed + _PORT.pack(port)
            + _IPV6_EXTRA.pack(address[2], address[3]) + datagram)


def decode_forwarded(message: bytes) -> tuple[bytes, tuple[Any, ...]]:
    """The datagram and client address of ``encode_forwarded``'s message.

    Raises:
        ForwardingError: unknown version or family, or truncated.
    """
    if len(message) < 2 or message[0] != FORWARD_FORMAT_VERSION:
        raise ForwardingError("unknown forwarded datagram format")
    family = message[1]
    if family == _IPV4:
        header_length = 2 + 4 + _PORT.size
    elif family == _IPV6:
        header_length = 2 + 16 + _PORT.size + _IPV6_EXTRA.size
    else:
        raise ForwardingError(f"unknown address family {family}")
    if len(message) <= header_length:
        raise ForwardingError("forwarded datagram is truncated")
    if family == _IPV4:
        host = socket.inet_ntop(socket.AF_INET, message[2:6])
        (port,) = _PORT.unpack_from(message, 6)
        return message[header_length:], (host, port)
    host = socket.inet_ntop(socket.AF_INET6, message[2:18])
    (port,) = _PORT.unpack_from(message, 18)
    flowinfo, scope_id = _IPV6_EXTRA.unpack_from(message, 20)
    return message[header_length:], (host, port, flowinfo, scope_id)
