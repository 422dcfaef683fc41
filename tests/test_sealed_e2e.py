"""Sealed sender through the client library and a real relay on loopback (QUIC, SQLite file).

Alice writes to Bob first: she holds no token of his, so that message goes identified and
carries her profile key. Bob's answer goes sealed, over a connection that never authenticated;
Alice sees Bob as its sender, while the relay's store held the envelope with no sender. Then
the hostile cases: envelopes built here with a forged, an expired and an other-identity
certificate reach Alice and are refused with a warning, never shown as messages; and a sealed
send repeated after a lost answer is delivered once.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from pathlib import Path
from typing import cast

import structlog
import trio

from client.connection import RelayClient
from client.messenger import Messenger, ReceivedMessage
from client.profile import Profile
from client.sealed import (
    SealedSettings,
    current_certificate,
    refresh_relay_keys,
    seal_payloads,
    send_sealed,
)
from crypto.delivery_token import delivery_token
from crypto.device import DeviceAddress
from crypto.primitives import SystemRandom, ed25519_generate, ed25519_keypair_from_private
from crypto.sender_certificate import issue_sender_certificate
from relay.sender_certificates import load_keyring, sender_key_directory
from tests.account_support import TIMEOUT_S, enrolled_profile, linked_profile, received
from tests.conftest import RelayUnderTest
from wire.sealed_frames import SenderKey

ALICE, BOB, CAROL = "+33612345678", "+33698765432", "+33611111111"


async def send_text(profile: Profile, phone: str, text: str) -> bool:
    """Send ``text``; True if it went sealed."""
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(profile) as messenger:
            receipt = await messenger.send_text(phone, text)
    assert receipt.recipient_devices
    return receipt.sealed


def rows_naming(database: Path, *needles: str) -> list[tuple[str, tuple[object, ...]]]:
    """Every row of every table of the relay's SQLite store that names all of ``needles``."""
    found = []
    with sqlite3.connect(database) as connection:
        tables = [name for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                text = " ".join(value.hex() if isinstance(value, bytes) else str(value)
                                for value in row)
                if all(needle in text for needle in needles):
                    found.append((table, row))
    return found


def user_id(profile: Profile) -> str:
    assert profile.data.user_id is not None
    return profile.data.user_id


async def introduced(relay: RelayUnderTest, tmp_path: Path) -> tuple[Profile, Profile]:
    """Alice wrote to Bob (identified, with her profile key), and Bob read it."""
    alice = await enrolled_profile(relay, tmp_path / "alice", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "bob", BOB)
    assert not await send_text(alice, BOB, "hello Bob")  # no token of Bob's: identified
    [message] = await received(bob)
    assert message.content is not None and message.content.text == "hello Bob"
    assert not message.sealed and message.sender == DeviceAddress(user_id(alice), 1)
    return alice, bob


async def test_a_sealed_answer_shows_its_sender_and_the_store_never_names_it(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice, bob = await introduced(relay, tmp_path)
    with structlog.testing.capture_logs() as logs:
        assert await send_text(bob, ALICE, "sealed hello")
    # The relay's log lines of the sealed send name neither user (nor link them).
    assert any(entry.get("event") == "device_authenticated" for entry in logs), logs
    logged = json.dumps(logs, default=str)
    assert user_id(bob) not in logged and user_id(alice) not in logged
    database = relay.data_dir / "relay.db"
    # Stored, not yet delivered: no row of any table names Bob with Alice, or Bob's device
    # with the envelope; the envelope row has no sender.
    assert rows_naming(database, user_id(bob), user_id(alice)) == []
    with sqlite3.connect(database) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(envelopes)")]
        stored = [dict(zip(columns, row, strict=True))
                  for row in connection.execute("SELECT * FROM envelopes")]
    assert len(stored) == 2  # the text, and Bob's profile key (sealed too)
    assert all(row[name] in (None, "", 0) for row in stored
               for name in columns if name.startswith("sender"))
    [message] = await received(alice)
    assert message.sealed and not message.refused
    assert message.sender == DeviceAddress(user_id(bob), 1)
    assert message.content is not None and message.content.text == "sealed hello"
    assert message.content.sender_phone == BOB and message.sender_confirmed
    # And the next message from Alice goes sealed too: Bob's profile key came with his answer.
    assert await send_text(alice, BOB, "sealed back")
    [back] = await received(bob)
    assert back.sealed and back.sender == DeviceAddress(user_id(alice), 1)
    assert rows_naming(database, user_id(bob), user_id(alice)) == []


async def test_an_identified_send_still_works_where_no_token_is_known(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "alice", ALICE)
    carol = await enrolled_profile(relay, tmp_path / "carol", CAROL)
    assert not await send_text(alice, CAROL, "first")
    assert not await send_text(alice, CAROL, "second: Carol shared nothing yet")
    assert [m.content.text for m in await received(carol) if m.content] == [
        "first", "second: Carol shared nothing yet"]


def relay_signing_key(relay: RelayUnderTest) -> tuple[int, bytes]:
    keyring = load_keyring(sender_key_directory(relay.data_dir), now_ms=0, create=False)
    return keyring.signing.key_id, keyring.signing.seed


async def send_hostile(relay: RelayUnderTest, bob: Profile, alice: Profile, *,
                       certificate_for: str, signer: bytes, key_id: int, expires_ms: int,
                       sealer_seed: bytes | None = None) -> None:
    """Bob's client encrypts for Alice as usual; the test seals it with a certificate of its
    own making and sends it sealed with Alice's real token."""
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(bob) as messenger:
            contact = await messenger.contact(ALICE)
            await messenger._ready(contact)
            targets = dict(contact.devices)
            await messenger._start_sessions(contact, targets)
            address = DeviceAddress(contact.user_id, 1)
            inner = messenger.device.encrypt(b"\x80", [address])[address]
            messenger.save()
            identity = messenger.identity if sealer_seed is None else (
                ed25519_keypair_from_private(sealer_seed))
            own_account = messenger.contacts[BOB].account_key
            assert own_account is not None
            certificate = issue_sender_certificate(
                signing_key=signer, key_id=key_id, user_id=certificate_for, device_id=1,
                account_key=own_account, identity_key=identity.public_key,
                expires_ms=expires_ms)
            payloads = seal_payloads({1: inner}, targets, certificate=certificate,
                                     identity=identity)
            assert contact.profile_key is not None
            await send_sealed([("127.0.0.1", relay.port)], relay.running.cert_path,
                              contact.user_id, payloads,
                              token=delivery_token(contact.profile_key),
                              client_message_id=secrets.token_bytes(16))


async def test_forged_expired_and_other_identity_certificates_are_refused_and_reported(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice, bob = await introduced(relay, tmp_path)
    assert await send_text(bob, ALICE, "genuine")  # Bob now holds Alice's token
    assert [m.content.text for m in await received(alice) if m.content] == ["genuine"]
    key_id, seed = relay_signing_key(relay)
    rogue = ed25519_generate(SystemRandom()).private_key
    far_future = 4_102_444_800_000  # 2100
    await send_hostile(relay, bob, alice, certificate_for=user_id(bob), signer=rogue,
                       key_id=key_id, expires_ms=far_future)
    await send_hostile(relay, bob, alice, certificate_for=user_id(bob), signer=seed,
                       key_id=key_id, expires_ms=1)
    # Mallory's keys under Bob's name, signed by the relay itself: not Bob's pinned key.
    mallory = ed25519_generate(SystemRandom()).private_key
    await send_hostile(relay, bob, alice, certificate_for=user_id(bob), signer=seed,
                       key_id=key_id, expires_ms=far_future, sealer_seed=mallory)
    messages: list[ReceivedMessage] = await received(alice)
    assert [m.refused for m in messages] == [True, True, True]
    assert all(m.content is None and m.sender is None for m in messages)
    problems = [m.problem or "" for m in messages]
    assert "signature does not verify" in problems[0]
    assert "expired" in problems[1]
    assert "not the ones pinned" in problems[2]
    # Refused envelopes were acknowledged: nothing comes again, and Bob's next message opens.
    assert await send_text(bob, ALICE, "still fine")
    assert [m.content.text for m in await received(alice) if m.content] == ["still fine"]


async def test_a_sealed_send_repeated_after_a_lost_answer_is_delivered_once(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice, bob = await introduced(relay, tmp_path)
    assert await send_text(bob, ALICE, "sealed once")
    await received(alice)
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(bob) as messenger:
            contact = await messenger.contact(ALICE)
            address = DeviceAddress(contact.user_id, 1)
            content = json.dumps({"not": "a message"}).encode()  # shown as unreadable
            inner = messenger.device.encrypt(content, [address])[address]
            messenger.save()
            certificate = await current_certificate(messenger.client, messenger.sealed,
                                                    now_ms=time.time_ns() // 1_000_000)
            payloads = seal_payloads({1: inner}, dict(contact.devices),
                                     certificate=certificate, identity=messenger.identity)
            assert contact.profile_key is not None
            message_id = secrets.token_bytes(16)
            for _ in range(2):  # the first answer "lost": the client sends the same again
                await send_sealed([("127.0.0.1", relay.port)], relay.running.cert_path,
                                  contact.user_id, payloads,
                                  token=delivery_token(contact.profile_key),
                                  client_message_id=message_id)
    messages = await received(alice)
    assert len(messages) == 1 and messages[0].sealed and messages[0].sender is not None


class _Announcing:
    """A relay's SENDER_KEYS answers, in turn."""

    def __init__(self, *answers: tuple[SenderKey, ...]) -> None:
        self.answers = list(answers)

    async def get_sender_keys(self) -> tuple[SenderKey, ...]:
        return self.answers.pop(0)


async def test_pinned_relay_keys_follow_a_rotation_and_a_retired_key_is_never_extended() -> None:
    day = 86_400_000
    old, new = b"o" * 32, b"n" * 32
    relay = _Announcing(
        (SenderKey(key_id=1, public_key=old),),
        (SenderKey(key_id=2, public_key=new), SenderKey(key_id=1, public_key=old,
                                                        not_after_ms=50 * day)),
        (SenderKey(key_id=2, public_key=new), SenderKey(key_id=1, public_key=old,
                                                        not_after_ms=90 * day)),
        (SenderKey(key_id=2, public_key=new),))
    settings = SealedSettings()
    client = cast(RelayClient, relay)
    assert await refresh_relay_keys(client, settings, now_ms=10 * day)
    assert [key.key_id for key in settings.relay_keys] == [1]
    assert not await refresh_relay_keys(client, settings, now_ms=10 * day + 1)  # not due
    assert await refresh_relay_keys(client, settings, now_ms=11 * day)  # due: daily
    assert [(key.key_id, key.not_after_ms) for key in settings.relay_keys] == [
        (1, 50 * day), (2, 2**63 - 1)]
    assert await refresh_relay_keys(client, settings, now_ms=11 * day, force=True)
    assert settings.relay_keys[0].not_after_ms == 50 * day  # a later end is not taken
    assert await refresh_relay_keys(client, settings, now_ms=11 * day, force=True)
    assert [key.key_id for key in settings.relay_keys] == [2]  # no longer published


async def test_an_accounts_devices_share_one_profile_key_and_all_receive_sealed(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice_1 = await enrolled_profile(relay, tmp_path / "A1", ALICE)
    alice_2 = await linked_profile(relay, alice_1, tmp_path / "A2")
    bob = await enrolled_profile(relay, tmp_path / "bob", BOB)
    assert not await send_text(alice_1, BOB, "hi")  # also gives Alice's key to her phone 2
    assert [m.content.text for m in await received(alice_2) if m.content] == ["hi"]
    assert [m.content.text for m in await received(bob) if m.content] == ["hi"]
    assert await send_text(bob, ALICE, "to both of Alice's")
    for profile in (alice_1, alice_2):
        [message] = await received(profile)
        assert message.sealed and message.sender == DeviceAddress(user_id(bob), 1)
        assert message.content is not None and message.content.text == "to both of Alice's"
    # Phone 2 holds Bob's key (his share reached every device of Alice's) and Alice's own.
    assert await send_text(alice_2, BOB, "from phone 2")
    [message] = await received(bob)
    assert message.sealed and message.sender is not None and message.sender.device_id == 2
    keys = []
    for profile in (alice_1, alice_2):
        with trio.fail_after(TIMEOUT_S):
            async with Messenger.connect(profile) as messenger:
                keys.append(messenger.sealed.profile_key)
    assert keys[0] is not None and keys[0] == keys[1]
