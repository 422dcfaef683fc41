"""Group conversations on a `Messenger`: create, add, remove, send (docs/GROUPS.md).

A group message costs its sender one upload whatever the group's size: the content is
encrypted once under this device's sender key (`crypto.sender_keys`) and goes in ONE
MULTI_SEND as the shared ciphertext; each recipient device also gets its own small record,
pairwise encrypted (`client.groups.GroupHeader`), naming the group and chain. The relay sees
the set of devices an envelope goes to, never a group id, name or member list; once every
member's delivery token is known, the MULTI_SEND goes sealed and the relay does not learn the
sender either (`client.group_sealed`).

Before a message, every member device (each member's signed device list, and this
account's other devices) that lacks this device's current chain gets it pairwise (an
ordinary SEND). When a member or one of a member's devices left, a new chain is started
first and handed only to the devices that remain. A member added later gets the chain as it
stands: it opens nothing sent before. Membership changes are group messages themselves.

Every step runs under the profile's lock (`Messenger.exclusive`), and the state is saved
before anything built from it leaves: a chain's message key is never used twice.
"""

from __future__ import annotations

import datetime
import secrets
from dataclasses import dataclass
from pathlib import Path

import trio

from client.attachments import TransferProgress, forget_upload
from client.connection import MismatchedDevices
from client.contacts import Contact
from client.group_sealed import (
    SealedRefused,
    delivery_tokens,
    seal_records,
    send_sealed_group,
)
from client.groups import (
    MAX_GROUP_MEMBERS,
    MAX_GROUP_NAME_CHARS,
    Group,
    encode_group_file,
    encode_group_header,
    encode_group_key,
    encode_group_membership,
    encode_group_text,
)
from client.messenger import MAX_MISMATCH_RETRIES, Messenger
from client.sealed import SEALED_MESSAGE_ID_SIZE
from crypto.device import MAX_RECIPIENTS_PER_MESSAGE, DeviceAddress
from crypto.primitives import SystemRandom
from crypto.sender_keys import GROUP_ID_SIZE
from wire.frames import MAX_CLIENT_MESSAGE_ID

__all__ = ["GroupError", "GroupReceipt", "add_member", "create_group", "remove_member",
           "send_group_file", "send_group_text"]


class GroupError(Exception):
    """A group command that cannot be done as asked (the message says why); nothing sent."""


@dataclass(frozen=True, kw_only=True)
class GroupReceipt:
    """What one group message reached."""

    group: str  #: the group's local name
    message_id: int  #: the MULTI_SEND's client_message_id
    devices: int  #: recipient devices of the MULTI_SEND (this device excluded)
    keys_sent: int  #: devices handed this device's chain (pairwise) before it
    rekeyed: bool  #: a new chain was started first (the first, or a member or device left)
    mismatch_retries: int  #: MULTI_SENDs repeated after MISMATCHED_DEVICES
    sealed: bool = False  #: sent sealed: the relay was not told who sent it


def _group(messenger: Messenger, name: str) -> Group:
    group = messenger.groups.named(name)
    if group is None:
        raise GroupError(f"no group named {name!r} on this device (see `group list`)")
    return group


async def _member(messenger: Messenger, phone: str) -> Contact:
    contact = await messenger.contact(phone)
    await messenger.ready(contact)
    return contact


async def create_group(messenger: Messenger, name: str, phones: list[str]) -> GroupReceipt:
    """A new group of this user and ``phones``, told to every member device.

    Raises:
        GroupError: the name is taken or too long, or too many members.
        UnknownContactError, IdentityChangedError, MissingPrekeysError, RelayError: as
            `Messenger.send_text`.
    """
    if not 0 < len(name) <= MAX_GROUP_NAME_CHARS:
        raise GroupError(f"a group name has 1 to {MAX_GROUP_NAME_CHARS} characters")
    async with messenger.exclusive():
        if messenger.groups.named(name) is not None:
            raise GroupError(f"a group named {name!r} exists on this device already")
        members = {messenger.phone: messenger.user_id}
        for phone in phones:
            members[phone] = (await _member(messenger, phone)).user_id
        if len(members) > MAX_GROUP_MEMBERS:
            raise GroupError(f"a group has at most {MAX_GROUP_MEMBERS} members")
        try:
            group = messenger.groups.create(group_id=secrets.token_bytes(GROUP_ID_SIZE),
                                            name=name, members=members, revision=1)
        except ValueError as error:
            raise GroupError(str(error)) from error
        messenger.save()
        return await _send(messenger, group,
                           encode_group_membership(group, sender_phone=messenger.phone))


async def add_member(messenger: Messenger, name: str, phone: str) -> GroupReceipt:
    """Add ``phone``: every member applies it; the new member gets the chains as they stand
    (nothing sent before opens for it).

    Raises:
        GroupError: no such group, the number is a member already, or the group is full.
    """
    async with messenger.exclusive():
        group = _group(messenger, name)
        if phone in group.members:
            raise GroupError(f"{phone} is a member of {name!r} already")
        if len(group.members) >= MAX_GROUP_MEMBERS:
            raise GroupError(f"a group has at most {MAX_GROUP_MEMBERS} members")
        contact = await _member(messenger, phone)
        group.apply_membership({**group.members, phone: contact.user_id}, group.revision + 1)
        messenger.save()
        return await _send(messenger, group,
                           encode_group_membership(group, sender_phone=messenger.phone))


async def remove_member(messenger: Messenger, name: str, phone: str) -> GroupReceipt:
    """Remove ``phone``: a new chain first, handed only to those who stay; every remaining
    member applies the change and starts a new chain of its own before its next message.

    Raises:
        GroupError: no such group, or the number is not a member (or is this user).
    """
    async with messenger.exclusive():
        group = _group(messenger, name)
        if phone not in group.members:
            raise GroupError(f"{phone} is not a member of {name!r}")
        if phone == messenger.phone:
            raise GroupError("this user cannot remove itself from a group")
        remaining = {member: user_id for member, user_id in group.members.items()
                     if member != phone}
        group.apply_membership(remaining, group.revision + 1)  # re-keys
        messenger.save()
        return await _send(messenger, group,
                           encode_group_membership(group, sender_phone=messenger.phone))


async def send_group_text(messenger: Messenger, name: str, text: str) -> GroupReceipt:
    """Send ``text`` to every member device of the group in one MULTI_SEND.

    Raises:
        GroupError: no such group. ValueError: the text is too long. Else as `send_text`.
    """
    content = encode_group_text(
        sender_phone=messenger.phone, text=text,
        sent_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"))
    async with messenger.exclusive():
        return await _send(messenger, _group(messenger, name), content)


async def send_group_file(messenger: Messenger, name: str, path: Path, *,
                          progress: TransferProgress | None = None) -> GroupReceipt:
    """Upload the file at ``path`` once, encrypted as it is read (`Messenger.upload_announced`),
    then send its announcement (blob id, key, digest, size, name) to the group as
    `send_group_text` sends a text: every member device fetches the same blob.

    Raises:
        GroupError: no such group. Else as `Messenger.send_file`; like it, every member's
            trust is checked before the upload.
    """
    async with messenger.exclusive():
        group = _group(messenger, name)
        group_id = group.group_id
        for phone in sorted(group.members):
            await _member(messenger, phone)
    announcement, uploaded = await messenger.upload_announced(
        path, records_key=f"group {group_id.hex()}", recipient_phone="", progress=progress)
    content = encode_group_file(announcement)
    async with messenger.exclusive():
        receipt = await _send(messenger, _group(messenger, name), content)
    await trio.to_thread.run_sync(forget_upload, uploaded)
    return receipt


def _batches(addresses: list[DeviceAddress]) -> list[list[DeviceAddress]]:
    step = MAX_RECIPIENTS_PER_MESSAGE
    return [addresses[start:start + step] for start in range(0, len(addresses), step)]


async def _send(messenger: Messenger, group: Group, content: bytes) -> GroupReceipt:
    """Hand the chain (and this account's profile key) to the member devices that lack it,
    then one MULTI_SEND: sealed when every recipient's delivery token is known."""
    message_id = secrets.randbelow(MAX_CLIENT_MESSAGE_ID)
    sealed_id = secrets.token_bytes(SEALED_MESSAGE_ID_SIZE)
    retries, keys_sent, rekeyed = 0, 0, False
    while True:
        contacts = [await _member(messenger, phone) for phone in sorted(group.members)]
        targets = {contact.user_id: {
            device_id: key for device_id, key in contact.devices.items()
            if (contact.user_id, device_id) != (messenger.user_id, messenger.device_id)}
            for contact in contacts}
        rekeyed |= group.follow_devices({(user_id, device_id)
                                         for user_id, devices in targets.items()
                                         for device_id in devices})
        rekeyed |= group.own_chain is None
        chain = group.sending_chain(SystemRandom())
        for contact in contacts:
            lacking = {(contact.user_id, device_id) for device_id in targets[contact.user_id]
                       } - group.distributed
            if lacking:
                told, _, _ = await messenger.deliver(
                    contact, encode_group_key(group, chain.distribution()),
                    secrets.randbelow(MAX_CLIENT_MESSAGE_ID))
                group.distributed |= {(contact.user_id, device_id) for device_id in told}
                keys_sent += len(told)
            if contact.user_id != messenger.user_id:
                await messenger.share_profile_key(contact)  # so members can seal to us
        message = chain.encrypt(content)
        shared = message.body()
        header = encode_group_header(group.group_id, message, shared)
        recipients: dict[str, dict[int, bytes]] = {}
        for contact in contacts:
            devices = targets[contact.user_id]
            if not devices:
                continue
            await messenger.start_sessions(contact, devices)
            addresses = [DeviceAddress(user_id=contact.user_id, device_id=device_id)
                         for device_id in sorted(devices)]
            for batch in _batches(addresses):
                for address, record in messenger.device.encrypt(header, batch).items():
                    recipients.setdefault(contact.user_id, {})[address.device_id] = record
        messenger.save()  # Before anything leaves: the chain and the sessions moved on.
        sealed = False
        if recipients:
            try:
                sealed = await _multi_send(messenger, contacts, recipients, shared,
                                           message_id=message_id, sealed_id=sealed_id)
            except MismatchedDevices as error:
                if retries >= MAX_MISMATCH_RETRIES:
                    raise
                retries += 1
                for contact in contacts:
                    if contact.user_id in error.users:  # follow its signed list again
                        await messenger.accepted_view(contact)
                continue
        return GroupReceipt(group=group.name, message_id=message_id,
                            devices=sum(map(len, recipients.values())), keys_sent=keys_sent,
                            rekeyed=rekeyed, mismatch_retries=retries, sealed=sealed)


async def _multi_send(messenger: Messenger, contacts: list[Contact],
                      recipients: dict[str, dict[int, bytes]], shared: bytes, *,
                      message_id: int, sealed_id: bytes) -> bool:
    """Sealed to the members if every one's delivery token is known and the relay takes
    them, else identified; True if it went sealed. This account's other devices get theirs
    identified in either case: a sealed send cannot leave out the device that makes it, as
    one that names its sender can."""
    others = {user_id: devices for user_id, devices in recipients.items()
              if user_id != messenger.user_id}
    tokens = delivery_tokens(messenger, contacts, others) if others else None
    if tokens is not None:
        sealed_records = await seal_records(messenger, others, contacts)
        messenger.save()  # the certificate, if it was renewed
        try:
            await send_sealed_group(messenger, sealed_records, shared, tokens,
                                    client_message_id=sealed_id)
        except SealedRefused:
            pass  # a rotated or withdrawn token: this one goes identified
        else:
            own = recipients.get(messenger.user_id)
            if own:
                await messenger.client.multi_send({messenger.user_id: own}, shared,
                                                  client_message_id=message_id)
            return True
    await messenger.client.multi_send(recipients, shared, client_message_id=message_id)
    return False
