"""What a text message's plaintext holds, before `crypto` encrypts it.

The content is a msgpack map ``{"v": 1, "from": PHONE, "to": PHONE, "text": TEXT,
"sent_at": ISO-8601}``. The sender's phone number travels only here, inside the end-to-end
encrypted content, so the relay never needs it in clear; ``to`` lets the sender's own other
devices show the copy they receive as "sent to ...".

A second kind travels only between the devices of one account: ``{"v": 1, "kind":
"device_list", "list": BYTES}`` carries the account's newly signed device list, so the other
devices learn at once, end to end, that a device joined or left (they check the signature
with the account key, and refuse a list older than one they have seen).

A third kind is call signalling (docs/CALLS.md): ``{"v": 1, "kind": "call", "type": TYPE,
"call": CALL_ID, "from": PHONE, "sent_at": MS, "kid": INT, "key": BYTES, "members":
[PHONE, ...]}``, where TYPE is one of `CALL_SIGNAL_TYPES`; ``kid`` and ``key`` (the sender's
SFrame key id and base key, `crypto.sframe`) travel in an offer, answer, join or rekey only,
``members`` (the other invited numbers of a group call) in an offer only, ``by`` (the
device that answered) in a "handled" only.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import msgpack

__all__ = ["CALL_SIGNAL_TYPES", "CONTENT_VERSION", "MAX_CALL_KEY_BYTES", "MAX_CALL_MEMBERS",
           "MAX_TEXT_BYTES", "CallSignal", "ContentError", "DeviceListUpdate", "TextMessage",
           "decode_content", "encode_call_signal", "encode_content", "encode_device_list_update"]

CONTENT_VERSION = 1
MAX_TEXT_BYTES = 60 * 1024
"""Longest text one message carries: with the map around it the plaintext stays under
`crypto.device.MAX_PLAINTEXT_SIZE` (64 KiB); bigger content goes as an attachment."""
_MAX_PHONE_CHARS = 32  # PROTOCOL.md's phone number limit.
_MAX_TIMESTAMP_CHARS = 64  # An ISO-8601 time with offset is about 30 characters.
_MAX_DEVICE_LIST_BYTES = 1024  # crypto.device_list.MAX_DEVICE_LIST_SIZE is 642.
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


def decode_content(data: bytes) -> TextMessage | DeviceListUpdate | CallSignal:
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
    if kind == "device_list":
        device_list = value.get("list")
        if not isinstance(device_list, bytes) or len(device_list) > _MAX_DEVICE_LIST_BYTES:
            raise ContentError("content field 'list' is missing, not bytes or too long")
        return DeviceListUpdate(device_list=device_list)
    if kind == "call":
        return _decode_call(value)
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
