"""The blobs' metadata, shared by both stores: who uploaded each, its size, what is durable.

This module owns the ``blobs`` table. Its DDL is a migration of its own (``SQLITE_BLOB_TABLES``,
``POSTGRES_BLOB_TABLES``, appended to the stores' ``MIGRATIONS``); change it only through a
further migration written here. Where the bytes live is the backend's: files
(``storage.blob_files``) or chunk rows (``storage.blob_postgres``). Every function runs
inside the caller's transaction.

A blob row goes with its uploader's user (``ON DELETE CASCADE``): deleting or erasing a user,
and terminating an organisation (which deletes every user), delete its blobs in the same
transaction. ``charge`` is what the blob counts against its organisation's quota.
"""

# S608 (SQL built from strings): the statements join only constant text and the dialect's
# clauses; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

from storage.interfaces.blobs import BLOB_MINIMUM_CHARGE_BYTES
from storage.records import BlobInfo, BlobOffsetMismatch, BlobQuotaExceeded, NotFound
from storage.sql_dialect import POSTGRES, SQLITE, Connection, Dialect

__all__ = [
    "BLOB_SWEEP_LIMIT",
    "POSTGRES_BLOB_TABLES",
    "SQLITE_BLOB_TABLES",
    "blob_info",
    "create_blob",
    "delete_expired_blobs",
    "delete_organisation_blobs",
    "organisation_blob_bytes",
    "set_received",
]

BLOB_SWEEP_LIMIT = 32
"""Most expired blobs one ``expire`` pass deletes (up to 100 MiB each by default): a pass
stays short, and the sweeper comes back for the rest."""


def _tables(*, blob: str, big: str) -> tuple[str, ...]:
    return (
        # received: bytes held durably from offset 0 (never more than size); charge: what the
        # blob counts against the organisation's quota (its size, at least one block);
        # upload_deadline_ms: an incomplete blob expires then (never after expires_ms).
        f"""
        CREATE TABLE blobs (
            blob_id {blob} PRIMARY KEY,
            organisation_id {big} NOT NULL
                REFERENCES organisations (organisation_id) ON DELETE CASCADE,
            user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
            device_id INTEGER NOT NULL,
            size {big} NOT NULL CHECK (size >= 0),
            charge {big} NOT NULL CHECK (charge >= size),
            received {big} NOT NULL DEFAULT 0 CHECK (received >= 0 AND received <= size),
            created_ms {big} NOT NULL,
            expires_ms {big} NOT NULL,
            upload_deadline_ms {big} NOT NULL CHECK (upload_deadline_ms <= expires_ms)
        )
        """,
        "CREATE INDEX blobs_by_expiry ON blobs (expires_ms)",
        "CREATE INDEX blobs_by_upload_deadline ON blobs (upload_deadline_ms)",
        "CREATE INDEX blobs_by_organisation ON blobs (organisation_id, expires_ms)",
        "CREATE INDEX blobs_by_user ON blobs (user_id)",
    )


SQLITE_BLOB_TABLES = _tables(blob="BLOB", big="INTEGER")
POSTGRES_BLOB_TABLES = _tables(blob="BYTEA", big="BIGINT")

_COLUMNS = ("blob_id, organisation_id, user_id, device_id, size, received, created_ms,"
            " expires_ms, upload_deadline_ms")

_LIVE = "expires_ms > ? AND (received = size OR upload_deadline_ms > ?)"
"""The blob has not expired at the time bound twice (a complete one at expires_ms, an
incomplete one at upload_deadline_ms)."""


class _Statements:
    """This module's statements in one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        sql = dialect.sql
        # The organisation's row, locked: two nodes creating blobs for one organisation
        # take turns, so their quota checks cannot both pass (SQLite's writer already does).
        self.lock_organisation = sql(
            f"SELECT 1 FROM organisations WHERE organisation_id = ?{dialect.for_update}")
        self.user_in_organisation = sql(
            "SELECT 1 FROM users WHERE user_id = ? AND organisation_id = ?")
        self.charged = sql("SELECT COALESCE(SUM(charge), 0) FROM blobs"
                           f" WHERE organisation_id = ? AND {_LIVE}")
        self.insert = sql(
            "INSERT INTO blobs (blob_id, organisation_id, user_id, device_id, size, charge,"
            " received, created_ms, expires_ms, upload_deadline_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)")
        self.info = sql(f"SELECT {_COLUMNS} FROM blobs WHERE blob_id = ?")
        self.set_received = sql(
            "UPDATE blobs SET received = ? WHERE blob_id = ? AND received = ?")
        self.received = sql("SELECT received FROM blobs WHERE blob_id = ?")
        self.delete_expired = sql(
            "DELETE FROM blobs WHERE blob_id IN (SELECT blob_id FROM blobs"
            " WHERE expires_ms <= ? OR (upload_deadline_ms <= ? AND received < size)"
            f" LIMIT ?{dialect.skip_locked})")
        self.delete_organisation = sql("DELETE FROM blobs WHERE organisation_id = ?")


_STATEMENTS = {SQLITE: _Statements(SQLITE), POSTGRES: _Statements(POSTGRES)}


def blob_charge(size: int) -> int:
    """What a blob of ``size`` bytes counts against its organisation's quota."""
    return max(size, BLOB_MINIMUM_CHARGE_BYTES)


def create_blob(connection: Connection, dialect: Dialect, *, blob_id: bytes,
                organisation_id: int, user_id: str, device_id: int, size: int,
                quota_bytes: int, now_ms: int, expires_ms: int,
                upload_deadline_ms: int | None) -> None:
    """See ``BlobStore.create_blob`` (the caller draws ``blob_id``)."""
    if size < 0:
        raise ValueError("a blob's size is not negative")
    statements = _STATEMENTS[dialect]
    connection.execute(statements.lock_organisation, (organisation_id,))
    if connection.execute(statements.user_in_organisation,
                          (user_id, organisation_id)).fetchone() is None:
        raise NotFound("no such user in this organisation")
    (charged,) = connection.execute(statements.charged,
                                    (organisation_id, now_ms, now_ms)).fetchone()
    charge = blob_charge(size)
    if int(charged) + charge > quota_bytes:
        raise BlobQuotaExceeded(quota_bytes=quota_bytes)
    deadline = expires_ms if upload_deadline_ms is None else min(upload_deadline_ms, expires_ms)
    connection.execute(statements.insert, (blob_id, organisation_id, user_id, device_id, size,
                                           charge, now_ms, expires_ms, deadline))


def blob_info(connection: Connection, dialect: Dialect, blob_id: bytes,
              now_ms: int | None) -> BlobInfo | None:
    """The blob, or None if missing (or expired at ``now_ms``, unless that is None)."""
    row = connection.execute(_STATEMENTS[dialect].info, (blob_id,)).fetchone()
    if row is None:
        return None
    info = BlobInfo(blob_id=bytes(row[0]), organisation_id=int(row[1]), user_id=str(row[2]),
                    device_id=int(row[3]), size=int(row[4]), received=int(row[5]),
                    created_ms=int(row[6]), expires_ms=int(row[7]),
                    upload_deadline_ms=int(row[8]))
    if now_ms is not None and not info.live(now_ms):
        return None
    return info


def set_received(connection: Connection, dialect: Dialect, blob_id: bytes, *, offset: int,
                 received: int) -> int:
    """Move ``received`` from ``offset`` to ``received``, only if it still is ``offset``.

    Raises:
        BlobOffsetMismatch: it is not (another append won); nothing changed.
        NotFound: the blob is gone.
    """
    statements = _STATEMENTS[dialect]
    if connection.execute(statements.set_received, (received, blob_id, offset)).rowcount:
        return received
    row = connection.execute(statements.received, (blob_id,)).fetchone()
    if row is None:
        raise NotFound("no such blob")
    raise BlobOffsetMismatch(int(row[0]))


def delete_expired_blobs(connection: Connection, dialect: Dialect, *, now_ms: int,
                         limit: int) -> int:
    """Delete up to ``limit`` blobs expired at ``now_ms``; return how many."""
    return connection.execute(_STATEMENTS[dialect].delete_expired,
                              (now_ms, now_ms, limit)).rowcount


def delete_organisation_blobs(connection: Connection, dialect: Dialect,
                              organisation_id: int) -> int:
    """Delete every blob of the organisation; return how many."""
    return connection.execute(_STATEMENTS[dialect].delete_organisation,
                              (organisation_id,)).rowcount


def organisation_blob_bytes(connection: Connection, dialect: Dialect, organisation_id: int,
                            now_ms: int) -> int:
    """What the organisation's unexpired blobs are charged (bytes)."""
    (charged,) = connection.execute(_STATEMENTS[dialect].charged,
                                    (organisation_id, now_ms, now_ms)).fetchone()
    return int(charged)
