"""Linked devices end to end over real QUIC: a device joins an account only when one of its
devices approves it, both then send and receive, and a removed device receives nothing more.
A relay that answers in the new device's place is detected and the link refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from client.connection import RelayClient
from client.linking import (
    LinkFailed,
    approve_link,
    link_new_device,
    publish_signed_list,
    remove_device,
)
from client.messenger import DeviceListProblem, Messenger
from client.profile import Profile
from crypto.primitives import SystemRandom, ed25519_keypair_from_private
from crypto.provisioning import ProvisioningError, ProvisioningKeys, open_offer
from tests.account_support import (
    TIMEOUT_S,
    audit_subjects,
    enrolled_profile,
    linked_profile,
    received,
    refusal,
    safety_number,
    send,
    texts,
)
from tests.conftest import RelayUnderTest
from wire.frames import ErrorCode
from wire.prekey_frames import DeviceList

ALICE, BOB = "+33612345678", "+33698765432"


async def test_a_linked_device_sends_and_receives_and_a_removed_one_gets_nothing(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice_1 = await enrolled_profile(relay, tmp_path / "alice-1", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "bob", BOB)
    await send(bob, ALICE, "before the link")
    assert await texts(alice_1) == [(BOB, ALICE, "before the link")]
    number_before = await safety_number(bob, ALICE)

    alice_2 = await linked_profile(relay, alice_1, tmp_path / "alice-2")
    assert alice_2.data.user_id == alice_1.data.user_id
    assert alice_2.data.device_id not in (None, alice_1.data.device_id)
    # The safety number covers the account key: adding a device does not change it, and Bob
    # reaches the new device without being asked to trust anything.
    assert await safety_number(bob, ALICE) == number_before
    assert await send(bob, ALICE, "to both") == ((1, 2), ())
    assert await texts(alice_1) == [(BOB, ALICE, "to both")]
    assert await texts(alice_2) == [(BOB, ALICE, "to both")]
    assert await send(alice_2, BOB, "from the new one") == ((1,), (1,))
    assert await texts(bob) == [(ALICE, BOB, "from the new one")]
    assert await texts(alice_1) == [(ALICE, BOB, "from the new one")]

    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(alice_1) as messenger:
            removed = await remove_device(messenger, 2)
    assert removed.device_list_version == 3  # enrolment, link, removal
    assert await send(bob, ALICE, "after the removal") == ((1,), ())
    assert await texts(alice_1) == [(BOB, ALICE, "after the removal")]
    assert await audit_subjects(relay, "device.link") == [f"{ALICE} device 2"]
    assert await audit_subjects(relay, "device.remove") == [f"{ALICE} device 2"]
    code, reason = await refusal(alice_2)
    assert code == ErrorCode.DEVICE_REVOKED and "removed from its account" in reason


async def test_the_other_devices_learn_the_new_list_end_to_end(relay: RelayUnderTest,
                                                               tmp_path: Path) -> None:
    alice_1 = await enrolled_profile(relay, tmp_path / "alice-1", ALICE)
    await linked_profile(relay, alice_1, tmp_path / "alice-2")
    await linked_profile(relay, alice_1, tmp_path / "alice-3")
    # Device 2 was told about device 3 by device 3 itself, in a signed list update.
    messages = await received(Profile(tmp_path / "alice-2"))
    assert messages == []  # control messages are not shown
    async with Messenger.connect(Profile(tmp_path / "alice-2")) as messenger:
        own = messenger.contacts[ALICE]
        seen = own.seen_list()
        assert seen is not None and seen.version == 3
        assert sorted(own.devices) == [1, 2, 3]


async def test_a_relay_answering_in_the_new_devices_place_is_detected(
        relay: RelayUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay carries the link messages; here it swaps the new device's reply for one it
    made with its own provisioning key (the only move it has: the key in the code is the one
    the user read on the new device's screen). The approving device refuses, and nothing is
    added to the account."""
    alice_1 = await enrolled_profile(relay, tmp_path / "alice-1", ALICE)
    real_fetch = RelayClient.link_fetch
    forged_identity = Profile(tmp_path / "relay-device").signing_key(create=True)

    async def hostile_fetch(self: RelayClient, channel_id: bytes) -> list[bytes]:
        payloads = await real_fetch(self, channel_id)
        if self.user_id is None or not payloads:
            return payloads  # the new device's side is left alone
        # The relay saw the approver's offer: it answers with its own provisioning key.
        own_keys = ProvisioningKeys.generate(SystemRandom())
        try:
            session = open_offer(own_keys, channel_id, offers[-1])
        except ProvisioningError:
            session = None  # it cannot even open the offer: it makes up a reply
        reply = (session.reply(forged_identity.verify_key.encode()) if session is not None
                 else bytes(len(payloads[0])))
        return [reply]

    offers: list[bytes] = []
    real_post = RelayClient.link_post

    async def watching_post(self: RelayClient, channel_id: bytes, payload: bytes) -> None:
        if self.user_id is not None:
            offers.append(payload)
        await real_post(self, channel_id, payload)

    monkeypatch.setattr(RelayClient, "link_fetch", hostile_fetch)
    monkeypatch.setattr(RelayClient, "link_post", watching_post)
    new = Profile(tmp_path / "alice-2")
    send_code, receive_code = trio.open_memory_channel[str](1)
    outcome: list[BaseException] = []

    async def approve() -> None:
        code = await receive_code.receive()
        async with Messenger.connect(alice_1) as messenger:
            try:
                await approve_link(messenger, code)
            except ProvisioningError as error:
                outcome.append(error)
        cancel.cancel()  # the new device would wait for a final that never comes

    with trio.fail_after(TIMEOUT_S), trio.CancelScope() as cancel:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(approve)
            await link_new_device(new, f"127.0.0.1:{relay.port}", relay.running.cert_path,
                                  show_code=send_code.send_nowait)
    assert len(outcome) == 1 and "not the one that showed the code" in str(outcome[0])
    assert new.data.user_id is None  # the new device got nothing
    async with Messenger.connect(alice_1) as messenger:
        view = await messenger.own_devices()
    assert view.device_list.version == 1 and sorted(view.devices) == [1]


async def test_an_older_device_list_replayed_by_the_relay_is_refused(
        relay: RelayUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    alice_1 = await enrolled_profile(relay, tmp_path / "alice-1", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "bob", BOB)
    await send(bob, ALICE, "hello")  # Bob pins Alice's account and sees list version 1
    real_list_devices = RelayClient.list_devices
    first_answers: dict[str, DeviceList] = {}

    async def recording(self: RelayClient, user_id: str | None = None) -> DeviceList:
        answer = await real_list_devices(self, user_id)
        first_answers.setdefault(answer.user_id, answer)
        return answer

    monkeypatch.setattr(RelayClient, "list_devices", recording)
    async with Messenger.connect(alice_1) as messenger:
        assert (await messenger.own_devices()).device_list.version == 1
    await linked_profile(relay, alice_1, tmp_path / "alice-2")  # version 2
    await send(bob, ALICE, "to both")  # Bob reads version 2 after a mismatch

    async def replaying(self: RelayClient, user_id: str | None = None) -> DeviceList:
        answer = await real_list_devices(self, user_id)
        return first_answers.get(answer.user_id, answer)  # the relay serves version 1 again

    monkeypatch.setattr(RelayClient, "list_devices", replaying)
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(bob) as messenger:
            with pytest.raises(DeviceListProblem, match="old device list"):
                await messenger.safety_number(ALICE)
    with pytest.raises(BaseExceptionGroup) as refused:  # Alice's own device refuses it too
        async with Messenger.connect(alice_1):
            pass
    assert refused.group_contains(DeviceListProblem, depth=None)


async def test_a_list_published_twice_is_the_same_list_and_a_concurrent_one_is_refused(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    """A publish whose answer was lost is sent again: the relay says STALE_DEVICE_LIST, and the
    client finds its own list in force. Another device's list of the same version is refused
    with a message that says what happened."""
    alice_1 = await enrolled_profile(relay, tmp_path / "alice-1", ALICE)
    await linked_profile(relay, alice_1, tmp_path / "alice-2")
    account_key = alice_1.account_key()
    assert account_key is not None
    account = ed25519_keypair_from_private(bytes(account_key))
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(alice_1) as messenger:
            view = await messenger.own_devices()
            same_devices = view.device_list.with_devices(account, set(view.devices.values()))
            assert await publish_signed_list(messenger, same_devices) == []
            assert await publish_signed_list(messenger, same_devices) == sorted(
                view.devices.items())
            other = view.device_list.with_devices(account, {view.devices[1]})
            assert other.version == same_devices.version
            with pytest.raises(LinkFailed, match="changed its device list meanwhile"):
                await publish_signed_list(messenger, other)
            assert sorted((await messenger.own_devices()).devices) == [1, 2]
