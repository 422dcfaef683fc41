"""Link channels: the relay's short-lived mailboxes for linking a new device, shared by both
stores.

This module owns the ``link_channels`` and ``link_messages`` tables. Their DDL is a migration
of its own (``SQLITE_LINK_TABLES``, ``POSTGRES_LINK_TABLES``, appended to the stores'
``MIGRATIONS``); change them only through a further migration written here.

A channel counts the posts of each side over its whole life (not the messages waiting), so
that a side gets a bounded number of attempts however fast the other reads. Messages are
opaque (end-to-end encrypted between the two devices). Every function runs inside the caller's
transaction.
"""

# S608 (SQL built from strings): the statements join only constant text and the dialect's
# clauses; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

from storage.account_records import LinkPostResult
from storage.sql_dialect import POSTGRES, SQLITE, Connection, Dialect

__all__ = [
    "POSTGRES_LINK_TABLES",
    "SQLITE_LINK_TABLES",
    "open_link_channel",
    "post_link_message",
    "take_link_messages",
]

_OPEN_CHANNELS_LOCK = "link_channels"
"""Name of the lock that makes counting the open channels and adding one atomic (PostgreSQL)."""


def _tables(*, identity: str, blob: str, big: str) -> tuple[str, ...]:
    return (
        # approver_user_id: NULL until the approving account's first post binds the channel.
        # The posts_* columns count posts over the channel's life, per direction.
        f"""
        CREATE TABLE link_channels (
            channel_id {blob} PRIMARY KEY,
            expires_at {big} NOT NULL,
            approver_user_id TEXT REFERENCES users (user_id) ON DELETE CASCADE,
            posts_to_new_device INTEGER NOT NULL DEFAULT 0,
            posts_to_approver INTEGER NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX link_channels_by_expiry ON link_channels (expires_at)",
        "CREATE INDEX link_channels_by_approver ON link_channels (approver_user_id)",
        # to_new_device is 1 for what the approver posted, 0 for what the new device posted;
        # message_number orders each direction's messages.
        f"""
        CREATE TABLE link_messages (
            message_number {identity},
            channel_id {blob} NOT NULL
                REFERENCES link_channels (channel_id) ON DELETE CASCADE,
            to_new_device INTEGER NOT NULL CHECK (to_new_device IN (0, 1)),
            payload {blob} NOT NULL
        )
        """,
        """
        CREATE INDEX link_messages_by_channel
            ON link_messages (channel_id, to_new_device, message_number)
        """,
    )


SQLITE_LINK_TABLES = _tables(identity="INTEGER PRIMARY KEY AUTOINCREMENT", blob="BLOB",
                             big="INTEGER")
POSTGRES_LINK_TABLES = _tables(identity="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
                               blob="BYTEA", big="BIGINT")


class _Statements:
    """This module's statements in one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        sql = dialect.sql
        self.lock_open_channels = (None if dialect.named_lock is None
                                   else sql(dialect.named_lock))
        # Their messages go by ON DELETE CASCADE.
        self.delete_expired = sql("DELETE FROM link_channels WHERE expires_at <= ?")
        self.count_channels = sql("SELECT COUNT(*) FROM link_channels")
        self.create_channel = sql(
            "INSERT INTO link_channels (channel_id, expires_at) VALUES (?, ?)"
            " ON CONFLICT (channel_id) DO NOTHING RETURNING channel_id")
        self.channel_locked = sql(
            "SELECT expires_at, approver_user_id, posts_to_new_device, posts_to_approver"
            " FROM link_channels WHERE channel_id = ?" + dialect.for_update)
        self.count_post_to_new_device = sql(
            "UPDATE link_channels SET approver_user_id = ?,"
            " posts_to_new_device = posts_to_new_device + 1 WHERE channel_id = ?")
        self.count_post_to_approver = sql(
            "UPDATE link_channels SET posts_to_approver = posts_to_approver + 1"
            " WHERE channel_id = ?")
        self.insert_message = sql(
            "INSERT INTO link_messages (channel_id, to_new_device, payload) VALUES (?, ?, ?)")
        self.take_messages = sql(
            "DELETE FROM link_messages WHERE channel_id = ? AND to_new_device = ?"
            " RETURNING message_number, payload")


_STATEMENTS = {dialect: _Statements(dialect) for dialect in (SQLITE, POSTGRES)}


def open_link_channel(connection: Connection, dialect: Dialect, *, channel_id: bytes, now: int,
                      expires_at: int, max_open: int) -> bool:
    """See ``LinkChannelStore.open_link_channel``."""
    statements = _STATEMENTS[dialect]
    if statements.lock_open_channels is not None:
        connection.execute(statements.lock_open_channels, (_OPEN_CHANNELS_LOCK,))
    # Only expired channels go: on refusal nothing observable changed. What remains is then
    # all open, so the table never holds more than max_open channels plus those that
    # expired since the last opening.
    connection.execute(statements.delete_expired, (now,))
    (open_channels,) = connection.execute(statements.count_channels).fetchone()
    if open_channels >= max_open:
        return False
    return connection.execute(statements.create_channel,
                              (channel_id, expires_at)).fetchone() is not None


def post_link_message(connection: Connection, dialect: Dialect, *, channel_id: bytes,
                      to_new_device: bool, payload: bytes, approver_user_id: str | None,
                      now: int, max_posts: int) -> LinkPostResult:
    """See ``LinkChannelStore.post_link_message``.

    Raises ValueError if ``approver_user_id`` is None exactly when ``to_new_device`` (the
    caller's mistake: only an authenticated account posts to the new device).
    """
    if to_new_device != (approver_user_id is not None):
        raise ValueError("a post to the new device, and only one, names its approving account")
    statements = _STATEMENTS[dialect]
    # Locked until commit: concurrent posts on other nodes count one after the other.
    row = connection.execute(statements.channel_locked, (channel_id,)).fetchone()
    if row is None or row[0] <= now:
        return LinkPostResult.UNKNOWN_CHANNEL
    _, bound_user_id, posts_to_new_device, posts_to_approver = row
    if to_new_device:
        if bound_user_id is not None and bound_user_id != approver_user_id:
            return LinkPostResult.OTHER_ACCOUNT
        if posts_to_new_device >= max_posts:
            return LinkPostResult.EXHAUSTED
        connection.execute(statements.count_post_to_new_device, (approver_user_id, channel_id))
    else:
        if posts_to_approver >= max_posts:
            return LinkPostResult.EXHAUSTED
        connection.execute(statements.count_post_to_approver, (channel_id,))
    connection.execute(statements.insert_message, (channel_id, int(to_new_device), payload))
    return LinkPostResult.POSTED


def take_link_messages(connection: Connection, dialect: Dialect, *, channel_id: bytes,
                       to_new_device: bool, approver_user_id: str | None,
                       now: int) -> list[bytes] | None:
    """See ``LinkChannelStore.take_link_messages``."""
    statements = _STATEMENTS[dialect]
    row = connection.execute(statements.channel_locked, (channel_id,)).fetchone()
    if row is None or row[0] <= now:
        return None
    if not to_new_device and (approver_user_id is None or row[1] != approver_user_id):
        return None
    taken = connection.execute(statements.take_messages,
                               (channel_id, int(to_new_device))).fetchall()
    return [bytes(payload) for _, payload in sorted(taken)]
