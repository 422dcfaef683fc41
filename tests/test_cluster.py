"""Two real relay processes (``cryptopass-relay serve --store postgresql://...``) on one
PostgreSQL schema: cross-node delivery, takeover, and a node SIGKILLed mid-stream.

Each test has its own schema (dropped afterwards); clients are real QUIC clients.
Nothing sleeps: the tests wait on deliveries, log events and answers, each bounded.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import trio

from bench.cluster import ClusterSetup, run_cluster
from bench.exchange import ExchangeLoad
from bench.provision import BenchDevice
from bench.spawn import SpawnedRelay, spawn_relay
from client.connection import ConnectionClosed, RelayClient, connect_relay
from crypto.prekey_format import PrekeyKind
from relay.cluster import listen_application_name
from relay.prekeys import BUNDLE_FETCHES_PER_TARGET, PREKEYS_LOW_THRESHOLD
from relay.server import RunningRelay, serve
from relay.settings import RelaySettings
from tests.postgres_schemas import fresh_schema, store_url
from tests.relay_processes import BIN, connect, declare, enrol
from tests.test_prekeys_e2e import kem_one_time_prekeys, kem_prekey, one_time_prekeys, signed_prekey
from tests.test_storage_postgres import _server_dsn
from wire.frames import Deliver, ErrorCode, QueueEmpty
from wire.prekey_frames import DeviceBundle

WAIT_S = 30
"""Bound on anything that could hang (a lost wake-up), not a timing assertion."""

PHONE_A, PHONE_B, PHONE_C = "+33612345678", "+33698765432", "+33611111111"
INDEX = struct.Struct(">Q")


@dataclass
class Cluster:
    url: str
    nodes: list[SpawnedRelay]


@pytest.fixture
def cluster_url() -> Iterator[str]:
    with fresh_schema() as schema:
        yield store_url(schema)


@pytest.fixture
async def cluster(cluster_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    await declare(cluster_url, tmp_path, (PHONE_A, PHONE_B, PHONE_C), organisation="acme")
    async with spawn_relay(tmp_path / "node-1", store=cluster_url,
                           node_name="node-1") as first, \
            spawn_relay(tmp_path / "node-2", store=cluster_url, node_name="node-2") as second:
        yield Cluster(url=cluster_url, nodes=[first, second])


async def _enrol_both(cluster: Cluster) -> tuple[BenchDevice, BenchDevice]:
    # Enrolment is store state too: A enrols through node 1, B through node 2.
    return await enrol(cluster.nodes[0], PHONE_A), await enrol(cluster.nodes[1], PHONE_B)


async def _authenticated(client: RelayClient, device: BenchDevice) -> None:
    await client.authenticate(device.user_id, device.device_id, device.key)


async def _next_delivery(deliveries: AsyncIterator[Deliver | QueueEmpty]) -> Deliver | QueueEmpty:
    with trio.fail_after(WAIT_S):
        return await deliveries.__anext__()


async def test_live_and_offline_delivery_across_nodes(cluster: Cluster) -> None:
    device_a, device_b = await _enrol_both(cluster)
    async with connect(cluster.nodes[0]) as client_a:
        await _authenticated(client_a, device_a)
        # B is offline: node 1 commits, nobody is notified.
        await client_a.send(device_b.user_id, {device_b.device_id: b"offline"},
                            client_message_id=1)
        async with connect(cluster.nodes[1]) as client_b:
            await _authenticated(client_b, device_b)
            deliveries = client_b.deliveries()
            stored = await _next_delivery(deliveries)
            assert isinstance(stored, Deliver) and stored.ciphertext == b"offline"
            client_b.acknowledge(stored.envelope_id)
            assert isinstance(await _next_delivery(deliveries), QueueEmpty)
            # B is live on node 2: node 1's commit NOTIFYs node 2, which pushes it.
            await client_a.send(device_b.user_id, {device_b.device_id: b"live"},
                                client_message_id=2)
            live = await _next_delivery(deliveries)
            assert isinstance(live, Deliver) and live.ciphertext == b"live"
            assert live.sender_user_id == device_a.user_id
            assert live.envelope_id > stored.envelope_id
            client_b.acknowledge(live.envelope_id)
            # And back: B's send through node 2 reaches A, live on node 1.
            a_deliveries = client_a.deliveries()
            assert isinstance(await _next_delivery(a_deliveries), QueueEmpty)
            await client_b.send(device_a.user_id, {device_a.device_id: b"reply"},
                                client_message_id=1)
            reply = await _next_delivery(a_deliveries)
            assert isinstance(reply, Deliver) and reply.ciphertext == b"reply"
            client_a.acknowledge(reply.envelope_id)
            await client_b.settle()
        await client_a.settle()
    assert cluster.nodes[1].process.returncode is None


async def test_a_device_connecting_to_a_second_node_takes_over(cluster: Cluster) -> None:
    device_a, device_b = await _enrol_both(cluster)
    async with connect(cluster.nodes[0]) as first:
        await _authenticated(first, device_b)
        old_deliveries = first.deliveries()
        assert isinstance(await _next_delivery(old_deliveries), QueueEmpty)
        async with connect(cluster.nodes[1]) as second:
            await _authenticated(second, device_b)
            with pytest.raises(ConnectionClosed) as closed:
                with trio.fail_after(WAIT_S):
                    async for _ in old_deliveries:
                        pass
            assert closed.value.code == ErrorCode.REPLACED
            # The new holder is the one woken for sends from elsewhere.
            new_deliveries = second.deliveries()
            assert isinstance(await _next_delivery(new_deliveries), QueueEmpty)
            async with connect(cluster.nodes[0]) as client_a:
                await _authenticated(client_a, device_a)
                await client_a.send(device_b.user_id, {device_b.device_id: b"to the new one"},
                                    client_message_id=1)
            delivered = await _next_delivery(new_deliveries)
            assert isinstance(delivered, Deliver) and delivered.ciphertext == b"to the new one"
            second.acknowledge(delivered.envelope_id)
            await second.settle()


async def test_a_node_killed_mid_stream_loses_no_accepted_envelope(cluster: Cluster) -> None:
    total = 200
    kill_after = 60
    device_a, device_b = await _enrol_both(cluster)
    doomed, survivor = cluster.nodes
    accepted: set[int] = set()
    received: dict[int, int] = {}  # envelope id -> message index (client-side dedup)
    killed = trio.Event()

    async def send_until_killed(client: RelayClient, indexes: range) -> None:
        async with trio.open_nursery() as nursery:
            window = trio.Semaphore(16)

            async def one(index: int) -> None:
                try:
                    await client.send(device_b.user_id,
                                      {device_b.device_id: INDEX.pack(index)},
                                      client_message_id=index)
                    accepted.add(index)
                    if len(accepted) >= kill_after and not killed.is_set():
                        doomed.process.kill()  # SIGKILL, mid-stream
                        killed.set()
                finally:
                    window.release()

            for index in indexes:
                await window.acquire()
                if killed.is_set():
                    window.release()
                    break
                nursery.start_soon(one, index)
            await killed.wait()
            nursery.cancel_scope.cancel()  # sends in flight to the dead node: outcome unknown

    async def receive(client: RelayClient, all_received: trio.Event | None) -> None:
        async for delivery in client.deliveries():
            if isinstance(delivery, Deliver):
                received[delivery.envelope_id] = INDEX.unpack(delivery.ciphertext)[0]
                client.acknowledge(delivery.envelope_id)
            if all_received is not None and set(received.values()) >= set(range(total)):
                all_received.set()
                return

    # Both devices on the node that dies; B receives while A streams.
    with trio.fail_after(WAIT_S):
        async with connect(doomed) as client_a, connect(doomed) as client_b, \
                trio.open_nursery() as nursery:
            await _authenticated(client_a, device_a)
            await _authenticated(client_b, device_b)
            nursery.start_soon(receive, client_b, None)
            await send_until_killed(client_a, range(total))
            nursery.cancel_scope.cancel()
    assert doomed.process.returncode is not None
    assert kill_after <= len(accepted) < total

    # They reconnect to the surviving node; A re-sends everything it was not
    # told was accepted (same client message ids: the idempotency key).
    all_received = trio.Event()
    with trio.fail_after(WAIT_S):
        async with connect(survivor) as client_a, connect(survivor) as client_b, \
                trio.open_nursery() as nursery:
            await _authenticated(client_a, device_a)
            await _authenticated(client_b, device_b)
            nursery.start_soon(receive, client_b, all_received)
            for index in range(total):
                if index not in accepted:
                    await client_a.send(device_b.user_id,
                                        {device_b.device_id: INDEX.pack(index)},
                                        client_message_id=index)
            await all_received.wait()
            await client_b.settle()
            nursery.cancel_scope.cancel()
    # Every accepted message arrived, each under exactly one envelope id: the
    # re-sends of messages the dead node had committed were duplicates.
    assert sorted(received.values()) == list(range(total))


async def test_deleting_a_user_closes_its_devices_on_every_node(cluster: Cluster,
                                                                 tmp_path: Path) -> None:
    _, device_b = await _enrol_both(cluster)
    async with connect(cluster.nodes[1]) as client_b:
        await _authenticated(client_b, device_b)
        deliveries = client_b.deliveries()
        assert isinstance(await _next_delivery(deliveries), QueueEmpty)
        # The operator's command talks to the store only (and node 1's directory,
        # whose control socket does not know this connection): node 2 learns of
        # it from the deleting transaction's notification.
        with trio.fail_after(WAIT_S):
            result = await trio.run_process(
                [str(BIN / "cryptopass-relay"), "admin", "--data-dir", str(tmp_path / "node-1"),
                 "--store", cluster.url, "user", "delete", PHONE_B, "--org", "acme"],
                capture_stdout=True, capture_stderr=True, check=False)
        assert result.returncode == 0, result.stderr
        with pytest.raises(ConnectionClosed) as closed:
            with trio.fail_after(WAIT_S):
                async for _ in deliveries:
                    pass
        assert closed.value.code == ErrorCode.DEVICE_REVOKED


async def test_a_node_whose_listening_connection_was_lost_drains_what_it_missed(
        cluster_url: str, tmp_path: Path, nursery: trio.Nursery) -> None:
    await declare(cluster_url, tmp_path, (PHONE_A, PHONE_B), organisation="acme")
    # Unique: application names are database-wide, and other suites may run a node-2.
    node_name = f"node-2-{uuid.uuid4().hex}"
    settings = RelaySettings(data_dir=tmp_path / "node-2", listen_port=0, store=cluster_url,
                             node_name=node_name, metrics_listen="127.0.0.1:0",
                             enrolment_secret_file=tmp_path / "enrolment.secret")
    running: RunningRelay = await nursery.start(serve, settings)
    node_2 = running.context.cluster
    assert node_2 is not None
    # Hold the listener's reconnection until a send has committed unheard.
    reconnecting, may_reconnect = trio.Event(), trio.Event()
    connect_listener = node_2.connect_listener

    async def gated_connect_listener() -> object:
        reconnecting.set()
        await may_reconnect.wait()
        return await connect_listener()

    node_2.connect_listener = gated_connect_listener  # type: ignore[method-assign]
    try:
        async with spawn_relay(tmp_path / "node-1", store=cluster_url,
                               node_name="node-1") as node_1:
            device_a = await enrol(node_1, PHONE_A)
            device_b = await enrol(node_1, PHONE_B)
            async with connect_relay("127.0.0.1", running.address[1], ca=running.cert_path,
                                     server_name="localhost") as client_b:
                await _authenticated(client_b, device_b)
                deliveries = client_b.deliveries()
                assert isinstance(await _next_delivery(deliveries), QueueEmpty)
                assert (await _readiness(running))["cluster_notifications"] is True
                _terminate_backends(cluster_url, listen_application_name(node_name))
                with trio.fail_after(WAIT_S):
                    await reconnecting.wait()
                # Deaf: not ready, so that a balancer sends new connections elsewhere.
                assert (await _readiness(running))["cluster_notifications"] is False
                # A failover to a replica that had not received the claim yet.
                assert _execute(cluster_url, "DELETE FROM presence") == 1
                async with connect(node_1) as client_a:
                    await _authenticated(client_a, device_a)
                    await client_a.send(device_b.user_id, {device_b.device_id: b"while deaf"},
                                        client_message_id=1)
                may_reconnect.set()
                missed = await _next_delivery(deliveries)
                assert isinstance(missed, Deliver) and missed.ciphertext == b"while deaf"
                assert node_2.listen_reconnections == 1
                assert (await _readiness(running))["cluster_notifications"] is True
                # The node held the device again before re-reading.
                assert _execute(cluster_url, "SELECT count(*) FROM presence WHERE node_name = %s",
                                node_name) == 1
                client_b.acknowledge(missed.envelope_id)
                await client_b.settle()
    finally:
        running.stop()


def _terminate_backends(url: str, application_name: str) -> None:
    """What a PostgreSQL restart or failover does to a connection."""
    with psycopg.connect(url, autocommit=True) as connection:
        terminated = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (application_name,)).fetchall()
    assert terminated == [(True,)]


async def test_concurrent_bundle_fetches_through_two_nodes_never_share_a_one_time_key(
        cluster: Cluster) -> None:
    pool = 30
    device_a, device_b = await _enrol_both(cluster)
    device_c = await enrol(cluster.nodes[1], PHONE_C)
    async with connect(cluster.nodes[0]) as client_b:
        await _authenticated(client_b, device_b)
        await client_b.upload_prekeys(
            signed_prekey=signed_prekey(device_b.key),
            kem_last_resort_prekey=kem_prekey(device_b.key, 1, PrekeyKind.KEM_LAST_RESORT),
            one_time_prekeys=one_time_prekeys(pool),
            kem_one_time_prekeys=kem_one_time_prekeys(device_b.key, pool))
    bundles: list[DeviceBundle] = []

    async def fetch_many(client: RelayClient) -> None:
        async with trio.open_nursery() as fetching:
            for _ in range(BUNDLE_FETCHES_PER_TARGET):  # each requester's whole allowance
                fetching.start_soon(fetch_one, client)

    async def fetch_one(client: RelayClient) -> None:
        bundles.extend(await client.fetch_bundle(device_b.user_id))

    # A through node 1 and C through node 2, all at once: 2 x 20 claims for 30 keys.
    async with connect(cluster.nodes[0]) as client_a, connect(cluster.nodes[1]) as client_c:
        await _authenticated(client_a, device_a)
        await _authenticated(client_c, device_c)
        with trio.fail_after(WAIT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch_many, client_a)
                nursery.start_soon(fetch_many, client_c)
    assert len(bundles) == 2 * BUNDLE_FETCHES_PER_TARGET
    one_time = [bundle.one_time_prekey.key_id for bundle in bundles if bundle.one_time_prekey]
    assert len(one_time) == len(set(one_time)) == pool
    kem_one_time = [bundle.kem_prekey.key_id for bundle in bundles
                    if bundle.kem_one_time and bundle.kem_prekey]
    assert len(kem_one_time) == len(set(kem_one_time)) == pool
    last_resort = [bundle for bundle in bundles if not bundle.kem_one_time]
    assert len(last_resort) == 2 * BUNDLE_FETCHES_PER_TARGET - pool


async def test_a_device_on_another_node_is_told_when_a_claim_leaves_its_prekeys_low(
        cluster: Cluster) -> None:
    device_a, device_b = await _enrol_both(cluster)
    async with connect(cluster.nodes[1]) as client_b:
        await _authenticated(client_b, device_b)
        await client_b.upload_prekeys(
            signed_prekey=signed_prekey(device_b.key),
            kem_last_resort_prekey=kem_prekey(device_b.key, 1, PrekeyKind.KEM_LAST_RESORT),
            one_time_prekeys=one_time_prekeys(PREKEYS_LOW_THRESHOLD),
            kem_one_time_prekeys=kem_one_time_prekeys(device_b.key, PREKEYS_LOW_THRESHOLD + 5))
        # A claims through node 1; B is held by node 2, which must pass the warning on.
        async with connect(cluster.nodes[0]) as client_a:
            await _authenticated(client_a, device_a)
            await client_a.fetch_bundle(device_b.user_id)
        with trio.fail_after(WAIT_S):
            low = await client_b.next_prekeys_low()
    assert (low.one_time, low.kem_one_time) == (PREKEYS_LOW_THRESHOLD - 1,
                                               PREKEYS_LOW_THRESHOLD + 4)


def _execute(url: str, query: str, *params: object) -> int:
    """Run one statement; the first column of its row, or how many rows it changed."""
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(query.encode(), params or None)
        row = cursor.fetchone() if cursor.description else None
        return int(row[0]) if row is not None else cursor.rowcount


async def test_the_cluster_benchmark_delivers_everything_across_two_nodes(
        cluster_url: str) -> None:
    # cluster_url: only for the server check (skip, or fail in CI); the run makes its schema.
    # What `cryptopass-bench cluster --nodes 2 --messages 40` runs.
    result = await run_cluster(ClusterSetup(nodes=2, postgres=_server_dsn()),
                               ExchangeLoad(messages=40, timeout=WAIT_S))
    assert result["errors"] == 0, result["error_samples"]
    assert result["delivered"] == result["sent"] == result["messages"] == 40
    assert (result["duplicates"], result["out_of_order"]) == (0, 0)
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert result["relay"] == "2 node(s), postgresql, 1 pair(s)"
    assert isinstance(result["server_cpu_us_per_message"], float)  # both nodes'


async def _readiness(running: RunningRelay) -> dict[str, bool]:
    address = running.context.operations_address
    assert address is not None
    async with httpx.AsyncClient() as client:
        with trio.fail_after(WAIT_S):
            answer = await client.get(f"http://{address[0]}:{address[1]}/readyz")
    checks: dict[str, bool] = answer.json()["checks"]
    assert (answer.status_code == 200) == all(checks.values())
    return checks
