"""The envelope queue, its tables and every statement on them, shared by both stores.

This module owns the envelope schema: the ``envelopes`` and ``idempotency_records`` tables
(and it keeps exact ``devices.queue_depth``, a column of ``storage.enrolment_sql``'s table).
Their DDL below is part of schema version 1 of both stores; ``ENVELOPES_BY_SENDER`` came with a
later migration of each. Change these tables only through a migration written here: new DDL for
both dialects, exported here and appended to ``MIGRATIONS`` in ``storage.sqlite_schema`` and
``storage.postgres_schema``, which number the versions. Never edit the version-1 DDL: databases
created with it would not see the change.

Every function runs inside the caller's transaction (a write's savepoint in the group-commit
writer, or a read's snapshot), so whatever it raises undoes everything it did. The send (in
``storage.send_sql``) and the acknowledgement are the hot paths: each statement is built once
per dialect, at import, and only the dialect's constant clauses are ever joined into one
(every value is a parameter).
"""

# S608 (SQL built from strings): the statements join only constant text, column lists and the
# dialect's clauses; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from storage.records import Envelope
from storage.sql_dialect import POSTGRES, SQLITE, Connection, Dialect

__all__ = [
    "ENVELOPES_BY_SENDER",
    "ENVELOPE_SHARE_KEYS",
    "POSTGRES_ENVELOPE_TABLES",
    "SQLITE_ENVELOPE_TABLES",
    "acknowledge",
    "deepest_queue",
    "expire",
    "fetch_queue",
    "queue_depth",
]


def _tables(*, identity: str, blob: str, big: str) -> tuple[str, ...]:
    return (
        # The identity never hands out an id twice, even after the newest envelopes are
        # acknowledged: clients use ids as a resume cursor.
        f"""
        CREATE TABLE envelopes (
            envelope_id {identity},
            recipient_user_id TEXT NOT NULL,
            recipient_device_id INTEGER NOT NULL,
            sender_user_id TEXT NOT NULL,
            sender_device_id INTEGER NOT NULL,
            client_message_id {big} NOT NULL,
            ciphertext {blob} NOT NULL,
            accepted_at {big} NOT NULL,
            expires_at {big} NOT NULL,
            FOREIGN KEY (recipient_user_id, recipient_device_id)
                REFERENCES devices (user_id, device_id) ON DELETE CASCADE
        )
        """,
        """
        CREATE INDEX envelopes_by_recipient
            ON envelopes (recipient_user_id, recipient_device_id, envelope_id)
        """,
        "CREATE INDEX envelopes_by_expiry ON envelopes (expires_at)",
        # One row per send ever accepted, until its envelopes expire: a resend is a duplicate.
        f"""
        CREATE TABLE idempotency_records (
            sender_user_id TEXT NOT NULL,
            sender_device_id INTEGER NOT NULL,
            client_message_id {big} NOT NULL,
            expires_at {big} NOT NULL,
            PRIMARY KEY (sender_user_id, sender_device_id, client_message_id)
        )
        """,
        "CREATE INDEX idempotency_records_by_expiry ON idempotency_records (expires_at)",
    )


SQLITE_ENVELOPE_TABLES = _tables(identity="INTEGER PRIMARY KEY AUTOINCREMENT", blob="BLOB",
                                 big="INTEGER")
POSTGRES_ENVELOPE_TABLES = _tables(identity="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
                                   blob="BYTEA", big="BIGINT")

ENVELOPES_BY_SENDER = (
    # Counts a sender's envelopes in one device's queue (NewSend.max_sender_share) by reading
    # only that sender's index entries. The same DDL in both dialects.
    """
    CREATE INDEX envelopes_by_sender
        ON envelopes (recipient_user_id, recipient_device_id, sender_user_id)
    """,
)
"""The index of the per-sender queue share: a migration of both stores (SQLite version 6,
PostgreSQL version 8)."""

ENVELOPE_SHARE_KEYS = (
    # The queue share of sends that name no sender (sealed sends): the key their share is
    # counted by (NewSend.queue_share_key), NULL for every other envelope, and a partial
    # index over the envelopes that have one. The same DDL in both dialects.
    "ALTER TABLE envelopes ADD COLUMN share_key TEXT",
    """
    CREATE INDEX envelopes_by_share_key
        ON envelopes (recipient_user_id, recipient_device_id, share_key)
        WHERE share_key IS NOT NULL
    """,
)
"""The column and index of the share keys: a migration of both stores (SQLite version 11,
PostgreSQL version 13, with sealed sender's table)."""

_ENVELOPE_COLUMNS = ("envelope_id, recipient_user_id, recipient_device_id, sender_user_id,"
                     " sender_device_id, client_message_id, ciphertext, accepted_at, expires_at")
_ENVELOPE_COLUMNS_OF_E = ", ".join(f"e.{name.strip()}" for name in _ENVELOPE_COLUMNS.split(","))
_SENDER_KEY = "sender_user_id, sender_device_id, client_message_id"


class _Statements:
    """This module's statements in one dialect. ``*_ids`` ones end with the ids (``_for_ids``)."""

    def __init__(self, dialect: Dialect) -> None:
        sql = dialect.sql
        ids = "= ANY(?)" if dialect.binds_arrays else "= ?"
        # With a multi-recipient send's shared ciphertext (storage.fanout_sql), read once per
        # row from its one stored copy; NULLs for an ordinary envelope.
        self.envelopes_after = sql(
            f"SELECT {_ENVELOPE_COLUMNS_OF_E}, e.shared_id, s.payload FROM envelopes AS e"
            " LEFT JOIN shared_payloads AS s ON s.shared_id = e.shared_id"
            " WHERE e.recipient_user_id = ? AND e.recipient_device_id = ? AND e.envelope_id > ?"
            " AND e.expires_at > ? ORDER BY e.envelope_id LIMIT ?")
        # The recipient columns in the WHERE clause are the ownership check.
        self.delete_acknowledged_ids = sql(
            "DELETE FROM envelopes WHERE recipient_user_id = ? AND recipient_device_id = ?"
            " AND envelope_id " + ids)
        self.uncount = sql("UPDATE devices SET queue_depth = queue_depth - ?"
                           " WHERE user_id = ? AND device_id = ?")
        # PostgreSQL: the deletion and the count in one statement (one round trip, not two);
        # returns the number deleted, or no row when none was.
        self.delete_and_uncount = sql(
            "WITH gone AS (DELETE FROM envelopes WHERE recipient_user_id = ?"
            " AND recipient_device_id = ? AND envelope_id = ANY(?) RETURNING 1),"
            " counted AS (SELECT COUNT(*) AS deleted FROM gone)"
            " UPDATE devices SET queue_depth = queue_depth - counted.deleted FROM counted"
            " WHERE user_id = ? AND device_id = ? AND counted.deleted > 0"
            " RETURNING counted.deleted") if dialect.binds_arrays else ""
        self.queue_depth = sql(
            "SELECT queue_depth FROM devices WHERE user_id = ? AND device_id = ?")
        self.deepest_queue = sql("SELECT COALESCE(MAX(queue_depth), 0) FROM devices")
        self.delete_expired_envelopes = sql(
            "DELETE FROM envelopes WHERE envelope_id IN (SELECT envelope_id FROM envelopes"
            " WHERE expires_at <= ? ORDER BY expires_at LIMIT ?" + dialect.skip_locked + ")"
            " RETURNING recipient_user_id, recipient_device_id")
        self.delete_expired_records = sql(
            f"DELETE FROM idempotency_records WHERE ({_SENDER_KEY}) IN"
            f" (SELECT {_SENDER_KEY} FROM idempotency_records WHERE expires_at <= ?"
            " ORDER BY expires_at LIMIT ?" + dialect.skip_locked + ")")


_STATEMENTS = {dialect: _Statements(dialect) for dialect in (SQLITE, POSTGRES)}


def _for_ids(connection: Connection, dialect: Dialect, statement: str,
             parameters: tuple[object, ...], ids: Sequence[int]) -> int:
    """Run a ``*_ids`` statement for every id of ``ids``; return how many rows it changed."""
    if dialect.binds_arrays:
        return connection.execute(statement, (*parameters, list(ids))).rowcount
    cursor = connection.cursor()
    cursor.executemany(statement, [(*parameters, id_) for id_ in ids])
    return cursor.rowcount


def _envelope(row: Sequence[Any], shared: bytes | None = None) -> Envelope:
    (envelope_id, recipient_user_id, recipient_device_id, sender_user_id, sender_device_id,
     client_message_id, ciphertext, accepted_at, expires_at) = row
    return Envelope(envelope_id=int(envelope_id), recipient_user_id=str(recipient_user_id),
                    recipient_device_id=int(recipient_device_id),
                    sender_user_id=str(sender_user_id), sender_device_id=int(sender_device_id),
                    client_message_id=int(client_message_id), ciphertext=bytes(ciphertext),
                    accepted_at=int(accepted_at), expires_at=int(expires_at), shared=shared)


def fetch_queue(connection: Connection, dialect: Dialect, *, user_id: str, device_id: int,
                after_envelope_id: int, limit: int, now: int) -> list[Envelope]:
    """See ``Store.fetch_queue``."""
    rows = connection.execute(_STATEMENTS[dialect].envelopes_after,
                              (user_id, device_id, after_envelope_id, now, limit)).fetchall()
    shared: dict[int, bytes] = {}  # one bytes object per shared payload, however many rows
    envelopes = []
    for row in rows:
        shared_id, payload = row[-2], row[-1]
        if shared_id is not None and payload is not None:
            payload = shared.setdefault(int(shared_id), bytes(payload))
        envelopes.append(_envelope(row[:-2], None if payload is None else payload))
    return envelopes


def acknowledge(connection: Connection, dialect: Dialect, *, user_id: str, device_id: int,
                envelope_ids: Sequence[int]) -> int:
    """See ``Store.acknowledge``; ``envelope_ids`` must be distinct (the caller sorts them)."""
    if not envelope_ids:
        return 0
    statements = _STATEMENTS[dialect]
    if dialect.binds_arrays:
        row = connection.execute(statements.delete_and_uncount, (
            user_id, device_id, list(envelope_ids), user_id, device_id)).fetchone()
        return 0 if row is None else int(row[0])
    deleted = _for_ids(connection, dialect, statements.delete_acknowledged_ids,
                       (user_id, device_id), envelope_ids)
    if deleted:
        connection.execute(statements.uncount, (deleted, user_id, device_id))
    return deleted


def queue_depth(connection: Connection, dialect: Dialect, *, user_id: str,
                device_id: int) -> int:
    """See ``Store.queue_depth`` (0 for an unknown device)."""
    row = connection.execute(_STATEMENTS[dialect].queue_depth, (user_id, device_id)).fetchone()
    return 0 if row is None else int(row[0])


def deepest_queue(connection: Connection, dialect: Dialect) -> int:
    """See ``Store.deepest_queue``: one pass over the devices' kept counts, no envelope read."""
    row = connection.execute(_STATEMENTS[dialect].deepest_queue).fetchone()
    return 0 if row is None else int(row[0])


def expire(connection: Connection, dialect: Dialect, *, now: int, limit: int) -> int:
    """Delete expired envelopes and idempotency records, up to ``limit`` of each (see
    ``Store.expire``, whose rate-limit part is the backend's); return the envelopes deleted."""
    statements = _STATEMENTS[dialect]
    expired = connection.execute(statements.delete_expired_envelopes, (now, limit)).fetchall()
    per_device = collections.Counter((row[0], row[1]) for row in expired)
    # In key order, so that two sweepers (on two nodes) cannot deadlock on device rows.
    connection.cursor().executemany(statements.uncount, [
        (count, user_id, device_id) for (user_id, device_id), count in sorted(per_device.items())])
    connection.execute(statements.delete_expired_records, (now, limit))
    return len(expired)
