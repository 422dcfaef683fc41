"""The console's password-guess budget: one row per key, taken and given back atomically.

A key is the SHA-256 of what is limited (an email, a network address), so that a password
typed into the email field is not kept in clear. Each row counts the guesses of its current
window, which opens at the first guess counted after the previous one ended and lasts the
caller's ``window_ms``. Taking an attempt locks every key's row (in one order, so that two
takers cannot deadlock on one pair), then counts on all of them or on none: concurrent
logins, on one node or several, never check more guesses than the budget allows.

Both backends run this SQL through a ``storage.sql_dialect.Dialect``, inside the caller's
transaction; its tables are added by a migration of ``storage.sqlite_schema`` and
``storage.postgres_schema`` (``SQLITE_LOGIN_ATTEMPT_TABLES``, ``POSTGRES_LOGIN_ATTEMPT_TABLES``).
"""

from __future__ import annotations

from collections.abc import Sequence

from storage.admin_records import LoginAttempt
from storage.sql_dialect import Connection, Dialect

__all__ = [
    "FORGET_ENDED_WINDOWS_PER_TAKE",
    "POSTGRES_LOGIN_ATTEMPT_TABLES",
    "SQLITE_LOGIN_ATTEMPT_TABLES",
    "refund_login_attempt",
    "take_login_attempt",
]

FORGET_ENDED_WINDOWS_PER_TAKE = 16
"""Rows whose window has ended that each take deletes: more than the two it may add, so the
table holds about the keys guessed at within one window, with no sweep and no full scan."""


def _tables(*, blob: str, big: str) -> tuple[str, ...]:
    return (
        f"""
        CREATE TABLE login_attempts (
            key_hash {blob} PRIMARY KEY,
            attempts INTEGER NOT NULL CHECK (attempts >= 0),
            window_ends_at {big} NOT NULL
        )
        """,
        "CREATE INDEX login_attempts_by_window_end ON login_attempts (window_ends_at)",
    )


SQLITE_LOGIN_ATTEMPT_TABLES = _tables(blob="BLOB", big="INTEGER")
POSTGRES_LOGIN_ATTEMPT_TABLES = _tables(blob="BYTEA", big="BIGINT")

# Creates the key's row, or opens a new window on a row whose window has ended, and locks it
# until commit (PostgreSQL: a concurrent taker of the key waits here, then reads this one's
# count). Parameters: key, the new window's end, now, now, the new window's end.
_LOCK_KEY = """
    INSERT INTO login_attempts (key_hash, attempts, window_ends_at) VALUES (?, 0, ?)
    ON CONFLICT (key_hash) DO UPDATE SET
        attempts = CASE WHEN login_attempts.window_ends_at <= ? THEN 0
                        ELSE login_attempts.attempts END,
        window_ends_at = CASE WHEN login_attempts.window_ends_at <= ? THEN ?
                              ELSE login_attempts.window_ends_at END
    RETURNING attempts, window_ends_at
"""


def take_login_attempt(connection: Connection, dialect: Dialect, *, keys: Sequence[bytes],
                       allowed: int, window_ms: int, now: int) -> LoginAttempt:
    """See ``Store.take_login_attempt``."""
    if allowed < 1 or window_ms < 1 or not keys:
        raise ValueError("a guess budget needs keys, allowed >= 1 and window_ms >= 1")
    _forget_ended_windows(connection, dialect, now=now)
    refused_for_ms = 0
    ordered = sorted(set(keys))
    for key in ordered:
        attempts, window_ends_at = connection.execute(dialect.sql(_LOCK_KEY), (
            key, now + window_ms, now, now, now + window_ms)).fetchone()
        if int(attempts) >= allowed:
            refused_for_ms = max(refused_for_ms, int(window_ends_at) - now)
    if refused_for_ms:
        return LoginAttempt(granted=False, retry_after_ms=refused_for_ms)
    for key in ordered:
        connection.execute(dialect.sql(
            "UPDATE login_attempts SET attempts = attempts + 1 WHERE key_hash = ?"), (key,))
    return LoginAttempt(granted=True, retry_after_ms=0)


def refund_login_attempt(connection: Connection, dialect: Dialect, *, keys: Sequence[bytes],
                         now: int) -> None:
    """See ``Store.refund_login_attempt``."""
    for key in sorted(set(keys)):
        connection.execute(dialect.sql(
            "UPDATE login_attempts SET attempts = attempts - 1"
            " WHERE key_hash = ? AND attempts > 0 AND window_ends_at > ?"), (key, now))


def _forget_ended_windows(connection: Connection, dialect: Dialect, *, now: int) -> None:
    # The outer condition is checked again on the row as it is when deleted: a row another
    # node has just given a new window (PostgreSQL, read committed) is kept.
    connection.execute(dialect.sql(
        "DELETE FROM login_attempts WHERE window_ends_at <= ? AND key_hash IN ("  # noqa: S608
        " SELECT key_hash FROM login_attempts WHERE window_ends_at <= ?"
        f" ORDER BY window_ends_at LIMIT ?{dialect.skip_locked})"),
        (now, now, FORGET_ENDED_WINDOWS_PER_TAKE))
