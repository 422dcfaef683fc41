"""DeliveryPump against a real SQLite store: backlog, live pushes, the pause, wake-ups; and
against a queue that is nothing but an ``EnvelopeQueue`` (the interface it is handed)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
import trio

from bench.provision import BenchDevice, provision
from relay import delivery
from relay.delivery import CommitPipeline, DeliveryPump, Presence
from storage.base import (
    Envelope,
    EnvelopeQueue,
    NewSend,
    PendingResult,
    SendOutcome,
    SendStatus,
    Store,
)
from storage.sqlite import open_sqlite_store
from wire.codec import FrameDecoder
from wire.frames import Deliver, QueueEmpty

NOW = 1_700_000_000_000  # a fixed instant (ms): the pump reads time only through now_ms
TIMEOUT_S = 10
T = TypeVar("T")


@pytest.fixture
async def devices(tmp_path: Path) -> AsyncIterator[tuple[Store, BenchDevice, BenchDevice]]:
    async with open_sqlite_store(tmp_path / "relay.db") as store:
        sender, recipient = await provision(store, organisation="pump", count=2, now=NOW)
        yield store, sender, recipient


class Wire:
    """What the pump wrote on the delivery stream, decoded."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.frames: list[Any] = []
        self.changed = trio.Event()

    def write(self, data: bytes) -> None:
        self.frames.extend(self.decoder.feed(data))
        self.changed.set()
        self.changed = trio.Event()

    @property
    def delivered(self) -> list[int]:
        return [frame.envelope_id for frame in self.frames if isinstance(frame, Deliver)]

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(TIMEOUT_S):
            while len(self.delivered) < count:
                await self.changed.wait()


async def _send(store: Store, sender: BenchDevice, recipient: BenchDevice,
                number: int) -> Envelope:
    outcome = await store.submit_send(NewSend(
        sender_user_id=sender.user_id, sender_device_id=sender.device_id,
        recipient_user_id=recipient.user_id, client_message_id=number,
        payloads={recipient.device_id: b"x%d" % number}, accepted_at=NOW,
        expires_at=NOW + 60_000, max_queue_depth=1000)).wait()
    (envelope,) = outcome.envelopes
    return envelope


def _pump(store: Store, recipient: BenchDevice, wire: Wire,
          nursery: trio.Nursery) -> DeliveryPump:
    return DeliveryPump(store=store, device=(recipient.user_id, recipient.device_id),
                        write=wire.write, now_ms=lambda: NOW, nursery=nursery)


async def test_backlog_then_queue_empty_then_live_pushes_in_the_offering_turn(
        devices: tuple[Store, BenchDevice, BenchDevice], nursery: trio.Nursery) -> None:
    store, sender, recipient = devices
    backlog = [await _send(store, sender, recipient, number) for number in range(3)]
    wire = Wire()
    pump = _pump(store, recipient, wire, nursery)
    pump.start()
    await wire.wait_for(3)
    with trio.fail_after(TIMEOUT_S):
        while not any(isinstance(frame, QueueEmpty) for frame in wire.frames):
            await wire.changed.wait()
    assert wire.delivered == [envelope.envelope_id for envelope in backlog]
    assert isinstance(wire.frames[-1], QueueEmpty)
    live = await _send(store, sender, recipient, 3)
    pump.offer([live])
    # Caught up: pushed synchronously, with no task of the pump's own.
    assert wire.delivered[-1] == live.envelope_id
    pump.offer([live])  # offered twice (read and offered): pushed once
    assert wire.delivered.count(live.envelope_id) == 1


async def test_a_paused_pump_reads_back_what_arrived_during_the_pause(
        devices: tuple[Store, BenchDevice, BenchDevice], nursery: trio.Nursery,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "MAX_UNACKNOWLEDGED", 2)
    store, sender, recipient = devices
    wire = Wire()
    pump = _pump(store, recipient, wire, nursery)
    pump.start()
    with trio.fail_after(TIMEOUT_S):
        while not wire.frames:
            await wire.changed.wait()  # QUEUE_EMPTY: caught up
    sent = []
    for number in range(5):
        envelope = await _send(store, sender, recipient, number)
        sent.append(envelope.envelope_id)
        pump.offer([envelope])
    assert wire.delivered == sent[:2]  # paused at two unacknowledged
    assert pump.delivered == 2
    pump.acknowledged(sent[:2])
    await wire.wait_for(5)
    assert wire.delivered == sent  # the rest read back from the store (a page), in order


class GatedStore:
    """A real store whose queue reads hold their answer until released."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reading = trio.Event()
        self.release = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def fetch_queue(self, **arguments: Any) -> list[Envelope]:
        page = await self.store.fetch_queue(**arguments)
        self.reading.set()
        await self.release.wait()
        return page


async def test_a_wake_up_during_a_read_is_not_lost(
        devices: tuple[Store, BenchDevice, BenchDevice], nursery: trio.Nursery) -> None:
    store, sender, recipient = devices
    gated = GatedStore(store)
    wire = Wire()
    pump = DeliveryPump(store=gated, device=(recipient.user_id, recipient.device_id),
                        write=wire.write, now_ms=lambda: NOW, nursery=nursery)
    pump.start()
    with trio.fail_after(TIMEOUT_S):
        await gated.reading.wait()
    # Committed elsewhere (another node) after the read's snapshot: only a wake-up says so.
    late = await _send(store, sender, recipient, 0)
    pump.wake()
    gated.release.set()
    await wire.wait_for(1)
    assert wire.delivered == [late.envelope_id]


async def test_a_failing_answer_does_not_stop_the_commit_pipeline(
        devices: tuple[Store, BenchDevice, BenchDevice], nursery: trio.Nursery) -> None:
    store, sender, recipient = devices
    presence = Presence()
    pipeline = CommitPipeline(store, presence)
    nursery.start_soon(pipeline.run)
    answered = trio.Event()

    def broken(outcome: object) -> None:
        raise RuntimeError("a connection's bug")

    def fine(outcome: object) -> None:
        answered.set()

    for number, answer in ((1, broken), (2, fine)):
        pipeline.submit(store.submit_send(NewSend(
            sender_user_id=sender.user_id, sender_device_id=sender.device_id,
            recipient_user_id=recipient.user_id, client_message_id=number,
            payloads={recipient.device_id: b"x"}, accepted_at=NOW, expires_at=NOW + 60_000,
            max_queue_depth=1000)), answer)
    with trio.fail_after(TIMEOUT_S):
        await answered.wait()
    assert pipeline.pending == 0


class Committed(Generic[T]):
    """A ``PendingResult`` committed on submission (the in-memory queue has no writer)."""

    def __init__(self, value: T) -> None:
        self.value = value

    async def wait(self) -> T:
        return self.value

    @property
    def done(self) -> bool:
        return True

    def result(self) -> T:
        return self.value


class MemoryQueue:
    """``EnvelopeQueue`` and nothing else, in memory: no directory, no organisations, no
    SQL. Every send is accepted for the devices it addresses (no device set, depth or policy
    check): the pump only relies on the queue's order and on acknowledgement."""

    def __init__(self) -> None:
        self.envelopes: dict[int, Envelope] = {}
        self.last_id = 0
        self.fetches = 0

    def submit_send(self, send: NewSend) -> PendingResult[SendOutcome]:
        queued = []
        for device_id, ciphertext in sorted(send.payloads.items()):
            self.last_id += 1
            queued.append(Envelope(
                envelope_id=self.last_id, recipient_user_id=send.recipient_user_id,
                recipient_device_id=device_id, sender_user_id=send.sender_user_id,
                sender_device_id=send.sender_device_id,
                client_message_id=send.client_message_id, ciphertext=ciphertext,
                accepted_at=send.accepted_at, expires_at=send.expires_at))
        self.envelopes.update((envelope.envelope_id, envelope) for envelope in queued)
        return Committed(SendOutcome(status=SendStatus.ACCEPTED, envelopes=tuple(queued)))

    async def fetch_queue(self, *, user_id: str, device_id: int, after_envelope_id: int,
                          limit: int, now: int) -> list[Envelope]:
        self.fetches += 1
        return [envelope for _, envelope in sorted(self.envelopes.items())
                if (envelope.recipient_user_id, envelope.recipient_device_id)
                == (user_id, device_id)
                and envelope.envelope_id > after_envelope_id and envelope.expires_at > now
                ][:limit]

    async def acknowledge(self, *, user_id: str, device_id: int,
                          envelope_ids: Sequence[int]) -> int:
        return await self.submit_acknowledge(user_id=user_id, device_id=device_id,
                                             envelope_ids=envelope_ids).wait()

    def submit_acknowledge(self, *, user_id: str, device_id: int,
                           envelope_ids: Sequence[int]) -> PendingResult[int]:
        mine = [envelope_id for envelope_id in set(envelope_ids)
                if envelope_id in self.envelopes
                and (self.envelopes[envelope_id].recipient_user_id,
                     self.envelopes[envelope_id].recipient_device_id) == (user_id, device_id)]
        for envelope_id in mine:
            del self.envelopes[envelope_id]
        return Committed(len(mine))

    async def queue_depth(self, *, user_id: str, device_id: int) -> int:
        return sum((envelope.recipient_user_id, envelope.recipient_device_id)
                   == (user_id, device_id) for envelope in self.envelopes.values())

    async def expire(self, *, now: int, limit: int) -> int:
        expired = [envelope_id for envelope_id, envelope in sorted(self.envelopes.items())
                   if envelope.expires_at <= now][:limit]
        for envelope_id in expired:
            del self.envelopes[envelope_id]
        return len(expired)


def _memory_send(queue: EnvelopeQueue, number: int) -> PendingResult[SendOutcome]:
    return queue.submit_send(NewSend(
        sender_user_id="alice", sender_device_id=1, recipient_user_id="bob",
        client_message_id=number, payloads={1: b"m%d" % number}, accepted_at=NOW,
        expires_at=NOW + 60_000, max_queue_depth=1000))


async def test_the_pump_and_the_pipeline_need_only_an_envelope_queue(
        nursery: trio.Nursery) -> None:
    memory = MemoryQueue()
    queue: EnvelopeQueue = memory  # all they are handed: no Store method exists on it
    assert not hasattr(queue, "load_principal") and not hasattr(queue, "claim_bundles")
    backlog = [(await _memory_send(queue, number).wait()).envelopes[0] for number in range(3)]
    presence = Presence()
    pipeline = CommitPipeline(queue, presence)
    nursery.start_soon(pipeline.run)
    wire = Wire()
    pump = DeliveryPump(store=queue, device=("bob", 1), write=wire.write, now_ms=lambda: NOW,
                        nursery=nursery)
    presence.attach(pump)
    pump.start()
    await wire.wait_for(3)
    with trio.fail_after(TIMEOUT_S):
        while not isinstance(wire.frames[-1], QueueEmpty):
            await wire.changed.wait()
    assert wire.delivered == [envelope.envelope_id for envelope in backlog]
    fetches = memory.fetches
    answered: list[Any] = []
    pipeline.submit(_memory_send(queue, 3), answered.append)
    await wire.wait_for(4)
    (outcome,) = answered
    assert outcome.status is SendStatus.ACCEPTED
    assert wire.delivered[-1] == outcome.envelopes[0].envelope_id
    assert memory.fetches == fetches  # pushed live, from the commit, without reading
    assert await queue.acknowledge(user_id="bob", device_id=1,
                                   envelope_ids=wire.delivered) == 4
    pump.acknowledged(wire.delivered)
    assert await queue.queue_depth(user_id="bob", device_id=1) == 0
