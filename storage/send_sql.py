"""The send: every check and write of one SEND, in as few statements as the dialect allows.

The hottest write of the relay. Each statement costs far more than the row work it does (on
PostgreSQL a round trip to the server, on SQLite a trip through the driver), so the send reads
everything it decides on in ONE statement, the recipient's device rows with their queue depths
and, joined to each, the sender's idempotency record, both organisations' states and policies
and (PostgreSQL) whether another node holds the device; and PostgreSQL writes the envelopes,
the queue depths and the idempotency record in one more. Measured in docs/BENCHMARKS.md
("Paced traffic"). The tables are ``storage.envelope_sql``'s.

Runs inside the caller's transaction, like every ``*_sql`` function: whatever it raises
undoes everything it did.
"""

# S608 (SQL built from strings): the statements join only constant text and the dialect's
# clauses; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast

from storage.admin_sql import refusal_of
from storage.records import Envelope, NewSend, SendOutcome, SendStatus
from storage.sql_dialect import POSTGRES, SQLITE, Connection, Dialect

__all__ = ["EnvelopesQueued", "commit_send"]

EnvelopesQueued = Callable[[Any, NewSend, list[int]], None]
"""Called with (connection, send, device ids held by another node) in the sending
transaction once the envelopes are queued, only when that list is not empty: the PostgreSQL
store wakes those nodes (NOTIFY fires on commit only, so never for a send that rolls back)."""

_SENDER_KEY = "sender_user_id, sender_device_id, client_message_id"


class _Statements:
    """The send's statements in one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        sql = dialect.sql
        held = dialect is POSTGRES
        # One row per device of the recipient, in device order, locked (PostgreSQL): the
        # device set and the queue depths cannot change on another node before this commits,
        # a concurrent identical send elsewhere is seen by the idempotency record, and the
        # ids drawn next follow those of any earlier send to these devices (the delivery
        # cursor relies on it). The organisation columns are admin_sql.send_refusal's, read
        # through left joins so that a missing sender organisation shows as NULL.
        self.recipient_state = sql(
            "SELECT d.device_id, d.queue_depth, r.expires_at, u.organisation_id, o.state,"
            " recipient_organisation.state, sender_policy.cross_organisation,"
            " recipient_policy.cross_organisation"
            + (", EXISTS (SELECT 1 FROM presence AS p WHERE p.user_id = d.user_id"
               " AND p.device_id = d.device_id AND p.expires_at > ?"
               " AND p.channel IS DISTINCT FROM ?),"
               # The envelope id each device would get, drawn here, under the device rows'
               # locks (taken for the whole batch before, storage.postgres), so that the
               # insert returns nothing and need not be waited for. A refused send leaves
               # gaps, which ids may have.
               " nextval(pg_get_serial_sequence('envelopes', 'envelope_id'))"
               if held else "")
            + " FROM devices AS d JOIN users AS u ON u.user_id = d.user_id"
            " JOIN organisations AS recipient_organisation"
            " ON recipient_organisation.organisation_id = u.organisation_id"
            " LEFT JOIN organisations AS o ON o.organisation_id = ?"
            " LEFT JOIN organisation_policies AS sender_policy"
            " ON sender_policy.organisation_id = o.organisation_id"
            " LEFT JOIN organisation_policies AS recipient_policy"
            " ON recipient_policy.organisation_id = u.organisation_id"
            " LEFT JOIN idempotency_records AS r ON r.sender_user_id = ?"
            " AND r.sender_device_id = ? AND r.client_message_id = ?"
            " WHERE d.user_id = ? ORDER BY d.device_id"
            + (" FOR UPDATE OF d" if held else ""))
        self.remembered_send = sql(
            "SELECT expires_at FROM idempotency_records WHERE sender_user_id = ?"
            " AND sender_device_id = ? AND client_message_id = ?")
        # Stops at ``limit``: the count is compared with the share and never needs to go past it.
        self.sender_envelopes = sql(
            "SELECT COUNT(*) FROM (SELECT 1 FROM envelopes WHERE recipient_user_id = ?"
            " AND recipient_device_id = ? AND sender_user_id = ? LIMIT ?) AS queued")
        self.share_key_envelopes = sql(
            "SELECT COUNT(*) FROM (SELECT 1 FROM envelopes WHERE recipient_user_id = ?"
            " AND recipient_device_id = ? AND share_key = ? LIMIT ?) AS queued")
        self.insert_envelope = sql(
            "INSERT INTO envelopes (recipient_user_id, recipient_device_id, sender_user_id,"
            " sender_device_id, client_message_id, ciphertext, accepted_at, expires_at,"
            " share_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
        self.count_queued = sql(
            "UPDATE devices SET queue_depth = queue_depth + 1 WHERE user_id = ? AND device_id = ?")
        remember = (f"INSERT INTO idempotency_records ({_SENDER_KEY}, expires_at)"
                    " VALUES (?, ?, ?, ?)"
                    f" ON CONFLICT ({_SENDER_KEY}) DO UPDATE SET expires_at = excluded.expires_at")
        self.remember_send = sql(remember)
        # PostgreSQL: the three writes as one statement (data-modifying CTEs all run, in one
        # snapshot: none reads what another writes), with the ids the read drew. It returns
        # nothing, so in a pipeline (storage.postgres) nobody waits for it.
        self.queue_all = sql(
            "WITH queued AS (INSERT INTO envelopes (envelope_id, recipient_user_id,"
            " recipient_device_id, sender_user_id, sender_device_id, client_message_id,"
            " ciphertext, accepted_at, expires_at, share_key) OVERRIDING SYSTEM VALUE"
            " SELECT t.envelope_id, ?, t.device_id, ?, ?, ?, t.ciphertext, ?, ?, ?"
            # Binary (%b): psycopg dumps a bytea array in text form byte by byte in Python.
            " FROM unnest(%b::bigint[], %b::integer[], %b::bytea[])"
            " AS t(envelope_id, device_id, ciphertext)),"
            " counted AS (UPDATE devices SET queue_depth = queue_depth + 1"
            " WHERE user_id = ? AND device_id = ANY(?))"
            f" {remember}") if held else ""


_STATEMENTS = {dialect: _Statements(dialect) for dialect in (SQLITE, POSTGRES)}


class _WithLastRowId(Protocol):
    lastrowid: int  # set by every INSERT (None only before the cursor's first one)


def commit_send(connection: Connection, dialect: Dialect, send: NewSend,
                payloads: Mapping[int, bytes], on_queued: EnvelopesQueued | None = None, *,
                skip_channel: str | None = None) -> SendOutcome:
    """Check and insert one send (see ``Store.submit_send``), all or nothing.

    ``payloads`` is the caller's snapshot of ``send.payloads`` (taken when it was submitted).
    ``skip_channel`` (PostgreSQL): the sending node's own channel, whose devices its pumps
    learn of directly; devices held by any other node go to ``on_queued``.
    """
    statements = _STATEMENTS[dialect]
    sender = (send.sender_user_id, send.sender_device_id, send.client_message_id)
    held = dialect is POSTGRES
    parameters = (*((send.accepted_at, skip_channel) if held else ()),
                  send.sender_organisation_id, *sender, send.recipient_user_id)
    rows = connection.execute(statements.recipient_state, parameters).fetchall()
    if not rows:
        # No such user or no device left: answered as before any device check. Idempotency
        # first: a retry after the recipient changed devices is still the same message.
        remembered = connection.execute(statements.remembered_send, sender).fetchone()
        if remembered is not None and remembered[0] > send.accepted_at:
            return SendOutcome(status=SendStatus.DUPLICATE)
        return SendOutcome(status=SendStatus.UNKNOWN_RECIPIENT)
    first = rows[0]
    if first[2] is not None and first[2] > send.accepted_at:
        return SendOutcome(status=SendStatus.DUPLICATE)
    if send.sender_organisation_id is not None:
        refusal = refusal_of(first[3:8], send.sender_organisation_id)
        if refusal is not None:
            return SendOutcome(status=refusal)
    depths: dict[int, int] = {row[0]: row[1] for row in rows}
    missing = sorted(set(depths) - {send.exclude_device_id} - payloads.keys())
    extra = sorted(payloads.keys() - depths.keys())
    if missing or extra:
        return SendOutcome(status=SendStatus.MISMATCHED_DEVICES,
                           missing_devices=tuple(missing), extra_devices=tuple(extra))
    device_ids = sorted(payloads)
    full = [device for device in device_ids if depths[device] >= send.max_queue_depth]
    if full:
        return SendOutcome(status=SendStatus.QUEUE_FULL, full_devices=tuple(full))
    shares_used = _shares_used(connection, statements, send, depths, device_ids)
    if shares_used:
        return SendOutcome(status=SendStatus.SENDER_SHARE_FULL, full_devices=shares_used)
    if held:
        ids = {row[0]: int(row[9]) for row in rows if row[0] in payloads}
        _queue_in_one(connection, statements, send, payloads, device_ids, ids)
    else:
        ids = _queue_each(connection, statements, send, payloads, device_ids)
    # The record lives as long as the envelopes it guards against duplicating.
    if not held:
        connection.execute(statements.remember_send, (*sender, send.expires_at))
    elsewhere = [row[0] for row in rows if held and row[8] and row[0] in payloads]
    if on_queued is not None and elsewhere:
        on_queued(connection, send, elsewhere)
    return SendOutcome(status=SendStatus.ACCEPTED, envelopes=tuple(
        Envelope(envelope_id=ids[device_id], recipient_user_id=send.recipient_user_id,
                 recipient_device_id=device_id, sender_user_id=send.sender_user_id,
                 sender_device_id=send.sender_device_id,
                 client_message_id=send.client_message_id, ciphertext=payloads[device_id],
                 accepted_at=send.accepted_at, expires_at=send.expires_at)
        for device_id in device_ids))


def _queue_each(connection: Connection, statements: _Statements, send: NewSend,
                payloads: Mapping[int, bytes], device_ids: Sequence[int]) -> dict[int, int]:
    """SQLite: insert the envelopes one by one (``lastrowid``, no RETURNING step) and count
    them in the device rows; the statements are local calls, cheap next to a round trip."""
    ids: dict[int, int] = {}
    for device_id in device_ids:
        cursor = connection.execute(statements.insert_envelope, (
            send.recipient_user_id, device_id, send.sender_user_id, send.sender_device_id,
            send.client_message_id, payloads[device_id], send.accepted_at, send.expires_at,
            send.queue_share_key))
        ids[device_id] = int(cast(_WithLastRowId, cursor).lastrowid)
        connection.execute(statements.count_queued, (send.recipient_user_id, device_id))
    return ids


def _queue_in_one(connection: Connection, statements: _Statements, send: NewSend,
                  payloads: Mapping[int, bytes], device_ids: Sequence[int],
                  ids: Mapping[int, int]) -> None:
    """PostgreSQL: the envelopes (with the ``ids`` drawn), their counts and the idempotency
    record in one statement, whose result nobody reads."""
    connection.execute(statements.queue_all, (
        send.recipient_user_id, send.sender_user_id, send.sender_device_id,
        send.client_message_id, send.accepted_at, send.expires_at, send.queue_share_key,
        [ids[device_id] for device_id in device_ids], list(device_ids),
        [payloads[device_id] for device_id in device_ids],
        send.recipient_user_id, list(device_ids),
        send.sender_user_id, send.sender_device_id, send.client_message_id,
        send.expires_at))


def _shares_used(connection: Connection, statements: _Statements, send: NewSend,
                 depths: Mapping[int, int], device_ids: Sequence[int]) -> tuple[int, ...]:
    """The addressed devices whose queue holds ``send.max_sender_share`` envelopes of the
    sender's user already. Exact, since the device rows are locked (PostgreSQL) or the writer is
    alone (SQLite); and cheap: a queue shallower than the share cannot hold that many of one
    sender, so only deeper queues are counted, each in at most that many index entries."""
    share = send.max_sender_share
    if share is None or send.sender_user_id == send.recipient_user_id:
        return ()
    key, counted = ((send.sender_user_id, statements.sender_envelopes)
                    if send.queue_share_key is None
                    else (send.queue_share_key, statements.share_key_envelopes))
    return tuple(
        device_id for device_id in device_ids
        if depths[device_id] >= share and connection.execute(counted, (
            send.recipient_user_id, device_id, key, share)).fetchone()[0] >= share)
