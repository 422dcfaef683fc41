"""The ``messenger`` scenario: messages/s between two devices, encrypted, sealed, plaintext.

Two devices, Alice's and Bob's, provisioned on the relay under test. Each run sends
``messages`` texts of ``size`` bytes from Alice to Bob while Bob receives and
acknowledges them, and times first send to last receipt:

- ``encrypted``: `client.messenger.Messenger` on both sides: content encoding, Double
  Ratchet encrypt and decrypt, and each profile's end-to-end state written (fsync) after
  every change, as ``cryptopass`` does. The session exists already (the first PQXDH
  happens in a warm-up of WARM_UP_MESSAGES).
- ``sealed``: the same as ``encrypted``, sent sealed (Alice holds Bob's profile key): each
  message is sealed to Bob's device with Alice's sender certificate and sent on a fresh
  connection that never authenticates (`client.sealed`), and Bob opens and checks it; the
  difference from ``encrypted`` is sealed sender's cost per message.
- ``plaintext``: `RelayClient.send` of the same content bytes, unencrypted, and
  `RelayClient.deliveries` + `acknowledge` on Bob's side.

Both send one message at a time (each SEND awaits SEND_ACCEPTED before the next, as the
CLI and `Messenger.send_text` do), so the figures compare the per-message cost of the
two paths, not pipelining.
"""

from __future__ import annotations

import datetime
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from bench.encrypted_offline import EncryptedDevice, encrypted_device
from bench.provision import BenchDevice
from client.connection import RelayClient, connect_relay
from client.message_content import encode_content
from client.messenger import Messenger
from crypto.primitives import ed25519_keypair_from_private
from wire.frames import Deliver

if TYPE_CHECKING:
    from bench.target import Target

__all__ = ["WARM_UP_MESSAGES", "messenger_cost"]

WARM_UP_MESSAGES = 10
"""Encrypted messages sent before measuring: prekeys published, the session set up."""


def _device(credentials: BenchDevice, directory: Path, target: Target) -> EncryptedDevice:
    device = encrypted_device(credentials, directory, f"{target.host}:{target.port}", target.ca)
    device.profile.save()
    return device


@asynccontextmanager
async def _connected(target: Target, device: BenchDevice) -> AsyncIterator[RelayClient]:
    async with connect_relay(target.host, target.port, ca=target.ca,
                             server_name="localhost") as client:
        await client.authenticate(device.user_id, device.device_id, device.key)
        yield client


async def _encrypted_run(target: Target, alice: EncryptedDevice, bob: EncryptedDevice,
                         messages: int, size: int, *, sealed: bool = False) -> float:
    text = "x" * size
    done = trio.Event()
    async with _connected(target, alice.credentials) as sending, \
            _connected(target, bob.credentials) as receiving, \
            Messenger.attach(sending, alice.profile, alice.crypto, alice.contacts,
                             identity=ed25519_keypair_from_private(alice.credentials.seed),
                             seal=sealed) as sender, \
            Messenger.attach(receiving, bob.profile, bob.crypto, bob.contacts,
                             identity=ed25519_keypair_from_private(bob.credentials.seed)
                             ) as receiver:
        if sealed:  # as if Bob had written first: Alice holds his profile key
            contact = await sender.contact(bob.credentials.phone)
            contact.profile_key = receiver.sealed.profile_key
        async def receive() -> None:
            received = 0
            async with aclosing(receiver.messages()) as stream:
                async for _ in stream:
                    received += 1
                    if received == messages:
                        done.set()
                        return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            started = time.perf_counter()
            for _ in range(messages):
                await sender.send_text(bob.credentials.phone, text)
            await done.wait()
            return time.perf_counter() - started


async def _sealed_run(target: Target, alice: EncryptedDevice, bob: EncryptedDevice,
                      messages: int, size: int) -> float:
    return await _encrypted_run(target, alice, bob, messages, size, sealed=True)


async def _plaintext_run(target: Target, alice: EncryptedDevice, bob: EncryptedDevice,
                         messages: int, size: int) -> float:
    content = encode_content(sender_phone=alice.credentials.phone,
                             recipient_phone=bob.credentials.phone, text="x" * size,
                             sent_at=datetime.datetime.now(datetime.UTC))
    recipient = bob.credentials
    done = trio.Event()
    async with _connected(target, alice.credentials) as sender, \
            _connected(target, recipient) as receiver:
        async def receive() -> None:
            received = 0
            async for delivery in receiver.deliveries():
                if isinstance(delivery, Deliver):
                    receiver.acknowledge(delivery.envelope_id)
                    received += 1
                    if received == messages:
                        done.set()
                        return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            started = time.perf_counter()
            for _ in range(messages):
                await sender.send(recipient.user_id, {recipient.device_id: content},
                                  client_message_id=secrets.randbelow(2**63))
            await done.wait()
            return time.perf_counter() - started


async def messenger_cost(target: Target, *, runs: int, messages: int, size: int,
                         time_limit: float) -> dict[str, Any]:
    """``runs`` rounds of an encrypted then a plaintext run; each run within ``time_limit``."""
    rates: dict[str, list[float]] = {"encrypted": [], "sealed": [], "plaintext": []}
    alice_credentials, bob_credentials = await target.provisioner.provision(2)
    with tempfile.TemporaryDirectory(prefix="bench-profiles-") as temporary:
        alice = _device(alice_credentials, Path(temporary) / "A", target)
        bob = _device(bob_credentials, Path(temporary) / "B", target)
        with trio.fail_after(time_limit):
            await _encrypted_run(target, alice, bob, WARM_UP_MESSAGES, size)
        for run in range(1, runs + 1):
            for kind, measure in (("encrypted", _encrypted_run), ("sealed", _sealed_run),
                                  ("plaintext", _plaintext_run)):
                with trio.fail_after(time_limit):
                    seconds = await measure(target, alice, bob, messages, size)
                rates[kind].append(round(messages / seconds, 1))
                print(f"run {run} {kind}: {messages / seconds:.1f} messages/s",
                      file=sys.stderr, flush=True)
    return {"scenario": "messenger", "runs": runs, "messages": messages, "size": size,
            "encrypted_per_second": rates["encrypted"],
            "sealed_per_second": rates["sealed"],
            "plaintext_per_second": rates["plaintext"],
            "median_encrypted_per_second": round(statistics.median(rates["encrypted"]), 1),
            "median_sealed_per_second": round(statistics.median(rates["sealed"]), 1),
            "median_plaintext_per_second": round(statistics.median(rates["plaintext"]), 1),
            "errors": 0}
