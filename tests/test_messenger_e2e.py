"""The encrypting client library over a real relay on loopback: several devices per user,
copies to one's own devices, and the automatic retry after MISMATCHED_DEVICES."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import trio
from nacl.signing import SigningKey

from client.messenger import IdentityChangedError, Messenger, create_device_state
from client.profile import Profile
from tests.conftest import RelayUnderTest, new_account

ALICE, BOB = "+33612345678", "+33698765432"
TIMEOUT_S = 30
"""Bound on anything that could hang; not a timing assertion."""


async def enrolled_profile(relay: RelayUnderTest, directory: Path, phone: str) -> Profile:
    """Enrol a new device for ``phone`` into a profile and publish its prekeys."""
    profile = Profile(directory)
    key: SigningKey = profile.signing_key(create=True)
    already = len(relay.sms.messages)
    async with relay.connect() as client:
        await client.enrol_start(phone)
        with trio.fail_after(TIMEOUT_S):
            while len(relay.sms.messages) == already:
                await relay.sms.arrived.wait()
        code = await relay.sms.code_for(phone)
        enrolled = await client.enrol_verify(phone, code, key.verify_key.encode(), new_account())
        user_id, device_id = enrolled.user_id, enrolled.device_id
    profile.data.relay = f"127.0.0.1:{relay.port}"
    profile.data.ca = str(relay.running.cert_path)
    profile.data.phone, profile.data.user_id, profile.data.device_id = phone, user_id, device_id
    profile.save()
    create_device_state(profile)
    async with Messenger.connect(profile):
        pass
    return profile


async def texts(profile: Profile) -> list[tuple[str, str, str]]:
    """(from, to, text) of every stored message, acknowledged."""
    found = []
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(profile) as messenger, aclosing(
                messenger.messages(stop_when_empty=True)) as messages:
            async for message in messages:
                assert message.content is not None, message.problem
                assert message.sender_confirmed and not message.identity_changed
                found.append((message.content.sender_phone, message.content.recipient_phone,
                              message.content.text))
    return found


async def send(profile: Profile, phone: str, text: str) -> tuple[tuple[int, ...],
                                                                 tuple[int, ...], int]:
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(profile) as messenger:
            receipt = await messenger.send_text(phone, text)
    return receipt.recipient_devices, receipt.own_devices, receipt.mismatch_retries


async def test_every_device_of_both_users_gets_the_message(relay: RelayUnderTest,
                                                           tmp_path: Path) -> None:
    alice_1 = await enrolled_profile(relay, tmp_path / "A1", ALICE)
    alice_2 = await enrolled_profile(relay, tmp_path / "A2", ALICE)
    bob_1 = await enrolled_profile(relay, tmp_path / "B1", BOB)
    bob_2 = await enrolled_profile(relay, tmp_path / "B2", BOB)

    assert await send(alice_1, BOB, "to both of Bob's") == ((1, 2), (2,), 0)
    for profile in (bob_1, bob_2, alice_2):
        assert await texts(profile) == [(ALICE, BOB, "to both of Bob's")]
    assert await send(bob_2, ALICE, "answer") == ((1, 2), (1,), 0)
    for profile in (alice_1, alice_2, bob_1):
        assert await texts(profile) == [(BOB, ALICE, "answer")]


async def test_a_new_device_is_refused_then_trusted_and_reached_after_a_mismatch(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "A", ALICE)
    bob_1 = await enrolled_profile(relay, tmp_path / "B1", BOB)
    assert await send(alice, BOB, "first") == ((1,), (), 0)
    bob_2 = await enrolled_profile(relay, tmp_path / "B2", BOB)

    async with Messenger.connect(alice) as messenger:
        try:
            await messenger.send_text(BOB, "refused")
        except IdentityChangedError as error:
            assert BOB in str(error)
        else:
            raise AssertionError("a new identity key was used without the user's trust")
        await messenger.trust(BOB)
    # Alice's last SEND addressed device 1 only: the relay answers MISMATCHED_DEVICES and
    # the client fetches device 2's bundle and sends again by itself.
    assert await send(alice, BOB, "second") == ((1, 2), (), 1)
    assert await texts(bob_1) == [(ALICE, BOB, "first"), (ALICE, BOB, "second")]
    assert await texts(bob_2) == [(ALICE, BOB, "second")]
