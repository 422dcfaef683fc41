"""``offline --encrypted``: the offline scenario through the end-to-end library.

The recipient first connects once to publish its prekeys (as a phone does after
enrolment), then goes offline. The sender queues ``messages`` encrypted texts: the first
alone (it looks the recipient up, fetches its bundle and runs PQXDH, so the accept phase
includes one session set-up), the others ``window`` at a time. The recipient then connects,
publishes nothing more (its pools are still full), and drains, decrypting each text before
acknowledging it. Both devices keep their end-to-end state in memory (see
`bench.encrypted_link`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bench.provision import BenchDevice
from client.connection import connect_relay, open_client_endpoint
from client.contacts import Contact
from client.messenger import Messenger
from client.profile import Profile
from crypto.device import DeviceAddress, DeviceCrypto
from crypto.primitives import SystemRandom, ed25519_keypair_from_private
from transport.quic import QuicEndpoint

__all__ = ["EncryptedDevice", "OfflineCounts", "encrypted_device", "queue_and_drain_encrypted"]


@dataclass
class OfflineCounts:
    """What an offline run saw, and when (CPU marks are the relay's, from ``cpu_now``)."""

    accepted: int = 0
    drained: int = 0
    errors: list[str] = field(default_factory=list)
    accept_seconds: float = 0.0
    drain_seconds: float = 0.0
    cpu_start: float | None = None
    cpu_accepted: float | None = None


@dataclass
class EncryptedDevice:
    """A provisioned device with a profile and its end-to-end state, kept in memory."""

    credentials: BenchDevice
    profile: Profile
    crypto: DeviceCrypto
    contacts: dict[str, Contact] = field(default_factory=dict)


def encrypted_device(credentials: BenchDevice, directory: Path, relay: str,
                     ca: Path | None) -> EncryptedDevice:
    """The device's profile (in ``directory``, not saved) and a fresh end-to-end state whose
    identity key is the key it authenticates with, as enrolment makes it."""
    profile = Profile(directory)
    profile.data.relay, profile.data.ca = relay, str(ca) if ca else None
    profile.data.phone, profile.data.user_id = credentials.phone, credentials.user_id
    profile.data.device_id = credentials.device_id
    crypto = DeviceCrypto.create(
        ed25519_keypair_from_private(credentials.seed), SystemRandom(),
        address=DeviceAddress(user_id=credentials.user_id, device_id=credentials.device_id),
        now_ms=time.time_ns() // 1_000_000)
    return EncryptedDevice(credentials=credentials, profile=profile, crypto=crypto)


async def queue_and_drain_encrypted(host: str, port: int, ca: Path | None,
                                    sender_credentials: BenchDevice,
                                    recipient_credentials: BenchDevice, *, messages: int,
                                    size: int, window: int, time_limit: float,
                                    cpu_now: Callable[[], float | None]) -> OfflineCounts:
    """Queue ``messages`` texts of ``size`` bytes for the offline recipient, then drain them."""
    counts = OfflineCounts()
    text = "x" * size
    with tempfile.TemporaryDirectory(prefix="bench-profiles-") as temporary:
        # Profiles only name the devices for the library: nothing is written to them.
        sender, recipient = (
            encrypted_device(credentials, Path(temporary) / str(credentials.device_id)
                             / credentials.user_id, f"{host}:{port}", ca)
            for credentials in (sender_credentials, recipient_credentials))

        async with open_client_endpoint(host) as endpoint:
            with trio.fail_after(time_limit):
                async with _messenger(endpoint, host, port, ca, recipient):
                    pass  # Prekeys published: the recipient can go offline.
            with trio.fail_after(time_limit):
                async with _messenger(endpoint, host, port, ca, sender) as messenger:
                    counts.cpu_start = cpu_now()  # After the sender's own prekey upload.
                    started = time.perf_counter()
                    await _queue(messenger, recipient.credentials.phone, text, messages,
                                 window, counts)
                    counts.accept_seconds = time.perf_counter() - started
            counts.cpu_accepted = cpu_now()
            started = time.perf_counter()
            with trio.fail_after(time_limit):
                async with _messenger(endpoint, host, port, ca, recipient) as messenger:
                    async with aclosing(messenger.messages(stop_when_empty=True)) as stream:
                        async for message in stream:
                            if message.content is None:
                                counts.errors.append(f"unreadable: {message.problem}")
                            else:
                                counts.drained += 1
                    await messenger.client.settle()
            counts.drain_seconds = time.perf_counter() - started
    return counts


@asynccontextmanager
async def _messenger(endpoint: QuicEndpoint, host: str, port: int, ca: Path | None,
                     device: EncryptedDevice) -> AsyncIterator[Messenger]:
    """Connect ``device`` and run its messenger on its in-memory state."""
    async with connect_relay(host, port, ca=ca, server_name="localhost",
                             endpoint=endpoint) as client:
        await client.authenticate(device.credentials.user_id, device.credentials.device_id,
                                  device.credentials.key)
        async with Messenger.attach(
                client, device.profile, device.crypto, device.contacts, persist_state=False,
                identity=ed25519_keypair_from_private(device.credentials.seed),
                seal=False) as messenger:
            yield messenger


async def _queue(messenger: Messenger, phone: str, text: str, messages: int, window: int,
                 counts: OfflineCounts) -> None:
    async def send() -> None:
        try:
            await messenger.send_text(phone, text)
            counts.accepted += 1
        except Exception as error:  # counted and reported, never fatal
            counts.errors.append(f"{type(error).__name__}: {error}")

    await send()  # Alone: it sets up the session the others use.
    slots = trio.Semaphore(window)

    async def send_in_slot() -> None:
        try:
            await send()
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        for _ in range(messages - 1):
            await slots.acquire()
            nursery.start_soon(send_in_slot)
