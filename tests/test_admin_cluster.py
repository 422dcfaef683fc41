"""Suspending an organisation on one node closes its users' connections on the others at once
(two real relay processes on one PostgreSQL schema); they are then refused at authentication
and their sends are refused by the store whichever node they reach."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from client.connection import ConnectionClosed, RelayError
from storage.base import OrganisationState
from storage.store_url import open_store, parse_store_url
from tests.relay_processes import connect
from tests.test_cluster import PHONE_A, PHONE_B, WAIT_S, Cluster, _enrol_both
from tests.test_cluster import cluster as cluster  # noqa: PLC0414 (fixture)
from tests.test_cluster import cluster_url as cluster_url  # noqa: PLC0414 (fixture)
from wire.frames import ErrorCode, QueueEmpty


async def test_suspending_closes_connections_on_every_node(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    device_a, device_b = await _enrol_both(cluster)
    async with connect(cluster.nodes[1]) as client_b:
        await client_b.authenticate(device_b.user_id, device_b.device_id, device_b.key)
        deliveries = client_b.deliveries()
        with trio.fail_after(WAIT_S):
            assert isinstance(await deliveries.__anext__(), QueueEmpty)
        # As the admin site of another node does: the store tells node 2 on commit.
        location = parse_store_url(cluster.url, data_dir=tmp_path / "admin")
        async with open_store(location) as store:
            suspended = await store.suspend_organisation("acme")
        assert {user.phone for user in suspended} >= {PHONE_A, PHONE_B}
        with pytest.raises(ConnectionClosed) as closed:
            with trio.fail_after(WAIT_S):
                async for _ in deliveries:
                    pass
        assert closed.value.code == ErrorCode.DEVICE_REVOKED
    for node in cluster.nodes:
        async with connect(node) as client:
            with pytest.raises(RelayError) as refused:
                await client.authenticate(device_a.user_id, device_a.device_id, device_a.key)
            assert refused.value.code is ErrorCode.ORGANISATION_SUSPENDED
    async with open_store(location) as store:
        await store.set_organisation_state(name="acme", state=OrganisationState.ACTIVE)
    async with connect(cluster.nodes[1]) as client_b:
        await client_b.authenticate(device_b.user_id, device_b.device_id, device_b.key)
        await client_b.send(device_a.user_id, {device_a.device_id: b"sealed"},
                            client_message_id=1)
