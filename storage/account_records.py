"""The values and errors of account keys, device lists, revocation notices and link channels.

Pure data (the contract is on ``storage.interfaces.accounts`` and on
``EnrolmentStore.register_device``). An account's device list is stored exactly as its devices
signed it (``crypto.device_list``): the relay checks it before storing and serves it unchanged.
Times are milliseconds since the Unix epoch, UTC, as everywhere in the store.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from storage.records import Device, StoreError

__all__ = [
    "ADMIN_REVOKE_REASON",
    "REVOCATION_NOTICE_RETENTION_MS",
    "AccountRecord",
    "DeviceListRefusal",
    "DeviceListRefused",
    "LinkPostResult",
    "PublishedDeviceList",
    "Registration",
    "RevokedDevice",
]

ADMIN_REVOKE_REASON = "this device was revoked by an administrator"
"""What a device an administrator revoked is told (DEVICE_REVOKED, now and when it returns)."""
REVOCATION_NOTICE_RETENTION_MS = 30 * 24 * 60 * 60 * 1000
"""How long (30 days, in ms) a revoked device can still be told why: long enough for a phone
left off over a holiday, while the notices stay bounded (older ones are deleted whenever a
new one is written)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class AccountRecord:
    """What the relay holds about a user's account identity."""

    account_key: bytes | None
    """The account's Ed25519 public key (32 bytes); None if the user never enrolled under an
    account key."""
    device_list: bytes | None
    """The latest signed device list exactly as published (``crypto.device_list`` encoding),
    or None."""
    device_list_version: int
    """That list's version; 0 when there is none."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Registration:
    """What ``EnrolmentStore.register_device`` did."""

    device: Device
    """The device registered now."""
    revoked: tuple[int, ...]
    """Ids of the devices of the account's previous identity, revoked in the same
    transaction (ascending; empty on a first enrolment)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PublishedDeviceList:
    """What ``AccountKeyStore.publish_device_list`` changed."""

    added: tuple[Device, ...]
    """Devices registered now for keys that were new on the list, with their new ids
    (ascending by id)."""
    revoked: tuple[int, ...]
    """Ids of the devices removed because their key is no longer listed (ascending)."""


class DeviceListRefusal(enum.Enum):
    """Why ``publish_device_list`` refused."""

    UNKNOWN_USER = "unknown_user"  # no such user
    STALE_VERSION = "stale_version"  # version <= the stored list's version
    ACCOUNT_KEY_MISMATCH = "account_key_mismatch"  # not the user's current account key
    PUBLISHER_NOT_LISTED = "publisher_not_listed"  # a device cannot remove itself
    TOO_MANY_DEVICES = "too_many_devices"  # the list holds more than max_devices keys
    ORGANISATION_INACTIVE = "organisation_inactive"  # suspended or terminated


class DeviceListRefused(StoreError):
    """``publish_device_list`` changed nothing, for ``reason``."""

    def __init__(self, reason: DeviceListRefusal) -> None:
        super().__init__(reason.value)
        self.reason = reason


@dataclass(frozen=True, kw_only=True, slots=True)
class RevokedDevice:
    """The notice kept for a revoked device, so that it can be told why if it connects."""

    identity_key: bytes
    """The identity key the device had (32 bytes)."""
    reason: str
    """Why, as given by the revoking call (shown to the device's owner)."""
    revoked_at: int
    """Milliseconds since the epoch."""


class LinkPostResult(enum.Enum):
    """What ``LinkChannelStore.post_link_message`` did."""

    POSTED = "posted"  # stored for the other side
    UNKNOWN_CHANNEL = "unknown_channel"  # no such channel, or it expired
    EXHAUSTED = "exhausted"  # this side already posted its maximum over the channel's life
    OTHER_ACCOUNT = "other_account"  # the channel is bound to another approving account
