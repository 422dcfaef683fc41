"""What a text message's plaintext holds, before `crypto` encrypts it.

The content is a msgpack map ``{"v": 1, "from": PHONE, "to": PHONE, "text": TEXT,
"sent_at": ISO-8601}``. The sender's phone number travels only here, inside the end-to-end
encrypted content, so the relay never needs it in clear; ``to`` lets the sender's own other
devices show the copy they receive as "sent to ...".

A second kind travels only between the devices of one account: ``{"v": 1, "kind":
"device_list", "list": BYTES}`` carries the account's newly signed device list, so the other
devices learn at once, end to end, that a device joined or left (they check the signature
with the account key, and refuse a list older than one they have seen).

A third kind shares the account's **profile key** (`client.sealed`): ``{"v": 1, "kind":
"profile_key", "from": PHONE, "key": 32 BYTES, "generation": INT, "created_ms": INT}``. It goes
to the account's own devices when the key is made or rotated, and to a contact with the first
message written to it and after each rotation; its delivery token lets the contact send
sealed. Only end-to-end encrypted content ever carries it.

Groups add three more kinds (client/groups.py): ``group_key`` (a member device's sender key,
pairwise), ``group_header`` (a MULTI_SEND's per-device key material: which group and chain
its shared ciphertext is) and ``group_opened`` (never sent: how the profile's inbox keeps a
group message it opened until it is acknowledged).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import msgpack

from client.groups import GroupContentError, GroupHeader, GroupKey, decode_group_pairwise
from crypto.sender_keys import GROUP_ID_SIZE

__all__ = ["CONTENT_VERSION", "MAX_TEXT_BYTES", "ContentError", "DeviceListUpdate",
           "GroupOpened", "ProfileKeyShare", "TextMessage", "decode_content", "encode_content",
           "encode_device_list_update", "encode_group_opened", "encode_profile_key_share"]

CONTENT_VERSION = 1
MAX_TEXT_BYTES = 60 * 1024
"""Longest text one message carries: with the map around it the plaintext stays under
`crypto.device.MAX_PLAINTEXT_SIZE` (64 KiB); bigger content goes as an attachment."""
_MAX_PHONE_CHARS = 32  # PROTOCOL.md's phone number limit.
_MAX_TIMESTAMP_CHARS = 64  # An ISO-8601 time with offset is about 30 characters.
_MAX_DEVICE_LIST_BYTES = 1024  # crypto.device_list.MAX_DEVICE_LIST_SIZE is 642.
_MAX_GROUP_PLAINTEXT_BYTES = 65_536  # crypto.device.MAX_PLAINTEXT_SIZE: what a sender sends.
_PROFILE_KEY_BYTES = 32  # crypto.delivery_token.PROFILE_KEY_SIZE
_MAX_U63 = 2**63 - 1


class ContentError(ValueError):
    """A decrypted plaintext is not text message content of a version we read."""


@dataclass(frozen=True, kw_only=True)
class TextMessage:
    """One text message as its sender wrote it."""

    sender_phone: str  #: the sender's number, as the sender states it (check it against LOOKUP)
    recipient_phone: str  #: the number it was sent to
    text: str  #: the message, at most MAX_TEXT_BYTES bytes of UTF-8
    sent_at: str  #: the sender's clock when sending, ISO-8601 with milliseconds


@dataclass(frozen=True, kw_only=True)
class DeviceListUpdate:
    """Another device of this account signed a new device list (check it before use)."""

    device_list: bytes


@dataclass(frozen=True, kw_only=True)
class GroupOpened:
    """A group message this device opened, kept in the inbox until it is acknowledged."""

    group_id: bytes
    plaintext: bytes  #: the group content (client.groups.decode_group_content)


def encode_group_opened(group_id: bytes, plaintext: bytes) -> bytes:
    packed: bytes = msgpack.packb({"v": CONTENT_VERSION, "kind": "group_opened",
                                   "group": group_id, "content": plaintext})
    return packed


@dataclass(frozen=True, kw_only=True, repr=False)
class ProfileKeyShare:
    """A profile key shared by a contact, or by another device of this account."""

    sender_phone: str  #: the sharer's number, as stated (check it against LOOKUP)
    profile_key: bytes  #: 32 bytes: its delivery token lets the holder send sealed
    generation: int  #: rotations so far (the account's devices adopt the highest)
    created_ms: int  #: when the key was made, ms since the Unix epoch

    def __repr__(self) -> str:
        return f"ProfileKeyShare(sender_phone={self.sender_phone!r}, <key redacted>)"


def encode_profile_key_share(*, sender_phone: str, profile_key: bytes, generation: int,
                             created_ms: int) -> bytes:
    """The plaintext that shares the account's profile key."""
    packed: bytes = msgpack.packb({"v": CONTENT_VERSION, "kind": "profile_key",
                                   "from": sender_phone, "key": profile_key,
                                   "generation": generation, "created_ms": created_ms})
    return packed


def _decode_profile_key_share(value: dict[str, object]) -> ProfileKeyShare:
    phone, key = value.get("from"), value.get("key")
    generation, created_ms = value.get("generation"), value.get("created_ms")
    if not isinstance(phone, str) or len(phone) > _MAX_PHONE_CHARS:
        raise ContentError("content field 'from' is missing, not text or too long")
    if not isinstance(key, bytes) or len(key) != _PROFILE_KEY_BYTES:
        raise ContentError("content field 'key' is not a 32-byte profile key")
    numbers = [number for number in (generation, created_ms)
               if isinstance(number, int) and not isinstance(number, bool)
               and 0 <= number <= _MAX_U63]
    if len(numbers) != 2:
        raise ContentError("content fields 'generation' and 'created_ms' are not "
                           "non-negative integers")
    generation, created_ms = numbers
    return ProfileKeyShare(sender_phone=phone, profile_key=key, generation=generation,
                           created_ms=created_ms)


def encode_device_list_update(device_list: bytes) -> bytes:
    """The plaintext that tells the account's other devices about a new signed list."""
    packed: bytes = msgpack.packb({"v": CONTENT_VERSION, "kind": "device_list",
                                   "list": device_list})
    return packed


def encode_content(*, sender_phone: str, recipient_phone: str, text: str,
                   sent_at: datetime.datetime) -> bytes:
    """The plaintext of a text message.

    Raises:
        ValueError: the text is over MAX_TEXT_BYTES bytes.
    """
    if len(text.encode()) > MAX_TEXT_BYTES:
        raise ValueError(f"the text is longer than {MAX_TEXT_BYTES} bytes")
    packed: bytes = msgpack.packb({
        "v": CONTENT_VERSION, "from": sender_phone, "to": recipient_phone, "text": text,
        "sent_at": sent_at.isoformat(timespec="milliseconds")})
    return packed


def decode_content(data: bytes) -> (TextMessage | DeviceListUpdate | ProfileKeyShare | GroupKey
                                    | GroupHeader | GroupOpened):
    """Parse a decrypted plaintext.

    Raises:
        ContentError: not msgpack, not our version, or a field missing, ill-typed or too long.
    """
    try:
        value = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as error:
        raise ContentError("content is not msgpack") from error
    if not isinstance(value, dict) or value.get("v") != CONTENT_VERSION:
        raise ContentError("content of an unsupported version")
    kind = value.get("kind", "text")
    if kind in ("group_key", "group_header"):
        try:
            return decode_group_pairwise(value)
        except GroupContentError as error:
            raise ContentError(str(error)) from error
    if kind == "group_opened":
        group_id, plaintext = value.get("group"), value.get("content")
        if (not isinstance(group_id, bytes) or len(group_id) != GROUP_ID_SIZE
                or not isinstance(plaintext, bytes)
                or len(plaintext) > _MAX_GROUP_PLAINTEXT_BYTES):
            raise ContentError("an opened group message is damaged")
        return GroupOpened(group_id=group_id, plaintext=plaintext)
    if kind == "device_list":
        device_list = value.get("list")
        if not isinstance(device_list, bytes) or len(device_list) > _MAX_DEVICE_LIST_BYTES:
            raise ContentError("content field 'list' is missing, not bytes or too long")
        return DeviceListUpdate(device_list=device_list)
    if kind == "profile_key":
        return _decode_profile_key_share(value)
    if kind != "text":
        raise ContentError("content of an unknown kind")
    fields = {name: value.get(name) for name in ("from", "to", "text", "sent_at")}
    limits = {"from": _MAX_PHONE_CHARS, "to": _MAX_PHONE_CHARS,
              "text": MAX_TEXT_BYTES, "sent_at": _MAX_TIMESTAMP_CHARS}
    for name, field_value in fields.items():
        if not isinstance(field_value, str) or len(field_value) > limits[name]:
            raise ContentError(f"content field {name!r} is missing, not text or too long")
    return TextMessage(sender_phone=str(fields["from"]), recipient_phone=str(fields["to"]),
                       text=str(fields["text"]), sent_at=str(fields["sent_at"]))
