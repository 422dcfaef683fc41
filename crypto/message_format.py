"""The bytes of an end-to-end encrypted message (what a SEND carries per device).

All integers big-endian, all fields fixed-size (docs/CRYPTO.md has the table)::

    RATCHET message: version (1) = 2 | type (1) = 2 | ratchet header (40) | AEAD ciphertext
    PREKEY message:  version (1) = 2 | type (1) = 1 | PQXDH header (1645) | ratchet header (40)
                     | AEAD ciphertext
    PQXDH header:    identity key (32) | base key (32) | signed prekey id (4) | KEM prekey id (4)
                     | has one-time prekey (1: 0|1) | one-time prekey id (4; 0 if absent)
                     | KEM ciphertext (1568)

The AEAD ciphertext is AES-256-GCM over the padded plaintext (`crypto.padding`), so its length
is 16 + a multiple of 160. Its associated data (`associated_data`, then the ratchet header)
binds the format version, both identity keys, both device addresses and, in a PREKEY message,
the PQXDH header byte for byte: a re-encoded base key or any other changed field fails the AEAD.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from crypto.address import DeviceAddress, encode_address
from crypto.errors import MalformedMessageError
from crypto.padding import PADDING_BUCKET_SIZE
from crypto.pqxdh import PrekeyHeader
from crypto.primitives import (
    AES256GCM_TAG_SIZE,
    ED25519_PUBLIC_KEY_SIZE,
    MLKEM1024_CIPHERTEXT_SIZE,
)
from crypto.ratchet import RATCHET_HEADER_SIZE, RatchetHeader

__all__ = [
    "MAX_MESSAGE_SIZE",
    "MESSAGE_FORMAT_VERSION",
    "PREKEY_HEADER_SIZE",
    "MessageType",
    "PrekeyMessage",
    "RatchetMessage",
    "associated_data",
    "decode_message",
    "encode_message",
    "encode_prekey_header",
]

MESSAGE_FORMAT_VERSION = 2
"""2 since the associated data binds the device addresses and the PQXDH header (issue 13)."""
MAX_MESSAGE_SIZE = 98_304  # Bytes: the relay's per-device ciphertext limit (PROTOCOL.md SEND).
_ASSOCIATED_DATA_LABEL = b"cryptopass/2 message\x00"
_PREFIX = struct.Struct(">BB")  # version, type
_PREKEY_FIELDS = struct.Struct(">32s32sIIBI1568s")
PREKEY_HEADER_SIZE = _PREKEY_FIELDS.size  # 1645 bytes
_MIN_AEAD_CIPHERTEXT_SIZE = AES256GCM_TAG_SIZE + PADDING_BUCKET_SIZE


class MessageType(enum.IntEnum):
    PREKEY = 1  # starts a session: PQXDH header, then the first ratchet message
    RATCHET = 2  # a message within an established session


@dataclass(frozen=True, kw_only=True)
class RatchetMessage:
    """A Double Ratchet message."""

    header: RatchetHeader
    ciphertext: bytes
    """AES-256-GCM output (padded plaintext || 16-byte tag)."""


@dataclass(frozen=True, kw_only=True)
class PrekeyMessage:
    """An initial message: what the responder needs for PQXDH, then a ratchet message."""

    prekey_header: PrekeyHeader
    message: RatchetMessage


def associated_data(*, sender_identity_key: bytes, recipient_identity_key: bytes,
                    sender: DeviceAddress, recipient: DeviceAddress,
                    prekey_header: PrekeyHeader | None) -> bytes:
    """The AEAD associated data before the ratchet header (which `crypto.ratchet` appends):

    label || version (1) || sender identity key (32) || recipient identity key (32)
    || sender address || recipient address (each `encode_address`)
    || [the encoded PQXDH header (1645), when the message carries one]
    """
    return (_ASSOCIATED_DATA_LABEL + bytes([MESSAGE_FORMAT_VERSION])
            + sender_identity_key + recipient_identity_key
            + encode_address(sender) + encode_address(recipient)
            + (b"" if prekey_header is None else encode_prekey_header(prekey_header)))


def encode_prekey_header(header: PrekeyHeader) -> bytes:
    """The PQXDH header's 1645 wire bytes (`decode_message` accepts only this encoding, so
    decoding then encoding gives back the bytes received)."""
    one_time_prekey_id = header.one_time_prekey_id
    return _PREKEY_FIELDS.pack(
        header.identity_key, header.base_key, header.signed_prekey_id, header.kem_prekey_id,
        0 if one_time_prekey_id is None else 1,
        0 if one_time_prekey_id is None else one_time_prekey_id,
        header.kem_ciphertext,
    )


def encode_message(message: PrekeyMessage | RatchetMessage) -> bytes:
    """Serialise a message to its wire bytes."""
    if isinstance(message, RatchetMessage):
        return (_PREFIX.pack(MESSAGE_FORMAT_VERSION, MessageType.RATCHET)
                + message.header.encode() + message.ciphertext)
    return (_PREFIX.pack(MESSAGE_FORMAT_VERSION, MessageType.PREKEY)
            + encode_prekey_header(message.prekey_header)
            + message.message.header.encode() + message.message.ciphertext)


def decode_message(data: bytes) -> PrekeyMessage | RatchetMessage:
    """Parse wire bytes; check every size before use.

    Raises:
        MalformedMessageError: naming what is wrong (size, version, type, field).
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise MalformedMessageError(f"message is over {MAX_MESSAGE_SIZE} bytes")
    if len(data) < _PREFIX.size:
        raise MalformedMessageError("message is shorter than its 2-byte prefix")
    version, message_type = _PREFIX.unpack_from(data)
    if version != MESSAGE_FORMAT_VERSION:
        raise MalformedMessageError(f"unsupported message format version {version}")
    body = data[_PREFIX.size:]
    if message_type == MessageType.RATCHET:
        return _decode_ratchet(body)
    if message_type != MessageType.PREKEY:
        raise MalformedMessageError(f"unknown message type {message_type}")
    if len(body) < _PREKEY_FIELDS.size:
        raise MalformedMessageError("prekey message is truncated")
    (identity_key, base_key, signed_prekey_id, kem_prekey_id, has_one_time, one_time_prekey_id,
     kem_ciphertext) = _PREKEY_FIELDS.unpack_from(body)
    if has_one_time not in (0, 1) or (has_one_time == 0 and one_time_prekey_id != 0):
        raise MalformedMessageError("prekey message has an invalid one-time prekey field")
    prekey_header = PrekeyHeader(
        identity_key=identity_key, base_key=base_key, signed_prekey_id=signed_prekey_id,
        kem_prekey_id=kem_prekey_id,
        one_time_prekey_id=one_time_prekey_id if has_one_time else None,
        kem_ciphertext=kem_ciphertext,
    )
    return PrekeyMessage(prekey_header=prekey_header,
                         message=_decode_ratchet(body[_PREKEY_FIELDS.size:]))


def _decode_ratchet(body: bytes) -> RatchetMessage:
    ciphertext = body[RATCHET_HEADER_SIZE:]
    if len(ciphertext) < _MIN_AEAD_CIPHERTEXT_SIZE:
        raise MalformedMessageError("message is truncated")
    if (len(ciphertext) - AES256GCM_TAG_SIZE) % PADDING_BUCKET_SIZE != 0:
        raise MalformedMessageError("ciphertext length is not a padded length")
    return RatchetMessage(header=RatchetHeader.decode(body[:RATCHET_HEADER_SIZE]),
                          ciphertext=ciphertext)


# The fixed layout above relies on these sizes; fail at import if a constant ever moves.
assert _PREKEY_FIELDS.size == 2 * ED25519_PUBLIC_KEY_SIZE + 4 + 4 + 1 + 4 + \
    MLKEM1024_CIPHERTEXT_SIZE
