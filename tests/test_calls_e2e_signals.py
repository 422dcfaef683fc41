"""Call messages (client/message_content.py, kind "call"): their encoding and its limits, and
a call message whose sender claims another user's number is never rung."""

from __future__ import annotations

import secrets
import time
from contextlib import aclosing
from pathlib import Path

import msgpack
import pytest
import trio

from client.calls import CallManager
from client.message_content import (
    MAX_CALL_KEY_BYTES,
    CallSignal,
    ContentError,
    decode_content,
    encode_call_signal,
)
from client.messenger import Messenger
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
