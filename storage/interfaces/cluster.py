"""What a store offers relay nodes that share it: the cluster capability.

A store either serves one relay node (SQLite: one relay process serves the file; the
operator CLI may open it too, but delivers nothing) or can be shared by several (PostgreSQL).
A shared store's transactions wake the nodes holding the devices they concern (a send, a
revocation: ``storage.postgres_presence``), on commit and only on commit; the relay's cluster
machinery (``relay.cluster``) asks the store for this capability instead of
checking which backend it is.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ClusterCapable", "ClusterWakeups"]


class ClusterWakeups(Protocol):
    """A store shared by several relay nodes, as one node sees it."""

    node_channel: str | None
    """This node's LISTEN channel while it runs as a cluster node, else None.

    Set by the node once it listens and reset when it stops. Writes committed through this
    store do not notify this channel: the node wakes its own pumps directly. Every other
    node holding a device concerned by a write is notified, on commit.
    """


class ClusterCapable(Protocol):
    """A store that says whether several relay nodes may share it."""

    def cluster_wakeups(self) -> ClusterWakeups | None:
        """The store's part in a cluster of nodes, or None if it serves one node only.

        None means: no other process delivers from this store, so a relay on it needs no
        presence leases and no wake-ups (its commit pipeline offers every envelope).
        """
        ...
