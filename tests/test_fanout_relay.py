"""MULTI_SEND through a real relay over QUIC on loopback, with a real SQLite file.

One upload reaches every addressed device exactly once, with the shared ciphertext, whether the
device is connected (the live pump) or connects later (its backlog); the store keeps the shared
ciphertext once and drops it with the last acknowledgement; refusals store nothing.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from client.connection import MismatchedDevices, RelayClient, RelayError
from relay.fanout import budget_cost
from relay.send_budgets import SendBudgets
from relay.server import RunningRelay, serve
from relay.settings import RelaySettings
from tests.conftest import EnrolledDevice, RelayUnderTest, SmsInbox, declare, enrol, link_device
from wire.frames import Deliver, ErrorCode, QueueEmpty
from wire.group_frames import (
    MAX_MULTI_SEND_DEVICES,
    MultiSend,
    MultiSendRecipient,
    UserDevices,
)
from wire.limits import MAX_DEVICES_PER_SEND

WAIT_S = 120
"""Bound on anything that could hang (50 connections on a loaded machine), not a timing
assertion."""
SHARED = bytes(range(256)) * 4  # a 1 KiB group ciphertext
USERS = 11
PHONES = tuple(f"+3361234{index:04d}" for index in range(USERS))


@asynccontextmanager
async def running_relay(settings: RelaySettings) -> AsyncIterator[RelayUnderTest]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await declare(settings.data_dir, "acme", *PHONES, seats=USERS)
    sms = SmsInbox()
    async with trio.open_nursery() as nursery:
        running: RunningRelay = await nursery.start(
            lambda task_status: serve(settings, task_status=task_status, on_sms_sent=sms))
        try:
            yield RelayUnderTest(data_dir=settings.data_dir, running=running, sms=sms)
        finally:
            running.stop()


@asynccontextmanager
async def connected(relay: RelayUnderTest, device: EnrolledDevice) -> AsyncIterator[RelayClient]:
    async with relay.connect() as client:
        await client.authenticate(device.user_id, device.device_id, device.key)
        yield client


def _rows(relay: RelayUnderTest, query: str) -> list[tuple[object, ...]]:
    """Read the relay's SQLite file (WAL: a reader beside the running relay)."""
    with contextlib.closing(sqlite3.connect(relay.data_dir / "relay.db")) as connection:
        return connection.execute(query).fetchall()


def _material(device: EnrolledDevice) -> bytes:
    return f"key material of {device.user_id}/{device.device_id}".encode() * 3  # ~100 bytes


async def _accounts(relay: RelayUnderTest, devices_per_user: list[int]) -> list[
        list[EnrolledDevice]]:
    """One account per entry, with that many devices (the first enrolled, the others linked)."""
    accounts = []
    for phone, count in zip(PHONES, devices_per_user, strict=False):
        first = await enrol(relay, phone)
        accounts.append([first, *[await link_device(relay, first) for _ in range(count - 1)]])
    return accounts


def _recipients(accounts: list[list[EnrolledDevice]]) -> dict[str, dict[int, bytes]]:
    return {devices[0].user_id: {device.device_id: _material(device) for device in devices}
            for devices in accounts}


async def _receive_once(relay: RelayUnderTest, device: EnrolledDevice, *,
                        ready: trio.Event | None, received: dict[tuple[str, int], Deliver],
                        ) -> None:
    """Connect ``device`` and take its one DELIVER: live (``ready`` is set once connected
    with nothing queued) or from its backlog (``ready`` None); acknowledge it and make sure the relay has the acknowledgement."""
    async with connected(relay, device) as client:
        deliveries = client.deliveries()
        first = await anext(deliveries)
        if ready is not None:
            assert isinstance(first, QueueEmpty)  # nothing queued yet: the DELIVER comes live
            ready.set()
            first = await anext(deliveries)
        assert isinstance(first, Deliver), first
        received[device.user_id, device.device_id] = first
        client.acknowledge(first.envelope_id)
        await client.settle()
        if ready is None:
            assert isinstance(await anext(deliveries), QueueEmpty)  # one envelope, no other


async def _fan_out_and_receive(relay: RelayUnderTest, sender: EnrolledDevice,
                               accounts: list[list[EnrolledDevice]]) -> None:
    devices = [device for devices in accounts for device in devices]
    received: dict[tuple[str, int], Deliver] = {}
    live_devices = devices[::2]  # every other device is connected when the send commits
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            readiness = []
            for device in live_devices:
                ready = trio.Event()
                readiness.append(ready)
                nursery.start_soon(functools.partial(_receive_once, relay, device, ready=ready,
                                                     received=received))
            for ready in readiness:
                await ready.wait()
            async with connected(relay, sender) as client:
                assert await client.multi_send(_recipients(accounts), SHARED,
                                               client_message_id=41) is False
                # While it is queued: one shared row counting every device, one envelope each.
                assert _rows(relay, "SELECT remaining, length(payload) FROM shared_payloads") \
                    == [(len(devices), len(SHARED))]
                # A retry is recognised and stores nothing more.
                assert await client.multi_send(_recipients(accounts), SHARED,
                                               client_message_id=41) is True
            for device in devices[1::2]:
                nursery.start_soon(functools.partial(_receive_once, relay, device, ready=None,
                                                     received=received))
    assert sorted(received) == sorted((device.user_id, device.device_id) for device in devices)
    for device in devices:
        deliver = received[device.user_id, device.device_id]
        assert deliver.shared == SHARED
        assert deliver.ciphertext == _material(device)
        assert (deliver.sender_user_id, deliver.sender_device_id, deliver.client_message_id) \
            == (sender.user_id, sender.device_id, 41)
    # Every device acknowledged: the shared ciphertext and the envelopes are gone.
    assert _rows(relay, "SELECT COUNT(*) FROM shared_payloads") == [(0,)]
    assert _rows(relay, "SELECT COUNT(*) FROM envelopes") == [(0,)]
    # And nothing comes again: a fresh connection of each finds its queue empty.
    for device in devices[:3]:
        async with connected(relay, device) as client:
            assert isinstance(await anext(client.deliveries()), QueueEmpty)


async def test_a_multi_send_to_three_devices_reaches_each_once(tmp_path: Path) -> None:
    settings = RelaySettings(data_dir=tmp_path / "relay", listen_port=0)
    async with running_relay(settings) as relay:
        sender, *accounts = await _accounts(relay, [1, 1, 2])
        await _fan_out_and_receive(relay, sender[0], accounts)


async def test_a_multi_send_to_fifty_devices_reaches_each_once(tmp_path: Path) -> None:
    settings = RelaySettings(data_dir=tmp_path / "relay", listen_port=0)
    async with running_relay(settings) as relay:
        # Ten users of five devices each (the most an account may hold), and the sender.
        sender, *accounts = await _accounts(relay, [1, *[5] * 10])
        assert sum(map(len, accounts)) == 50
        await _fan_out_and_receive(relay, sender[0], accounts)


async def test_mismatched_devices_name_each_user_and_store_nothing(tmp_path: Path) -> None:
    settings = RelaySettings(data_dir=tmp_path / "relay", listen_port=0)
    async with running_relay(settings) as relay:
        sender, alice, bob = await _accounts(relay, [1, 2, 1])
        recipients = _recipients([alice, bob])
        del recipients[alice[0].user_id][alice[1].device_id]
        recipients[bob[0].user_id][99] = b"for a device that does not exist"
        async with connected(relay, sender[0]) as client:
            with pytest.raises(MismatchedDevices) as refused:
                await client.multi_send(recipients, SHARED, client_message_id=1)
            assert refused.value.users == {alice[0].user_id: ((alice[1].device_id,), ()),
                                           bob[0].user_id: ((), (99,))}
            assert _rows(relay, "SELECT COUNT(*) FROM shared_payloads") == [(0,)]
            assert _rows(relay, "SELECT COUNT(*) FROM envelopes") == [(0,)]
            # The same id, corrected, is a new message: nothing was remembered.
            assert await client.multi_send(_recipients([alice, bob]), SHARED,
                                           client_message_id=1) is False


async def test_a_full_queue_refuses_the_whole_multi_send(tmp_path: Path) -> None:
    settings = RelaySettings(data_dir=tmp_path / "relay", listen_port=0, max_queue_depth=2)
    async with running_relay(settings) as relay:
        sender, alice, bob = await _accounts(relay, [1, 2, 1])
        async with connected(relay, sender[0]) as client:
            for client_message_id in (1, 2):
                await client.send(bob[0].user_id, {bob[0].device_id: b"earlier"},
                                  client_message_id=client_message_id)
            with pytest.raises(RelayError) as refused:
                await client.multi_send(_recipients([alice, bob]), SHARED, client_message_id=3)
        assert refused.value.code is ErrorCode.QUEUE_FULL
        assert refused.value.error.users == (
            UserDevices(user_id=bob[0].user_id, full_devices=(bob[0].device_id,)),)
        assert _rows(relay, "SELECT COUNT(*) FROM shared_payloads") == [(0,)]
        assert _rows(relay, "SELECT COUNT(*) FROM envelopes") == [(2,)]  # the SENDs only


async def test_the_send_budget_counts_the_shared_ciphertext_once(tmp_path: Path) -> None:
    # A byte budget that one upload of the shared ciphertext and the key material fits, but
    # that a copy of it per device (three) would not.
    settings = RelaySettings(data_dir=tmp_path / "relay", listen_port=0,
                             send_bytes_per_minute=2 * len(SHARED))
    async with running_relay(settings) as relay:
        sender, alice, bob = await _accounts(relay, [1, 2, 1])
        recipients = _recipients([alice, bob])
        assert len(SHARED) + sum(map(len, (material for devices in recipients.values()
                                           for material in devices.values()))) \
            < settings.send_bytes_per_minute < 3 * len(SHARED)
        async with connected(relay, sender[0]) as client:
            await client.multi_send(recipients, SHARED, client_message_id=1)
            with pytest.raises(RelayError) as refused:
                await client.multi_send(recipients, SHARED, client_message_id=2)
        assert refused.value.code is ErrorCode.RATE_LIMITED
        assert refused.value.retry_after_ms is not None
        assert _rows(relay, "SELECT COUNT(*) FROM shared_payloads") == [(1,)]
        assert relay.running.context.metrics.multi_sends == {"accepted": 1, "rate_limited": 1}


def test_a_multi_send_costs_the_sends_its_envelopes_would_take_and_its_upload() -> None:
    def frame(devices: int) -> MultiSend:
        users = -(-devices // MAX_DEVICES_PER_SEND)
        return MultiSend(client_message_id=1, shared=SHARED, recipients=tuple(
            MultiSendRecipient(user_id=f"u-{user}", devices={
                device: b"k" * 100 for device in range(
                    1, min(MAX_DEVICES_PER_SEND, devices - user * MAX_DEVICES_PER_SEND) + 1)})
            for user in range(users)))

    assert budget_cost(frame(3)) == (1, len(SHARED) + 3 * 100)
    assert budget_cost(frame(MAX_DEVICES_PER_SEND)) == (1, len(SHARED) + 16 * 100)
    assert budget_cost(frame(50)) == (4, len(SHARED) + 50 * 100)
    assert budget_cost(frame(MAX_MULTI_SEND_DEVICES))[0] == 63
    # The budget takes that many SENDs at once, or none.
    budgets = SendBudgets(messages=5, payload_bytes=10**9)
    assert budgets.take(("u", 1), payload_bytes=1, messages=4, now=0) is None
    assert budgets.take(("u", 1), payload_bytes=1, messages=4, now=0) == 36_000
    assert budgets.take(("u", 1), payload_bytes=1, now=0) is None
