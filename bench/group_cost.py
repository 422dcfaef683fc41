"""``live --group N``: what one group message costs, against the same text sent pairwise.

N bench devices (N users, one device each) run the end-to-end library (`client.messenger`).
The warm-up: device 0 creates a group of all N (lookups, bundles, PQXDH, its sender key
handed to every member pairwise); every member reads it and answers device 0 once,
pairwise, so that device 0's sessions are settled as in a group whose members talk (until
a peer answers, every message of a session carries its 1.6 KB PQXDH header, the per-device
records of a group message included). Then, with the members offline so that nothing but
the sender runs in this process:

- **group**: ``messages`` group texts, each ONE MULTI_SEND (`client.group_messaging`);
- **pairwise**: the same texts sent to each member one by one (``send_text``: one SEND per
  member, each a Double Ratchet ciphertext).

Both go identified (not sealed), so that like is measured against like. For each: the
sender's CPU (this process), the payload bytes it uploaded (ciphertexts,
shared payload and per-device key material: what the frames carry), the relay's CPU to
accept them (a relay the bench started) and the bytes its SQLite store then holds for them
(envelope ciphertexts and shared payloads). The members then connect with the state they
had and read everything, which checks that every message arrived and opened.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack, aclosing
from pathlib import Path
from typing import Any

import trio

from bench.live import connect_devices
from bench.provision import BenchDevice
from bench.spawn import SpawnedRelay, cpu_seconds
from bench.target import Target
from client.connection import RelayClient, open_client_endpoint
from client.contacts import Contact
from client.group_messaging import create_group, send_group_text
from client.groups import GroupBook
from client.messenger import Messenger
from client.profile import Profile
from client.sealed import SealedSettings
from crypto.device import DeviceAddress, DeviceCrypto
from crypto.primitives import SystemRandom, ed25519_keypair_from_private

__all__ = ["MAX_GROUP_DEVICES", "group_cost"]

MAX_GROUP_DEVICES = 60
"""Members ``--group`` makes at most: the sender looks each up once (LOOKUP), and the relay
allows 60 look-ups per device per minute (relay/limits.py LOOKUPS_PER_MINUTE)."""
GROUP_NAME = "bench"


class _Member:
    """One bench device's end-to-end state, kept across its connections."""

    def __init__(self, device: BenchDevice, profiles: Path, relay: str,
                 ca: Path | None) -> None:
        self.device = device
        self.profile = Profile(profiles / device.user_id)  # names the device; never written
        self.profile.data.relay, self.profile.data.ca = relay, str(ca) if ca else None
        self.profile.data.phone, self.profile.data.user_id = device.phone, device.user_id
        self.profile.data.device_id = device.device_id
        self.crypto = DeviceCrypto.create(
            ed25519_keypair_from_private(device.seed), SystemRandom(),
            address=DeviceAddress(user_id=device.user_id, device_id=device.device_id),
            now_ms=time.time_ns() // 1_000_000)
        self.contacts: dict[str, Contact] = {}
        self.groups = GroupBook()
        self.sealed = SealedSettings()  # its profile key, kept across its connections

    def attach(self, client: RelayClient) -> Any:
        return Messenger.attach(client, self.profile, self.crypto, self.contacts,
                                persist_state=False, groups=self.groups, sealed=self.sealed,
                                identity=ed25519_keypair_from_private(self.device.seed),
                                seal=False)  # identified: like against like


async def _online(members: Sequence[_Member], target: Target, work: Any) -> Any:
    """Connect ``members``, attach their messengers, run ``work(messengers)``, disconnect."""
    async with AsyncExitStack() as stack:
        endpoint = await stack.enter_async_context(open_client_endpoint())
        clients = await connect_devices(stack, endpoint, target.host, target.port, target.ca,
                                        [member.device for member in members])
        messengers = [await stack.enter_async_context(member.attach(client))
                      for member, client in zip(members, clients, strict=True)]
        return await work(messengers)


class _Uploads:
    """Counts the payload bytes a client uploads through ``send`` and ``multi_send``."""

    def __init__(self, client: RelayClient) -> None:
        self.bytes = 0
        send, multi_send = client.send, client.multi_send

        async def counted_send(user_id: str, payloads: Mapping[int, bytes],
                               **options: Any) -> bool:
            self.bytes += sum(map(len, payloads.values()))
            return await send(user_id, payloads, **options)

        async def counted_multi_send(recipients: Mapping[str, Mapping[int, bytes]],
                                     shared: bytes, **options: Any) -> bool:
            self.bytes += len(shared) + sum(len(material) for devices in recipients.values()
                                            for material in devices.values())
            return await multi_send(recipients, shared, **options)

        client.send = counted_send  # type: ignore[method-assign, assignment]
        client.multi_send = counted_multi_send  # type: ignore[method-assign]


def _stored_bytes(target: Target) -> int | None:
    """Envelope ciphertexts and shared payloads the relay's SQLite store holds."""
    if not isinstance(target.server, SpawnedRelay):
        return None
    database = target.server.data_dir / "relay.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        envelopes = connection.execute(
            "SELECT coalesce(sum(length(ciphertext)), 0) FROM envelopes").fetchone()[0]
        shared = connection.execute(
            "SELECT coalesce(sum(length(payload)), 0) FROM shared_payloads").fetchone()[0]
    return int(envelopes) + int(shared)


def _text(size: int, index: int) -> str:
    prefix = f"{index:06d} "
    return prefix + "x" * max(0, size - len(prefix))


async def group_cost(target: Target, *, group: int, messages: int,
                     size: int) -> dict[str, Any]:
    """Measure ``messages`` group texts of ``size`` bytes to ``group`` devices, then the same
    pairwise; see the module's docstring."""
    if not 2 <= group <= MAX_GROUP_DEVICES:
        raise ValueError(f"--group is 2 to {MAX_GROUP_DEVICES} devices")
    devices = await target.provisioner.provision(group)
    relay = f"{target.host}:{target.port}"
    with tempfile.TemporaryDirectory(prefix="bench-group-") as scratch:
        members = [_Member(device, Path(scratch), relay, target.ca) for device in devices]
        sender, others = members[0], members[1:]

        async def publish(_: list[Messenger]) -> None:
            return None  # attaching published the prekeys

        await _online(others, target, publish)

        async def create(messengers: list[Messenger]) -> None:
            await create_group(messengers[0], GROUP_NAME,
                               [member.device.phone for member in others])

        await _online([sender], target, create)
        warm = await _online(others, target, _read_all)

        async def answer(messengers: list[Messenger]) -> None:
            for messenger in messengers:
                await messenger.send_text(sender.device.phone, "settled")

        await _online(others, target, answer)
        warm_up = await _online([sender], target, _read_all)
        measured: dict[str, dict[str, Any]] = {}

        async def send_both(messengers: list[Messenger]) -> None:
            [messenger] = messengers
            uploads = _Uploads(messenger.client)
            for kind in ("group", "pairwise"):
                stored_before, uploaded_before = _stored_bytes(target), uploads.bytes
                relay_before = (cpu_seconds(target.server.pid)
                                if target.server is not None else None)
                cpu_before = time.process_time()
                for index in range(messages):
                    if kind == "group":
                        await send_group_text(messenger, GROUP_NAME, _text(size, index))
                    else:
                        for member in others:
                            await messenger.send_text(member.device.phone, _text(size, index))
                cpu = time.process_time() - cpu_before
                stored_after = _stored_bytes(target)
                measured[kind] = {
                    "sender_cpu_us_per_message": round(cpu / messages * 1e6, 1),
                    "bytes_uploaded_per_message": round(
                        (uploads.bytes - uploaded_before) / messages),
                    "relay_cpu_us_per_message": (
                        None if relay_before is None or target.server is None else round(
                            (cpu_seconds(target.server.pid) - relay_before) / messages * 1e6,
                            1)),
                    "relay_bytes_stored_per_message": (
                        None if stored_before is None or stored_after is None
                        else round((stored_after - stored_before) / messages))}

        await _online([sender], target, send_both)
        read = await _online(others, target, _read_all)
    expected = {"group": messages * len(others), "pairwise": messages * len(others)}
    errors = (sum(abs(read[kind] - expected[kind]) for kind in expected) + read["unreadable"]
              + warm["unreadable"] + warm_up["unreadable"]
              + abs(warm_up["pairwise"] - len(others)))
    ratios = {name: (round(measured["pairwise"][name] / measured["group"][name], 1)
                     if measured["group"][name] else None)
              for name in measured["group"] if measured["group"][name] is not None}
    return {"scenario": "live --group", "group_devices": group, "messages": messages,
            "size": size, "group": measured["group"], "pairwise": measured["pairwise"],
            "pairwise_over_group": ratios, "delivered": read, "expected": expected,
            "errors": errors}


async def _read_all(messengers: list[Messenger]) -> dict[str, int]:
    counts = {"group": 0, "pairwise": 0, "unreadable": 0}

    async def read(messenger: Messenger) -> None:
        async with aclosing(messenger.messages(stop_when_empty=True)) as received:
            async for message in received:
                if message.content is None:
                    counts["unreadable"] += 1
                else:
                    counts["group" if message.group is not None else "pairwise"] += 1

    async with trio.open_nursery() as nursery:
        for messenger in messengers:
            nursery.start_soon(read, messenger)
    return counts
