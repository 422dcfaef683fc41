"""``live --encrypted``: bench devices driven through the end-to-end library.

Each local device gets a `crypto.device.DeviceCrypto` made from the very seed it
authenticates with (`BenchDevice.seed`, registered by `bench.provision`), so its
end-to-end identity key is its relay key, as `client.messenger.create_device_state` makes
it at enrolment. `Messenger.attach` publishes its prekeys through the relay. State is
kept in memory (``persist_state=False``): the bench measures the library and the relay,
not the disk, and its devices live for one run.

Sessions are set up in a warm-up before measuring: every sender sends one text to each
distinct recipient of its plan, as the library does for a first message (LOOKUP, fetch
the bundle, PQXDH with ML-KEM-1024, then the recipient's PQXDH response and its LOOKUP
of the sender). The measured messages then run on established Double Ratchet sessions.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack, aclosing
from pathlib import Path

import trio

from bench.live_link import HEADER, WARM_UP_SEQUENCE, LiveResult, Receiver
from bench.provision import BenchDevice
from client.connection import ConnectionClosed, RelayClient
from client.message_content import MAX_TEXT_BYTES
from client.messenger import Messenger
from client.profile import Profile
from crypto.device import DeviceAddress, DeviceCrypto
from crypto.primitives import SystemRandom, ed25519_keypair_from_private

__all__ = ["TEXT_HEADER_CHARS", "EncryptedLink", "check_text_size", "expected_warm_up",
           "open_encrypted_links", "warm_up"]

TEXT_HEADER_CHARS = 2 * HEADER.size
"""Characters of the text that carry `HEADER` (in hex: a text is a string)."""

PUBLISH_CONCURRENCY = 16
"""Devices publishing prekeys at once: each upload carries about 160 KB of ML-KEM keys,
so this bounds the burst on the relay (and its store) while the devices start."""


def check_text_size(size: int) -> None:
    """Raise ValueError unless ``size`` bytes make a text the bench can stamp and send."""
    if not TEXT_HEADER_CHARS <= size <= MAX_TEXT_BYTES:
        raise ValueError(f"an encrypted text is {TEXT_HEADER_CHARS} to {MAX_TEXT_BYTES} bytes")


def _text(sender: int, sequence: int, size: int) -> str:
    header = HEADER.pack(time.time_ns(), sender, sequence).hex()
    return header + "x" * (size - len(header))


class EncryptedLink:
    """One device's `Messenger`: texts encrypted for the recipient's devices, decrypted
    on receipt (a receipt's time is taken once the text is decrypted)."""

    def __init__(self, messenger: Messenger) -> None:
        self.messenger = messenger

    async def send(self, recipient: BenchDevice, sender: int, sequence: int,
                   size: int) -> None:
        await self.messenger.send_text(recipient.phone, _text(sender, sequence, size))

    async def receive(self, receiver: Receiver) -> None:
        try:
            async with aclosing(self.messenger.messages(stop_when_empty=True)) as leftovers:
                async for _ in leftovers:
                    pass  # An earlier run's, acknowledged and ignored.
            receiver.drained.set()
            async with aclosing(self.messenger.messages()) as messages:
                async for message in messages:
                    now = time.time_ns()
                    if message.content is None:
                        receiver.result.error(f"unreadable message: {message.problem}")
                        continue
                    sent_ns, sender, sequence = HEADER.unpack(
                        bytes.fromhex(message.content.text[:TEXT_HEADER_CHARS]))
                    receiver.receive(sent_ns, sender, sequence, now)
        except ConnectionClosed as error:
            receiver.fail(f"receiver closed: {error}")


async def open_encrypted_links(stack: AsyncExitStack, clients: dict[int, RelayClient],
                               devices: Sequence[BenchDevice], relay: str,
                               ca: Path | None) -> dict[int, EncryptedLink]:
    """Give each authenticated client (keyed by device index) its end-to-end state and a
    running `Messenger` whose prekeys are published when this returns; ``stack`` stops them.
    """
    # Profiles only name the device for the library: nothing is written to them.
    unsaved = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-profiles-")))
    links: dict[int, EncryptedLink] = {}
    limiter = trio.CapacityLimiter(PUBLISH_CONCURRENCY)

    async def run(index: int, client: RelayClient,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        device = devices[index]
        profile = Profile(unsaved / str(index))
        profile.data.relay, profile.data.ca = relay, str(ca) if ca else None
        profile.data.phone, profile.data.user_id = device.phone, device.user_id
        profile.data.device_id = device.device_id
        async with AsyncExitStack() as running:
            async with limiter:  # only the key generation and upload count against it
                crypto = DeviceCrypto.create(
                    ed25519_keypair_from_private(device.seed), SystemRandom(),
                    address=DeviceAddress(user_id=device.user_id, device_id=device.device_id),
                    now_ms=time.time_ns() // 1_000_000)
                messenger = await running.enter_async_context(Messenger.attach(
                    client, profile, crypto, {}, persist_state=False,
                    identity=ed25519_keypair_from_private(device.seed), seal=False))
            links[index] = EncryptedLink(messenger)
            task_status.started()
            await trio.sleep_forever()

    holder = await stack.enter_async_context(trio.open_nursery())
    stack.callback(holder.cancel_scope.cancel)
    async with trio.open_nursery() as starting:
        for index, client in clients.items():
            starting.start_soon(holder.start, run, index, client)
    return links


def expected_warm_up(plan: Sequence[Sequence[int]], local: Sequence[int]) -> dict[int, int]:
    """Warm-up messages each local device receives: one per sender that has it in its plan."""
    counts = dict.fromkeys(local, 0)
    for recipients in plan:
        for recipient in set(recipients):
            if recipient in counts:
                counts[recipient] += 1
    return counts


async def warm_up(links: dict[int, EncryptedLink], plan: Sequence[Sequence[int]],
                  devices: Sequence[BenchDevice], result: LiveResult) -> None:
    """Each local sender sends one text to each distinct recipient of its plan, one at a
    time (its first messages each fetch a bundle and run PQXDH); all senders at once."""
    async def sender_warm_up(sender: int) -> None:
        for recipient in sorted(set(plan[sender])):
            try:
                await links[sender].send(devices[recipient], sender, WARM_UP_SEQUENCE,
                                         TEXT_HEADER_CHARS)
            except Exception as error:  # counted and reported, never fatal
                result.error(f"warm-up {sender}->{recipient}: {type(error).__name__}: {error}")

    async with trio.open_nursery() as nursery:
        for sender in links:
            nursery.start_soon(sender_warm_up, sender)
