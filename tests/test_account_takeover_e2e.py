"""The attack issue 13 was filed for, end to end over real QUIC: someone who gets Alice's SMS
code (a SIM swap, an SS7 interception, a relay operator) enrols a phone on her number.

It must not be able to read anything unnoticed: the SMS enrolment creates a new account
identity, Alice's devices are told and revoked, contacts who knew Alice see the safety number
change and send nothing until a person runs `trust`. A contact who writes to the number for
the first time after the hijack trusts the new identity on first use: the limit every
trust-on-first-use system has (docs/CRYPTO.md, "Threat model").
"""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import pytest
import trio

from client.connection import ConnectionClosed
from client.messenger import IdentityChangedError, Messenger
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

ALICE, BOB, CAROL = "+33612345678", "+33698765432", "+33611111111"
ENROLLED_ELSEWHERE = "this number was enrolled on another device"


async def test_a_hijacked_number_reaches_nobody_unnoticed(relay: RelayUnderTest,
                                                           tmp_path: Path) -> None:
    alice_phone = await enrolled_profile(relay, tmp_path / "alice-phone", ALICE)
    alice_laptop = await linked_profile(relay, alice_phone, tmp_path / "alice-laptop")
    bob = await enrolled_profile(relay, tmp_path / "bob", BOB)
    await send(bob, ALICE, "hello Alice")
    assert await texts(alice_phone) == [(BOB, ALICE, "hello Alice")]
    await send(alice_phone, BOB, "hello Bob")
    assert await texts(bob) == [(ALICE, BOB, "hello Bob")]
    number_before = await safety_number(bob, ALICE)

    # Alice's phone is online when the attacker enrols: it is told, and cut off at once.
    closed = trio.Event()
    closing: list[ConnectionClosed] = []

    async def alice_online(task_status: trio.TaskStatus[None]) -> None:
        async with Messenger.connect(alice_phone) as messenger, aclosing(
                messenger.messages()) as messages:
            task_status.started()
            try:
                async for _ in messages:
                    pass
            except ConnectionClosed as error:
                closing.append(error)
                closed.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(alice_online)
        attacker = await enrolled_profile(relay, tmp_path / "attacker", ALICE)
        with trio.fail_after(TIMEOUT_S):
            await closed.wait()
    assert closing[0].code == ErrorCode.DEVICE_REVOKED
    assert ENROLLED_ELSEWHERE in closing[0].reason

    # Alice's organisation's administrators see it in the audit log.
    assert await audit_subjects(relay, "device.revoked_by_new_enrolment") == [
        f"{ALICE} device 1", f"{ALICE} device 2"]

    # Alice's laptop was offline: when it comes back it learns why it was revoked.
    code, reason = await refusal(alice_laptop)
    assert code == ErrorCode.DEVICE_REVOKED and ENROLLED_ELSEWHERE in reason

    # Bob knew Alice: his client refuses to send, and nothing reaches the attacker.
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(bob) as messenger:
            with pytest.raises(IdentityChangedError) as changed:
                await messenger.send_text(ALICE, "are you still there?")
    assert not changed.value.user_changed
    assert await received(attacker) == []
    number_after = await safety_number(bob, ALICE)
    assert number_after != number_before

    # What the attacker sends Bob arrives with the warning, before any trust.
    await send(attacker, BOB, "it's me, new phone")
    [warned] = await received(bob)
    assert warned.content is not None and warned.content.text == "it's me, new phone"
    assert warned.identity_changed

    # Carol never wrote to Alice before: she trusts the new identity on first use.
    carol = await enrolled_profile(relay, tmp_path / "carol", CAROL)
    await send(carol, ALICE, "hi, first time")
    assert [message.content.text for message in await received(attacker)
            if message.content is not None] == ["hi, first time"]

    # Only a person's explicit trust, after the warning, lets Bob's messages through.
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(bob) as messenger:
            assert await messenger.trust(ALICE) == number_after
    await send(bob, ALICE, "after trust")
    assert [message.content.text for message in await received(attacker)
            if message.content is not None] == ["after trust"]
