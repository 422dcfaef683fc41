"""MULTI_SEND across two real relay processes on one PostgreSQL schema.

The sender is on node 1; one recipient is connected to node 2 (woken by the commit's
notification), one to node 1 (its own pump), one is offline and connects later to node 2.
Each receives the shared ciphertext once; the store holds it once, and not after the last ACK.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import trio

from bench.provision import BenchDevice
from bench.spawn import SpawnedRelay, spawn_relay
from client.connection import RelayClient
from tests.postgres_schemas import fresh_schema, store_url
from tests.relay_processes import connect, declare, enrol
from wire.frames import Deliver, QueueEmpty

WAIT_S = 30
"""Bound on anything that could hang (a lost notification), not a timing assertion."""

SENDER, NEAR, FAR, LATE = "+33612345678", "+33698765432", "+33611111111", "+33622222222"
SHARED = b"group ciphertext " * 64


@pytest.fixture
def cluster_url() -> Iterator[str]:
    with fresh_schema() as schema:
        yield store_url(schema)


@pytest.fixture
async def nodes(cluster_url: str, tmp_path: Path) -> AsyncIterator[list[SpawnedRelay]]:
    await declare(cluster_url, tmp_path, (SENDER, NEAR, FAR, LATE), organisation="acme")
    async with spawn_relay(tmp_path / "node-1", store=cluster_url,
                           node_name="fanout-1") as first, \
            spawn_relay(tmp_path / "node-2", store=cluster_url, node_name="fanout-2") as second:
        yield [first, second]


def _count(url: str, table: str) -> int:
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
        assert row is not None
        return int(row[0])


async def _authenticated(client: RelayClient, device: BenchDevice) -> None:
    await client.authenticate(device.user_id, device.device_id, device.key)


async def _take_one(client: RelayClient, *, ready: trio.Event | None = None) -> Deliver:
    """The one DELIVER, acknowledged and settled: live (``ready`` is set once QUEUE_EMPTY
    says nothing is queued yet) or from the backlog (then nothing follows it)."""
    deliveries = client.deliveries()
    with trio.fail_after(WAIT_S):
        if ready is not None:
            assert isinstance(await anext(deliveries), QueueEmpty)
            ready.set()
        delivery = await anext(deliveries)
        assert isinstance(delivery, Deliver), delivery
        client.acknowledge(delivery.envelope_id)
        await client.settle()
        if ready is None:
            assert isinstance(await anext(deliveries), QueueEmpty)
    return delivery


async def test_a_multi_send_reaches_devices_on_both_nodes_and_offline(
        nodes: list[SpawnedRelay], cluster_url: str) -> None:
    first, second = nodes
    sender = await enrol(first, SENDER)
    near, far, late = await enrol(first, NEAR), await enrol(second, FAR), await enrol(second, LATE)
    recipients = {device.user_id: {device.device_id: f"key {device.user_id}".encode()}
                  for device in (near, far, late)}
    received: dict[str, Deliver] = {}

    async def live(node: SpawnedRelay, device: BenchDevice, ready: trio.Event) -> None:
        async with connect(node) as client:
            await _authenticated(client, device)
            received[device.user_id] = await _take_one(client, ready=ready)

    async with trio.open_nursery() as nursery:
        up = [trio.Event(), trio.Event()]
        nursery.start_soon(live, first, near, up[0])
        nursery.start_soon(live, second, far, up[1])
        with trio.fail_after(WAIT_S):
            for event in up:
                await event.wait()
        async with connect(first) as client:
            await _authenticated(client, sender)
            assert await client.multi_send(recipients, SHARED, client_message_id=7) is False
        assert _count(cluster_url, "shared_payloads") == 1
    async with connect(second) as client:
        await _authenticated(client, late)
        received[late.user_id] = await _take_one(client)
    assert sorted(received) == sorted(recipients)
    for user_id, delivery in received.items():
        assert delivery.shared == SHARED
        assert (delivery.sender_user_id, delivery.client_message_id) == (sender.user_id, 7)
        assert [delivery.ciphertext] == list(recipients[user_id].values())
    assert _count(cluster_url, "shared_payloads") == 0
    assert _count(cluster_url, "envelopes") == 0
