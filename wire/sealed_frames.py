"""The frames of sealed sender: a relay that delivers without learning who sent.

Sans-IO like :mod:`wire.frames`, whose field checks (:mod:`wire.checks`) and numbering
(:mod:`wire.catalogue`) these frames share; :mod:`wire.codec` encodes and decodes them like every
other frame. PROTOCOL.md "Sealed sender" is the contract:

* GET_SENDER_KEYS (any connection) -> SENDER_KEYS: the relay's certificate keys, which clients
  pin;
* GET_SENDER_CERTIFICATE (authenticated) -> SENDER_CERTIFICATE: a short-lived certificate the
  relay signed for the device, which the sender puts inside its sealed envelopes;
* SET_DELIVERY_TOKEN (authenticated) -> DELIVERY_TOKEN_SET: the hash of the token contacts must
  show to send to this user sealed, or "organisation" mode;
* SEALED_SEND (any connection, by default one that never authenticated) -> SEALED_SEND_ACCEPTED,
  or DELIVERY_TOKEN_REFUSED: one answer for a bad, rotated or absent token and for an unknown
  recipient.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

from wire.catalogue import ErrorCode, FrameType
from wire.checks import check_bytes, check_int, check_str, field_error
from wire.limits import (
    IDENTITY_KEY_SIZE,
    MAX_CIPHERTEXT_SIZE,
    MAX_DEVICE_ID,
    MAX_DEVICES_PER_SEND,
    MAX_TIMESTAMP_MS,
    MAX_USER_ID_LENGTH,
)

__all__ = [
    "DELIVERY_MODES",
    "DELIVERY_TOKEN_HASH_SIZE",
    "DELIVERY_TOKEN_SIZE",
    "MAX_SENDER_CERTIFICATE_SIZE",
    "MAX_SENDER_KEYS",
    "MAX_SENDER_KEY_ID",
    "SEALED_FRAME_CLASSES",
    "SEALED_MESSAGE_ID_SIZE",
    "DeliveryTokenSet",
    "GetSenderCertificate",
    "GetSenderKeys",
    "SealedFrame",
    "SealedRequest",
    "SealedSend",
    "SealedSendAccepted",
    "SenderCertificateIssued",
    "SenderKey",
    "SenderKeys",
    "SetDeliveryToken",
]

DELIVERY_TOKEN_SIZE = 16  # bytes of a delivery token: 128 bits, HMAC-SHA256 of the profile key cut
DELIVERY_TOKEN_HASH_SIZE = 32  # bytes of the SHA-256 of a token, all the relay ever stores of one
SEALED_MESSAGE_ID_SIZE = 16  # bytes of a sealed send's random idempotency id: 128 bits, so that
# ids drawn independently by strangers never collide and name no sender
MAX_SENDER_CERTIFICATE_SIZE = 1024  # bytes of a signed sender certificate: ids, two 32-byte keys,
# an expiry and a 64-byte signature take ~250; room for a later field, not for a payload
MAX_SENDER_KEYS = 8  # keys in SENDER_KEYS: the signing key and those still accepted (overlap)
MAX_SENDER_KEY_ID = 2**31 - 1  # certificate key ids start at 1: fits a signed 32-bit column
DELIVERY_MODES = ("token", "organisation")
"""How a recipient admits sealed sends: with its delivery token, or from any device of its
organisation (tokens switched off; the sender must then be authenticated, PROTOCOL.md)."""


def _check_payloads(owner: object, name: str) -> None:
    """A map of 1 to MAX_DEVICES_PER_SEND device ids to non-empty ciphertexts (as SEND's)."""
    payloads = getattr(owner, name)
    if not isinstance(payloads, Mapping) or not 1 <= len(payloads) <= MAX_DEVICES_PER_SEND:
        raise field_error(owner, name,
                          f"a map of 1 to {MAX_DEVICES_PER_SEND} device ids to ciphertexts")
    for device_id, ciphertext in payloads.items():
        if type(device_id) is not int or not 1 <= device_id <= MAX_DEVICE_ID:
            raise field_error(owner, name, f"keyed by device ids in [1, {MAX_DEVICE_ID}]")
        if type(ciphertext) is not bytes or not ciphertext:
            raise field_error(owner, name, "non-empty bytes values")
        if len(ciphertext) > MAX_CIPHERTEXT_SIZE:
            raise field_error(owner, name, f"ciphertexts of at most {MAX_CIPHERTEXT_SIZE} bytes",
                              ErrorCode.PAYLOAD_TOO_LARGE)
    if type(payloads) is not MappingProxyType:
        object.__setattr__(owner, name, MappingProxyType(dict(payloads)))


def _check_optional_bytes(owner: object, name: str, size: int) -> None:
    value = getattr(owner, name)
    if value is not None and (type(value) is not bytes or len(value) != size):
        raise field_error(owner, name, f"{size} bytes, or absent")


# --- Requests (client -> relay) -------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class GetSenderKeys:
    """Ask for the relay's sender-certificate keys (allowed before authentication)."""

    frame_type: ClassVar[FrameType] = FrameType.GET_SENDER_KEYS


@dataclass(frozen=True, kw_only=True, slots=True)
class GetSenderCertificate:
    """Ask for a fresh sender certificate for this authenticated device."""

    frame_type: ClassVar[FrameType] = FrameType.GET_SENDER_CERTIFICATE


@dataclass(frozen=True, kw_only=True, slots=True)
class SetDeliveryToken:
    """Register how this user admits sealed sends; replaces the earlier registration.

    ``mode`` "token" with a ``token_hash``: a sealed send must carry the token whose SHA-256 this
    is (a new hash rotates it: the old token is refused from then on); "token" without a hash
    refuses every sealed send. "organisation" (no hash): tokens are switched off, sealed sends
    are accepted from authenticated devices of the user's organisation.
    """

    frame_type: ClassVar[FrameType] = FrameType.SET_DELIVERY_TOKEN
    mode: str  #: one of DELIVERY_MODES
    token_hash: bytes | None = None  #: SHA-256 of the delivery token; absent in organisation mode

    def __post_init__(self) -> None:
        if type(self.mode) is not str or self.mode not in DELIVERY_MODES:
            raise field_error(self, "mode", f"one of {', '.join(DELIVERY_MODES)}")
        _check_optional_bytes(self, "token_hash", DELIVERY_TOKEN_HASH_SIZE)
        if self.mode == "organisation" and self.token_hash is not None:
            raise field_error(self, "token_hash", "absent in organisation mode")


@dataclass(frozen=True, kw_only=True, slots=True)
class SealedSend:
    """One sealed message to one user: a ciphertext for each of its current devices.

    The ciphertexts are sealed envelopes (the sender is inside them); the relay learns the
    recipient and nothing of the sender.
    """

    frame_type: ClassVar[FrameType] = FrameType.SEALED_SEND
    recipient_user_id: str  #: the recipient user
    client_message_id: bytes  #: SEALED_MESSAGE_ID_SIZE random bytes: the idempotency key
    payloads: Mapping[int, bytes]  #: recipient device id -> sealed envelope for that device
    delivery_token: bytes | None = None  #: DELIVERY_TOKEN_SIZE bytes; absent: organisation mode
    urgent: bool = False  #: wake an absent recipient device at once

    def __post_init__(self) -> None:
        check_str(self, "recipient_user_id", MAX_USER_ID_LENGTH)
        value = self.client_message_id
        if type(value) is not bytes or len(value) != SEALED_MESSAGE_ID_SIZE:
            raise field_error(self, "client_message_id", f"{SEALED_MESSAGE_ID_SIZE} random bytes")
        _check_optional_bytes(self, "delivery_token", DELIVERY_TOKEN_SIZE)
        if type(self.urgent) is not bool:
            raise field_error(self, "urgent", "a bool")
        _check_payloads(self, "payloads")


# --- Responses (relay -> client) ------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class SenderKey:
    """One of the relay's certificate keys (a nested value of SENDER_KEYS)."""

    key_id: int  #: named by the certificates it signs
    public_key: bytes  #: Ed25519, IDENTITY_KEY_SIZE bytes
    not_after_ms: int | None = None  #: accepted until then; absent: the current signing key

    def __post_init__(self) -> None:
        check_int(self, "key_id", 1, MAX_SENDER_KEY_ID)
        check_bytes(self, "public_key", IDENTITY_KEY_SIZE, IDENTITY_KEY_SIZE,
                    ErrorCode.MALFORMED_FRAME)
        if self.not_after_ms is not None:
            check_int(self, "not_after_ms", 0, MAX_TIMESTAMP_MS)


@dataclass(frozen=True, kw_only=True, slots=True)
class SenderKeys:
    """The relay's certificate keys: the signing one and those still accepted."""

    frame_type: ClassVar[FrameType] = FrameType.SENDER_KEYS
    keys: tuple[SenderKey, ...]  #: 1 to MAX_SENDER_KEYS keys

    def __post_init__(self) -> None:
        keys = self.keys
        if (type(keys) is not tuple or not 1 <= len(keys) <= MAX_SENDER_KEYS
                or any(type(key) is not SenderKey for key in keys)):
            raise field_error(self, "keys", f"1 to {MAX_SENDER_KEYS} keys")
        if len({key.key_id for key in keys}) != len(keys):
            raise field_error(self, "keys", "keys of distinct ids")


@dataclass(frozen=True, kw_only=True, slots=True)
class SenderCertificateIssued:
    """A sender certificate for the asking device (``crypto.sender_certificate`` reads it)."""

    frame_type: ClassVar[FrameType] = FrameType.SENDER_CERTIFICATE
    certificate: bytes  #: 1 to MAX_SENDER_CERTIFICATE_SIZE bytes, signed by the relay
    expires_ms: int  #: when it expires (also inside it), milliseconds since the Unix epoch

    def __post_init__(self) -> None:
        check_bytes(self, "certificate", 1, MAX_SENDER_CERTIFICATE_SIZE,
                    ErrorCode.MALFORMED_FRAME)
        check_int(self, "expires_ms", 0, MAX_TIMESTAMP_MS)


@dataclass(frozen=True, kw_only=True, slots=True)
class DeliveryTokenSet:
    """The registration is stored; it replaced any earlier one."""

    frame_type: ClassVar[FrameType] = FrameType.DELIVERY_TOKEN_SET


@dataclass(frozen=True, kw_only=True, slots=True)
class SealedSendAccepted:
    """The sealed send is committed (or was already: a re-send with the same id)."""

    frame_type: ClassVar[FrameType] = FrameType.SEALED_SEND_ACCEPTED


SealedRequest = GetSenderKeys | GetSenderCertificate | SetDeliveryToken | SealedSend
"""The requests of sealed sender."""

SealedFrame = (GetSenderKeys | GetSenderCertificate | SetDeliveryToken | SealedSend | SenderKeys
               | SenderCertificateIssued | DeliveryTokenSet | SealedSendAccepted)

SEALED_FRAME_CLASSES: tuple[type[SealedFrame], ...] = (
    GetSenderKeys, GetSenderCertificate, SetDeliveryToken, SealedSend, SenderKeys,
    SenderCertificateIssued, DeliveryTokenSet, SealedSendAccepted,
)
"""Every frame class of this module, for the codec's catalogue."""
