"""A call between devices held by two relay nodes of one PostgreSQL cluster (docs/CLUSTER.md
"Calls"): the call stays on the node that opened it; a device of the other node asking to join
is sent there (CALL_ELSEWHERE), connects, joins, and the media flows both ways.

Real relay processes on a fresh schema each; real QUIC clients. Nothing sleeps: every wait is
on an answer, a datagram or a push, each bounded.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import trio

from bench.spawn import SpawnedRelay, spawn_relay
from client.call_media import CallElsewhereError, CallHandle
from client.connection import ConnectionClosed, RelayError, connect_relay
from storage.postgres_calls import find_call, forget_call, publish_call
from storage.store_url import open_store, parse_store_url
from tests.postgres_schemas import conninfo, fresh_schema, store_url
from tests.relay_processes import connect, declare, enrol
from transport.addresses import parse_host_port
from wire.call_frames import CALL_ID_SIZE
from wire.frames import ErrorCode

WAIT_S = 30
"""Bound on anything that could hang, not a timing assertion."""
RESEND_S = 0.5
"""A datagram may be lost (UDP): sent again after this long without an answer."""

PHONE_A, PHONE_B, PHONE_C = "+33612345678", "+33698765432", "+33611111111"


@dataclass
class Cluster:
    url: str
    nodes: list[SpawnedRelay]


@pytest.fixture
def schema() -> Iterator[str]:
    with fresh_schema() as name:
        yield name


@pytest.fixture
def cluster_url(schema: str) -> str:
    return store_url(schema)


@pytest.fixture
async def cluster(cluster_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    await declare(cluster_url, tmp_path, (PHONE_A, PHONE_B, PHONE_C), organisation="acme")
    async with spawn_relay(tmp_path / "node-1", store=cluster_url,
                           node_name=f"node-1-{uuid.uuid4().hex[:6]}") as first, \
            spawn_relay(tmp_path / "node-2", store=cluster_url,
                        node_name=f"node-2-{uuid.uuid4().hex[:6]}") as second:
        yield Cluster(url=cluster_url, nodes=[first, second])


async def exchange(sender: CallHandle, receiver: CallHandle, payload: bytes) -> None:
    """``payload`` from ``sender`` reaches ``receiver`` (sent again if a datagram is lost)."""
    with trio.fail_after(WAIT_S):
        while True:
            sender.send(payload)
            with trio.move_on_after(RESEND_S):
                while await receiver.receive() != payload:
                    pass
                return


async def test_a_call_across_two_nodes_is_joined_on_the_node_that_holds_it(
        cluster: Cluster) -> None:
    first, second = cluster.nodes
    device_a, device_b = await enrol(first, PHONE_A), await enrol(second, PHONE_B)
    device_c = await enrol(second, PHONE_C)
    async with connect(first) as a:
        await a.authenticate(device_a.user_id, device_a.device_id, device_a.key)
        caller = await a.open_call([device_b.user_id])
        async with connect(second) as b_first:
            await b_first.authenticate(device_b.user_id, device_b.device_id, device_b.key)
            with pytest.raises(CallElsewhereError) as elsewhere:
                await b_first.join_call(caller.call_id)
            assert elsewhere.value.call_id == caller.call_id
            host, port = parse_host_port(elsewhere.value.address)
            assert port == first.port
            # A device that was not invited learns nothing from the other node either.
            async with connect(second) as c:
                await c.authenticate(device_c.user_id, device_c.device_id, device_c.key)
                for call_id in (caller.call_id, bytes(CALL_ID_SIZE)):
                    with pytest.raises(RelayError) as refused:
                        await c.join_call(call_id)
                    assert refused.value.code is ErrorCode.CALL_UNKNOWN
            async with connect_relay(host, port, ca=first.cert, server_name="localhost") as b:
                await b.authenticate(device_b.user_id, device_b.device_id, device_b.key)
                # The device's new connection took over from its old one on the other node.
                with pytest.raises(ConnectionClosed), trio.fail_after(WAIT_S):
                    async for _ in b_first.deliveries():
                        pass
                callee = await b.join_call(caller.call_id)
                assert callee.participants == 2
                await exchange(caller, callee, b"media from node 1's device")
                await exchange(callee, caller, b"media back")
                await callee.leave()
                with trio.fail_after(WAIT_S):
                    await caller.ended.wait()
                assert caller.end_reason == "alone"


async def test_a_relay_of_several_worker_processes_refuses_calls_clearly(
        cluster_url: str, tmp_path: Path) -> None:
    await declare(cluster_url, tmp_path, (PHONE_A, PHONE_B), organisation="acme")
    async with spawn_relay(tmp_path / "relay", "--workers", "2", store=cluster_url,
                           node_name=f"workers-{uuid.uuid4().hex[:6]}") as relay:
        device_a, device_b = await enrol(relay, PHONE_A), await enrol(relay, PHONE_B)
        async with connect(relay) as a:
            await a.authenticate(device_a.user_id, device_a.device_id, device_a.key)
            with pytest.raises(RelayError) as refused:
                await a.open_call([device_b.user_id])
            assert refused.value.code is ErrorCode.CALLS_UNAVAILABLE
            assert "worker processes" in refused.value.reason
            with pytest.raises(RelayError) as refused:
                await a.join_call(bytes(CALL_ID_SIZE))
            assert refused.value.code is ErrorCode.CALLS_UNAVAILABLE


async def test_a_call_route_names_its_node_to_invited_users_only_until_it_ends(
        schema: str, cluster_url: str, tmp_path: Path) -> None:
    async with open_store(parse_store_url(cluster_url, data_dir=tmp_path)):
        pass  # opening the store migrates the schema
    call_id, other = bytes(range(CALL_ID_SIZE)), bytes(CALL_ID_SIZE)
    with psycopg.connect(conninfo(schema), autocommit=True) as connection:
        publish_call(connection, call_id=call_id, address="node-a:4433",
                     invited={"u-alice", "u-bob"}, expires_at=2_000, now=1_000)
        assert find_call(connection, call_id=call_id, user_id="u-bob", now=1_500) == "node-a:4433"
        assert find_call(connection, call_id=call_id, user_id="u-carol", now=1_500) is None
        assert find_call(connection, call_id=other, user_id="u-bob", now=1_500) is None
        assert find_call(connection, call_id=call_id, user_id="u-bob", now=2_000) is None
        forget_call(connection, call_id=call_id)
        assert find_call(connection, call_id=call_id, user_id="u-bob", now=1_500) is None
        # A later publish sweeps rows long expired.
        publish_call(connection, call_id=other, address="node-a:4433", invited={"u-bob"},
                     expires_at=9_000, now=1_000)
        publish_call(connection, call_id=call_id, address="node-b:4433", invited={"u-bob"},
                     expires_at=20_000, now=10_000)
        (count,) = connection.execute("SELECT count(*) FROM call_routes").fetchone() or (0,)
        assert count == 1
