"""Sealed sends on a real relay over real QUIC, with a real SQLite file: what is delivered,
what is refused, and what the relay keeps (nothing of the sender)."""

from __future__ import annotations

import secrets

import pytest
from prometheus_client import generate_latest

from client.connection import RelayError
from enrolment.sms import SmsOutcomes
from relay.sealed import TOKEN_REFUSED_REASON
from relay.telemetry import relay_registry
from tests.conftest import RelayUnderTest, declare, enrol
from tests.sealed_support import (
    anonymous,
    assert_no_row_links,
    dump_sqlite,
    mentions,
    receive,
    token_and_hash,
)
from wire.catalogue import ErrorCode
from wire.limits import MAX_FRAME_SIZE_BEFORE_AUTHENTICATION

PHONE_A, PHONE_B, PHONE_C = "+33612345678", "+33698765432", "+33611111111"


async def test_a_sealed_send_from_an_anonymous_connection_is_delivered_without_sender(
        relay: RelayUnderTest, capsys: pytest.CaptureFixture[str]) -> None:
    alice, bob = await enrol(relay, PHONE_A), await enrol(relay, PHONE_B)
    token, token_hash = token_and_hash()
    async with relay.connect() as bob_client:
        await bob_client.authenticate(bob.user_id, bob.device_id, bob.key)
        await bob_client.set_delivery_token(token_hash)
    capsys.readouterr()  # what follows is the sealed send's part of the log
    message_id = secrets.token_bytes(16)
    async with anonymous(relay) as sealed:
        await sealed.sealed_send(bob.user_id, {bob.device_id: b"sealed envelope"},
                                 client_message_id=message_id, delivery_token=token)
        # A re-send (a lost answer) is accepted again and stored once.
        await sealed.sealed_send(bob.user_id, {bob.device_id: b"sealed envelope"},
                                 client_message_id=message_id, delivery_token=token)
    rows = dump_sqlite(relay.data_dir / "relay.db")
    assert_no_row_links(rows, alice.user_id, bob.user_id)
    [envelope] = [row for row in rows["envelopes"] if mentions(row, bob.user_id)]
    assert b"sealed envelope" in envelope
    async with relay.connect() as bob_client:
        await bob_client.authenticate(bob.user_id, bob.device_id, bob.key)
        [delivered] = await receive(bob_client, 1)
    assert delivered.sealed and delivered.ciphertext == b"sealed envelope"
    assert delivered.sender_user_id is None and delivered.sender_device_id is None
    logs = capsys.readouterr()
    assert "device_authenticated" in logs.out + logs.err  # the relay's log was captured
    for line in (logs.out + logs.err).splitlines():
        assert alice.user_id not in line
        assert PHONE_A not in line
    metrics = relay.running.context.metrics.sealed
    assert metrics["accepted"] == 1 and metrics["duplicate"] == 1
    scraped = generate_latest(relay_registry(relay.running.context, SmsOutcomes())).decode()
    assert 'cryptopass_sealed_sender_total{outcome="accepted"} 1.0' in scraped
    for secret in (alice.user_id, bob.user_id, PHONE_A, PHONE_B):
        assert secret not in scraped


async def test_every_authorisation_refusal_is_one_answer(relay: RelayUnderTest) -> None:
    bob, carol = await enrol(relay, PHONE_B), await enrol(relay, PHONE_C)
    token, token_hash = token_and_hash()
    async with relay.connect() as bob_client:
        await bob_client.authenticate(bob.user_id, bob.device_id, bob.key)
        await bob_client.set_delivery_token(token_hash)
    answers = []
    async with anonymous(relay) as sealed:
        for recipient, device_id, shown in (
                (bob.user_id, bob.device_id, secrets.token_bytes(16)),  # a wrong token
                (bob.user_id, bob.device_id, None),  # no token
                (carol.user_id, carol.device_id, token),  # no token registered: refused
                ("u-nobody", 1, token)):  # no such user
            with pytest.raises(RelayError) as refused:
                await sealed.sealed_send(recipient, {device_id: b"x"},
                                         client_message_id=secrets.token_bytes(16),
                                         delivery_token=shown)
            answers.append((refused.value.code, refused.value.reason))
    assert len(set(answers)) == 1
    assert answers[0][0] is ErrorCode.DELIVERY_TOKEN_REFUSED
    assert relay.running.context.metrics.sealed["token_refused"] == 4


async def test_a_rotated_token_is_refused_and_the_new_one_accepted(relay: RelayUnderTest) -> None:
    bob = await enrol(relay, PHONE_B)
    old, old_hash = token_and_hash()
    new, new_hash = token_and_hash()
    async with relay.connect() as bob_client:
        await bob_client.authenticate(bob.user_id, bob.device_id, bob.key)
        await bob_client.set_delivery_token(old_hash)
        async with anonymous(relay) as sealed:
            await sealed.sealed_send(bob.user_id, {bob.device_id: b"one"},
                                     client_message_id=secrets.token_bytes(16),
                                     delivery_token=old)
            await bob_client.set_delivery_token(new_hash)
            with pytest.raises(RelayError) as refused:
                await sealed.sealed_send(bob.user_id, {bob.device_id: b"two"},
                                         client_message_id=secrets.token_bytes(16),
                                         delivery_token=old)
            assert refused.value.code is ErrorCode.DELIVERY_TOKEN_REFUSED
            await sealed.sealed_send(bob.user_id, {bob.device_id: b"three"},
                                     client_message_id=secrets.token_bytes(16),
                                     delivery_token=new)
        received = await receive(bob_client, 2)
    assert [delivery.ciphertext for delivery in received] == [b"one", b"three"]


async def test_organisation_mode_needs_an_authenticated_sender_and_stores_none(
        relay: RelayUnderTest) -> None:
    alice, bob = await enrol(relay, PHONE_A), await enrol(relay, PHONE_B)
    async with relay.connect() as bob_client:
        await bob_client.authenticate(bob.user_id, bob.device_id, bob.key)
        await bob_client.set_delivery_token(None, mode="organisation")
    async with anonymous(relay) as sealed:  # tokens are off, and this one names nobody
        with pytest.raises(RelayError) as refused:
            await sealed.sealed_send(bob.user_id, {bob.device_id: b"x"},
                                     client_message_id=secrets.token_bytes(16),
                                     delivery_token=None)
        assert refused.value.code is ErrorCode.DELIVERY_TOKEN_REFUSED
    async with relay.connect() as alice_client:
        await alice_client.authenticate(alice.user_id, alice.device_id, alice.key)
        await alice_client.sealed_send(bob.user_id, {bob.device_id: b"from a colleague"},
                                       client_message_id=secrets.token_bytes(16),
                                       delivery_token=None)
    assert_no_row_links(dump_sqlite(relay.data_dir / "relay.db"), alice.user_id, bob.user_id)
    async with relay.connect() as bob_client:
        await bob_client.authenticate(bob.user_id, bob.device_id, bob.key)
        [delivered] = await receive(bob_client, 1)
    assert delivered.sealed and delivered.ciphertext == b"from a colleague"


async def test_an_identified_send_still_names_its_sender(relay: RelayUnderTest) -> None:
    alice, bob = await enrol(relay, PHONE_A), await enrol(relay, PHONE_B)
    async with relay.connect() as alice_client:
        await alice_client.authenticate(alice.user_id, alice.device_id, alice.key)
        await alice_client.send(bob.user_id, {bob.device_id: b"hello"}, client_message_id=1)
    async with relay.connect() as bob_client:
        await bob_client.authenticate(bob.user_id, bob.device_id, bob.key)
        [delivered] = await receive(bob_client, 1)
    assert not delivered.sealed
    assert (delivered.sender_user_id, delivered.sender_device_id) == (alice.user_id,
                                                                     alice.device_id)


async def test_a_sealed_send_must_address_every_device(relay: RelayUnderTest) -> None:
    bob = await enrol(relay, PHONE_B)
    token, token_hash = token_and_hash()
    async with relay.connect() as bob_client:
        await bob_client.authenticate(bob.user_id, bob.device_id, bob.key)
        await bob_client.set_delivery_token(token_hash)
    async with anonymous(relay) as sealed:
        with pytest.raises(RelayError) as refused:
            await sealed.sealed_send(bob.user_id, {bob.device_id + 1: b"x"},
                                     client_message_id=secrets.token_bytes(16),
                                     delivery_token=token)
    assert refused.value.code is ErrorCode.MISMATCHED_DEVICES
    assert refused.value.error.missing_devices == (bob.device_id,)


async def test_an_anonymous_connection_refuses_to_authenticate(relay: RelayUnderTest) -> None:
    alice = await enrol(relay, PHONE_A)
    async with anonymous(relay) as sealed:
        with pytest.raises(RuntimeError, match="never authenticates"):
            await sealed.authenticate(alice.user_id, alice.device_id, alice.key)
        keys = await sealed.get_sender_keys()
    assert len(keys) == 1 and keys[0].not_after_ms is None


async def test_an_anonymous_sealed_send_is_bounded_by_the_frame_limit_before_authentication(
        relay: RelayUnderTest) -> None:
    alice, bob = await enrol(relay, PHONE_A), await enrol(relay, PHONE_B)
    token, token_hash = token_and_hash()
    async with relay.connect() as bob_client:
        await bob_client.authenticate(bob.user_id, bob.device_id, bob.key)
        await bob_client.set_delivery_token(token_hash)
    large = {bob.device_id: b"s" * MAX_FRAME_SIZE_BEFORE_AUTHENTICATION}
    async with anonymous(relay) as sealed:
        with pytest.raises(RelayError) as refused:
            await sealed.sealed_send(bob.user_id, large, delivery_token=token,
                                     client_message_id=secrets.token_bytes(16))
        assert refused.value.code is ErrorCode.FRAME_TOO_LARGE
        # The connection goes on: a small one passes.
        await sealed.sealed_send(bob.user_id, {bob.device_id: b"small"}, delivery_token=token,
                                 client_message_id=secrets.token_bytes(16))
    # On an authenticated connection the full frame size applies, and still no sender is kept.
    async with relay.connect() as alice_client:
        await alice_client.authenticate(alice.user_id, alice.device_id, alice.key)
        await alice_client.sealed_send(bob.user_id, large, delivery_token=token,
                                       client_message_id=secrets.token_bytes(16))
    assert_no_row_links(dump_sqlite(relay.data_dir / "relay.db"), alice.user_id, bob.user_id)


async def test_organisation_mode_refuses_a_device_of_another_organisation(
        relay: RelayUnderTest) -> None:
    outsider_phone = "+33600000009"
    await declare(relay.data_dir, "elsewhere", outsider_phone)
    outsider, bob = await enrol(relay, outsider_phone), await enrol(relay, PHONE_B)
    async with relay.connect() as bob_client:
        await bob_client.authenticate(bob.user_id, bob.device_id, bob.key)
        await bob_client.set_delivery_token(None, mode="organisation")
    async with relay.connect() as outsider_client:
        await outsider_client.authenticate(outsider.user_id, outsider.device_id, outsider.key)
        with pytest.raises(RelayError) as refused:
            await outsider_client.sealed_send(bob.user_id, {bob.device_id: b"x"},
                                              client_message_id=secrets.token_bytes(16),
                                              delivery_token=None)
    assert refused.value.code is ErrorCode.DELIVERY_TOKEN_REFUSED
    assert refused.value.reason == TOKEN_REFUSED_REASON  # the same answer as a bad token
    assert not [row for row in dump_sqlite(relay.data_dir / "relay.db")["envelopes"]
                if mentions(row, bob.user_id)]
