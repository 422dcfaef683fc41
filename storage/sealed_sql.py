"""Sealed sender's table and statements, shared by both stores: each user's delivery access.

``delivery_access`` holds, per user, how it admits sealed sends (``mode``: "token" or
"organisation") and the SHA-256 of its current delivery token (never the token itself, which
only the user's contacts hold). One row per user, naming that user alone: nothing here links
two users. Sealed envelopes themselves go through ``storage.envelope_sql`` with no sender (an
empty sender user and device 0) and a ``share_key`` derived from the token they showed, so that
nothing the relay stores names who sent them.

The DDL is a migration of both stores (SQLite version 11, PostgreSQL version 13, with
``envelope_sql.ENVELOPE_SHARE_KEYS``).
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.sql_dialect import POSTGRES, SQLITE, Connection, Dialect

__all__ = [
    "POSTGRES_SEALED_TABLES",
    "SEALED_SENDER_USER",
    "SQLITE_SEALED_TABLES",
    "DeliveryAccess",
    "get_delivery_access",
    "set_delivery_access",
]

SEALED_SENDER_USER = ""
"""The sender user of a sealed envelope's row (with sender device 0): nobody."""


def _tables(*, blob: str, big: str) -> tuple[str, ...]:
    return (
        f"""
        CREATE TABLE delivery_access (
            user_id TEXT PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
            mode TEXT NOT NULL CHECK (mode IN ('token', 'organisation')),
            token_hash {blob},
            updated_at {big} NOT NULL
        )
        """,
    )


SQLITE_SEALED_TABLES = _tables(blob="BLOB", big="INTEGER")
POSTGRES_SEALED_TABLES = _tables(blob="BYTEA", big="BIGINT")


@dataclass(frozen=True, kw_only=True, slots=True)
class DeliveryAccess:
    """How one user admits sealed sends."""

    mode: str
    """"token" or "organisation"."""
    token_hash: bytes | None
    """SHA-256 of the current delivery token; None: no token is accepted."""
    organisation_id: int | None = None
    """The user's organisation, as read (``get_delivery_access``); not stored here."""


class _Statements:
    def __init__(self, dialect: Dialect) -> None:
        sql = dialect.sql
        self.get = sql("SELECT a.mode, a.token_hash, u.organisation_id FROM delivery_access AS a"
                       " JOIN users AS u ON u.user_id = a.user_id WHERE a.user_id = ?")
        self.user_exists = sql("SELECT 1 FROM users WHERE user_id = ?")
        self.set = sql(
            "INSERT INTO delivery_access (user_id, mode, token_hash, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET mode = excluded.mode,"
            " token_hash = excluded.token_hash, updated_at = excluded.updated_at")


_STATEMENTS = {dialect: _Statements(dialect) for dialect in (SQLITE, POSTGRES)}


def get_delivery_access(connection: Connection, dialect: Dialect, *,
                        user_id: str) -> DeliveryAccess | None:
    """The user's registration, with its organisation; None if it registered none (or there
    is no such user)."""
    row = connection.execute(_STATEMENTS[dialect].get, (user_id,)).fetchone()
    if row is None:
        return None
    return DeliveryAccess(mode=str(row[0]), token_hash=None if row[1] is None else bytes(row[1]),
                          organisation_id=int(row[2]))


def set_delivery_access(connection: Connection, dialect: Dialect, *, user_id: str,
                        access: DeliveryAccess, now: int) -> bool:
    """Register ``access`` for the user, replacing the earlier one; False if the user is gone."""
    statements = _STATEMENTS[dialect]
    if connection.execute(statements.user_exists, (user_id,)).fetchone() is None:
        return False
    connection.execute(statements.set, (user_id, access.mode, access.token_hash, now))
    return True
