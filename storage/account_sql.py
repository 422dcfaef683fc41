"""Account keys, signed device lists and revocation notices: their schema and statements,
shared by both stores.

This module owns the users' account columns (``account_key``, ``device_list``,
``device_list_version``, added to ``storage.enrolment_sql``'s ``users`` table) and the
``revoked_devices`` table. Their DDL is a migration of its own (``SQLITE_ACCOUNT_TABLES``,
``POSTGRES_ACCOUNT_TABLES``, appended to the stores' ``MIGRATIONS``); change them only through
a further migration written here, never by editing the DDL below.

The rule these functions keep: a user's registered devices are exactly the devices whose
identity key is on the user's current list. A list is stored only in the transaction that
registers and revokes devices to match it (``publish_device_list``, and a new enrolment,
``storage.enrolment_sql.register_device``), so routing keeps reading the ``devices`` table.

Every function runs inside the caller's transaction, so whatever it raises undoes everything
it did.
"""

# S608 (SQL built from strings): the statements join only constant text and the dialect's
# clauses; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from storage.account_records import (
    REVOCATION_NOTICE_RETENTION_MS,
    AccountRecord,
    DeviceListRefusal,
    DeviceListRefused,
    PublishedDeviceList,
    RevokedDevice,
)
from storage.records import Device, OrganisationState
from storage.sql_dialect import POSTGRES, SQLITE, Connection, Dialect

__all__ = [
    "NOTICES_PRUNED_PER_REVOCATION",
    "POSTGRES_ACCOUNT_TABLES",
    "SQLITE_ACCOUNT_TABLES",
    "BeforeDeviceDeleted",
    "account",
    "device_keys",
    "publish_device_list",
    "replace_account",
    "revoke_devices",
    "revoked_device",
]

NOTICES_PRUNED_PER_REVOCATION = 256
"""Old notices deleted at most per revoking transaction: more than one transaction writes
(at most the 16 devices of a list), so the table shrinks back to its retention window, and
never a long delete inside a registration."""

BeforeDeviceDeleted = Callable[[Any, str, int], None]
"""Called with (connection, user_id, device_id) before one device is deleted (the PostgreSQL
store tells the node holding its connection)."""


def _tables(*, blob: str, big: str) -> tuple[str, ...]:
    return (
        # NULL until the user enrols under an account key; device_list is the signed list
        # exactly as published (crypto.device_list), device_list_version its version.
        f"ALTER TABLE users ADD COLUMN account_key {blob}",
        f"ALTER TABLE users ADD COLUMN device_list {blob}",
        f"ALTER TABLE users ADD COLUMN device_list_version {big} NOT NULL DEFAULT 0",
        # What a revoked device is told if it connects again. Device ids are never reused
        # for a user (users.next_device_id), so (user_id, device_id) names one device ever.
        f"""
        CREATE TABLE revoked_devices (
            user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
            device_id INTEGER NOT NULL,
            identity_key {blob} NOT NULL,
            reason TEXT NOT NULL,
            revoked_at {big} NOT NULL,
            PRIMARY KEY (user_id, device_id)
        )
        """,
        "CREATE INDEX revoked_devices_by_age ON revoked_devices (revoked_at)",
    )


SQLITE_ACCOUNT_TABLES = _tables(blob="BLOB", big="INTEGER")
POSTGRES_ACCOUNT_TABLES = _tables(blob="BYTEA", big="BIGINT")


class _Statements:
    """This module's statements in one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        sql = dialect.sql
        self.account = sql(
            "SELECT account_key, device_list, device_list_version FROM users WHERE user_id = ?")
        self.account_locked = sql(
            "SELECT organisation_id, account_key, device_list_version, next_device_id"
            " FROM users WHERE user_id = ?" + dialect.for_update)
        self.organisation_state_shared = sql(
            "SELECT state FROM organisations WHERE organisation_id = ?" + dialect.for_share)
        self.device_keys = sql(
            "SELECT device_id, identity_key FROM devices WHERE user_id = ?"
            " ORDER BY device_id" + dialect.for_update)
        # Its queued envelopes (and with them its queue_depth) and prekeys go by ON DELETE
        # CASCADE, as on every device deletion.
        self.delete_device = sql("DELETE FROM devices WHERE user_id = ? AND device_id = ?")
        self.record_notice = sql(
            "INSERT INTO revoked_devices (user_id, device_id, identity_key, reason, revoked_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, device_id) DO UPDATE"
            " SET identity_key = excluded.identity_key, reason = excluded.reason,"
            " revoked_at = excluded.revoked_at")
        self.prune_notices = sql(
            "DELETE FROM revoked_devices WHERE (user_id, device_id) IN"
            " (SELECT user_id, device_id FROM revoked_devices WHERE revoked_at <= ?"
            " ORDER BY revoked_at LIMIT ?" + dialect.skip_locked + ")")
        self.notice = sql(
            "SELECT identity_key, reason, revoked_at FROM revoked_devices"
            " WHERE user_id = ? AND device_id = ?")
        self.revoked_keys = sql("SELECT identity_key FROM revoked_devices WHERE user_id = ?")
        self.insert_device = sql(
            "INSERT INTO devices (user_id, device_id, identity_key, registered_at)"
            " VALUES (?, ?, ?, ?)")
        self.replace_account = sql(
            "UPDATE users SET account_key = ?, device_list = ?, device_list_version = ?"
            " WHERE user_id = ?")
        self.store_list = sql(
            "UPDATE users SET device_list = ?, device_list_version = ?, next_device_id = ?"
            " WHERE user_id = ?")


_STATEMENTS = {dialect: _Statements(dialect) for dialect in (SQLITE, POSTGRES)}


def account(connection: Connection, dialect: Dialect, user_id: str) -> AccountRecord | None:
    """See ``AccountKeyStore.account``."""
    row = connection.execute(_STATEMENTS[dialect].account, (user_id,)).fetchone()
    if row is None:
        return None
    account_key, device_list, version = row
    return AccountRecord(account_key=None if account_key is None else bytes(account_key),
                         device_list=None if device_list is None else bytes(device_list),
                         device_list_version=int(version))


def revoked_device(connection: Connection, dialect: Dialect, user_id: str,
                   device_id: int) -> RevokedDevice | None:
    """See ``AccountKeyStore.revoked_device``."""
    row = connection.execute(_STATEMENTS[dialect].notice, (user_id, device_id)).fetchone()
    if row is None:
        return None
    identity_key, reason, revoked_at = row
    return RevokedDevice(identity_key=bytes(identity_key), reason=str(reason),
                         revoked_at=int(revoked_at))


def device_keys(connection: Connection, dialect: Dialect, user_id: str) -> dict[int, bytes]:
    """The user's devices (id -> identity key), their rows locked until commit."""
    rows = connection.execute(_STATEMENTS[dialect].device_keys, (user_id,)).fetchall()
    return {int(device_id): bytes(identity_key) for device_id, identity_key in rows}


def revoke_devices(connection: Connection, dialect: Dialect, *, user_id: str,
                   devices: Sequence[tuple[int, bytes]], reason: str, now: int,
                   before_delete: BeforeDeviceDeleted) -> tuple[int, ...]:
    """Delete the ``(device_id, identity_key)`` devices of the user, keeping a notice of each;
    return their ids, ascending. Notices past ``REVOCATION_NOTICE_RETENTION_MS`` are pruned."""
    statements = _STATEMENTS[dialect]
    revoked = sorted(devices)
    for device_id, identity_key in revoked:
        before_delete(connection, user_id, device_id)
        connection.execute(statements.delete_device, (user_id, device_id))
        connection.execute(statements.record_notice,
                           (user_id, device_id, identity_key, reason, now))
    if revoked:
        connection.execute(statements.prune_notices, (now - REVOCATION_NOTICE_RETENTION_MS,
                                                      NOTICES_PRUNED_PER_REVOCATION))
    return tuple(device_id for device_id, _ in revoked)


def replace_account(connection: Connection, dialect: Dialect, *, user_id: str,
                    account_key: bytes, device_list: bytes, device_list_version: int) -> None:
    """Give the user a new account key and its first list (a new enrolment)."""
    connection.execute(_STATEMENTS[dialect].replace_account,
                       (account_key, device_list, device_list_version, user_id))


def publish_device_list(connection: Connection, dialect: Dialect, *, user_id: str,
                        publisher_device_id: int, account_key: bytes, version: int,
                        identity_keys: frozenset[bytes], encoded: bytes, now: int,
                        max_devices: int, revoke_reason: str,
                        before_delete: BeforeDeviceDeleted) -> PublishedDeviceList:
    """See ``AccountKeyStore.publish_device_list``."""
    statements = _STATEMENTS[dialect]
    # Locked until commit: a concurrent publish (another node) waits, then sees this version.
    row = connection.execute(statements.account_locked, (user_id,)).fetchone()
    if row is None:
        raise DeviceListRefused(DeviceListRefusal.UNKNOWN_USER)
    organisation_id, stored_key, stored_version, next_device_id = row
    (state,) = connection.execute(statements.organisation_state_shared,
                                  (organisation_id,)).fetchone()
    if state != OrganisationState.ACTIVE.value:
        raise DeviceListRefused(DeviceListRefusal.ORGANISATION_INACTIVE)
    if stored_key is None or bytes(stored_key) != account_key:
        raise DeviceListRefused(DeviceListRefusal.ACCOUNT_KEY_MISMATCH)
    if version <= int(stored_version):
        raise DeviceListRefused(DeviceListRefusal.STALE_VERSION)
    devices = device_keys(connection, dialect, user_id)
    if devices.get(publisher_device_id) not in identity_keys:
        raise DeviceListRefused(DeviceListRefusal.PUBLISHER_NOT_LISTED)
    removed = [(device_id, key) for device_id, key in devices.items()
               if key not in identity_keys]
    # A key revoked before (by an administrator, or by an earlier list) is never registered
    # again by a list that still names it: the device stays revoked until its notice expires.
    revoked_before = {bytes(key) for (key,) in connection.execute(
        statements.revoked_keys, (user_id,)).fetchall()}
    new_keys = sorted(identity_keys - set(devices.values()) - revoked_before)
    if len(devices) - len(removed) + len(new_keys) > max_devices:
        raise DeviceListRefused(DeviceListRefusal.TOO_MANY_DEVICES)
    revoked = revoke_devices(connection, dialect, user_id=user_id, devices=removed,
                             reason=revoke_reason, now=now, before_delete=before_delete)
    added = tuple(Device(user_id=user_id, device_id=int(next_device_id) + offset,
                         identity_key=key, registered_at=now)
                  for offset, key in enumerate(new_keys))
    for device in added:
        connection.execute(statements.insert_device, (
            user_id, device.device_id, device.identity_key, device.registered_at))
    connection.execute(statements.store_list,
                       (encoded, version, int(next_device_id) + len(added), user_id))
    return PublishedDeviceList(added=added, revoked=revoked)
