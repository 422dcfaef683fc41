"""The account-key and link-channel methods of ``storage.base.Store``, once for both backends.

``SqliteStore`` and ``PostgresStore`` inherit ``AccountStoreMethods`` and give it what
``storage.core_store.BackendHooks`` names; the SQL lives in ``storage.account_sql`` and
``storage.link_sql``. The contracts are on ``storage.interfaces.accounts``.
"""

from __future__ import annotations

from storage import account_sql, link_sql
from storage.account_records import (
    AccountRecord,
    LinkPostResult,
    PublishedDeviceList,
    RevokedDevice,
)
from storage.core_store import BackendHooks

__all__ = ["AccountStoreMethods"]


class AccountStoreMethods(BackendHooks):
    """Mixin: the backend gives what ``BackendHooks`` names (its dialect, ``_write``, ``_read``)."""

    async def account(self, user_id: str) -> AccountRecord | None:
        return await self._read(lambda connection: account_sql.account(
            connection, self._dialect, user_id))

    async def publish_device_list(self, *, user_id: str, publisher_device_id: int,
                                  account_key: bytes, version: int,
                                  identity_keys: frozenset[bytes], encoded: bytes, now: int,
                                  max_devices: int, revoke_reason: str) -> PublishedDeviceList:
        # locks: PostgreSQL's writer takes the user's device rows up front, in the one order
        # every batch takes them, as for a send to the user.
        return await self._writer.submit(lambda connection: account_sql.publish_device_list(
            connection, self._dialect, user_id=user_id, publisher_device_id=publisher_device_id,
            account_key=account_key, version=version, identity_keys=identity_keys,
            encoded=encoded, now=now, max_devices=max_devices, revoke_reason=revoke_reason,
            before_delete=self._before_device_deleted), locks=(user_id,)).wait()

    async def revoked_device(self, user_id: str, device_id: int) -> RevokedDevice | None:
        return await self._read(lambda connection: account_sql.revoked_device(
            connection, self._dialect, user_id, device_id))

    async def open_link_channel(self, *, channel_id: bytes, now: int, expires_at: int,
                                max_open: int) -> bool:
        return await self._write(lambda connection: link_sql.open_link_channel(
            connection, self._dialect, channel_id=channel_id, now=now, expires_at=expires_at,
            max_open=max_open))

    async def post_link_message(self, *, channel_id: bytes, to_new_device: bool, payload: bytes,
                                approver_user_id: str | None, now: int,
                                max_posts: int) -> LinkPostResult:
        return await self._write(lambda connection: link_sql.post_link_message(
            connection, self._dialect, channel_id=channel_id, to_new_device=to_new_device,
            payload=payload, approver_user_id=approver_user_id, now=now, max_posts=max_posts))

    async def take_link_messages(self, *, channel_id: bytes, to_new_device: bool,
                                 approver_user_id: str | None,
                                 now: int) -> list[bytes] | None:
        return await self._write(lambda connection: link_sql.take_link_messages(
            connection, self._dialect, channel_id=channel_id, to_new_device=to_new_device,
            approver_user_id=approver_user_id, now=now))
