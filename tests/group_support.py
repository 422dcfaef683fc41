"""Group helpers for end-to-end tests: send through a real relay (identified or sealed)
while keeping what a relay operator could see of a group message (its shared payload) and what the sender's own state
says of it (group id, chain, iteration), so a test can hand that message to a device that
should not be able to read it.

No `assert` here (this module is not assert-rewritten, and the suite also runs under -O):
checks raise AssertionError themselves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

from client import group_messaging
from client.group_messaging import GroupReceipt, create_group, send_group_text
from client.groups import GroupBook, GroupHeader
from client.messenger import Messenger, saved_groups
from client.profile import Profile
from tests.account_support import TIMEOUT_S, received

__all__ = ["SentGroupMessage", "book_of", "group_send", "group_texts", "start_group"]


@dataclass(frozen=True)
class SentGroupMessage:
    """One group message as it left: the shared payload and the header each record held."""

    sender: tuple[str, int]
    header: GroupHeader
    shared: bytes
    receipt: GroupReceipt


async def group_send(profile: Profile, name: str, text: str) -> SentGroupMessage:
    """Send ``text`` to the group; keep the shared payload the relay got."""
    shared_sent: list[bytes] = []
    send_sealed = group_messaging.send_sealed_group  # type: ignore[attr-defined]

    async def recording_sealed(messenger: Messenger,
                               recipients: Mapping[str, Mapping[int, bytes]], shared: bytes,
                               tokens: Mapping[str, bytes], *, client_message_id: bytes) -> None:
        shared_sent.append(shared)
        await send_sealed(messenger, recipients, shared, tokens,
                          client_message_id=client_message_id)

    group_messaging.send_sealed_group = recording_sealed  # type: ignore[attr-defined]
    try:
        with trio.fail_after(TIMEOUT_S):
            async with Messenger.connect(profile) as messenger:
                original = messenger.client.multi_send

                async def recording(recipients: Mapping[str, Mapping[int, bytes]],
                                    shared: bytes, **options: object) -> bool:
                    shared_sent.append(shared)
                    return await original(recipients, shared, **options)  # type: ignore[arg-type]

                messenger.client.multi_send = recording  # type: ignore[method-assign]
                receipt = await send_group_text(messenger, name, text)
                group = messenger.groups.named(name)
                if group is None or group.own_chain is None:
                    raise AssertionError(f"the sender has no chain for {name!r}")
                header = GroupHeader(group_id=group.group_id,
                                     chain_id=group.own_chain.chain_id,
                                     iteration=group.own_chain.iteration - 1,
                                     digest=hashlib.sha256(shared_sent[-1]).digest())
                sender = (messenger.user_id, messenger.device_id)
    finally:
        group_messaging.send_sealed_group = send_sealed  # type: ignore[attr-defined]
    return SentGroupMessage(sender=sender, header=header, shared=shared_sent[-1],
                            receipt=receipt)


async def start_group(profile: Profile, name: str, phones: list[str]) -> GroupReceipt:
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(profile) as messenger:
            return await create_group(messenger, name, phones)


async def group_texts(profile: Profile) -> list[tuple[str, str, str]]:
    """(group, from, text) of every stored group message, acknowledged; each readable, from
    a confirmed sender; a pairwise text among them fails the test."""
    found = []
    for message in await received(profile):
        if message.content is None or message.group is None:
            raise AssertionError(f"not a readable group message: {message}")
        if not message.sender_confirmed or message.identity_changed:
            raise AssertionError(f"a group message from an unconfirmed sender: {message}")
        found.append((message.group, message.content.sender_phone, message.content.text))
    return found


def book_of(directory: Path) -> GroupBook:
    """The groups a profile keeps on disk (its chains as they stand)."""
    return saved_groups(Profile(directory))
