"""Calls across the nodes of a PostgreSQL cluster: each call stays on the node that opened it.

The opening node records the call (storage.postgres_calls); a CALL_JOIN that reaches another
node finds the row and is answered CALL_ELSEWHERE with the holding node's address, so the device
connects there (its new connection takes over from the old one, as any reconnection does) and
joins again. Media thus never crosses between nodes: one hop, the same as on a single relay.
docs/CLUSTER.md "Calls" says why this was chosen over forwarding datagrams between nodes.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable

from relay.calls import CALL_MAX_DURATION_S
from relay.cluster import ClusterNode
from relay.settings import RelaySettings
from storage.postgres_calls import find_call, forget_call, publish_call

__all__ = ["ClusterCallRoutes", "call_address"]

_WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - names of "every address"


def call_address(settings: RelaySettings, port: int) -> str:
    """What this node tells devices to connect to for its calls: ``call_address`` if set,
    else the listening address, with the host name standing in for a wildcard."""
    if settings.call_address is not None:
        return settings.call_address
    host = settings.listen_host
    if host in _WILDCARDS:
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ClusterCallRoutes:
    """``relay.calls.CallRoutes`` on the cluster's PostgreSQL (through the node's pool)."""

    def __init__(self, node: ClusterNode, *, address: str, now_ms: Callable[[], int]) -> None:
        self._node = node
        self.address = address
        self._now_ms = now_ms

    async def publish(self, call_id: bytes, invited: frozenset[str]) -> None:
        now = self._now_ms()
        await self._node.in_transaction(functools.partial(
            publish_call, call_id=call_id, address=self.address, invited=invited,
            expires_at=now + int(CALL_MAX_DURATION_S * 1000), now=now))

    async def find(self, call_id: bytes, user_id: str) -> str | None:
        address = await self._node.in_transaction(functools.partial(
            find_call, call_id=call_id, user_id=user_id, now=self._now_ms()))
        return None if address == self.address else address

    async def forget(self, call_id: bytes) -> None:
        await self._node.in_transaction(functools.partial(forget_call, call_id=call_id))
