"""Crash safety of sealed sends: the relay SIGKILLed at random moments of a stream of them.

The scenario of ``tests/test_crash_safety.py`` (whose nodes, ledger and checks this reuses),
with sealed sends over a connection that never authenticates, on SQLite and on PostgreSQL: the sender streams SEALED_SENDs,
the recipient receives and acknowledges, the relay is killed after a random number of answers
or deliveries and started again on the same store, and the sender sends again, with the same
random ``client_message_id``, every message whose answer it did not get. Every accepted sealed
message must reach the recipient under exactly one envelope id, and none may name a sender.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio

from bench.provision import BenchDevice
from bench.spawn import SpawnedRelay
from client.connection import RelayClient, connect_anonymous
from tests.postgres_schemas import fresh_schema, store_url
from tests.relay_processes import connect, declare, enrol
from tests.sealed_support import token_and_hash
from tests.test_crash_safety import (
    INDEX,
    RECIPIENT_PHONE,
    SENDER_PHONE,
    SENDS_IN_FLIGHT,
    WAIT_S,
    KillMoment,
    Ledger,
    Node,
    authenticated,
    check_exactly_once,
    kept_running,
)
from wire.frames import Deliver, QueueEmpty

SEED = 21
KILLS = 10
"""SIGKILLs: half the identified scenario's, as the sealed path shares its commit path."""


def message_id(index: int) -> bytes:
    """The message's random-looking 16-byte id, the same every time it is sent again."""
    return hashlib.sha256(b"sealed crash %d" % index).digest()[:16]


def anonymous(relay: SpawnedRelay) -> AbstractAsyncContextManager[RelayClient]:
    """A connection to ``relay`` that never authenticates."""
    return connect_anonymous(relay.host, relay.port, ca=relay.cert, server_name="localhost")


async def sealed_send(client: RelayClient, recipient: BenchDevice, token: bytes,
                      index: int) -> None:
    await client.sealed_send(recipient.user_id, {recipient.device_id: INDEX.pack(index)},
                             client_message_id=message_id(index), delivery_token=token)


def record(ledger: Ledger, delivery: Deliver) -> None:
    assert delivery.sealed, delivery  # no sender, however often it is delivered
    ledger.record(delivery)


async def stream_until_killed(node: Node, *, moment: KillMoment, recipient: BenchDevice,
                              token: bytes, ledger: Ledger) -> None:
    killed = trio.Event()
    answered = delivered = 0
    in_flight: set[int] = set()
    relay = await node.running()

    def kill_now() -> None:
        node.kill()
        killed.set()
        ledger.unanswered_at_kills += len(in_flight)

    async def send_one(client: RelayClient, index: int, window: trio.Semaphore) -> None:
        nonlocal answered
        in_flight.add(index)
        try:
            await sealed_send(client, recipient, token, index)
        finally:
            window.release()
        in_flight.discard(index)
        ledger.unanswered.discard(index)
        ledger.accepted.add(index)
        answered += 1
        if not moment.on_delivery and answered == moment.count:
            kill_now()

    async def send_stream(client: RelayClient, nursery: trio.Nursery) -> None:
        window = trio.Semaphore(SENDS_IN_FLIGHT)
        again = sorted(ledger.unanswered)
        while True:
            await window.acquire()
            if killed.is_set():
                return
            if again:
                index = again.pop(0)
            else:
                index, ledger.next_index = ledger.next_index, ledger.next_index + 1
            ledger.unanswered.add(index)
            nursery.start_soon(send_one, client, index, window)

    async def receive(client: RelayClient) -> None:
        nonlocal delivered
        async for delivery in client.deliveries():
            if isinstance(delivery, Deliver):
                record(ledger, delivery)
                client.acknowledge(delivery.envelope_id)
                delivered += 1
                if moment.on_delivery and delivered == moment.count:
                    kill_now()

    with trio.fail_after(WAIT_S):
        async with anonymous(relay) as sending, connect(relay) as receiving:
            await authenticated(receiving, recipient)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive, receiving)
                nursery.start_soon(send_stream, sending, nursery)
                await killed.wait()
                nursery.cancel_scope.cancel()
            sending.close()
            receiving.close()
        assert await relay.process.wait() == -9


async def drain(node: Node, *, recipient: BenchDevice, token: bytes, ledger: Ledger) -> None:
    relay = await node.running()
    with trio.fail_after(WAIT_S):
        async with anonymous(relay) as client:
            for index in sorted(ledger.unanswered):
                await sealed_send(client, recipient, token, index)
                ledger.unanswered.discard(index)
                ledger.accepted.add(index)
        async with connect(relay) as client:
            await authenticated(client, recipient)
            async for delivery in client.deliveries():
                if isinstance(delivery, QueueEmpty):
                    break
                record(ledger, delivery)
                client.acknowledge(delivery.envelope_id)
            await client.settle()
        async with connect(relay) as client:
            await authenticated(client, recipient)
            assert isinstance(await client.deliveries().__anext__(), QueueEmpty)


async def test_sigkill_at_random_moments_loses_and_duplicates_no_sealed_send_on_sqlite(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "relay"
    await declare(None, data_dir, (SENDER_PHONE, RECIPIENT_PHONE), organisation="acme")
    node = Node(data_dir)
    token, token_hash = token_and_hash()
    rng = random.Random(SEED)
    async with kept_running(node):
        relay = await node.running()
        recipient = await enrol(relay, RECIPIENT_PHONE)
        async with connect(relay) as client:
            await authenticated(client, recipient)
            await client.set_delivery_token(token_hash)
        ledger = Ledger()
        for _ in range(KILLS):
            await stream_until_killed(node, moment=KillMoment.draw(rng), recipient=recipient,
                                      token=token, ledger=ledger)
        await drain(node, recipient=recipient, token=token, ledger=ledger)
    assert node.starts == KILLS + 1
    check_exactly_once(ledger)


@pytest.fixture
def cluster_url() -> Iterator[str]:
    with fresh_schema() as schema:
        yield store_url(schema)


async def test_sigkill_at_random_moments_loses_and_duplicates_no_sealed_send_on_postgresql(
        cluster_url: str, tmp_path: Path) -> None:
    await declare(cluster_url, tmp_path, (SENDER_PHONE, RECIPIENT_PHONE), organisation="acme")
    node = Node(tmp_path / "node", store=cluster_url,
                node_name=f"sealed-crash-{uuid.uuid4().hex[:8]}")
    token, token_hash = token_and_hash()
    rng = random.Random(SEED)
    async with kept_running(node):
        relay = await node.running()
        recipient = await enrol(relay, RECIPIENT_PHONE)
        async with connect(relay) as client:
            await authenticated(client, recipient)
            await client.set_delivery_token(token_hash)
        ledger = Ledger()
        for _ in range(KILLS):
            await stream_until_killed(node, moment=KillMoment.draw(rng), recipient=recipient,
                                      token=token, ledger=ledger)
        await drain(node, recipient=recipient, token=token, ledger=ledger)
    assert node.starts == KILLS + 1
    check_exactly_once(ledger)
