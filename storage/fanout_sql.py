"""Multi-recipient sends: the shared payloads table, its reference count, and the fan-out.

This module owns the ``shared_payloads`` table and the ``envelopes.shared_id`` column that
refers to it (a migration of both stores: SQLite version 12, PostgreSQL version 14; exported
as ``SQLITE_FANOUT_TABLES`` and ``POSTGRES_FANOUT_TABLES``). A multi-recipient send stores its
shared ciphertext once, in one ``shared_payloads`` row whose ``remaining`` counts the envelopes
referring to it, and one ordinary envelope per device (``storage.envelope_sql``'s table, the
device's key material as its ciphertext). A trigger on ``envelopes`` decrements the count for
every envelope deleted, whatever deletes it (an acknowledgement, the expiry sweep, the cascade
of a device's deletion), in the deleting transaction, and deletes the shared row with its last
envelope: no code path can forget it. No column names a group: the store holds the shared
bytes, the per-device rows and the usual envelope fields only.

On PostgreSQL the decrement locks the shared row until commit. Two nodes deleting envelopes of
the same two shared payloads in opposite orders (two sweeps, or acknowledgements batched
differently) can deadlock; PostgreSQL then aborts one statement, whose savepoint undoes that one
operation only: its acknowledgement is answered INTERNAL_ERROR (the envelope stays and is
delivered again, under the same id), or the sweep takes the rows next time. Nothing is lost or
counted twice.

Every function runs inside the caller's transaction (the group-commit writer's savepoint).
"""

# S608 (SQL built from strings): the statements join only constant text and the dialect's
# clauses; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

from storage.admin_sql import send_refusal
from storage.fanout_records import MultiSendOutcome, NewMultiSend, RecipientRefusal
from storage.records import Envelope, SendStatus
from storage.sql_dialect import POSTGRES, SQLITE, Connection, Dialect

__all__ = [
    "POSTGRES_FANOUT_TABLES",
    "SQLITE_FANOUT_TABLES",
    "RecipientsQueued",
    "commit_multi_send",
]

SQLITE_FANOUT_TABLES = (
    """
    CREATE TABLE shared_payloads (
        shared_id INTEGER PRIMARY KEY AUTOINCREMENT,
        payload BLOB NOT NULL,
        remaining INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    )
    """,
    "ALTER TABLE envelopes ADD COLUMN shared_id INTEGER",
    # Fires for every deleted envelope, the cascade of a device's deletion included (SQLite
    # runs foreign key actions like statements, and their deletions fire triggers).
    """
    CREATE TRIGGER envelopes_release_shared AFTER DELETE ON envelopes
    WHEN old.shared_id IS NOT NULL
    BEGIN
        UPDATE shared_payloads SET remaining = remaining - 1 WHERE shared_id = old.shared_id;
        DELETE FROM shared_payloads WHERE shared_id = old.shared_id AND remaining <= 0;
    END
    """,
)
"""SQLite's DDL of the shared payloads (schema version 12)."""

POSTGRES_FANOUT_TABLES = (
    """
    CREATE TABLE shared_payloads (
        shared_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        payload BYTEA NOT NULL,
        remaining INTEGER NOT NULL,
        expires_at BIGINT NOT NULL
    )
    """,
    "ALTER TABLE envelopes ADD COLUMN shared_id BIGINT",
    # The decrement locks the shared row until commit and reads the newest count, so that of
    # two nodes deleting the last two envelopes at once, the second one sees zero and deletes.
    """
    CREATE FUNCTION envelopes_release_shared() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        left_over INTEGER;
    BEGIN
        UPDATE shared_payloads SET remaining = remaining - 1 WHERE shared_id = OLD.shared_id
            RETURNING remaining INTO left_over;
        IF left_over <= 0 THEN
            DELETE FROM shared_payloads WHERE shared_id = OLD.shared_id;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER envelopes_release_shared AFTER DELETE ON envelopes
    FOR EACH ROW WHEN (OLD.shared_id IS NOT NULL)
    EXECUTE FUNCTION envelopes_release_shared()
    """,
)
"""PostgreSQL's DDL of the shared payloads (schema version 14)."""

RecipientsQueued = Callable[[Any, str, list[int], int], None]
"""Called with (connection, recipient user id, device ids, accepted_at) in the sending
transaction once a user's envelopes are queued: the PostgreSQL store wakes the nodes holding
those devices (NOTIFY fires on commit only, so never for a send that rolls back)."""

_SENDER_KEY = "sender_user_id, sender_device_id, client_message_id"


class _Statements:
    def __init__(self, dialect: Dialect) -> None:
        sql = dialect.sql
        returning = "" if dialect.has_lastrowid else " RETURNING "
        self.recipient_depths = sql(
            "SELECT device_id, queue_depth FROM devices WHERE user_id = ?"
            " ORDER BY device_id" + dialect.for_update)
        self.remembered_send = sql(
            "SELECT expires_at FROM idempotency_records WHERE sender_user_id = ?"
            " AND sender_device_id = ? AND client_message_id = ?")
        self.sender_envelopes = sql(
            "SELECT COUNT(*) FROM (SELECT 1 FROM envelopes WHERE recipient_user_id = ?"
            " AND recipient_device_id = ? AND sender_user_id = ? LIMIT ?) AS queued")
        self.insert_shared = sql(
            "INSERT INTO shared_payloads (payload, remaining, expires_at) VALUES (?, ?, ?)"
            + (returning and returning + "shared_id"))
        self.insert_envelope = sql(
            "INSERT INTO envelopes (recipient_user_id, recipient_device_id, sender_user_id,"
            " sender_device_id, client_message_id, ciphertext, accepted_at, expires_at,"
            " shared_id, share_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            + (returning and returning + "envelope_id"))
        self.share_key_envelopes = sql(
            "SELECT COUNT(*) FROM (SELECT 1 FROM envelopes WHERE recipient_user_id = ?"
            " AND recipient_device_id = ? AND share_key = ? LIMIT ?) AS queued")
        self.count_queued = sql(
            "UPDATE devices SET queue_depth = queue_depth + 1 WHERE user_id = ? AND device_id = ?")
        self.remember_send = sql(
            f"INSERT INTO idempotency_records ({_SENDER_KEY}, expires_at) VALUES (?, ?, ?, ?)"
            f" ON CONFLICT ({_SENDER_KEY}) DO UPDATE SET expires_at = excluded.expires_at")


_STATEMENTS = {dialect: _Statements(dialect) for dialect in (SQLITE, POSTGRES)}


class _WithLastRowId(Protocol):
    lastrowid: int


def _inserted_id(dialect: Dialect, cursor: Any) -> int:
    return int(cast(_WithLastRowId, cursor).lastrowid if dialect.has_lastrowid
               else cursor.fetchone()[0])


def commit_multi_send(connection: Connection, dialect: Dialect, send: NewMultiSend,
                      recipients: Mapping[str, Mapping[int, bytes]],
                      on_queued: RecipientsQueued | None = None) -> MultiSendOutcome:
    """Check and insert one multi-recipient send (``FanOutQueue.submit_multi_send``), all
    or nothing. ``recipients`` is the caller's snapshot of ``send.recipients``."""
    statements = _STATEMENTS[dialect]
    sender = (send.sender_user_id, send.sender_device_id, send.client_message_id)
    users = sorted(recipients)
    # Every recipient's device rows first, locked in user order (the order the PostgreSQL
    # writer took them in): devices and depths cannot change before this commits.
    depths = {user_id: dict(connection.execute(statements.recipient_depths,
                                               (user_id,)).fetchall()) for user_id in users}
    remembered = connection.execute(statements.remembered_send, sender).fetchone()
    if remembered is not None and remembered[0] > send.accepted_at:
        return MultiSendOutcome(status=SendStatus.DUPLICATE)
    refused = _refusal(connection, dialect, send, recipients, depths)
    if refused is not None:
        return refused
    shared_id = _inserted_id(dialect, connection.execute(statements.insert_shared, (
        send.shared, sum(map(len, recipients.values())), send.expires_at)))
    envelopes = []
    share_keys = send.queue_share_keys or {}
    for user_id in users:
        devices = sorted(recipients[user_id])
        share_key = share_keys.get(user_id)
        for device_id in devices:
            material = recipients[user_id][device_id]
            envelope_id = _inserted_id(dialect, connection.execute(statements.insert_envelope, (
                user_id, device_id, *sender, material, send.accepted_at, send.expires_at,
                shared_id, share_key)))
            envelopes.append(Envelope(
                envelope_id=envelope_id, recipient_user_id=user_id, recipient_device_id=device_id,
                sender_user_id=send.sender_user_id, sender_device_id=send.sender_device_id,
                client_message_id=send.client_message_id, ciphertext=material,
                accepted_at=send.accepted_at, expires_at=send.expires_at, shared=send.shared))
        connection.cursor().executemany(statements.count_queued,
                                        [(user_id, device_id) for device_id in devices])
        if on_queued is not None:
            on_queued(connection, user_id, devices, send.accepted_at)
    connection.execute(statements.remember_send, (*sender, send.expires_at))
    return MultiSendOutcome(status=SendStatus.ACCEPTED, envelopes=tuple(envelopes))


def _refusal(connection: Connection, dialect: Dialect, send: NewMultiSend,
             recipients: Mapping[str, Mapping[int, bytes]],
             depths: Mapping[str, Mapping[int, int]]) -> MultiSendOutcome | None:
    """The first kind of refusal that applies, in SEND's order of checks, naming every user
    it applies to; None when every recipient accepts."""
    for user_id in sorted(recipients):
        if not depths[user_id]:
            return MultiSendOutcome(status=SendStatus.UNKNOWN_RECIPIENT)
        checked = send.organisation_checked
        if send.sender_organisation_id is not None and (checked is None or user_id in checked):
            status = send_refusal(connection, dialect,
                                  sender_organisation_id=send.sender_organisation_id,
                                  recipient_user_id=user_id)
            if status is not None:
                return MultiSendOutcome(status=status)
    mismatched = []
    for user_id, devices in sorted(recipients.items()):
        own = send.sender_device_id if user_id == send.sender_user_id else None
        missing = tuple(sorted(set(depths[user_id]) - {own} - devices.keys()))
        extra = tuple(sorted(devices.keys() - depths[user_id].keys()))
        if missing or extra:
            mismatched.append(RecipientRefusal(user_id=user_id, missing_devices=missing,
                                               extra_devices=extra))
    if mismatched:
        return MultiSendOutcome(status=SendStatus.MISMATCHED_DEVICES, refusals=tuple(mismatched))
    full = [RecipientRefusal(user_id=user_id, full_devices=devices) for user_id, devices in (
        (user_id, tuple(device_id for device_id in sorted(recipients[user_id])
                        if depths[user_id][device_id] >= send.max_queue_depth))
        for user_id in sorted(recipients)) if devices]
    if full:
        return MultiSendOutcome(status=SendStatus.QUEUE_FULL, refusals=tuple(full))
    shares = [RecipientRefusal(user_id=user_id, full_devices=used) for user_id in
              sorted(recipients) if (used := _shares_used(connection, dialect, send, user_id,
                                                          recipients[user_id], depths[user_id]))]
    if shares:
        return MultiSendOutcome(status=SendStatus.SENDER_SHARE_FULL, refusals=tuple(shares))
    return None


def _shares_used(connection: Connection, dialect: Dialect, send: NewMultiSend, user_id: str,
                 devices: Mapping[int, bytes], depths: Mapping[int, int]) -> tuple[int, ...]:
    """The user's addressed devices whose queue holds the sender's share already (as
    ``storage.envelope_sql`` counts it for SEND: only queues at least that deep are read)."""
    share = send.max_sender_share
    if share is None or user_id == send.sender_user_id:
        return ()
    statements = _STATEMENTS[dialect]
    share_key = (send.queue_share_keys or {}).get(user_id)
    key, statement = ((send.sender_user_id, statements.sender_envelopes) if share_key is None
                      else (share_key, statements.share_key_envelopes))
    return tuple(
        device_id for device_id in sorted(devices)
        if depths[device_id] >= share and connection.execute(statement, (
            user_id, device_id, key, share)).fetchone()[0] >= share)
