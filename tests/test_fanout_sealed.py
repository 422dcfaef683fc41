"""SEALED_MULTI_SEND on a real relay over QUIC, with a real SQLite file: one sealed upload
reaches every device of several users, each admitting it with its own delivery token; the
relay stores the shared ciphertext once and no sender anywhere; one refusal stores nothing."""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from pathlib import Path

import pytest

from client.connection import MismatchedDevices, RelayError
from relay.limits import sender_queue_share
from relay.settings import RelaySettings
from tests.conftest import EnrolledDevice, RelayUnderTest, enrol, link_device
from tests.sealed_support import anonymous, assert_no_row_links, dump_sqlite, receive
from tests.sealed_support import token_and_hash as new_token
from wire.catalogue import ErrorCode

PHONE_A, PHONE_B, PHONE_C = "+33612345678", "+33698765432", "+33611111111"
SHARED = b"sealed group ciphertext" * 40


@pytest.fixture
def relay_settings(tmp_path: Path) -> RelaySettings:
    # Queues of 1000 envelopes: the per-sender share is its floor, 100 (relay.limits), which
    # a test reaches within the sealed budgets per minute.
    return RelaySettings(data_dir=tmp_path / "relay", listen_port=0, max_queue_depth=1000)


def _count(relay: RelayUnderTest, table: str) -> int:
    with contextlib.closing(sqlite3.connect(relay.data_dir / "relay.db")) as connection:
        row = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        return int(row[0])


async def _register(relay: RelayUnderTest, device: EnrolledDevice, token_hash: bytes) -> None:
    async with relay.connect() as client:
        await client.authenticate(device.user_id, device.device_id, device.key)
        await client.set_delivery_token(token_hash)


async def _recipients(relay: RelayUnderTest) -> tuple[
        EnrolledDevice, list[EnrolledDevice], dict[str, bytes]]:
    """Alice (the sender), Bob with two devices and Carol with one, each with a token."""
    alice, bob, carol = (await enrol(relay, PHONE_A), await enrol(relay, PHONE_B),
                         await enrol(relay, PHONE_C))
    bob_2 = await link_device(relay, bob)
    tokens = {}
    for user in (bob, carol):
        token, token_hash = new_token()
        await _register(relay, user, token_hash)
        tokens[user.user_id] = token
    return alice, [bob, bob_2, carol], tokens


def _material(devices: list[EnrolledDevice]) -> dict[str, dict[int, bytes]]:
    recipients: dict[str, dict[int, bytes]] = {}
    for device in devices:
        recipients.setdefault(device.user_id, {})[device.device_id] = (
            f"sealed key {device.user_id}/{device.device_id}".encode())
    return recipients


async def test_a_sealed_multi_send_reaches_every_device_and_names_no_sender(
        relay: RelayUnderTest) -> None:
    alice, devices, tokens = await _recipients(relay)
    message_id = secrets.token_bytes(16)
    async with anonymous(relay) as sealed:
        await sealed.sealed_multi_send(_material(devices), SHARED, delivery_tokens=tokens,
                                       client_message_id=message_id)
        # A re-send (a lost answer) is accepted again and stored once.
        await sealed.sealed_multi_send(_material(devices), SHARED, delivery_tokens=tokens,
                                       client_message_id=message_id)
    assert _count(relay, "shared_payloads") == 1
    assert _count(relay, "envelopes") == 3
    rows = dump_sqlite(relay.data_dir / "relay.db")
    for device in devices:
        assert_no_row_links(rows, alice.user_id, device.user_id)
    for device in devices:
        async with relay.connect() as client:
            await client.authenticate(device.user_id, device.device_id, device.key)
            [delivered] = await receive(client, 1)
            await client.settle()
        assert delivered.sealed
        assert delivered.sender_user_id is None and delivered.sender_device_id is None
        assert delivered.shared == SHARED
        assert delivered.ciphertext == _material([device])[device.user_id][device.device_id]
    assert _count(relay, "shared_payloads") == 0
    assert relay.running.context.metrics.multi_sends["sealed_accepted"] == 1
    assert relay.running.context.metrics.multi_sends["sealed_duplicate"] == 1


async def test_one_bad_token_refuses_the_whole_send_and_stores_nothing(
        relay: RelayUnderTest) -> None:
    _, devices, tokens = await _recipients(relay)
    carol = devices[2]
    for wrong in ({**tokens, carol.user_id: secrets.token_bytes(16)},  # a wrong token
                  {**tokens, carol.user_id: None},  # none, and Carol is not in organisation mode
                  tokens):  # right tokens, but a made-up recipient among them
        recipients = _material(devices)
        if wrong is tokens:
            recipients["u-made-up"] = {1: b"key"}
        async with anonymous(relay) as sealed:
            with pytest.raises(RelayError) as refused:
                await sealed.sealed_multi_send(recipients, SHARED, delivery_tokens=wrong,
                                               client_message_id=secrets.token_bytes(16))
        assert refused.value.code is ErrorCode.DELIVERY_TOKEN_REFUSED
        assert refused.value.error.users == ()  # it names nobody
    assert _count(relay, "shared_payloads") == 0
    assert _count(relay, "envelopes") == 0


async def test_a_sealed_multi_send_must_address_every_device(relay: RelayUnderTest) -> None:
    _, devices, tokens = await _recipients(relay)
    bob, bob_2 = devices[0], devices[1]
    async with anonymous(relay) as sealed:
        with pytest.raises(MismatchedDevices) as refused:
            await sealed.sealed_multi_send(_material([bob, devices[2]]), SHARED,
                                           delivery_tokens=tokens,
                                           client_message_id=secrets.token_bytes(16))
    assert refused.value.users == {bob.user_id: ((bob_2.device_id,), ())}
    assert _count(relay, "envelopes") == 0


async def test_organisation_mode_admits_an_authenticated_sender_of_the_organisation(
        relay: RelayUnderTest) -> None:
    alice, devices, tokens = await _recipients(relay)
    carol = devices[2]
    async with relay.connect() as client:  # Carol switches tokens off
        await client.authenticate(carol.user_id, carol.device_id, carol.key)
        await client.set_delivery_token(None, mode="organisation")
    without_carols_token = {**tokens, carol.user_id: None}
    # Not from an anonymous connection: it has no organisation to check.
    async with anonymous(relay) as sealed:
        with pytest.raises(RelayError) as refused:
            await sealed.sealed_multi_send(_material(devices), SHARED,
                                           delivery_tokens=without_carols_token,
                                           client_message_id=secrets.token_bytes(16))
    assert refused.value.code is ErrorCode.DELIVERY_TOKEN_REFUSED
    assert _count(relay, "envelopes") == 0
    # From Alice's authenticated connection (same organisation): Bob by token, Carol by
    # organisation, and still no sender stored.
    async with relay.connect() as client:
        await client.authenticate(alice.user_id, alice.device_id, alice.key)
        await client.sealed_multi_send(_material(devices), SHARED,
                                       delivery_tokens=without_carols_token,
                                       client_message_id=secrets.token_bytes(16))
    assert _count(relay, "envelopes") == 3
    rows = dump_sqlite(relay.data_dir / "relay.db")
    for device in devices:
        assert_no_row_links(rows, alice.user_id, device.user_id)


async def test_the_queue_share_is_counted_by_connection_and_by_token(
        relay: RelayUnderTest) -> None:
    # Sealed sends name no sender, so their share of each recipient device's queue is counted,
    # as SEALED_SEND's, by the connection (in memory) and by the token shown (in the store).
    _, devices, tokens = await _recipients(relay)
    settings = relay.running.context.settings
    share = sender_queue_share(settings.max_queue_depth, settings.sender_queue_share_percent)
    async with anonymous(relay) as sealed:
        for _ in range(share):
            await sealed.sealed_multi_send(_material(devices), SHARED, delivery_tokens=tokens,
                                           client_message_id=secrets.token_bytes(16))
        with pytest.raises(RelayError) as by_connection:
            await sealed.sealed_multi_send(_material(devices), SHARED, delivery_tokens=tokens,
                                           client_message_id=secrets.token_bytes(16))
    assert by_connection.value.code is ErrorCode.QUEUE_FULL
    async with anonymous(relay) as sealed:  # a new connection, the same tokens
        with pytest.raises(RelayError) as by_token:
            await sealed.sealed_multi_send(_material(devices), SHARED, delivery_tokens=tokens,
                                           client_message_id=secrets.token_bytes(16))
    assert by_token.value.code is ErrorCode.QUEUE_FULL
    assert {user.user_id for user in by_token.value.error.users} == set(tokens)
    assert _count(relay, "shared_payloads") == share
    assert _count(relay, "envelopes") == share * len(devices)
