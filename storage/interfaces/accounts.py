"""``AccountKeyStore`` (account keys, signed device lists, revocation notices) and
``LinkChannelStore`` (the relay's mailboxes for linking a new device).

An account has one Ed25519 account key; the devices that speak for it are those whose identity
key is on the latest device list it signed (``crypto.device_list``). The caller checks the
list's signature and contents before calling (``decode_device_list``); the store keeps the
rule "registered devices == devices whose key is on the current list" by registering and
revoking devices in the same transaction that stores a list. So routing (sends, look-ups,
bundles, device lists) keeps reading the devices table.

(Named ``AccountKeyStore`` because ``AccountStore`` already names the console's accounts in
``storage.interfaces.administration``.) The values are in ``storage.account_records``. Every
method is atomic (one transaction) and safe to call concurrently, on any node of a cluster.
"""

from __future__ import annotations

from typing import Protocol

from storage.account_records import (
    AccountRecord,
    LinkPostResult,
    PublishedDeviceList,
    RevokedDevice,
)

__all__ = ["AccountKeyStore", "LinkChannelStore"]


class AccountKeyStore(Protocol):
    """Each user's account key and device list, and the notices of revoked devices."""

    async def account(self, user_id: str) -> AccountRecord | None:
        """The user's account key and latest device list; None for an unknown user."""
        ...

    async def publish_device_list(self, *, user_id: str, publisher_device_id: int,
                                  account_key: bytes, version: int,
                                  identity_keys: frozenset[bytes], encoded: bytes, now: int,
                                  max_devices: int, revoke_reason: str) -> PublishedDeviceList:
        """Store the list ``encoded`` (already checked by the caller: signed by
        ``account_key``, at ``version``, listing exactly ``identity_keys``) and make the
        user's devices match it.

        Atomic, with the user's row locked (two concurrent publishes of one version: exactly
        one wins, the other gets STALE_VERSION). Raises DeviceListRefused, changing nothing,
        if: the user is unknown (UNKNOWN_USER); its organisation is not active
        (ORGANISATION_INACTIVE); ``account_key`` is not the user's stored account key
        (ACCOUNT_KEY_MISMATCH); ``version`` is not above the stored version
        (STALE_VERSION); the publishing device is not registered or its identity key is not
        in ``identity_keys`` (PUBLISHER_NOT_LISTED: a device cannot remove itself); or
        ``identity_keys`` holds more than ``max_devices`` keys (TOO_MANY_DEVICES).

        Otherwise: every registered device of the user whose key is not listed is revoked
        (its row, queued envelopes and prekeys deleted; a ``RevokedDevice`` notice with
        ``revoke_reason`` kept, see ``revoked_device``); every listed key that no device of
        the user has gets a new device (the user's next device id, never reused;
        ``registered_at = now``); the list and its version are stored.

        Returns the devices added and the ids revoked.
        """
        ...

    async def revoked_device(self, user_id: str, device_id: int) -> RevokedDevice | None:
        """Why the device was revoked, so that it can be told when it connects again.

        None if the device was never revoked, or the user is unknown. Notices older than
        ``REVOCATION_NOTICE_RETENTION_MS`` may be gone (they are pruned when new ones are
        written), and all of a user's go with the user.
        """
        ...


class LinkChannelStore(Protocol):
    """Short-lived mailboxes through which an approving device and a new device exchange the
    (end-to-end encrypted) provisioning messages. The store sees opaque payloads only.

    A channel has two directions: ``to_new_device=True`` carries what the approving
    (authenticated) account posts for the new device; ``to_new_device=False`` what the new
    (unauthenticated) device posts for the approver. The first post of an approver binds the
    channel to its account, and only that account may post to or read from the new device
    afterwards. Payload sizes are the caller's check.
    """

    async def open_link_channel(self, *, channel_id: bytes, now: int, expires_at: int,
                                max_open: int) -> bool:
        """Create the channel ``channel_id`` (random, chosen by the new device), live until
        ``expires_at``.

        Atomic: first deletes every expired channel (``expires_at <= now``) with its
        messages; then, if ``max_open`` unexpired channels exist or ``channel_id`` is taken,
        returns False (nothing stored); otherwise creates it, unbound, and returns True.
        """
        ...

    async def post_link_message(self, *, channel_id: bytes, to_new_device: bool, payload: bytes,
                                approver_user_id: str | None, now: int,
                                max_posts: int) -> LinkPostResult:
        """Queue ``payload`` for the other side of the channel.

        ``to_new_device=True``: a post by the approving account ``approver_user_id`` (not
        None); the first such post binds the channel to that account, and a post from another
        account is OTHER_ACCOUNT. ``to_new_device=False``: a post by the new device
        (``approver_user_id`` is None). Each side may post at most ``max_posts`` messages over
        the channel's life (EXHAUSTED after, even once they were taken). UNKNOWN_CHANNEL if
        the channel does not exist or ``expires_at <= now``. Only POSTED changes anything.
        Raises ValueError (the caller's mistake) if ``approver_user_id`` is None exactly when
        ``to_new_device``.
        """
        ...

    async def take_link_messages(self, *, channel_id: bytes, to_new_device: bool,
                                 approver_user_id: str | None,
                                 now: int) -> list[bytes] | None:
        """Return, in posting order, and delete the messages waiting for one side.

        ``to_new_device=True``: the new device reads what the approver posted
        (``approver_user_id`` None). ``to_new_device=False``: the approver
        ``approver_user_id`` reads what the new device posted; None unless the channel is
        bound to that account. None also if the channel does not exist or
        ``expires_at <= now``. An empty list: nothing is waiting.
        """
        ...
