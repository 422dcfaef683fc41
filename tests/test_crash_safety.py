"""Crash safety: the relay SIGKILLed at random moments of a stream of sends, again and again.

A sender streams SENDs (many in flight on its one send stream) to a recipient who receives and
acknowledges as they arrive. After a random number of SEND_ACCEPTED answers in the round, the
relay is killed with SIGKILL and started again on the same store, KILLS times. The sender then
does what a client does after a lost connection: it sends again, with the same
``client_message_id``, every message whose answer it did not get. At the end every message the
relay accepted must have reached the recipient under exactly one envelope id: an envelope
delivered again because its acknowledgement died with the relay is the client's to skip (same
envelope id), but a second envelope for one message, or none, is a broken promise of
"durable before accepted" and of the idempotency key.

On SQLite one relay is killed and restarted each round; on PostgreSQL two nodes of one cluster
are killed in turn, each restarted while the other serves, and the devices move between them.
The kill moments come from a seeded ``random.Random`` (SEED), so a failure reproduces. Nothing
sleeps: the test waits on answers, deliveries and the relay's log.
"""

from __future__ import annotations

import random
import struct
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from bench.provision import BenchDevice
from bench.spawn import SpawnedRelay, spawn_relay
from client.connection import RelayClient
from tests.postgres_schemas import fresh_schema, store_url
from tests.relay_processes import connect, declare, enrol
from wire.frames import Deliver, QueueEmpty

SEED = 14
"""Seeds the kill moments (and on PostgreSQL, which node the recipient uses each round)."""

KILLS = 20
"""SIGKILLs per backend."""

SENDS_IN_FLIGHT = 16
"""Sends awaiting their answer at once: what is in flight when the relay dies."""

MAX_EVENTS_BEFORE_KILL = 24
"""A round kills the relay after 1..this many SEND_ACCEPTED answers to the sender, or DELIVER
frames to the recipient (which of the two, and how many, drawn from SEED): the first kills
it between a commit and the answers of the sends behind it, the second while
acknowledgements are in flight."""

WAIT_S = 30
"""Bound on anything that could hang (a lost wake-up), not a timing assertion."""

SENDER_PHONE, RECIPIENT_PHONE = "+33612345678", "+33698765432"
INDEX = struct.Struct(">Q")
"""A message's payload: its index, which is also its client_message_id."""


@dataclass
class Ledger:
    """What the sender and the recipient know, across every connection and kill."""

    accepted: set[int] = field(default_factory=set)
    """Messages whose SEND was answered SEND_ACCEPTED."""
    unanswered: set[int] = field(default_factory=set)
    """Messages sent without an answer before the relay died: sent again next round."""
    next_index: int = 0
    delivered: dict[int, int] = field(default_factory=dict)
    """Envelope id -> message index, as the recipient deduplicates by envelope id."""
    deliveries: int = 0
    """DELIVER frames received, repeats included."""
    unanswered_at_kills: int = 0
    """Sends in flight when the relay died, over all kills."""
    resent_duplicates: int = 0
    """Re-sends answered ``duplicate``: committed by the relay that died before answering."""

    def record(self, delivery: Deliver) -> None:
        (index,) = INDEX.unpack(delivery.ciphertext)
        earlier = self.delivered.setdefault(delivery.envelope_id, index)
        assert earlier == index, (delivery.envelope_id, earlier, index)
        self.deliveries += 1


class Node:
    """One relay process kept running on a data directory and store: started again each time
    the test kills it, until the test's nursery is cancelled (which stops it with SIGTERM)."""

    def __init__(self, data_dir: Path, *, store: str | None = None,
                 node_name: str | None = None) -> None:
        self.data_dir, self.store, self.node_name = data_dir, store, node_name
        self.starts = 0
        self._relay: SpawnedRelay | None = None
        self._up = trio.Event()

    async def keep_running(self, *, task_status: trio.TaskStatus[None]) -> None:
        while True:
            async with spawn_relay(self.data_dir, store=self.store,
                                   node_name=self.node_name) as relay:
                self._relay, self.starts = relay, self.starts + 1
                self._up.set()
                if self.starts == 1:
                    task_status.started()
                code = await relay.process.wait()
            if self._relay is relay:  # not killed by the test: the relay died by itself
                raise AssertionError(f"relay exited with {code} without being killed")

    async def running(self) -> SpawnedRelay:
        """The relay, once it listens (after a kill: once it has started again)."""
        with trio.fail_after(WAIT_S):
            await self._up.wait()
        assert self._relay is not None
        return self._relay

    def kill(self) -> None:
        """SIGKILL the running relay, now (no checkpoint before the signal); it starts again
        at once."""
        relay, self._relay, self._up = self._relay, None, trio.Event()
        assert relay is not None
        relay.process.kill()


@asynccontextmanager
async def kept_running(*nodes: Node) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.keep_running)
        yield
        nursery.cancel_scope.cancel()


async def authenticated(client: RelayClient, device: BenchDevice) -> None:
    await client.authenticate(device.user_id, device.device_id, device.key)


@dataclass(frozen=True)
class KillMoment:
    """When a round kills its relay: at the ``count``-th answer or delivery of the round."""

    on_delivery: bool  #: count DELIVER frames to the recipient, not answers to the sender
    count: int  #: 1 or more

    @classmethod
    def draw(cls, rng: random.Random) -> KillMoment:
        return cls(on_delivery=rng.random() < 0.5, count=rng.randint(1, MAX_EVENTS_BEFORE_KILL))


async def stream_until_killed(doomed: Node, recipient_node: Node, *, moment: KillMoment,
                              sender: BenchDevice, recipient: BenchDevice,
                              ledger: Ledger) -> None:
    """One round: the unanswered messages again, then new ones, until ``moment``; then SIGKILL
    ``doomed``, with sends, deliveries and acknowledgements in flight."""
    killed = trio.Event()
    answered = delivered = 0
    in_flight: set[int] = set()
    relay = await doomed.running()
    recipient_relay = await recipient_node.running()

    async def send_one(client: RelayClient, index: int, window: trio.Semaphore) -> None:
        nonlocal answered
        in_flight.add(index)
        try:
            duplicate = await client.send(recipient.user_id,
                                          {recipient.device_id: INDEX.pack(index)},
                                          client_message_id=index)
        finally:
            window.release()
        in_flight.discard(index)
        ledger.unanswered.discard(index)
        ledger.accepted.add(index)
        ledger.resent_duplicates += duplicate
        answered += 1
        if not moment.on_delivery and answered == moment.count:
            kill_now()

    def kill_now() -> None:
        doomed.kill()
        killed.set()
        ledger.unanswered_at_kills += len(in_flight)

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
            ledger.unanswered.add(index)  # until its answer comes
            nursery.start_soon(send_one, client, index, window)

    async def receive(client: RelayClient) -> None:
        nonlocal delivered
        async for delivery in client.deliveries():
            if isinstance(delivery, Deliver):
                ledger.record(delivery)
                client.acknowledge(delivery.envelope_id)
                delivered += 1
                if moment.on_delivery and delivered == moment.count:
                    kill_now()

    with trio.fail_after(WAIT_S):
        async with connect(relay) as sending, connect(recipient_relay) as receiving:
            await authenticated(sending, sender)
            await authenticated(receiving, recipient)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive, receiving)
                nursery.start_soon(send_stream, sending, nursery)
                await killed.wait()
                # Answers still due from the dead relay never come: those sends stay
                # unanswered (the client cannot tell whether they were committed).
                nursery.cancel_scope.cancel()
            # The dead relay cannot confirm acknowledgements: closing now spares the wait for
            # them (those lost are delivered again, under the same envelope ids).
            sending.close()
            if recipient_node is doomed:
                receiving.close()
        assert await relay.process.wait() == -9


async def drain(node: Node, *, sender: BenchDevice, recipient: BenchDevice,
                ledger: Ledger) -> None:
    """After the last kill: send the unanswered messages again, then receive everything
    stored, and check that nothing is left behind once the acknowledgements are confirmed."""
    relay = await node.running()
    with trio.fail_after(WAIT_S):
        async with connect(relay) as client:
            await authenticated(client, sender)
            for index in sorted(ledger.unanswered):
                ledger.resent_duplicates += await client.send(
                    recipient.user_id, {recipient.device_id: INDEX.pack(index)},
                    client_message_id=index)
                ledger.unanswered.discard(index)
                ledger.accepted.add(index)
        async with connect(relay) as client:
            await authenticated(client, recipient)
            async for delivery in client.deliveries():
                if isinstance(delivery, QueueEmpty):
                    break
                ledger.record(delivery)
                client.acknowledge(delivery.envelope_id)
            await client.settle()
        async with connect(relay) as client:
            await authenticated(client, recipient)
            assert isinstance(await client.deliveries().__anext__(), QueueEmpty)


def check_exactly_once(ledger: Ledger) -> None:
    assert not ledger.unanswered
    assert ledger.accepted == set(range(ledger.next_index))
    per_message = Counter(ledger.delivered.values())
    lost = ledger.accepted - per_message.keys()
    twice = sorted(index for index, envelopes in per_message.items() if envelopes > 1)
    assert not lost, f"accepted, never delivered (seed {SEED}): {sorted(lost)}"
    assert not twice, f"one message under several envelope ids (seed {SEED}): {twice}"
    assert per_message.keys() == ledger.accepted  # and nothing that was never sent
    # The kills landed mid-stream: sends were in flight, with no answer, at the kills.
    assert ledger.unanswered_at_kills > 0


async def run_kills(doomed_in_turn: list[Node], *, every_node: list[Node],
                    sender: BenchDevice, recipient: BenchDevice, rng: random.Random) -> Ledger:
    ledger = Ledger()
    for kill in range(KILLS):
        doomed = doomed_in_turn[kill % len(doomed_in_turn)]
        await stream_until_killed(doomed, rng.choice(every_node), moment=KillMoment.draw(rng),
                                  sender=sender, recipient=recipient, ledger=ledger)
    for node in every_node:
        await node.running()  # every node restarted after its last kill
    await drain(doomed_in_turn[0], sender=sender, recipient=recipient, ledger=ledger)
    return ledger


async def test_sigkill_at_random_moments_loses_and_duplicates_nothing_on_sqlite(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "relay"
    await declare(None, data_dir, (SENDER_PHONE, RECIPIENT_PHONE), organisation="acme")
    node = Node(data_dir)
    async with kept_running(node):
        relay = await node.running()
        sender, recipient = await enrol(relay, SENDER_PHONE), await enrol(relay, RECIPIENT_PHONE)
        ledger = await run_kills([node], every_node=[node], sender=sender, recipient=recipient,
                                 rng=random.Random(SEED))
    assert node.starts == KILLS + 1
    check_exactly_once(ledger)


@pytest.fixture
def cluster_url() -> Iterator[str]:
    with fresh_schema() as schema:
        yield store_url(schema)


async def test_two_postgresql_nodes_killed_in_turn_lose_and_duplicate_nothing(
        cluster_url: str, tmp_path: Path) -> None:
    await declare(cluster_url, tmp_path, (SENDER_PHONE, RECIPIENT_PHONE), organisation="acme")
    # Unique names: application names are database-wide, and other suites may run nodes.
    suffix = uuid.uuid4().hex[:8]
    nodes = [Node(tmp_path / f"node-{number}", store=cluster_url,
                  node_name=f"crash-{number}-{suffix}") for number in (1, 2)]
    async with kept_running(*nodes):
        sender = await enrol(await nodes[0].running(), SENDER_PHONE)
        recipient = await enrol(await nodes[1].running(), RECIPIENT_PHONE)
        # Each round kills the node the sender uses, the two in turn; the recipient uses
        # either (drawn from SEED), so deliveries cross nodes through the database's
        # notifications, and a device moves to the other node after each kill.
        ledger = await run_kills(nodes, every_node=nodes, sender=sender, recipient=recipient,
                                 rng=random.Random(SEED))
    assert [node.starts for node in nodes] == [KILLS // 2 + 1] * 2
    check_exactly_once(ledger)
