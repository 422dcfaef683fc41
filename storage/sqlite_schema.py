"""SQLite schema of the embedded store: its migrations, in order.

The file records its schema version in ``schema_meta``; opening it applies, in
order and in one transaction, every migration newer than that version. A file
written by a newer release (a version this code does not know) is refused
rather than guessed at.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from storage.account_sql import SQLITE_ACCOUNT_TABLES
from storage.admin_sql import ONE_TIME_PASSWORDS, SQLITE_ADMIN_TABLES
from storage.blob_files import SQLITE_BLOB_FILE_TABLES
from storage.blob_sql import SQLITE_BLOB_TABLES
from storage.enrolment_sql import SQLITE_ENROLMENT_GUESS_TABLES, SQLITE_ENROLMENT_TABLES
from storage.envelope_sql import ENVELOPE_SHARE_KEYS, ENVELOPES_BY_SENDER, SQLITE_ENVELOPE_TABLES
from storage.fanout_sql import SQLITE_FANOUT_TABLES
from storage.last_seen_sql import LAST_SEEN_COLUMN
from storage.link_sql import SQLITE_LINK_TABLES
from storage.login_attempt_sql import SQLITE_LOGIN_ATTEMPT_TABLES
from storage.prekey_sql import SQLITE_PREKEY_TABLES
from storage.push_sql import SQLITE_PUSH_TABLES
from storage.records import StoreError
from storage.sealed_sql import SQLITE_SEALED_TABLES

__all__ = [
    "LATEST_SCHEMA_VERSION",
    "MIGRATIONS",
    "Migration",
    "SchemaVersionTooNew",
    "apply_migrations",
    "read_schema_version",
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


# The directory, enrolment and envelope tables (owned by storage.enrolment_sql and
# storage.envelope_sql).
_VERSION_1 = Migration(version=1, statements=(*SQLITE_ENROLMENT_TABLES, *SQLITE_ENVELOPE_TABLES))

# Prekeys: the signed and last-resort prekey of each device, and its one-time pools.
_VERSION_2 = Migration(version=2, statements=SQLITE_PREKEY_TABLES)

# Administration: accounts, console sessions, API tokens, audit log, licence terms,
# pending seat reductions, cross-organisation policy (storage.admin_sql).
_VERSION_3 = Migration(version=3, statements=SQLITE_ADMIN_TABLES)

# Accounts: one-time passwords, single use, that must be changed (storage.admin_sql).
_VERSION_4 = Migration(version=4, statements=ONE_TIME_PASSWORDS)

# Account keys: each user's account key and signed device list, the notices of revoked
# devices (storage.account_sql), and the link channels of new devices (storage.link_sql).
_VERSION_5 = Migration(version=5, statements=(*SQLITE_ACCOUNT_TABLES, *SQLITE_LINK_TABLES))

# The per-sender share of each device's queue: an index to count one sender's envelopes
# (storage.envelope_sql).
_VERSION_6 = Migration(version=6, statements=ENVELOPES_BY_SENDER)

# The console's password-guess budget, per email and per address, shared by every process
# (storage.login_attempt_sql).
_VERSION_7 = Migration(version=7, statements=SQLITE_LOGIN_ATTEMPT_TABLES)

# Enrolment: each number's guesses, whichever code they check; the fingerprint of the enrolment
# secret (kept in a file now, never here); indexes for the sweeper (storage.enrolment_sql).
_VERSION_8 = Migration(version=8, statements=SQLITE_ENROLMENT_GUESS_TABLES)

# Devices: the day each last authenticated, for the console (storage.last_seen_sql).
_VERSION_9 = Migration(version=9, statements=LAST_SEEN_COLUMN)

# Wake-up pushes: each device's push target and the durable wake-up queue
# (storage.push_sql).
_VERSION_10 = Migration(version=10, statements=SQLITE_PUSH_TABLES)

# Blobs (encrypted files' ciphertext): their metadata (storage.blob_sql), and the ids whose
# files are still to be removed after their rows went (storage.blob_files).
_VERSION_11 = Migration(version=11, statements=(*SQLITE_BLOB_TABLES, *SQLITE_BLOB_FILE_TABLES))

# Sealed sender: each user's delivery-token registration (storage.sealed_sql), and the
# envelopes' share keys, which count sealed sends' queue share (storage.envelope_sql).
_VERSION_12 = Migration(version=12, statements=(*SQLITE_SEALED_TABLES, *ENVELOPE_SHARE_KEYS))

# Multi-recipient sends: a shared ciphertext stored once for many envelopes, counted by a
# trigger on envelopes (storage.fanout_sql).
_VERSION_13 = Migration(version=13, statements=SQLITE_FANOUT_TABLES)

MIGRATIONS: tuple[Migration, ...] = (_VERSION_1, _VERSION_2, _VERSION_3, _VERSION_4,
                                     _VERSION_5, _VERSION_6, _VERSION_7,
                                     _VERSION_8, _VERSION_9, _VERSION_10, _VERSION_11,
                                     _VERSION_12, _VERSION_13)
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
