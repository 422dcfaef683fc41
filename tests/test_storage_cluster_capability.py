"""Whether a relay runs as a cluster node is the store's answer (``cluster_wakeups``), not its
class: the real PostgreSQL store offers the capability (a node is made, with the presence
whose pumps read the store), the real SQLite store does not (no node, the plain presence).

PostgreSQL as in test_storage_postgres.py: a fresh schema, skipped without a server unless
``CI`` is set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from relay.cluster import ClusterPresence, cluster_node_for, presence_for
from relay.delivery import Presence
from storage.postgres import open_postgres_store
from storage.sqlite import open_sqlite_store
from tests.postgres_schemas import conninfo, fresh_schema
from tests.storage_conformance import NOW, TIMEOUT_S


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    with fresh_schema() as schema:
        yield conninfo(schema)


async def test_a_store_serving_one_node_makes_no_cluster_node(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "relay.db") as store:
        assert store.cluster_wakeups() is None
        presence = presence_for(store)
        assert type(presence) is Presence
        assert cluster_node_for(store=store, presence=presence, dsn=None, node_name="node-1",
                                now_ms=lambda: NOW) is None


async def test_a_store_nodes_share_makes_a_cluster_node_that_names_itself_to_it(
        postgres_dsn: str) -> None:
    async with open_postgres_store(postgres_dsn) as store:
        wakeups = store.cluster_wakeups()
        assert wakeups is not None and wakeups.node_channel is None
        presence = presence_for(store)
        assert isinstance(presence, ClusterPresence)
        node = cluster_node_for(store=store, presence=presence, dsn=postgres_dsn,
                                node_name="node-1", now_ms=lambda: NOW)
        assert node is not None and node.node_name == "node-1"
        # Running, the node gives the store its channel (the store's sends then skip it: the
        # node wakes its own pumps); stopped, it takes it back.
        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                assert node.channel and wakeups.node_channel == node.channel
                nursery.cancel_scope.cancel()
        assert wakeups.node_channel is None
