"""SQLite schema of the embedded store: tables, migrations, and rows mapped to dataclasses.

The file records its schema version in ``schema_meta``; opening it applies, in
order and in one transaction, every migration newer than that version. A file
written by a newer release (a version this code does not know) is refused
rather than guessed at.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage.admin_sql import SQLITE_ADMIN_TABLES
from storage.base import (
    Device,
    Envelope,
    Organisation,
    OrganisationState,
    StoreError,
    User,
    UserState,
)
from storage.prekey_sql import SQLITE_PREKEY_TABLES

__all__ = [
    "LATEST_SCHEMA_VERSION",
    "MIGRATIONS",
    "Migration",
    "SchemaVersionTooNew",
    "apply_migrations",
    "device_from_row",
    "envelope_from_row",
    "organisation_from_row",
    "read_schema_version",
    "user_from_row",
]


class SchemaVersionTooNew(StoreError):
    """The database file was written by a newer release; this code must not touch it."""

    def __init__(self, *, found: int, supported: int) -> None:
        super().__init__(
            f"database schema version {found} is newer than the newest this release "
            f"supports ({supported}); upgrade the relay or restore a matching backup"
        )
        self.found = found
        self.supported = supported


@dataclass(frozen=True, kw_only=True, slots=True)
class Migration:
    version: int
    """Schema version the file has once this migration is applied."""
    statements: tuple[str, ...]
    """DDL run in order, inside the migration transaction."""


_VERSION_1 = Migration(
    version=1,
    statements=(
        """
        CREATE TABLE organisations (
            organisation_id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            seats INTEGER NOT NULL CHECK (seats >= 0),
            state TEXT NOT NULL,
            created_at INTEGER NOT NULL
        )
        """,
        # next_device_id lives on the user so a device id is never reused for
        # that user, even after its device rows are gone. declaration_sequence
        # orders this declaration against verification codes (see below).
        """
        CREATE TABLE users (
            user_id TEXT PRIMARY KEY,
            organisation_id INTEGER NOT NULL
                REFERENCES organisations (organisation_id) ON DELETE CASCADE,
            phone TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            declared_at INTEGER NOT NULL,
            enrolled_at INTEGER,
            next_device_id INTEGER NOT NULL DEFAULT 1,
            declaration_sequence INTEGER NOT NULL
        )
        """,
        "CREATE INDEX users_by_organisation ON users (organisation_id, phone)",
        # queue_depth is kept exact in the same transactions that insert or
        # delete envelopes, so the hot path never counts the queue.
        """
        CREATE TABLE devices (
            user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
            device_id INTEGER NOT NULL,
            identity_key BLOB NOT NULL,
            registered_at INTEGER NOT NULL,
            queue_depth INTEGER NOT NULL DEFAULT 0 CHECK (queue_depth >= 0),
            PRIMARY KEY (user_id, device_id)
        )
        """,
        # AUTOINCREMENT: envelope ids are never reused, even after the newest
        # envelopes are acknowledged (clients use them as a resume cursor).
        """
        CREATE TABLE envelopes (
            envelope_id INTEGER PRIMARY KEY AUTOINCREMENT,
            recipient_user_id TEXT NOT NULL,
            recipient_device_id INTEGER NOT NULL,
            sender_user_id TEXT NOT NULL,
            sender_device_id INTEGER NOT NULL,
            client_message_id INTEGER NOT NULL,
            ciphertext BLOB NOT NULL,
            accepted_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            FOREIGN KEY (recipient_user_id, recipient_device_id)
                REFERENCES devices (user_id, device_id) ON DELETE CASCADE
        )
        """,
        """
        CREATE INDEX envelopes_by_recipient
            ON envelopes (recipient_user_id, recipient_device_id, envelope_id)
        """,
        "CREATE INDEX envelopes_by_expiry ON envelopes (expires_at)",
        """
        CREATE TABLE idempotency_records (
            sender_user_id TEXT NOT NULL,
            sender_device_id INTEGER NOT NULL,
            client_message_id INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            PRIMARY KEY (sender_user_id, sender_device_id, client_message_id)
        )
        """,
        "CREATE INDEX idempotency_records_by_expiry ON idempotency_records (expires_at)",
        # recorded_sequence comes from the same counter as
        # users.declaration_sequence: a code recorded before the current
        # declaration of a number (the user was deleted and declared again) is
        # stale, because delete_user is given the number, not its phone_key.
        """
        CREATE TABLE verification_codes (
            phone_key BLOB PRIMARY KEY,
            code_hash BLOB NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            expires_at INTEGER NOT NULL,
            recorded_sequence INTEGER NOT NULL
        )
        """,
        """
        CREATE TABLE sms_sends (
            phone_key BLOB NOT NULL,
            sent_at INTEGER NOT NULL
        )
        """,
        "CREATE INDEX sms_sends_by_key ON sms_sends (phone_key, sent_at)",
        """
        CREATE TABLE secrets (
            name TEXT PRIMARY KEY,
            value BLOB NOT NULL
        )
        """,
        """
        CREATE TABLE sequences (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        )
        """,
        "INSERT INTO sequences (name, value) VALUES ('enrolment', 0)",
    ),
)

# Prekeys: the signed and last-resort prekey of each device, and its one-time pools.
_VERSION_2 = Migration(version=2, statements=SQLITE_PREKEY_TABLES)

# Administration: accounts, console sessions, API tokens, audit log, licence terms,
# pending seat reductions, cross-organisation policy (storage.admin_sql).
_VERSION_3 = Migration(version=3, statements=SQLITE_ADMIN_TABLES)

MIGRATIONS: tuple[Migration, ...] = (_VERSION_1, _VERSION_2, _VERSION_3)
"""Every migration, oldest first; versions are consecutive from 1."""

LATEST_SCHEMA_VERSION = MIGRATIONS[-1].version

_CREATE_SCHEMA_META = """
    CREATE TABLE IF NOT EXISTS schema_meta (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        version INTEGER NOT NULL
    )
"""


def read_schema_version(connection: sqlite3.Connection) -> int:
    """Return the file's schema version (0 for a new, empty file)."""
    exists = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_meta'"
    ).fetchone()
    if exists is None:
        return 0
    row = connection.execute("SELECT version FROM schema_meta WHERE singleton = 1").fetchone()
    return 0 if row is None else int(row[0])


def apply_migrations(connection: sqlite3.Connection) -> int:
    """Bring the file up to ``LATEST_SCHEMA_VERSION`` in one transaction.

    Args:
        connection: An open connection in autocommit mode (``isolation_level=None``).

    Returns:
        The schema version of the file afterwards.

    Raises:
        SchemaVersionTooNew: The file has a version this code does not know.
    """
    # IMMEDIATE: two processes opening a new file at once must not both migrate.
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(_CREATE_SCHEMA_META)
        version = read_schema_version(connection)
        if version > LATEST_SCHEMA_VERSION:
            raise SchemaVersionTooNew(found=version, supported=LATEST_SCHEMA_VERSION)
        for migration in MIGRATIONS:
            if migration.version <= version:
                continue
            for statement in migration.statements:
                connection.execute(statement)
            version = migration.version
        connection.execute(
            "INSERT INTO schema_meta (singleton, version) VALUES (1, ?) "
            "ON CONFLICT (singleton) DO UPDATE SET version = excluded.version",
            (version,),
        )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return version


# -- rows to dataclasses ---------------------------------------------------------


def organisation_from_row(row: Sequence[Any]) -> Organisation:
    """Map the organisations columns (in table order) to an Organisation."""
    organisation_id, name, seats, state, created_at = row
    return Organisation(organisation_id=int(organisation_id),
                        name=str(name), seats=int(seats),
                        state=OrganisationState(state),
                        created_at=int(created_at))


def user_from_row(row: Sequence[Any]) -> User:
    """Map user_id .. enrolled_at (the first six users columns); extra columns are ignored."""
    user_id, organisation_id, phone, state, declared_at, enrolled_at = row[:6]
    return User(user_id=str(user_id), organisation_id=int(organisation_id),
                phone=str(phone), state=UserState(state),
                declared_at=int(declared_at),
                enrolled_at=None if enrolled_at is None else int(enrolled_at))


def device_from_row(row: Sequence[Any]) -> Device:
    """Map user_id, device_id, identity_key, registered_at; extra columns are ignored."""
    user_id, device_id, identity_key, registered_at = row[:4]
    return Device(user_id=str(user_id), device_id=int(device_id),
                  identity_key=bytes(identity_key),
                  registered_at=int(registered_at))


def envelope_from_row(row: Sequence[Any]) -> Envelope:
    """Map the envelopes columns (in table order) to an Envelope."""
    (envelope_id, recipient_user_id, recipient_device_id, sender_user_id, sender_device_id,
     client_message_id, ciphertext, accepted_at, expires_at) = row
    return Envelope(envelope_id=int(envelope_id),
                    recipient_user_id=str(recipient_user_id),
                    recipient_device_id=int(recipient_device_id),
                    sender_user_id=str(sender_user_id),
                    sender_device_id=int(sender_device_id),
                    client_message_id=int(client_message_id),
                    ciphertext=bytes(ciphertext),
                    accepted_at=int(accepted_at),
                    expires_at=int(expires_at))
