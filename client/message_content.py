"""What a text message's plaintext holds, before `crypto` encrypts it.

The content is a msgpack map ``{"v": 1, "from": PHONE, "to": PHONE, "text": TEXT,
"sent_at": ISO-8601}``. The sender's phone number travels only here, inside the end-to-end
encrypted content, so the relay never needs it in clear; ``to`` lets the sender's own other
devices show the copy they receive as "sent to ...".

A second kind travels only between the devices of one account: ``{"v": 1, "kind":
"device_list", "list": BYTES}`` carries the account's newly signed device list, so the other
devices learn at once, end to end, that a device joined or left (they check the signature
with the account key, and refuse a list older than one they have seen).

A third kind announces a file (docs/FILES.md): ``{"v": 1, "kind": "file", "from", "to",
"sent_at", "blob": BYTES, "key": BYTES, "digest": BYTES, "size": INT, "chunk": INT, "name":
TEXT, "type": TEXT or nil}``: the relay's id of the encrypted blob, the file's key, the
SHA-256 of its ciphertext, its plaintext size and chunk size (`crypto.attachments`), the name
the sender gave it (the receiver sanitises it before use) and its media type if known. The
key and the blob id travel only here, end to end encrypted.

A fourth kind is call signalling (docs/CALLS.md): ``{"v": 1, "kind": "call", "type": TYPE,
"call": CALL_ID, "from": PHONE, "sent_at": MS, "kid": INT, "key": BYTES, "members":
[PHONE, ...]}``, where TYPE is one of `CALL_SIGNAL_TYPES`; ``kid`` and ``key`` (the sender's
SFrame key id and base key, `crypto.sframe`) travel in an offer, answer, join or rekey only,
``members`` (the other invited numbers of a group call) in an offer only, ``by`` (the
device that answered) in a "handled" only.

A fifth kind shares the account's **profile key** (`client.sealed`): ``{"v": 1, "kind":
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
from crypto.attachments import (
    ATTACHMENT_DIGEST_SIZE,
    ATTACHMENT_KEY_SIZE,
    MAX_CHUNK_SIZE,
    ciphertext_size,
)
from crypto.sender_keys import GROUP_ID_SIZE

__all__ = ["CALL_SIGNAL_TYPES", "CONTENT_VERSION", "MAX_CALL_KEY_BYTES", "MAX_CALL_MEMBERS",
           "MAX_FILE_NAME_BYTES", "MAX_FILE_SIZE", "MAX_TEXT_BYTES", "CallSignal", "ContentError",
           "DeviceListUpdate", "FileMessage", "GroupOpened", "ProfileKeyShare", "TextMessage",
           "decode_content", "encode_call_signal", "encode_content", "encode_device_list_update",
           "encode_file_content", "encode_group_opened", "encode_profile_key_share"]

CONTENT_VERSION = 1
MAX_TEXT_BYTES = 60 * 1024
"""Longest text one message carries: with the map around it the plaintext stays under
`crypto.device.MAX_PLAINTEXT_SIZE` (64 KiB); bigger content goes as an attachment."""
_MAX_PHONE_CHARS = 32  # PROTOCOL.md's phone number limit.
_MAX_TIMESTAMP_CHARS = 64  # An ISO-8601 time with offset is about 30 characters.
_MAX_DEVICE_LIST_BYTES = 1024  # crypto.device_list.MAX_DEVICE_LIST_SIZE is 642.
MAX_FILE_NAME_BYTES = 255
"""Longest file name a file message carries (UTF-8 bytes): what common file systems take."""
MAX_FILE_SIZE = 2**40
"""Largest file (plaintext bytes) a message may announce, 1 TiB: the client's own ceiling,
far above any relay's blob limit (blob_max_bytes, 100 MiB by default), which decides."""
_MAX_MEDIA_TYPE_CHARS = 127  # RFC 6838 caps a type and a subtype at 127 characters each.
_MIN_BLOB_ID_BYTES = 16  # an unguessable id has at least 128 bits
_MAX_BLOB_ID_BYTES = 64  # the relay draws 32 bytes; room for a longer id, not for a payload
CALL_SIGNAL_TYPES = frozenset({"offer", "ringing", "answer", "busy", "hangup", "handled",
                               "join", "leave", "rekey"})
"""What a call message says: "handled" tells the sender's own other devices that the call was
answered (or declined) here, so they stop ringing; "rekey" hands out a new media key after a
participant left a group call."""
MAX_CALL_KEY_BYTES = 32
"""Longest SFrame base key a call message carries (AES-256's key size)."""
MAX_CALL_MEMBERS = 7
"""Numbers an offer names besides the caller's: the relay's MAX_CALL_INVITEES."""
_CALL_ID_BYTES = 16  # wire.call_frames.CALL_ID_SIZE
_MAX_KEY_ID = 2**64 - 1  # crypto.sframe.MAX_KEY_ID
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
class FileMessage:
    """A file as its sender announced it: where its ciphertext is and how to open it."""

    sender_phone: str  #: as in TextMessage
    recipient_phone: str  #: as in TextMessage
    sent_at: str  #: as in TextMessage
    blob_id: bytes  #: the relay's id of the encrypted blob (a capability: keep it private)
    key: bytes  #: the file's 32-byte key (crypto.attachments)
    digest: bytes  #: SHA-256 of the whole ciphertext, checked before the file is handed over
    size: int  #: the plaintext size in bytes
    chunk_size: int  #: the plaintext bytes per sealed chunk
    name: str  #: the name the sender gave, unsanitised: never use it as a path as it is
    media_type: str | None  #: e.g. "application/pdf", if the sender knew it

    @property
    def ciphertext_size(self) -> int:
        """The size of the blob the relay holds for this file."""
        return ciphertext_size(self.size, self.chunk_size)

    def __repr__(self) -> str:  # the key and the blob id are secrets: never in a log line
        return f"FileMessage(name={self.name!r}, size={self.size})"


@dataclass(frozen=True, kw_only=True)
class DeviceListUpdate:
    """Another device of this account signed a new device list (check it before use)."""

    device_list: bytes


@dataclass(frozen=True, kw_only=True)
class CallSignal:
    """One call message (docs/CALLS.md); who sent it is the relay-authenticated device."""

    kind: str  #: one of CALL_SIGNAL_TYPES
    call_id: bytes  #: the relay's call id, 16 bytes
    sender_phone: str  #: the sender's number, as the sender states it (check it against LOOKUP)
    sent_at_ms: int  #: the sender's clock when sending, ms since the Unix epoch
    key_id: int | None = None  #: the sender's SFrame KID (offer, answer, join, rekey)
    key: bytes | None = None  #: the sender's SFrame base key, under that KID
    members: tuple[str, ...] = ()  #: an offer's other invited numbers (a group call)
    by_device: int | None = None  #: "handled": the device of the callee that answered


def encode_call_signal(signal: CallSignal) -> bytes:
    """The plaintext of a call message.

    Raises:
        ValueError: a field is out of its limits (the same checks `decode_content` makes).
    """
    value: dict[str, object] = {"v": CONTENT_VERSION, "kind": "call", "type": signal.kind,
                                "call": signal.call_id, "from": signal.sender_phone,
                                "sent_at": signal.sent_at_ms}
    if signal.key_id is not None and signal.key is not None:
        value["kid"], value["key"] = signal.key_id, signal.key
    if signal.members:
        value["members"] = list(signal.members)
    if signal.by_device is not None:
        value["by"] = signal.by_device
    packed: bytes = msgpack.packb(value)
    _decode_call(msgpack.unpackb(packed, raw=False))  # one set of limits for both directions
    return packed


def _decode_call(value: dict[str, object]) -> CallSignal:
    kind, call_id, phone = value.get("type"), value.get("call"), value.get("from")
    sent_at, key_id, key = value.get("sent_at"), value.get("kid"), value.get("key")
    members, by_device = value.get("members", []), value.get("by")
    if kind not in CALL_SIGNAL_TYPES:
        raise ContentError("call content of an unknown type")
    if not isinstance(call_id, bytes) or len(call_id) != _CALL_ID_BYTES:
        raise ContentError("call content field 'call' is not a call id")
    if not isinstance(phone, str) or len(phone) > _MAX_PHONE_CHARS:
        raise ContentError("call content field 'from' is missing, not text or too long")
    if not isinstance(sent_at, int) or sent_at < 0:
        raise ContentError("call content field 'sent_at' is not a time")
    if (key_id is None) != (key is None) or (key_id is None and kind in _KEYED_TYPES):
        raise ContentError("call content has a key id without a key, or lacks both")
    if key_id is not None and (not isinstance(key_id, int) or not 0 <= key_id <= _MAX_KEY_ID
                               or not isinstance(key, bytes)
                               or not 16 <= len(key) <= MAX_CALL_KEY_BYTES):
        raise ContentError("call content fields 'kid' and 'key' are out of range")
    if (not isinstance(members, list) or len(members) > MAX_CALL_MEMBERS
            or not all(isinstance(m, str) and len(m) <= _MAX_PHONE_CHARS for m in members)):
        raise ContentError("call content field 'members' is not a short list of numbers")
    if by_device is not None and (not isinstance(by_device, int) or not 0 <= by_device < 2**32):
        raise ContentError("call content field 'by' is not a device id")
    return CallSignal(kind=str(kind), call_id=call_id, sender_phone=phone, sent_at_ms=sent_at,
                      key_id=key_id if isinstance(key_id, int) else None,
                      key=key if isinstance(key, bytes) else None,
                      members=tuple(str(member) for member in members),
                      by_device=by_device if isinstance(by_device, int) else None)


_KEYED_TYPES = frozenset({"offer", "answer", "join", "rekey"})


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


def encode_file_content(*, sender_phone: str, recipient_phone: str, sent_at: datetime.datetime,
                        blob_id: bytes, key: bytes, digest: bytes, size: int, chunk_size: int,
                        name: str, media_type: str | None) -> bytes:
    """The plaintext of a file message (the file itself went to the relay encrypted).

    Raises:
        ValueError: a field is out of its limits (our misuse: check before uploading).
    """
    packed: bytes = msgpack.packb({
        "v": CONTENT_VERSION, "kind": "file", "from": sender_phone, "to": recipient_phone,
        "sent_at": sent_at.isoformat(timespec="milliseconds"), "blob": blob_id, "key": key,
        "digest": digest, "size": size, "chunk": chunk_size, "name": name,
        "type": media_type})
    try:
        _decode_file(msgpack.unpackb(packed, raw=False))
    except ContentError as error:
        raise ValueError(str(error)) from None
    return packed


def decode_content(
        data: bytes,
) -> (TextMessage | FileMessage | DeviceListUpdate | CallSignal | ProfileKeyShare | GroupKey
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
    if kind == "file":
        return _decode_file(value)
    if kind == "call":
        return _decode_call(value)
    if kind == "profile_key":
        return _decode_profile_key_share(value)
    if kind != "text":
        raise ContentError("content of an unknown kind")
    fields = _texts(value, {"from": _MAX_PHONE_CHARS, "to": _MAX_PHONE_CHARS,
                            "text": MAX_TEXT_BYTES, "sent_at": _MAX_TIMESTAMP_CHARS})
    return TextMessage(sender_phone=fields["from"], recipient_phone=fields["to"],
                       text=fields["text"], sent_at=fields["sent_at"])


def _texts(value: dict[object, object], limits: dict[str, int]) -> dict[str, str]:
    """The text fields ``limits`` names, each checked against its limit."""
    fields: dict[str, str] = {}
    for name, limit in limits.items():
        field_value = value.get(name)
        if not isinstance(field_value, str) or len(field_value) > limit:
            raise ContentError(f"content field {name!r} is missing, not text or too long")
        fields[name] = field_value
    return fields


def _decode_file(value: dict[object, object]) -> FileMessage:
    fields = _texts(value, {"from": _MAX_PHONE_CHARS, "to": _MAX_PHONE_CHARS,
                            "sent_at": _MAX_TIMESTAMP_CHARS, "name": MAX_FILE_NAME_BYTES})
    if len(fields["name"].encode()) > MAX_FILE_NAME_BYTES:
        raise ContentError(f"the file name is longer than {MAX_FILE_NAME_BYTES} bytes")
    sizes = {"blob": (_MIN_BLOB_ID_BYTES, _MAX_BLOB_ID_BYTES),
             "key": (ATTACHMENT_KEY_SIZE, ATTACHMENT_KEY_SIZE),
             "digest": (ATTACHMENT_DIGEST_SIZE, ATTACHMENT_DIGEST_SIZE)}
    byte_fields: dict[str, bytes] = {}
    for name, (least, most) in sizes.items():
        field_value = value.get(name)
        if not isinstance(field_value, bytes) or not least <= len(field_value) <= most:
            raise ContentError(f"content field {name!r} is missing, not bytes or of a wrong "
                               f"size")
        byte_fields[name] = field_value
    size, chunk_size, media_type = value.get("size"), value.get("chunk"), value.get("type")
    if (not isinstance(size, int) or isinstance(size, bool)
            or not 0 <= size <= MAX_FILE_SIZE):
        raise ContentError(f"the file size is not a number of bytes from 0 to {MAX_FILE_SIZE}")
    if (not isinstance(chunk_size, int) or isinstance(chunk_size, bool)
            or not 1 <= chunk_size <= MAX_CHUNK_SIZE):
        raise ContentError(f"the chunk size is not from 1 to {MAX_CHUNK_SIZE} bytes")
    if media_type is not None and (not isinstance(media_type, str)
                                   or len(media_type) > _MAX_MEDIA_TYPE_CHARS):
        raise ContentError("content field 'type' is not text or too long")
    return FileMessage(sender_phone=fields["from"], recipient_phone=fields["to"],
                       sent_at=fields["sent_at"], blob_id=byte_fields["blob"],
                       key=byte_fields["key"], digest=byte_fields["digest"], size=size,
                       chunk_size=chunk_size, name=fields["name"], media_type=media_type)
