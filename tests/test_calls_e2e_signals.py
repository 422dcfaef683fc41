"""Call messages (client/message_content.py, kind "call"): their encoding and its limits, and
a call message whose sender claims another user's number is never rung."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from typing import cast

import msgpack
import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from client.calls import RING_TIMEOUT_MS, CallManager
from client.message_content import (
    MAX_CALL_KEY_BYTES,
    CallSignal,
    ContentError,
    decode_content,
    encode_call_signal,
)
from client.messenger import Messenger, ReceivedCallSignal
from crypto.device import DeviceAddress
from tests.account_support import TIMEOUT_S, enrolled_profile
from tests.conftest import RelayUnderTest

ALICE, BOB, CAROL = "+33612345678", "+33698765432", "+33611111111"
CALL_ID = bytes(range(16))


def _offer(**changes: object) -> CallSignal:
    fields: dict[str, object] = {"kind": "offer", "call_id": CALL_ID, "sender_phone": ALICE,
                                 "sent_at_ms": 1_700_000_000_000, "key_id": 7,
                                 "key": bytes(16), "members": (CAROL,)}
    fields.update(changes)
    return CallSignal(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("signal", [
    _offer(),
    _offer(kind="rekey", members=(), key=bytes(32), key_id=2**64 - 1),
    _offer(kind="handled", key_id=None, key=None, members=(), by_device=3),
    _offer(kind="hangup", key_id=None, key=None, members=()),
])
def test_a_call_message_round_trips(signal: CallSignal) -> None:
    assert decode_content(encode_call_signal(signal)) == signal


@pytest.mark.parametrize(("signal", "problem"), [
    (_offer(kind="ring"), "unknown type"),
    (_offer(call_id=bytes(15)), "not a call id"),
    (_offer(key=bytes(15)), "out of range"),
    (_offer(key=bytes(MAX_CALL_KEY_BYTES + 1)), "out of range"),
    (_offer(key_id=-1), "out of range"),
    (_offer(key_id=None, key=None), "lacks both"),
    (_offer(kind="answer", key=None), "without a key"),
    (_offer(members=(CAROL,) * 8), "short list"),
    (_offer(sender_phone="+" + "3" * 40), "'from'"),
    (_offer(sent_at_ms=-5), "not a time"),
    (_offer(kind="handled", key_id=None, key=None, members=(), by_device=-1), "device id"),
])
def test_a_call_message_out_of_its_limits_is_refused_both_ways(signal: CallSignal,
                                                               problem: str) -> None:
    with pytest.raises(ContentError, match=problem):
        encode_call_signal(signal)
    raw = {"v": 1, "kind": "call", "type": signal.kind, "call": signal.call_id,
           "from": signal.sender_phone, "sent_at": signal.sent_at_ms,
           "members": list(signal.members)}
    if signal.key_id is not None or signal.key is not None:
        raw["kid"], raw["key"] = signal.key_id, signal.key
    if signal.by_device is not None:
        raw["by"] = signal.by_device
    with pytest.raises(ContentError, match=problem):
        decode_content(msgpack.packb(raw))


async def test_a_call_from_a_number_the_sender_does_not_hold_never_rings(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    await enrolled_profile(relay, tmp_path / "alice", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "bob", BOB)
    carol = await enrolled_profile(relay, tmp_path / "carol", CAROL)
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(carol) as messenger:
            # Carol's device, end to end encrypted and authenticated, claims to be Alice.
            await messenger.send_call_signal(BOB, _offer(
                call_id=secrets.token_bytes(16), sent_at_ms=_now_ms(), members=()))
            await messenger.send_call_signal(BOB, _offer(
                call_id=secrets.token_bytes(16), sender_phone=CAROL, sent_at_ms=_now_ms(),
                members=()))
        async with Messenger.connect(bob) as messenger:
            manager = CallManager(messenger)
            async with aclosing(messenger.messages(stop_when_empty=True)) as messages:
                async for _ in messages:
                    pass
            assert await manager.handle_waiting() == 1  # only the honest one arrived
    rung = manager.incoming.receive_nowait()
    assert rung.caller_phone == CAROL
    with pytest.raises(trio.WouldBlock):
        manager.incoming.receive_nowait()


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- a caller that vanishes without hanging up ---------------------------------------------


class _OfflineMessenger:
    """What a call manager uses of a messenger, recording the call messages it sends: the
    ring timeout is about the manager's clock alone, so no relay is needed."""

    phone, user_id, device_id = BOB, "u-bob", 1

    def __init__(self) -> None:
        self.on_call_signal: Callable[[ReceivedCallSignal], None] | None = None
        self.sent: list[tuple[str, str]] = []

    async def send_call_signal(self, phone: str, signal: CallSignal) -> tuple[int, ...]:
        self.sent.append((phone, signal.kind))
        return (1,)


@pytest.mark.parametrize("age_s", [0, 50])
async def test_a_call_whose_caller_vanished_stops_ringing_as_missed(
        mock_clock: MockClock, age_s: int) -> None:
    epoch_ms = 1_700_000_000_000

    def now_ms() -> int:
        return epoch_ms + int(trio.current_time() * 1000)

    messenger = _OfflineMessenger()
    manager = CallManager(cast(Messenger, messenger), clock_ms=now_ms)
    caller = DeviceAddress(user_id="u-alice", device_id=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(manager.run)
        sent_at = now_ms() - age_s * 1000
        assert messenger.on_call_signal is not None
        messenger.on_call_signal(ReceivedCallSignal(
            sender=caller, accepted_at=sent_at, signal=_offer(sent_at_ms=sent_at, members=())))
        incoming = await manager.incoming.receive()
        await wait_all_tasks_blocked()
        assert messenger.sent == [(ALICE, "ringing")]
        # The caller never hangs up: the phone rings until the offer is RING_TIMEOUT_MS old.
        mock_clock.jump(RING_TIMEOUT_MS / 1000 - age_s - 1)
        await wait_all_tasks_blocked()
        assert not incoming.stopped.is_set() and CALL_ID in manager.ringing
        mock_clock.jump(1)
        await wait_all_tasks_blocked()
        assert incoming.stopped.is_set() and incoming.stop_reason == "missed"
        assert CALL_ID not in manager.ringing
        assert messenger.sent == [(ALICE, "ringing")]  # nothing is sent for a missed call
        nursery.cancel_scope.cancel()


async def test_a_call_declined_in_time_is_not_reported_missed_later(
        mock_clock: MockClock) -> None:
    messenger = _OfflineMessenger()
    manager = CallManager(cast(Messenger, messenger),
                          clock_ms=lambda: int(trio.current_time() * 1000))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(manager.run)
        assert messenger.on_call_signal is not None
        messenger.on_call_signal(ReceivedCallSignal(
            sender=DeviceAddress(user_id="u-alice", device_id=1), accepted_at=0,
            signal=_offer(sent_at_ms=0, members=())))
        incoming = await manager.incoming.receive()
        await manager.decline(incoming)
        mock_clock.jump(RING_TIMEOUT_MS / 1000 + 1)
        await wait_all_tasks_blocked()
        assert incoming.stop_reason == "declined"
        nursery.cancel_scope.cancel()
