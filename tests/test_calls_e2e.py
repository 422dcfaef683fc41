"""Calls end to end over real QUIC against an in-process relay: the signalling of
client/calls.py, SFrame media keys, and what the relay sees of the media.

The relay's forwarding (`relay.calls.CallService.media`) is wrapped where a test needs the
datagrams as the relay holds them after QUIC decryption.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import pytest
import trio

from client.call_probe import echo_media, probe_packet, run_probe
from client.calls import CALL_SUITE, Call, CallManager, IncomingCall
from client.message_content import CallSignal
from client.messenger import Messenger
from client.profile import Profile
from crypto.device import DeviceAddress
from crypto.sframe import SFrameError, SFrameSender, new_base_key
from relay.calls import CallParticipant, CallService
from tests.account_support import TIMEOUT_S, enrolled_profile, linked_profile
from tests.conftest import RelayUnderTest, declare
from wire.call_frames import CALL_SIGNAL_TTL_MS, unpack_media

ALICE, BOB, CAROL, DAVE = "+33612345678", "+33698765432", "+33611111111", "+33622222222"


@asynccontextmanager
async def online(profile: Profile, *,
                 clock_ms: Callable[[], int] | None = None) -> AsyncIterator[CallManager]:
    """A device connected and reading its deliveries, with its call manager running."""
    async with Messenger.connect(profile) as messenger, trio.open_nursery() as nursery:
        manager = (CallManager(messenger) if clock_ms is None
                   else CallManager(messenger, clock_ms=clock_ms))

        async def read() -> None:
            async with aclosing(messenger.messages()) as messages:
                async for _ in messages:
                    pass

        nursery.start_soon(manager.run)
        nursery.start_soon(read)
        yield manager
        nursery.cancel_scope.cancel()


@pytest.fixture
def relayed(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every media datagram the relay forwards, as it holds it (after QUIC decryption)."""
    seen: list[bytes] = []
    forward = CallService.media

    def recording(self: CallService, connection: CallParticipant, datagram: bytes) -> None:
        seen.append(datagram)
        forward(self, connection, datagram)

    monkeypatch.setattr(CallService, "media", recording)
    return seen


async def answered(manager: CallManager) -> tuple[IncomingCall, Call]:
    """Take the next ringing call and answer it."""
    incoming = await manager.incoming.receive()
    return incoming, await manager.answer(incoming)


async def test_a_call_carries_media_both_ways_and_hanging_up_ends_it(
        relay: RelayUnderTest, tmp_path: Path, relayed: list[bytes]) -> None:
    alice = await enrolled_profile(relay, tmp_path / "alice", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "bob", BOB)
    with trio.fail_after(TIMEOUT_S):
        async with online(alice) as caller, online(bob) as callee:
            call = await caller.place_call([BOB])
            incoming, bob_call = await answered(callee)
            assert (incoming.caller_phone, incoming.call_id) == (ALICE, call.call_id)
            await call.wait_for_peers(1)
            await call.ringing.wait()  # bob's device said it rang

            call.send_media(b"hello from alice")
            assert (await bob_call.receive_media())[1] == b"hello from alice"
            bob_call.send_media(b"hello from bob")
            assert (await call.receive_media())[1] == b"hello from bob"
            assert relayed and all(b"hello" not in datagram for datagram in relayed)

            await caller.hang_up(call)
            await bob_call.ended.wait()  # alice's hang-up message ended it at bob's
            await bob_call.session.ended.wait()  # and the relay ended the session
            assert bob_call.session.end_reason == "alone"
            await callee.hang_up(bob_call)
            assert not callee.calls and not caller.calls


async def test_answering_on_one_device_stops_the_others_ringing(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "alice", ALICE)
    bob_1 = await enrolled_profile(relay, tmp_path / "bob-1", BOB)
    bob_2 = await linked_profile(relay, bob_1, tmp_path / "bob-2")
    with trio.fail_after(TIMEOUT_S):
        async with online(alice) as caller, online(bob_1) as first, online(bob_2) as second:
            call = await caller.place_call([BOB])
            ringing_2 = await second.incoming.receive()  # both of bob's devices ring
            _, bob_call = await answered(first)
            await ringing_2.stopped.wait()
            assert ringing_2.stop_reason == "answered elsewhere"
            assert call.call_id not in second.ringing and not second.calls
            await call.wait_for_peers(1)
            assert list(call.peers) == [address_of(first)]
            call.send_media(b"to the device that answered")
            assert (await bob_call.receive_media())[1] == b"to the device that answered"
            await caller.hang_up(call)


def address_of(manager: CallManager) -> DeviceAddress:
    return DeviceAddress(user_id=manager.messenger.user_id,
                         device_id=manager.messenger.device_id)


async def test_an_offer_that_expired_while_the_callee_was_offline_never_rings(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "alice", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "bob", BOB)
    with trio.fail_after(TIMEOUT_S):
        async with online(alice) as caller:
            # Bob is offline: the offer waits for him, and alice gives up on it.
            await caller.hang_up(await caller.place_call([BOB]))
        # Bob comes back more than CALL_SIGNAL_TTL_MS later (his clock says so: the test
        # does not wait a minute): the offer is delivered but never rung.
        async with Messenger.connect(bob) as messenger:
            manager = CallManager(messenger, clock_ms=lambda: _wall_ms() + CALL_SIGNAL_TTL_MS
                                  + 1_000)
            async with aclosing(messenger.messages(stop_when_empty=True)) as messages:
                async for _ in messages:
                    pass
            await manager.handle_waiting()
        assert manager.expired_offers == 1
        assert not manager.ringing
        with pytest.raises(trio.WouldBlock):
            manager.incoming.receive_nowait()

    # The control: an offer within its lifetime rings.
    with trio.fail_after(TIMEOUT_S):
        async with online(alice) as caller:
            call = await caller.place_call([BOB])
            async with Messenger.connect(bob) as messenger:
                manager = CallManager(messenger)
                async with aclosing(messenger.messages(stop_when_empty=True)) as messages:
                    async for _ in messages:
                        pass
                await manager.handle_waiting()
            assert manager.expired_offers == 0
            assert manager.incoming.receive_nowait().call_id == call.call_id
            await caller.hang_up(call)


def _wall_ms() -> int:
    return int(time.time() * 1000)


async def test_a_group_call_of_four_and_new_keys_when_one_leaves(
        relay: RelayUnderTest, tmp_path: Path, relayed: list[bytes]) -> None:
    await declare(relay.data_dir, "acme", DAVE)
    profiles = [await enrolled_profile(relay, tmp_path / name, phone)
                for name, phone in (("alice", ALICE), ("bob", BOB), ("carol", CAROL),
                                    ("dave", DAVE))]
    with trio.fail_after(TIMEOUT_S * 2):
        async with online(profiles[0]) as alice, online(profiles[1]) as bob, \
                online(profiles[2]) as carol, online(profiles[3]) as dave:
            call = await alice.place_call([BOB, CAROL, DAVE])
            calls = [call] + [(await answered(manager))[1] for manager in (bob, carol, dave)]
            for each in calls:
                await each.wait_for_peers(3)  # everyone holds everyone else's key
            assert call.session.participants == 4 or await _members(call, 4)

            for index, sender in enumerate(calls):
                sender.send_media(f"from participant {index}".encode())
                for receiver in calls:
                    if receiver is not sender:
                        _, plaintext = await receiver.receive_media()
                        assert plaintext == f"from participant {index}".encode()

            # Dave leaves: the others draw new keys and send them to each other only.
            dave_call = calls[3]
            old_keys = dave_call.receiver
            old_kids = {each.sender.key_id for each in calls[:3]}
            await dave.hang_up(dave_call)
            for each in calls[:3]:
                while each.rekeys < 1 or len(each.peers) != 2 or any(
                        kid in old_kids for kid in each.peers.values()):
                    await each.peers_changed.wait()
            assert not {each.sender.key_id for each in calls[:3]} & old_kids
            relayed.clear()
            call.send_media(b"after dave left")
            assert (await calls[1].receive_media())[1] == b"after dave left"
            assert (await calls[2].receive_media())[1] == b"after dave left"
            after = [unpack_media(datagram) for datagram in relayed]
            assert after
            for unpacked in after:
                assert unpacked is not None
                with pytest.raises(SFrameError):  # dave's keys open nothing said later
                    old_keys.decrypt(unpacked[1], metadata=call.call_id)
            for each, manager in zip(calls[:3], (alice, bob, carol), strict=True):
                await manager.hang_up(each)


async def _members(call: Call, count: int) -> bool:
    while call.session.participants != count:
        await call.session.members_changed.wait()
    return True


async def test_the_relay_never_sees_the_synthetic_plaintext(
        relay: RelayUnderTest, tmp_path: Path, relayed: list[bytes]) -> None:
    alice = await enrolled_profile(relay, tmp_path / "alice", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "bob", BOB)
    with trio.fail_after(TIMEOUT_S):
        async with online(alice) as caller, online(bob) as callee:
            call = await caller.place_call([BOB])
            _, bob_call = await answered(callee)
            await call.wait_for_peers(1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo_media, bob_call)
                stats = await run_probe(call, 0.5)
                await caller.hang_up(call)
    result = stats.result(peers=1)
    assert result["packets_sent"] == 25 and result["packets_received"] > 0
    # Both directions went through the relay, and no datagram holds any plaintext part.
    assert len(relayed) >= 25 + result["packets_received"]
    plaintext = probe_packet(0, 0)
    for datagram in relayed:
        for start in range(0, len(plaintext) - 8, 8):  # no 8-byte run of the filler
            assert plaintext[12 + start:20 + start] not in datagram


async def test_a_declining_invitee_neither_ends_a_group_call_nor_stops_others_ringing(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "alice", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "bob", BOB)
    carol = await enrolled_profile(relay, tmp_path / "carol", CAROL)
    with trio.fail_after(TIMEOUT_S):
        async with online(alice) as caller, online(bob) as first, online(carol) as second:
            call = await caller.place_call([BOB, CAROL])
            ringing_bob = await first.incoming.receive()
            ringing_carol = await second.incoming.receive()
            await second.decline(ringing_carol)
            # Carol also tells bob to hang up: only the caller may stop bob's ringing.
            await second.messenger.send_call_signal(BOB, CallSignal(
                kind="hangup", call_id=call.call_id, sender_phone=CAROL,
                sent_at_ms=int(time.time() * 1000)))
            await first.wait_handled(2)  # the offer, then carol's hang-up: still ringing
            assert first.ringing == {call.call_id: ringing_bob}
            bob_call = await first.answer(ringing_bob)
            assert ringing_bob.stop_reason == "answered"  # not "hung up" by carol
            await call.wait_for_peers(1)
            assert not call.ended.is_set()
            call.send_media(b"still on")
            assert (await bob_call.receive_media())[1] == b"still on"
            await caller.hang_up(call)


async def test_a_callee_already_in_a_call_answers_busy(relay: RelayUnderTest,
                                                       tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "alice", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "bob", BOB)
    carol = await enrolled_profile(relay, tmp_path / "carol", CAROL)
    with trio.fail_after(TIMEOUT_S):
        async with online(alice) as caller, online(bob) as callee, online(carol) as other:
            first = await caller.place_call([BOB])
            await answered(callee)
            second = await other.place_call([BOB])
            await second.busy.wait()
            assert not second.peers and len(callee.calls) == 1
            await other.hang_up(second)
            await caller.hang_up(first)


async def test_media_under_an_unknown_key_is_counted_apart_from_forged_and_replayed_media(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "alice", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "bob", BOB)
    with trio.fail_after(TIMEOUT_S):
        async with online(alice) as caller, online(bob) as callee:
            call = await caller.place_call([BOB])
            _, bob_call = await answered(callee)
            await call.wait_for_peers(1)
            stranger = SFrameSender(CALL_SUITE, call.sender.key_id + 1,
                                    new_base_key(CALL_SUITE))
            call.session.send(stranger.encrypt(b"under a key bob never got",
                                               metadata=call.call_id))
            genuine = call.sender.encrypt(b"said once", metadata=call.call_id)
            tampered = bytearray(call.sender.encrypt(b"altered", metadata=call.call_id))
            tampered[-1] ^= 1
            for payload in (genuine, genuine, bytes(tampered)):  # the second is a replay
                call.session.send(payload)
            call.send_media(b"the real one")
            received = [(await bob_call.receive_media())[1] for _ in range(2)]
            assert received == [b"said once", b"the real one"]
            assert (bob_call.unknown_key, bob_call.undecryptable) == (1, 2)
            await caller.hang_up(call)
