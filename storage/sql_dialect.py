"""What differs between SQLite and PostgreSQL in the SQL that both stores share.

``storage.enrolment_sql``, ``storage.envelope_sql``, ``storage.prekey_sql`` and
``storage.admin_sql`` write every statement once, with ``?`` placeholders, and take a
``Dialect``: the few clauses and statements that differ, each named for what it does. Anything
else in a shared statement must run with the same meaning on both databases.

Most differences come from concurrency. SQLite has one writer for the whole file, so its
write transaction already serialises everything and its row-lock clauses are empty; several
PostgreSQL nodes write one database at once, so they lock the rows they read to decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["POSTGRES", "SQLITE", "Connection", "Cursor", "Dialect"]


class Cursor(Protocol):
    """What both sqlite3 and psycopg cursors offer."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def executemany(self, query: Any, params_seq: Any, /) -> object: ...


class Connection(Protocol):
    """What both sqlite3 and psycopg connections offer."""

    def execute(self, query: Any, params: Any = ..., /) -> Cursor: ...
    def cursor(self) -> Cursor: ...


# eq=False: dialects compare and hash by identity, so that a module's statements, built once
# per dialect, are found by a cheap dictionary look-up on every call.
@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Dialect:
    placeholder: str
    """The driver's parameter marker, replacing ``?``."""
    for_update: str
    """Appended to a SELECT of rows the transaction then changes or relies on staying as
    they are: writers elsewhere wait for its commit."""
    for_share: str
    """Appended to a SELECT of rows that must not change (nor go) before the commit, while
    other readers may take the same lock."""
    skip_locked: str
    """Appended to the sub-SELECT choosing rows to delete: concurrent deleters (sweepers,
    prekey claims) take different rows instead of waiting for each other."""
    bytewise_collation: str
    """The collation ordering text by its bytes (used as ``COLLATE`` it makes an ORDER BY
    independent of the database's locale)."""
    binds_arrays: bool
    """The driver binds a list as one array parameter (``= ANY(?)``); otherwise a
    statement about several ids runs once per id (``executemany``)."""
    has_lastrowid: bool
    """The driver's cursor reports the id an INSERT drew (sqlite3's ``lastrowid``), which
    the hot send path reads instead of a RETURNING row (a second step of the statement);
    otherwise the insert returns it."""
    next_enrolment_sequence: str
    """Draws the next value of the enrolment counter (one row holding it)."""
    phone_key_lock: str | None
    """Serialises, until commit, the transactions about one phone key (its one parameter);
    None where the single writer already does."""
    named_lock: str | None
    """Serialises, until commit, the transactions that take the lock of one name (its one
    text parameter), for a check over many rows (a count) that no row lock covers; None where
    the single writer already does."""

    def sql(self, query: str) -> str:
        """``query`` with the driver's placeholders."""
        return query.replace("?", self.placeholder)


SQLITE = Dialect(
    placeholder="?", for_update="", for_share="", skip_locked="",
    bytewise_collation="BINARY", binds_arrays=False, has_lastrowid=True,
    next_enrolment_sequence=(
        "UPDATE sequences SET value = value + 1 WHERE name = 'enrolment' RETURNING value"),
    phone_key_lock=None, named_lock=None)

# READ COMMITTED across nodes. A sequence rather than a counter row: never a hot locked row.
# Without SKIP LOCKED a second prekey claimer would wait for the first, find its row gone and
# claim nothing although keys remain; with it, it takes the next key.
POSTGRES = Dialect(
    placeholder="%s", for_update=" FOR UPDATE", for_share=" FOR SHARE",
    skip_locked=" FOR UPDATE SKIP LOCKED", bytewise_collation='"C"', binds_arrays=True,
    has_lastrowid=False, next_enrolment_sequence="SELECT nextval('enrolment_sequence')",
    phone_key_lock="SELECT pg_advisory_xact_lock(hashtextextended(encode(?, 'hex'), 0))",
    named_lock="SELECT pg_advisory_xact_lock(hashtextextended('name:' || ?, 0))")
