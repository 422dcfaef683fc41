"""The encrypting client library over a real relay on loopback: several devices per account,
copies to one's own devices, and the automatic retry after MISMATCHED_DEVICES when an account
gained a device."""

from __future__ import annotations

from pathlib import Path

import trio

from client.messenger import Messenger
from client.profile import Profile
from tests.account_support import TIMEOUT_S, enrolled_profile, linked_profile, texts
from tests.conftest import RelayUnderTest

ALICE, BOB = "+33612345678", "+33698765432"


async def send(profile: Profile, phone: str, text: str) -> tuple[tuple[int, ...],
                                                                 tuple[int, ...], int]:
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(profile) as messenger:
            receipt = await messenger.send_text(phone, text)
    return receipt.recipient_devices, receipt.own_devices, receipt.mismatch_retries


async def test_every_device_of_both_users_gets_the_message(relay: RelayUnderTest,
                                                           tmp_path: Path) -> None:
    alice_1 = await enrolled_profile(relay, tmp_path / "A1", ALICE)
    alice_2 = await linked_profile(relay, alice_1, tmp_path / "A2")
    bob_1 = await enrolled_profile(relay, tmp_path / "B1", BOB)
    bob_2 = await linked_profile(relay, bob_1, tmp_path / "B2")
    bob_1_id, bob_2_id = bob_1.data.device_id, bob_2.data.device_id
    assert bob_1_id is not None and bob_2_id is not None
    alice_ids = (alice_1.data.device_id, alice_2.data.device_id)

    assert await send(alice_1, BOB, "to both of Bob's") == (
        (bob_1_id, bob_2_id), (alice_ids[1],), 0)
    for profile in (bob_1, bob_2, alice_2):
        assert await texts(profile) == [(ALICE, BOB, "to both of Bob's")]
    assert await send(bob_2, ALICE, "answer") == (alice_ids, (bob_1_id,), 0)
    for profile in (alice_1, alice_2, bob_1):
        assert await texts(profile) == [(BOB, ALICE, "answer")]


async def test_a_linked_device_is_reached_after_a_mismatch_without_asking_anyone(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "A", ALICE)
    bob_1 = await enrolled_profile(relay, tmp_path / "B1", BOB)
    assert await send(alice, BOB, "first") == ((bob_1.data.device_id,), (), 0)
    bob_2 = await linked_profile(relay, bob_1, tmp_path / "B2")
    # Alice's client still knows one device of Bob's: the relay answers MISMATCHED_DEVICES,
    # the client reads Bob's signed list again, finds device 2 signed by the key it pinned,
    # and sends again by itself: no trust is asked for, since Bob's account key is the same.
    assert await send(alice, BOB, "second") == (
        (bob_1.data.device_id, bob_2.data.device_id), (), 1)
    assert await texts(bob_1) == [(ALICE, BOB, "first"), (ALICE, BOB, "second")]
    assert await texts(bob_2) == [(ALICE, BOB, "second")]
