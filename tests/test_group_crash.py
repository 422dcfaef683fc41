"""Crash safety of the fan-out: the relay SIGKILLed at random moments of a stream of MULTI_SENDs.

As tests/test_crash_safety.py does for SEND (whose relay processes, kill moments and rounds this
reuses): a sender streams MULTI_SENDs (many in flight on its one send stream) to three recipient
devices of three users, who receive and acknowledge as they arrive; after a random number of
answers or deliveries in the round, the relay is killed with SIGKILL and started again on the
same SQLite file, KILLS times. The sender sends again, with the same ``client_message_id``,
every message whose answer it did not get. At the end every accepted message must have reached
every device under exactly one envelope id, with its shared ciphertext and that device's key
material, and with every envelope acknowledged the store must hold no shared payload: a crash
between a commit and its answers, or amid acknowledgements, neither loses a message, nor
duplicates one, nor leaks a count.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bench.provision import BenchDevice
from client.connection import RelayClient
from tests.relay_processes import connect, declare, enrol
from tests.test_crash_safety import KillMoment, Node, authenticated, kept_running
from wire.frames import Deliver, QueueEmpty

SEED = 19
"""Seeds the kill moments."""

KILLS = 12
"""SIGKILLs: each one restarts a relay process."""

SENDS_IN_FLIGHT = 16
"""MULTI_SENDs awaiting their answer at once: what is in flight when the relay dies."""

WAIT_S = 60
"""Bound on anything that could hang (a lost wake-up), not a timing assertion."""

SENDER_PHONE = "+33612345678"
RECIPIENT_PHONES = ("+33698765432", "+33611111111", "+33622222222")
INDEX = struct.Struct(">Q")
"""A message's shared ciphertext: its index, which is also its client_message_id."""

Key = tuple[str, int]


def _material(index: int, device: BenchDevice) -> bytes:
    return INDEX.pack(index) + f"{device.user_id}/{device.device_id}".encode()


@dataclass
class Ledger:
    """What the sender and the recipients know, across every connection and kill."""

    accepted: set[int] = field(default_factory=set)
    unanswered: set[int] = field(default_factory=set)
    next_index: int = 0
    delivered: dict[Key, dict[int, int]] = field(default_factory=dict)
    """Device -> (envelope id -> message index), as each device deduplicates by envelope id."""
    unanswered_at_kills: int = 0

    def record(self, device: BenchDevice, delivery: Deliver) -> None:
        assert delivery.shared is not None
        (index,) = INDEX.unpack(delivery.shared)
        assert delivery.ciphertext == _material(index, device)
        seen = self.delivered.setdefault((device.user_id, device.device_id), {})
        assert seen.setdefault(delivery.envelope_id, index) == index


def _recipients(index: int, devices: list[BenchDevice]) -> dict[str, dict[int, bytes]]:
    return {device.user_id: {device.device_id: _material(index, device)} for device in devices}


async def stream_until_killed(node: Node, *, moment: KillMoment, sender: BenchDevice,
                              recipients: list[BenchDevice], ledger: Ledger) -> None:
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
            await client.multi_send(_recipients(index, recipients), INDEX.pack(index),
                                    client_message_id=index)
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

    async def receive(client: RelayClient, device: BenchDevice) -> None:
        nonlocal delivered
        async for delivery in client.deliveries():
            if isinstance(delivery, Deliver):
                ledger.record(device, delivery)
                client.acknowledge(delivery.envelope_id)
                delivered += 1
                if moment.on_delivery and delivered == moment.count:
                    kill_now()

    with trio.fail_after(WAIT_S):
        async with connect(relay) as sending, connect(relay) as first, \
                connect(relay) as second, connect(relay) as third:
            receiving = [first, second, third]
            await authenticated(sending, sender)
            for client, device in zip(receiving, recipients, strict=True):
                await authenticated(client, device)
            async with trio.open_nursery() as nursery:
                for client, device in zip(receiving, recipients, strict=True):
                    nursery.start_soon(receive, client, device)
                nursery.start_soon(send_stream, sending, nursery)
                await killed.wait()
                nursery.cancel_scope.cancel()
            for client in (sending, *receiving):
                client.close()
        assert await relay.process.wait() == -9


async def drain(node: Node, *, sender: BenchDevice, recipients: list[BenchDevice],
                ledger: Ledger) -> None:
    relay = await node.running()
    with trio.fail_after(WAIT_S):
        async with connect(relay) as client:
            await authenticated(client, sender)
            for index in sorted(ledger.unanswered):
                await client.multi_send(_recipients(index, recipients), INDEX.pack(index),
                                        client_message_id=index)
                ledger.unanswered.discard(index)
                ledger.accepted.add(index)
        for device in recipients:
            async with connect(relay) as client:
                await authenticated(client, device)
                async for delivery in client.deliveries():
                    if isinstance(delivery, QueueEmpty):
                        break
                    ledger.record(device, delivery)
                    client.acknowledge(delivery.envelope_id)
                await client.settle()


async def test_sigkill_during_fan_out_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "relay"
    await declare(None, data_dir, (SENDER_PHONE, *RECIPIENT_PHONES), organisation="acme")
    node = Node(data_dir)
    rng = random.Random(SEED)
    ledger = Ledger()
    async with kept_running(node):
        relay = await node.running()
        sender = await enrol(relay, SENDER_PHONE)
        recipients = [await enrol(relay, phone) for phone in RECIPIENT_PHONES]
        for _ in range(KILLS):
            await stream_until_killed(node, moment=KillMoment.draw(rng), sender=sender,
                                      recipients=recipients, ledger=ledger)
        await drain(node, sender=sender, recipients=recipients, ledger=ledger)
        # Every envelope acknowledged: no shared payload left, whatever the kills interrupted.
        with contextlib.closing(sqlite3.connect(data_dir / "relay.db")) as store:
            assert store.execute("SELECT COUNT(*) FROM envelopes").fetchone() == (0,)
            assert store.execute("SELECT COUNT(*) FROM shared_payloads").fetchone() == (0,)
    assert node.starts == KILLS + 1
    assert not ledger.unanswered
    assert ledger.accepted == set(range(ledger.next_index))
    assert ledger.unanswered_at_kills > 0  # the kills landed mid-stream
    for device in recipients:
        per_message = Counter(ledger.delivered[device.user_id, device.device_id].values())
        lost = ledger.accepted - per_message.keys()
        twice = sorted(index for index, envelopes in per_message.items() if envelopes > 1)
        assert not lost, f"accepted, never delivered to {device.user_id} (seed {SEED}): {lost}"
        assert not twice, f"one message under several envelope ids (seed {SEED}): {twice}"
        assert per_message.keys() == ledger.accepted
