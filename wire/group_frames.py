"""The frames of multi-recipient sends: one shared ciphertext fanned out to many devices.

Sans-IO like :mod:`wire.frames`, whose field checks (:mod:`wire.checks`) and numbering
(:mod:`wire.catalogue`) these frames share; :mod:`wire.codec` encodes and decodes them like every
other frame. A MULTI_SEND names only users and devices: what ties them together (a group, its
name, its members) lives inside the end-to-end encrypted payloads, never in a field the relay
reads. SEALED_MULTI_SEND is the same fan-out sent sealed (PROTOCOL.md "Sealed sender"): no
sender is named or stored, and each recipient user admits it with its own delivery token.
PROTOCOL.md "Multi-recipient sends" is the contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

from wire.catalogue import ErrorCode, FrameType
from wire.checks import check_bytes, check_int, check_int_tuple, check_str, field_error
from wire.limits import (
    MAX_CIPHERTEXT_SIZE,
    MAX_CLIENT_MESSAGE_ID,
    MAX_DEVICE_ID,
    MAX_DEVICES_PER_SEND,
    MAX_USER_ID_LENGTH,
)
from wire.sealed_frames import DELIVERY_TOKEN_SIZE, SEALED_MESSAGE_ID_SIZE

__all__ = [
    "GROUP_FRAME_CLASSES",
    "MAX_KEY_MATERIAL_SIZE",
    "MAX_MULTI_SEND_DEVICES",
    "GroupFrame",
    "MultiSend",
    "MultiSendAccepted",
    "MultiSendRecipient",
    "SealedMultiSend",
    "SealedMultiSendAccepted",
    "UserDevices",
]

MAX_KEY_MATERIAL_SIZE = 4 * 1024  # bytes of one device's own part of a MULTI_SEND: a pairwise
# encrypted record of a few hundred bytes (a key, a chain id, an iteration), and room for a
# session's first message, which carries the key agreement's ciphertexts
MAX_MULTI_SEND_DEVICES = 1000  # recipient devices of one MULTI_SEND: a large organisation's
# group, counted across all its users; the frame must still fit MAX_FRAME_SIZE


def _check_devices(owner: object, name: str, *, value_limit: int | None) -> None:
    """``name`` maps 1 to MAX_DEVICES_PER_SEND device ids to non-empty bytes of at most
    ``value_limit`` bytes (None: the values are not checked here)."""
    devices = getattr(owner, name)
    if not isinstance(devices, Mapping) or not 1 <= len(devices) <= MAX_DEVICES_PER_SEND:
        raise field_error(owner, name, f"a map of 1 to {MAX_DEVICES_PER_SEND} device ids to bytes")
    for device_id, material in devices.items():
        if type(device_id) is not int or not 1 <= device_id <= MAX_DEVICE_ID:
            raise field_error(owner, name, f"keyed by device ids in [1, {MAX_DEVICE_ID}]")
        if type(material) is not bytes or not material:
            raise field_error(owner, name, "non-empty bytes values")
        if value_limit is not None and len(material) > value_limit:
            raise field_error(owner, name, f"values of at most {value_limit} bytes",
                              ErrorCode.PAYLOAD_TOO_LARGE)
    if type(devices) is not MappingProxyType:
        # Frozen means frozen: keep a private read-only copy, not the caller's dict.
        object.__setattr__(owner, name, MappingProxyType(dict(devices)))


# --- Nested values --------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class MultiSendRecipient:
    """One recipient user inside MULTI_SEND: its own key material for each of its devices."""

    user_id: str  #: the recipient user
    devices: Mapping[int, bytes]  #: device id -> that device's key material (pairwise encrypted)
    #: SEALED_MULTI_SEND only: the user's DELIVERY_TOKEN_SIZE-byte delivery token (absent in
    #: the user's "organisation" mode); always absent in a MULTI_SEND
    delivery_token: bytes | None = None

    def __post_init__(self) -> None:
        check_str(self, "user_id", MAX_USER_ID_LENGTH)
        _check_devices(self, "devices", value_limit=MAX_KEY_MATERIAL_SIZE)
        if self.delivery_token is not None:
            check_bytes(self, "delivery_token", DELIVERY_TOKEN_SIZE, DELIVERY_TOKEN_SIZE,
                        ErrorCode.MALFORMED_FRAME)


@dataclass(frozen=True, kw_only=True, slots=True)
class UserDevices:
    """One user's devices inside an ERROR answering a MULTI_SEND (MISMATCHED_DEVICES or
    QUEUE_FULL): which devices were missing, which do not exist, which are full."""

    user_id: str  #: the recipient user concerned
    missing_devices: tuple[int, ...] = ()  #: current devices not addressed
    extra_devices: tuple[int, ...] = ()  #: addressed devices that do not exist
    full_devices: tuple[int, ...] = ()  #: devices whose queue (or the sender's share) is full

    def __post_init__(self) -> None:
        check_str(self, "user_id", MAX_USER_ID_LENGTH)
        for name in ("missing_devices", "extra_devices", "full_devices"):
            check_int_tuple(self, name, min_items=0, max_items=MAX_DEVICES_PER_SEND, minimum=1,
                            maximum=MAX_DEVICE_ID)


# --- Requests (client -> relay) -------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class MultiSend:
    """One message to many devices of many users: a shared ciphertext stored once, and for
    each device its own small key material. Accepted for every device or for none."""

    frame_type: ClassVar[FrameType] = FrameType.MULTI_SEND
    client_message_id: int  #: idempotency key, unique per sending device (shared with SEND)
    shared: bytes  #: the ciphertext every device receives, at most MAX_CIPHERTEXT_SIZE bytes
    recipients: tuple[MultiSendRecipient, ...]  #: distinct users, MAX_MULTI_SEND_DEVICES devices
    urgent: bool = False  #: wake absent recipient devices at once, as SEND's flag; optional

    def __post_init__(self) -> None:
        check_int(self, "client_message_id", 0, MAX_CLIENT_MESSAGE_ID)
        check_bytes(self, "shared", 1, MAX_CIPHERTEXT_SIZE, ErrorCode.PAYLOAD_TOO_LARGE)
        if type(self.urgent) is not bool:
            raise field_error(self, "urgent", "a bool")
        recipients = self.recipients
        _check_recipients(self)
        if any(recipient.delivery_token is not None for recipient in recipients):
            raise field_error(self, "recipients", "no delivery tokens (SEALED_MULTI_SEND's)")

    def device_count(self) -> int:
        """The recipient devices addressed, across every user."""
        return sum(len(recipient.devices) for recipient in self.recipients)


def _check_recipients(owner: MultiSend | SealedMultiSend) -> None:
    recipients = owner.recipients
    if (type(recipients) is not tuple or not recipients
            or any(type(recipient) is not MultiSendRecipient for recipient in recipients)):
        raise field_error(owner, "recipients", "1 or more recipients")
    if len({recipient.user_id for recipient in recipients}) != len(recipients):
        raise field_error(owner, "recipients", "each user at most once")
    if sum(len(recipient.devices) for recipient in recipients) > MAX_MULTI_SEND_DEVICES:
        raise field_error(owner, "recipients", f"at most {MAX_MULTI_SEND_DEVICES} devices")


@dataclass(frozen=True, kw_only=True, slots=True)
class SealedMultiSend:
    """MULTI_SEND sealed: no sender named or stored (the shared ciphertext and each device's
    key material are sealed envelopes), each user admitting it with its delivery token.

    Allowed before and without authentication, as SEALED_SEND is.
    """

    frame_type: ClassVar[FrameType] = FrameType.SEALED_MULTI_SEND
    client_message_id: bytes  #: SEALED_MESSAGE_ID_SIZE random bytes: the idempotency key
    shared: bytes  #: the sealed ciphertext every device receives, at most MAX_CIPHERTEXT_SIZE
    recipients: tuple[MultiSendRecipient, ...]  #: as MULTI_SEND's, each with its token
    urgent: bool = False  #: wake absent recipient devices at once; optional

    def __post_init__(self) -> None:
        value = self.client_message_id
        if type(value) is not bytes or len(value) != SEALED_MESSAGE_ID_SIZE:
            raise field_error(self, "client_message_id", f"{SEALED_MESSAGE_ID_SIZE} random bytes")
        check_bytes(self, "shared", 1, MAX_CIPHERTEXT_SIZE, ErrorCode.PAYLOAD_TOO_LARGE)
        if type(self.urgent) is not bool:
            raise field_error(self, "urgent", "a bool")
        _check_recipients(self)

    def device_count(self) -> int:
        """The recipient devices addressed, across every user."""
        return sum(len(recipient.devices) for recipient in self.recipients)


# --- Responses (relay -> client) ------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class MultiSendAccepted:
    """The MULTI_SEND is durably queued for every addressed device."""

    frame_type: ClassVar[FrameType] = FrameType.MULTI_SEND_ACCEPTED
    duplicate: bool = False  #: true when this client_message_id had already been accepted

    def __post_init__(self) -> None:
        if type(self.duplicate) is not bool:
            raise field_error(self, "duplicate", "a bool")


@dataclass(frozen=True, kw_only=True, slots=True)
class SealedMultiSendAccepted:
    """The SEALED_MULTI_SEND is committed for every device (or was already: a re-send)."""

    frame_type: ClassVar[FrameType] = FrameType.SEALED_MULTI_SEND_ACCEPTED


GroupFrame = MultiSend | MultiSendAccepted | SealedMultiSend | SealedMultiSendAccepted
"""The frames of multi-recipient sends."""

GROUP_FRAME_CLASSES: tuple[type[GroupFrame], ...] = (MultiSend, MultiSendAccepted,
                                                     SealedMultiSend, SealedMultiSendAccepted)
"""Every frame class of this module, for the codec's catalogue."""
