"""Accounts for end-to-end tests: SMS enrolment and linking, through the client library's own
paths (`client.account_setup`, `client.linking`) against a relay under test."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import trio

from client.account_setup import verify_enrolment
from client.connection import ConnectionClosed, RelayError
from client.linking import approve_link, link_new_device
from client.messenger import Messenger, ReceivedMessage
from client.profile import Profile
from storage.sqlite import open_sqlite_store
from tests.conftest import RelayUnderTest

TIMEOUT_S = 30
"""Bound on anything that could hang; not a timing assertion."""


async def enrolled_profile(relay: RelayUnderTest, directory: Path, phone: str) -> Profile:
    """Enrol ``phone`` by SMS into a new profile: a new account with this device alone."""
    profile = Profile(directory)
    profile.signing_key(create=True)
    profile.data.relay = f"127.0.0.1:{relay.port}"
    profile.data.ca = str(relay.running.cert_path)
    profile.data.phone = phone
    profile.save()
    already = len(relay.sms.messages)
    with trio.fail_after(TIMEOUT_S):
        async with relay.connect() as client:
            await client.enrol_start(phone)
        while len(relay.sms.messages) == already:
            await relay.sms.arrived.wait()
        code = await relay.sms.code_for(phone)
        await verify_enrolment(profile, code)
    return profile


async def linked_profile(relay: RelayUnderTest, approver: Profile, directory: Path) -> Profile:
    """Link a new device into ``directory``, approved by ``approver`` (a device of the
    account), both sides running concurrently as two phones would."""
    profile = Profile(directory)
    send_code, receive_code = trio.open_memory_channel[str](1)

    async def approve() -> None:
        code = await receive_code.receive()
        async with Messenger.connect(approver) as messenger:
            await approve_link(messenger, code)

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(approve)
            await link_new_device(profile, f"127.0.0.1:{relay.port}", relay.running.cert_path,
                                  show_code=send_code.send_nowait)
    return profile


async def received(profile: Profile) -> list[ReceivedMessage]:
    """Every stored message of ``profile``, acknowledged."""
    found = []
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(profile) as messenger, aclosing(
                messenger.messages(stop_when_empty=True)) as messages:
            async for message in messages:
                found.append(message)
    return found


async def texts(profile: Profile) -> list[tuple[str, str, str]]:
    """(from, to, text) of every stored message, acknowledged; each must be readable and from
    an accepted account."""
    found = []
    for message in await received(profile):
        assert message.content is not None, message.problem
        assert message.sender_confirmed and not message.identity_changed
        found.append((message.content.sender_phone, message.content.recipient_phone,
                      message.content.text))
    return found


async def send(profile: Profile, phone: str, text: str) -> tuple[tuple[int, ...],
                                                                 tuple[int, ...]]:
    """Send ``text``; the recipient's and this account's devices that got it."""
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(profile) as messenger:
            receipt = await messenger.send_text(phone, text)
    assert receipt.own_copy_problem is None, receipt.own_copy_problem
    return receipt.recipient_devices, receipt.own_devices


async def safety_number(profile: Profile, phone: str) -> str:
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(profile) as messenger:
            return await messenger.safety_number(phone)


async def refusal(profile: Profile) -> tuple[int, str]:
    """The (code, reason) with which the relay turns ``profile``'s device away."""
    try:
        with trio.fail_after(TIMEOUT_S):
            async with Messenger.connect(profile):
                pass
    except BaseException as error:
        sole: BaseException = error
        while isinstance(sole, BaseExceptionGroup) and len(sole.exceptions) == 1:
            sole = sole.exceptions[0]
        if isinstance(sole, (RelayError, ConnectionClosed)):
            return int(sole.code), sole.reason
        raise
    raise AssertionError("the relay accepted the device")


async def audit_subjects(relay: RelayUnderTest, action: str) -> list[str]:
    """Subjects of the organisation's audit entries for ``action``, oldest first: what its
    administrators see in the console's audit log."""
    async with open_sqlite_store(relay.data_dir / "relay.db") as store:
        organisation = await store.get_organisation("acme")
        assert organisation is not None
        entries = await store.list_audit(organisation_id=organisation.organisation_id,
                                         action=action, limit=100)
    return [entry.subject for entry in reversed(entries)]
