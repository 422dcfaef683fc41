"""PostgreSQL schema of the server store: its migrations, in order.

The modules that own the tables (``storage.enrolment_sql``,
``storage.envelope_sql``, ``storage.prekey_sql``, ``storage.admin_sql``) write
their DDL for both databases and say why each column exists; only PostgreSQL
has the cluster's ``presence`` (below) and ``rate_limits``
(``storage.rate_limits``). The database
(more exactly: the first schema of the connection's ``search_path``) records
its version in ``schema_meta``; opening the store applies, in order and in one
transaction, every migration newer than that version. A database written by a
newer release is refused rather than guessed at.

Differences from SQLite, all invisible through ``storage.base.Store``:

* ``envelopes.envelope_id`` is an identity column (a sequence). Sequences hand
  out values in call order, not commit order, so across several nodes ids are
  NOT commit-ordered store-wide. They are per recipient device, which is what
  the delivery cursor needs: a send locks the recipient's device rows FOR
  UPDATE before it inserts (draws ids), so two sends to one device draw their
  ids one after the other's commit (tests/test_storage_postgres_cluster.py).
* The enrolment counter (``declaration_sequence`` / ``recorded_sequence``) is a
  real SEQUENCE rather than a row, so that it is never a hot locked row.
"""

from __future__ import annotations

from typing import Any

import psycopg

from storage.account_sql import POSTGRES_ACCOUNT_TABLES
from storage.admin_sql import ONE_TIME_PASSWORDS, POSTGRES_ADMIN_TABLES
from storage.blob_postgres import POSTGRES_BLOB_CHUNK_TABLES
from storage.blob_sql import POSTGRES_BLOB_TABLES
from storage.enrolment_sql import POSTGRES_ENROLMENT_GUESS_TABLES, POSTGRES_ENROLMENT_TABLES
from storage.envelope_sql import ENVELOPE_SHARE_KEYS, ENVELOPES_BY_SENDER, POSTGRES_ENVELOPE_TABLES
from storage.fanout_sql import POSTGRES_FANOUT_TABLES
from storage.last_seen_sql import LAST_SEEN_COLUMN
from storage.link_sql import POSTGRES_LINK_TABLES
from storage.login_attempt_sql import POSTGRES_LOGIN_ATTEMPT_TABLES
from storage.prekey_sql import POSTGRES_PREKEY_TABLES
from storage.push_sql import POSTGRES_PUSH_TABLES
from storage.rate_limits import POSTGRES_RATE_LIMIT_TABLES
from storage.sealed_sql import POSTGRES_SEALED_TABLES
from storage.sqlite_schema import Migration, SchemaVersionTooNew

__all__ = [
    "LATEST_SCHEMA_VERSION",
    "MIGRATIONS",
    "SchemaVersionTooNew",
    "apply_migrations",
    "read_schema_version",
]

# The directory, enrolment and envelope tables (owned by storage.enrolment_sql and
# storage.envelope_sql).
_VERSION_1 = Migration(version=1, statements=(*POSTGRES_ENROLMENT_TABLES,
                                              *POSTGRES_ENVELOPE_TABLES))

_VERSION_2 = Migration(
    version=2,
    statements=(
        # Cluster presence (storage.postgres_presence): which node holds each
        # connected device, until expires_at (a lease the node keeps renewing).
        # channel is the LISTEN channel of that node; session_token tells the
        # holder's connections apart so that a takeover closes the right one.
        """
        CREATE TABLE presence (
            user_id TEXT NOT NULL,
            device_id INTEGER NOT NULL,
            node_name TEXT NOT NULL,
            channel TEXT NOT NULL,
            session_token TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            PRIMARY KEY (user_id, device_id),
            FOREIGN KEY (user_id, device_id)
                REFERENCES devices (user_id, device_id) ON DELETE CASCADE
        )
        """,
        "CREATE INDEX presence_by_channel ON presence (channel)",
    ),
)

# Prekeys: the signed and last-resort prekey of each device, and its one-time pools.
_VERSION_3 = Migration(version=3, statements=POSTGRES_PREKEY_TABLES)

# Administration: accounts, console sessions, API tokens, audit log, licence terms,
# pending seat reductions, cross-organisation policy (storage.admin_sql).
_VERSION_4 = Migration(version=4, statements=POSTGRES_ADMIN_TABLES)

# Rate limits shared by every node (storage.rate_limits).
_VERSION_5 = Migration(version=5, statements=POSTGRES_RATE_LIMIT_TABLES)

# Accounts: one-time passwords, single use, that must be changed (storage.admin_sql).
_VERSION_6 = Migration(version=6, statements=ONE_TIME_PASSWORDS)

# Account keys: each user's account key and signed device list, the notices of revoked
# devices (storage.account_sql), and the link channels of new devices (storage.link_sql).
_VERSION_7 = Migration(version=7, statements=(*POSTGRES_ACCOUNT_TABLES, *POSTGRES_LINK_TABLES))

# The per-sender share of each device's queue: an index to count one sender's envelopes
# (storage.envelope_sql).
_VERSION_8 = Migration(version=8, statements=ENVELOPES_BY_SENDER)

# The console's password-guess budget, per email and per address, shared by every process
# (storage.login_attempt_sql).
_VERSION_9 = Migration(version=9, statements=POSTGRES_LOGIN_ATTEMPT_TABLES)

# Enrolment: each number's guesses, whichever code they check; the fingerprint of the enrolment
# secret (kept in a file now, never here); indexes for the sweeper (storage.enrolment_sql).
_VERSION_10 = Migration(version=10, statements=POSTGRES_ENROLMENT_GUESS_TABLES)

# Devices: the day each last authenticated, for the console (storage.last_seen_sql).
_VERSION_11 = Migration(version=11, statements=LAST_SEEN_COLUMN)

# Wake-up pushes: each device's push target and the durable wake-up queue
# (storage.push_sql).
_VERSION_12 = Migration(version=12, statements=POSTGRES_PUSH_TABLES)

# Blobs (encrypted files' ciphertext): their metadata (storage.blob_sql) and their bytes as
# chunk rows (storage.blob_postgres).
_VERSION_13 = Migration(version=13, statements=(*POSTGRES_BLOB_TABLES,
                                                *POSTGRES_BLOB_CHUNK_TABLES))

# Calls: which node holds each call, for the others to send its invitees there
# (storage.postgres_calls). Cluster only, like presence.
_VERSION_14 = Migration(
    version=14,
    statements=(
        """
        CREATE TABLE call_routes (
            call_id BYTEA PRIMARY KEY,
            address TEXT NOT NULL,
            invited TEXT[] NOT NULL,
            expires_at BIGINT NOT NULL
        )
        """,
        "CREATE INDEX call_routes_by_expiry ON call_routes (expires_at)",
    ),
)

# Sealed sender: each user's delivery-token registration (storage.sealed_sql), and the
# envelopes' share keys, which count sealed sends' queue share (storage.envelope_sql).
_VERSION_15 = Migration(version=15, statements=(*POSTGRES_SEALED_TABLES, *ENVELOPE_SHARE_KEYS))

# Multi-recipient sends: a shared ciphertext stored once for many envelopes, counted by a
# trigger on envelopes (storage.fanout_sql).
_VERSION_16 = Migration(version=16, statements=POSTGRES_FANOUT_TABLES)

MIGRATIONS: tuple[Migration, ...] = (_VERSION_1, _VERSION_2, _VERSION_3, _VERSION_4,
                                     _VERSION_5, _VERSION_6, _VERSION_7, _VERSION_8, _VERSION_9,
                                     _VERSION_10, _VERSION_11, _VERSION_12, _VERSION_13,
                                     _VERSION_14, _VERSION_15, _VERSION_16)
"""Every migration, oldest first; versions are consecutive from 1."""

LATEST_SCHEMA_VERSION = MIGRATIONS[-1].version

_MIGRATION_LOCK = 0x63727970_746F7061  # "cryptopa": serialises concurrent openers
"""Key of the transaction-scoped advisory lock held while migrating."""

_CREATE_SCHEMA_META = """
    CREATE TABLE IF NOT EXISTS schema_meta (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        version INTEGER NOT NULL
    )
"""

Connection = psycopg.Connection[tuple[Any, ...]]


def read_schema_version(connection: Connection) -> int:
    """Return the database's schema version (0 for a new, empty schema)."""
    row = connection.execute("SELECT to_regclass('schema_meta') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    row = connection.execute("SELECT version FROM schema_meta WHERE singleton = 1").fetchone()
    return 0 if row is None else int(row[0])


def apply_migrations(connection: Connection) -> int:
    """Bring the database up to ``LATEST_SCHEMA_VERSION`` in one transaction.

    Args:
        connection: An idle connection (not in autocommit mode is fine either way).

    Returns:
        The schema version afterwards.

    Raises:
        SchemaVersionTooNew: The database has a version this code does not know.
    """
    with connection.transaction():
        # Two nodes starting at once must not both migrate (nor race on
        # CREATE TABLE IF NOT EXISTS, which is not safe against concurrency).
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        connection.execute(_CREATE_SCHEMA_META)
        version = read_schema_version(connection)
        if version > LATEST_SCHEMA_VERSION:
            raise SchemaVersionTooNew(found=version, supported=LATEST_SCHEMA_VERSION)
        for migration in MIGRATIONS:
            if migration.version <= version:
                continue
            for statement in migration.statements:
                connection.execute(statement.encode())
            version = migration.version
        connection.execute(
            "INSERT INTO schema_meta (singleton, version) VALUES (1, %s)"
            " ON CONFLICT (singleton) DO UPDATE SET version = excluded.version",
            (version,),
        )
    return version
