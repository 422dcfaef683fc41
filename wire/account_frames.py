"""The frames of accounts and linking: publishing a signed device list, and link channels.

Sans-IO like :mod:`wire.frames`, whose field checks (:mod:`wire.checks`) and numbering
(:mod:`wire.catalogue`) these frames share; :mod:`wire.codec` encodes and decodes them like
every other frame. The device list itself is :mod:`crypto.device_list`'s encoding, carried as
opaque bytes: the relay checks it with that module, and so does every client that reads one.
PROTOCOL.md "Accounts, device lists and linking" is the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from wire.catalogue import ErrorCode, FrameType
from wire.checks import check_bytes, check_int, check_int_tuple, field_error
from wire.limits import (
    IDENTITY_KEY_SIZE,
    LINK_CHANNEL_ID_SIZE,
    MAX_DEVICE_ID,
    MAX_DEVICE_LIST_SIZE,
    MAX_DEVICES_PER_USER,
    MAX_LINK_PAYLOAD_SIZE,
    MAX_LINK_POSTS_PER_SIDE,
    MAX_TIMESTAMP_MS,
)

__all__ = [
    "ACCOUNT_FRAME_CLASSES",
    "MAX_DEVICE_LIST_VERSION",
    "AccountFrame",
    "AccountRequest",
    "AddedDevice",
    "DeviceListPublished",
    "LinkFetch",
    "LinkMessages",
    "LinkOpen",
    "LinkOpened",
    "LinkPost",
    "LinkPosted",
    "PublishDeviceList",
]

MAX_DEVICE_LIST_VERSION = 2**63 - 1  # crypto.device_list's bound: a signed 64-bit column


def _check_device_list(owner: object, name: str) -> None:
    check_bytes(owner, name, 1, MAX_DEVICE_LIST_SIZE, ErrorCode.MALFORMED_FRAME)


def _check_channel_id(owner: object) -> None:
    check_bytes(owner, "channel_id", LINK_CHANNEL_ID_SIZE, LINK_CHANNEL_ID_SIZE,
                ErrorCode.MALFORMED_FRAME)


# --- Nested value (not a frame) -------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class AddedDevice:
    """A device a DEVICE_LIST_PUBLISHED registered: the id the relay gave a newly listed key."""

    device_id: int  #: its new device id (HELLO names it)
    identity_key: bytes  #: the listed Ed25519 identity key it was registered for

    def __post_init__(self) -> None:
        check_int(self, "device_id", 1, MAX_DEVICE_ID)
        check_bytes(self, "identity_key", IDENTITY_KEY_SIZE, IDENTITY_KEY_SIZE,
                    ErrorCode.MALFORMED_FRAME)


# --- Requests (client -> relay) -------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class PublishDeviceList:
    """Replace one's account's device list: listed keys without a device get one, devices whose
    key is no longer listed are revoked."""

    frame_type: ClassVar[FrameType] = FrameType.PUBLISH_DEVICE_LIST
    device_list: bytes  #: crypto.device_list encoding, signed by the account key

    def __post_init__(self) -> None:
        _check_device_list(self, "device_list")


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkOpen:
    """A new device asks for a link channel (before it has any credentials)."""

    frame_type: ClassVar[FrameType] = FrameType.LINK_OPEN


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkPost:
    """Leave one opaque (end-to-end encrypted) message for the other side of a link channel.

    Unauthenticated: from the new device to the approver. Authenticated: from the approving
    device to the new device (the first such post binds the channel to its account).
    """

    frame_type: ClassVar[FrameType] = FrameType.LINK_POST
    channel_id: bytes  #: LINK_CHANNEL_ID_SIZE bytes, from LINK_OPENED
    payload: bytes  #: 1 to MAX_LINK_PAYLOAD_SIZE bytes, opaque to the relay

    def __post_init__(self) -> None:
        _check_channel_id(self)
        check_bytes(self, "payload", 1, MAX_LINK_PAYLOAD_SIZE, ErrorCode.PAYLOAD_TOO_LARGE)


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkFetch:
    """Take the messages the other side left on a link channel; waits for one if none is there.

    Unauthenticated: the new device reads the approver's. Authenticated: the approving device
    reads the new device's.
    """

    frame_type: ClassVar[FrameType] = FrameType.LINK_FETCH
    channel_id: bytes  #: LINK_CHANNEL_ID_SIZE bytes, from LINK_OPENED

    def __post_init__(self) -> None:
        _check_channel_id(self)


# --- Responses (relay -> client) ------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceListPublished:
    """The list is stored and the account's devices match it."""

    frame_type: ClassVar[FrameType] = FrameType.DEVICE_LIST_PUBLISHED
    version: int  #: the stored list's version
    added: tuple[AddedDevice, ...]  #: 0 to MAX_DEVICES_PER_USER devices registered now
    revoked: tuple[int, ...]  #: 0 to MAX_DEVICES_PER_USER device ids revoked now

    def __post_init__(self) -> None:
        check_int(self, "version", 1, MAX_DEVICE_LIST_VERSION)
        added = self.added
        if (type(added) is not tuple or len(added) > MAX_DEVICES_PER_USER
                or any(type(device) is not AddedDevice for device in added)):
            raise field_error(self, "added", f"at most {MAX_DEVICES_PER_USER} added devices")
        check_int_tuple(self, "revoked", min_items=0, max_items=MAX_DEVICES_PER_USER,
                        minimum=1, maximum=MAX_DEVICE_ID)


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkOpened:
    """A new link channel: show its id (in the link code) to the approving device."""

    frame_type: ClassVar[FrameType] = FrameType.LINK_OPENED
    channel_id: bytes  #: LINK_CHANNEL_ID_SIZE random bytes
    expires_at: int  #: when the channel disappears, milliseconds since the Unix epoch

    def __post_init__(self) -> None:
        _check_channel_id(self)
        check_int(self, "expires_at", 0, MAX_TIMESTAMP_MS)


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkPosted:
    """The message waits for the other side."""

    frame_type: ClassVar[FrameType] = FrameType.LINK_POSTED


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkMessages:
    """What the other side posted since the last fetch, oldest first (taken: it is gone)."""

    frame_type: ClassVar[FrameType] = FrameType.LINK_MESSAGES
    payloads: tuple[bytes, ...]  #: 0 to MAX_LINK_POSTS_PER_SIDE messages (none: the wait ended)

    def __post_init__(self) -> None:
        payloads = self.payloads
        if (type(payloads) is not tuple or len(payloads) > MAX_LINK_POSTS_PER_SIDE
                or any(type(payload) is not bytes or not 1 <= len(payload) <= MAX_LINK_PAYLOAD_SIZE
                       for payload in payloads)):
            expected = (f"at most {MAX_LINK_POSTS_PER_SIDE} messages of 1 to "
                        f"{MAX_LINK_PAYLOAD_SIZE} bytes")
            raise field_error(self, "payloads", expected)


AccountRequest = PublishDeviceList | LinkOpen | LinkPost | LinkFetch
"""The requests of accounts and linking."""

AccountFrame = (
    PublishDeviceList
    | LinkOpen
    | LinkPost
    | LinkFetch
    | DeviceListPublished
    | LinkOpened
    | LinkPosted
    | LinkMessages
)

ACCOUNT_FRAME_CLASSES: tuple[type[AccountFrame], ...] = (
    PublishDeviceList, LinkOpen, LinkPost, LinkFetch,
    DeviceListPublished, LinkOpened, LinkPosted, LinkMessages,
)
"""Every frame class of this module, for the codec's catalogue."""
