"""PUBLISH_DEVICE_LIST: an account's devices change only by a list its account key signed.

The relay checks the list with ``crypto.device_list`` against the account key it stores for the
user (set at enrolment), then lets the store make the user's devices match the list in one
transaction (``AccountKeyStore.publish_device_list``): a listed key without a device gets a new
device id (a linked device), a device whose key is no longer listed is revoked (its queue and
prekeys go with it, and a notice keeps why, for AUTHENTICATE to tell it). The connections of
revoked devices on this node are closed at once with DEVICE_REVOKED; on the other nodes of a
cluster, the store's revocation notification closes them.

The relay cannot add a device itself (it cannot sign a list), and an older list cannot come
back: the store refuses any version not above the one it holds.
"""

from __future__ import annotations

from typing import Protocol

import structlog

from crypto.device_list import DeviceListError, decode_device_list
from enrolment.codes import MAX_DEVICES_PER_USER
from relay.account_audit import AccountAuditStore, audit_device_changes
from relay.context import RelayContext
from relay.limits import DEVICE_LIST_PUBLISH_PERIOD_MS, DEVICE_LIST_PUBLISHES_PER_HOUR
from storage.base import (
    AccountKeyStore,
    DeviceListRefusal,
    DeviceListRefused,
    PublishedDeviceList,
    RateLimits,
)
from wire.account_frames import AddedDevice, DeviceListPublished, PublishDeviceList
from wire.codec import encode_frame
from wire.frames import Error, ErrorCode

__all__ = ["REMOVED_REVOKE_REASON", "DeviceListService", "DeviceListServiceStore"]

log = structlog.get_logger("relay.device_lists")

REMOVED_REVOKE_REASON = "this device was removed from its account by another of its devices"
"""What a device left off a published list is told (DEVICE_REVOKED, now and when it returns)."""

_REFUSALS: dict[DeviceListRefusal, tuple[ErrorCode, str]] = {
    DeviceListRefusal.UNKNOWN_USER: (ErrorCode.DEVICE_REVOKED, "this device was revoked"),
    DeviceListRefusal.STALE_VERSION: (
        ErrorCode.STALE_DEVICE_LIST,
        "the relay holds a device list of this version or newer; read it with LIST_DEVICES "
        "and sign the next version"),
    DeviceListRefusal.ACCOUNT_KEY_MISMATCH: (
        ErrorCode.INVALID_DEVICE_LIST,
        "the device list is not signed by this account's current account key"),
    DeviceListRefusal.PUBLISHER_NOT_LISTED: (
        ErrorCode.INVALID_DEVICE_LIST,
        "the device list must list the device that publishes it"),
    DeviceListRefusal.TOO_MANY_DEVICES: (
        ErrorCode.TOO_MANY_DEVICES,
        f"an account holds at most {MAX_DEVICES_PER_USER} devices"),
    DeviceListRefusal.ORGANISATION_INACTIVE: (ErrorCode.ORGANISATION_SUSPENDED,
                                              "organisation suspended"),
}


class DeviceListServiceStore(AccountKeyStore, AccountAuditStore, RateLimits, Protocol):
    """What publishing needs of the store: the account keys and lists, the audit log, and
    its rate limit."""


def _error(code: ErrorCode, reason: str) -> bytes:
    return encode_frame(Error(code=code, reason=reason))


class DeviceListService:
    """One per relay; its rate limit lives in the store (shared by a cluster's nodes)."""

    def __init__(self, relay: RelayContext, store: DeviceListServiceStore | None = None) -> None:
        """``store`` defaults to the relay's (``relay.store``)."""
        self._relay = relay
        self._store: DeviceListServiceStore = relay.store if store is None else store

    async def publish(self, device: tuple[str, int], frame: PublishDeviceList,
                      address: str = "") -> bytes:
        """Answer PUBLISH_DEVICE_LIST of the authenticated ``device`` (connected from
        ``address``, for the audit log)."""
        relay = self._relay
        user_id, device_id = device
        if not await self._store.take_tokens(
                key=f"device list {user_id} {device_id}", cost=1,
                capacity=DEVICE_LIST_PUBLISHES_PER_HOUR,
                period_ms=DEVICE_LIST_PUBLISH_PERIOD_MS, now=relay.now_ms()):
            return self._refuse("rate_limited", ErrorCode.RATE_LIMITED,
                                "too many device lists published; retry later")
        account = await self._store.account(user_id)
        if account is None:
            return self._refuse("unknown_user", ErrorCode.DEVICE_REVOKED,
                                "this device was revoked")
        if account.account_key is None:
            return self._refuse("no_account_key", ErrorCode.INVALID_DEVICE_LIST,
                                "this account has no account key; enrol again")
        try:
            signed = decode_device_list(frame.device_list, account_key=account.account_key)
        except DeviceListError as error:
            return self._refuse("invalid", ErrorCode.INVALID_DEVICE_LIST, str(error))
        try:
            published = await self._store.publish_device_list(
                user_id=user_id, publisher_device_id=device_id, account_key=signed.account_key,
                version=signed.version, identity_keys=signed.devices, encoded=signed.encoded,
                now=relay.now_ms(), max_devices=MAX_DEVICES_PER_USER,
                revoke_reason=REMOVED_REVOKE_REASON)
        except DeviceListRefused as refusal:
            code, reason = _REFUSALS[refusal.reason]
            return self._refuse(refusal.reason.value, code, reason)
        await audit_device_changes(
            self._store, user_id=user_id, device_id=device_id, actor=f"device:{device_id}",
            address=address, now=relay.now_ms(),
            changes=[*(("device.link", added.device_id) for added in published.added),
                     *(("device.remove", revoked) for revoked in published.revoked)])
        return self._published(user_id, signed.version, published)

    def _published(self, user_id: str, version: int, published: PublishedDeviceList) -> bytes:
        relay = self._relay
        closed = relay.revoke_devices(user_id, published.revoked, REMOVED_REVOKE_REASON)
        relay.metrics.revoked_devices += closed
        relay.metrics.device_lists["published"] += 1
        log.info("device_list_published", version=version, added=len(published.added),
                 revoked=len(published.revoked), connections_closed=closed)
        return encode_frame(DeviceListPublished(
            version=version,
            added=tuple(AddedDevice(device_id=device.device_id, identity_key=device.identity_key)
                        for device in published.added),
            revoked=published.revoked))

    def _refuse(self, outcome: str, code: ErrorCode, reason: str) -> bytes:
        self._relay.metrics.device_lists[outcome] += 1
        log.info("device_list_refused", outcome=outcome)
        return _error(code, reason)
