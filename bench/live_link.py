"""What the ``live`` load counts, and how one device sends and receives (a `Link`).

A link is either plaintext frames through `client.connection.RelayClient` (`PlaintextLink`,
here) or end-to-end encrypted texts through `client.messenger.Messenger`
(`bench.encrypted_link.EncryptedLink`). Both stamp each message with `HEADER` and hand
every receipt to a `Receiver`, which counts deliveries, duplicates and latencies.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Protocol

import trio

from bench.provision import BenchDevice
from client.connection import ConnectionClosed, RelayClient
from wire.frames import Deliver, QueueEmpty

__all__ = ["HEADER", "MAX_ERROR_SAMPLES", "WARM_UP_SEQUENCE", "Link", "LiveResult",
           "PlaintextLink", "Receiver"]

HEADER = struct.Struct(">QII")
"""Payload prefix: wall-clock send time (ns), sender index, sequence number."""

WARM_UP_SEQUENCE = 2**32 - 1
"""Sequence number of warm-up messages (sessions set up before measuring): never a
measured one, since a device sends far fewer than 2^32 - 1 messages."""

MAX_ERROR_SAMPLES = 5


@dataclass
class LiveResult:
    sent: int = 0
    delivered: int = 0
    expected: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    duplicates: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    first_send_ns: int = 0
    last_receipt_ns: int = 0
    warm_up_received: int = 0
    """Warm-up messages received (encrypted runs; never measured)."""
    load_cpu_seconds: float = 0.0
    """CPU time the load process used from the first send to the end (all its threads)."""
    datagrams: int = 0
    """UDP datagrams the devices sent and received from the first send to the end: the
    relay's datagrams in and out, counted at the clients (loopback loses none)."""

    def error(self, description: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(description)


class Receiver:
    """Counts what one local device receives."""

    def __init__(self, result: LiveResult, expected: int, expected_warm_up: int = 0) -> None:
        self.result = result
        self.expected = expected
        self.expected_warm_up = expected_warm_up
        self.received = 0
        self.warm_up_received = 0
        self.seen: set[tuple[int, int]] = set()
        self.drained = trio.Event()
        """Set once the queue left over from earlier runs is drained (ignored)."""
        self.warmed = trio.Event()
        """Set once every expected warm-up message arrived."""
        self.complete = trio.Event()
        """Set once every expected measured message arrived."""
        if expected == 0:
            self.complete.set()
        if expected_warm_up == 0:
            self.warmed.set()

    def receive(self, sent_ns: int, sender: int, sequence: int, now_ns: int) -> None:
        """Count the message ``sequence`` of ``sender``, stamped ``sent_ns``, read at ``now_ns``."""
        if sequence == WARM_UP_SEQUENCE:
            self.warm_up_received += 1
            self.result.warm_up_received += 1
            if self.warm_up_received >= self.expected_warm_up:
                self.warmed.set()
            return
        if (sender, sequence) in self.seen:
            self.result.duplicates += 1
            return
        self.seen.add((sender, sequence))
        self.result.delivered += 1
        self.result.latencies_ms.append((now_ns - sent_ns) / 1e6)
        self.result.last_receipt_ns = max(self.result.last_receipt_ns, now_ns)
        self.received += 1
        if self.received >= self.expected:
            self.complete.set()

    def fail(self, description: str) -> None:
        """The device can receive no more: count it and release whoever waits on it."""
        self.result.error(description)
        self.drained.set()
        self.warmed.set()
        self.complete.set()


class Link(Protocol):
    """How one local device sends and receives during a ``live`` run."""

    async def send(self, recipient: BenchDevice, sender: int, sequence: int,
                   size: int) -> None:
        """Send message ``sequence`` of ``sender`` (``size`` bytes, stamped now); raises
        the transport's or the library's error when it fails."""

    async def receive(self, receiver: Receiver) -> None:
        """Drain what earlier runs left (then set ``receiver.drained``), then hand every
        receipt to ``receiver`` until cancelled."""


class PlaintextLink:
    """Opaque payloads straight through `RelayClient` (what the relay alone costs)."""

    def __init__(self, client: RelayClient) -> None:
        self.client = client

    async def send(self, recipient: BenchDevice, sender: int, sequence: int,
                   size: int) -> None:
        payload = HEADER.pack(time.time_ns(), sender, sequence) + bytes(size - HEADER.size)
        await self.client.send(recipient.user_id, {recipient.device_id: payload},
                               client_message_id=sequence)

    async def receive(self, receiver: Receiver) -> None:
        try:
            async for delivery in self.client.deliveries():
                if isinstance(delivery, QueueEmpty):
                    receiver.drained.set()
                elif isinstance(delivery, Deliver):
                    now = time.time_ns()
                    self.client.acknowledge(delivery.envelope_id)
                    if receiver.drained.is_set():  # Else left over from an earlier run.
                        sent_ns, sender, sequence = HEADER.unpack_from(delivery.ciphertext)
                        receiver.receive(sent_ns, sender, sequence, now)
        except ConnectionClosed as error:
            receiver.fail(f"receiver closed: {error}")
