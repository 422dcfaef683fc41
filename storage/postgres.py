"""The server store: PostgreSQL through psycopg 3, one writer thread, group commit.

psycopg's async API needs asyncio, so this store uses the synchronous API from
trio worker threads (``trio.to_thread.run_sync``):

* Reads run on a ``psycopg_pool.ConnectionPool`` of ``READER_POOL_SIZE``
  connections, each read in one REPEATABLE READ, READ ONLY transaction; a trio
  ``CapacityLimiter`` of the same size keeps trio from parking more threads
  than there are connections.
* Every write goes through the shared ``storage.group_commit.GroupCommitWriter``
  on its own one-connection pool: every operation submitted since the last
  commit goes into ONE transaction, each under its own SAVEPOINT
  (``run_postgres_batch``), and the results go back to trio in one hop.

Other processes (another relay node, the operator CLI) may write to the same
database concurrently, so the checks that must be atomic also take row locks:
the organisation row (seat check), the recipient's device rows (device set and
queue depths), the user row (device numbering), the pending code (single use).

Envelope ids come from an identity column. The single writer serialises this
node's sends, so on one node ids increase in commit order, as ``Store``
requires. Across SEVERAL nodes sharing a database they are commit-ordered per
recipient device only (which is what delivery cursors need): a send locks the
recipient's device rows before drawing ids, so a send to the same device on
another node draws after this one commits. Sends also NOTIFY the nodes holding
their recipients (``storage.postgres_presence``), on commit.
"""

from __future__ import annotations

import collections
import functools
import hmac
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
import trio
from psycopg_pool import ConnectionPool

from storage.admin_sql import send_refusal
from storage.admin_store import AdminStoreMethods
from storage.base import (
    AlreadyExists,
    Device,
    Envelope,
    NewSend,
    NotFound,
    Organisation,
    OrganisationState,
    PendingResult,
    Principal,
    RegistrationRefusal,
    RegistrationRefused,
    SeatLimitReached,
    SendOutcome,
    SendStatus,
    User,
    UserState,
)
from storage.group_commit import GroupCommitWriter, Outcome, WriteOperation
from storage.postgres_presence import notify_recipient_nodes, notify_revoked_devices
from storage.postgres_schema import Connection, SchemaVersionTooNew, apply_migrations
from storage.prekey_records import ClaimedBundle, PrekeyCounts, PrekeyUpload
from storage.prekey_sql import POSTGRES, claim_bundles, prekey_counts, store_prekeys
from storage.rate_limits import forget_idle_buckets, take_tokens
from storage.sqlite_schema import (
    device_from_row,
    envelope_from_row,
    organisation_from_row,
    user_from_row,
)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "READER_POOL_SIZE",
    "PostgresStore",
    "SchemaVersionTooNew",
    "open_postgres_store",
]

T = TypeVar("T")

READER_POOL_SIZE = 4
"""Concurrent reads (and reader connections); the writer has one more of its own."""

CONNECT_TIMEOUT_S = 10.0
"""How long opening the store, or a write batch, waits for a connection."""

Work = Callable[[Connection], T]


# -- the writer -------------------------------------------------------------------


def run_postgres_batch(pool: ConnectionPool[Connection],
                       batch: Sequence[WriteOperation[Any]]) -> list[Outcome]:
    """The PostgreSQL ``BatchRunner``: one transaction, a SAVEPOINT per operation.

    The pool replaces a connection found broken, so one lost connection fails
    one batch, not the writer.
    """
    outcomes: list[Outcome] = []
    users = sorted({user_id for operation in batch for user_id in operation.locks})
    with pool.connection(timeout=CONNECT_TIMEOUT_S) as connection, connection.transaction():
        if users:
            # Every node's writer takes the device rows its batch will lock up front,
            # in one global order: taken one operation at a time, in batch order, two
            # nodes' batches deadlocked on each other's recipients.
            connection.execute(
                "SELECT 1 FROM devices WHERE user_id = ANY(%s) ORDER BY user_id, device_id"
                " FOR UPDATE", (users,))
        for operation in batch:
            try:
                # A nested transaction() is a SAVEPOINT: an operation that
                # raises undoes only its own changes.
                with connection.transaction():
                    result = operation.work(connection)
            except Exception as error:
                if connection.broken:
                    raise
                outcomes.append((None, error))
            else:
                outcomes.append((result, None))
    return outcomes


def postgres_writer(pool: ConnectionPool[Connection],
                    trio_token: trio.lowlevel.TrioToken) -> GroupCommitWriter[Connection]:
    """The group-commit writer on ``pool`` (one connection is enough); closes it when done."""
    return GroupCommitWriter(functools.partial(run_postgres_batch, pool), close=pool.close,
                             trio_token=trio_token, thread_name="postgres-writer")


# -- queries ------------------------------------------------------------------------

_SELECT_ORGANISATION = (
    "SELECT organisation_id, name, seats, state, created_at FROM organisations WHERE name = %s"
)
_SELECT_USER_BY_PHONE = (
    "SELECT user_id, organisation_id, phone, state, declared_at, enrolled_at,"
    " next_device_id, declaration_sequence FROM users WHERE phone = %s"
)
_SELECT_ENVELOPES_AFTER = (
    "SELECT envelope_id, recipient_user_id, recipient_device_id, sender_user_id,"
    " sender_device_id, client_message_id, ciphertext, accepted_at, expires_at"
    " FROM envelopes WHERE recipient_user_id = %s AND recipient_device_id = %s"
    " AND envelope_id > %s AND expires_at > %s ORDER BY envelope_id LIMIT %s"
)


def _next_sequence(connection: Connection) -> int:
    row = connection.execute("SELECT nextval('enrolment_sequence')").fetchone()
    assert row is not None
    return int(row[0])


def _require_organisation(connection: Connection, name: str, *,
                          lock: bool = False) -> Organisation:
    query = _SELECT_ORGANISATION + " FOR UPDATE" if lock else _SELECT_ORGANISATION
    row = connection.execute(query, (name,)).fetchone()
    if row is None:
        raise NotFound(f"no organisation named {name!r}")
    return organisation_from_row(row)


def _lock_phone_key(connection: Connection, phone_key: bytes) -> None:
    """Serialise, across nodes, the transactions about one phone key until commit."""
    connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(encode(%s, 'hex'), 0))",
                       (phone_key,))


class PostgresStore(AdminStoreMethods):
    """``storage.base.Store`` on PostgreSQL. Create with ``open_postgres_store``."""

    _admin_dialect = POSTGRES

    def _before_user_deleted(self, connection: Any, user_id: str) -> None:
        # Nodes holding its devices close them on commit (as delete_user does).
        notify_revoked_devices(connection, user_id=user_id)

    def _before_device_deleted(self, connection: Any, user_id: str, device_id: int) -> None:
        notify_revoked_devices(connection, user_id=user_id, device_id=device_id)

    def __init__(self, *, writer: GroupCommitWriter[Connection],
                 readers: ConnectionPool[Connection]) -> None:
        self._writer = writer
        self._readers = readers
        self._reader_limiter = trio.CapacityLimiter(READER_POOL_SIZE)
        self._closed = False
        self.node_channel: str | None = None
        """This relay node's LISTEN channel, set by ``relay.cluster``: sends do not
        notify it (its own pumps are woken directly)."""

    @property
    def commit_count(self) -> int:
        """Write transactions committed since opening (one per group-committed batch)."""
        return self._writer.commit_count

    async def _write(self, work: Work[T]) -> T:
        return await self._writer.submit(work).wait()

    async def _read(self, work: Work[T]) -> T:
        if self._closed:
            raise RuntimeError("the store is closed")
        return await trio.to_thread.run_sync(self._read_in_thread, work,
                                             limiter=self._reader_limiter)

    def _read_in_thread(self, work: Work[T]) -> T:
        # The pool's connections are REPEATABLE READ, READ ONLY (see
        # _configure_reader): one snapshot for every statement of the read.
        with self._readers.connection(timeout=CONNECT_TIMEOUT_S) as connection, \
                connection.transaction():
            return work(connection)

    # -- lifecycle -----------------------------------------------------------

    async def close(self) -> None:
        """Commit the writes already submitted, stop the writer, close every connection."""
        if self._closed:
            return
        self._closed = True
        # Shielded: a cancelled caller must still not leak the writer thread or
        # lose writes that were already submitted.
        with trio.CancelScope(shield=True):
            await self._writer.stop()
            await trio.to_thread.run_sync(self._readers.close)

    async def get_or_create_secret(self, name: str, candidate: bytes) -> bytes:
        def work(connection: Connection) -> bytes:
            # ON CONFLICT waits for a concurrent inserter (another node), and the
            # SELECT, a new statement, sees its committed row.
            connection.execute("INSERT INTO secrets (name, value) VALUES (%s, %s)"
                               " ON CONFLICT (name) DO NOTHING", (name, candidate))
            row = connection.execute("SELECT value FROM secrets WHERE name = %s",
                                     (name,)).fetchone()
            assert row is not None
            return bytes(row[0])
        return await self._write(work)

    # -- organisations and users ---------------------------------------------

    async def create_organisation(self, *, name: str, seats: int, now: int) -> Organisation:
        def work(connection: Connection) -> Organisation:
            row = connection.execute(
                "INSERT INTO organisations (name, seats, state, created_at)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO NOTHING"
                " RETURNING organisation_id",
                (name, seats, OrganisationState.ACTIVE.value, now)).fetchone()
            if row is None:
                raise AlreadyExists(f"organisation {name!r} already exists")
            return Organisation(organisation_id=int(row[0]), name=name, seats=seats,
                                state=OrganisationState.ACTIVE, created_at=now)
        return await self._write(work)

    async def set_organisation_state(self, *, name: str,
                                     state: OrganisationState) -> Organisation:
        """Suspend, reactivate or terminate an organisation. Raises NotFound.

        """
        def work(connection: Connection) -> Organisation:
            row = connection.execute(
                "UPDATE organisations SET state = %s WHERE name = %s"
                " RETURNING organisation_id, name, seats, state, created_at",
                (state.value, name)).fetchone()
            if row is None:
                raise NotFound(f"no organisation named {name!r}")
            return organisation_from_row(row)
        return await self._write(work)

    async def get_organisation(self, name: str) -> Organisation | None:
        def work(connection: Connection) -> Organisation | None:
            row = connection.execute(_SELECT_ORGANISATION, (name,)).fetchone()
            return None if row is None else organisation_from_row(row)
        return await self._read(work)

    async def declare_user(self, *, organisation: str, phone: str, user_id: str,
                           now: int) -> User:
        def work(connection: Connection) -> User:
            # The row lock makes the count and the insert atomic against
            # declarations committed by other nodes.
            found = _require_organisation(connection, organisation, lock=True)
            if connection.execute("SELECT 1 FROM users WHERE phone = %s",
                                  (phone,)).fetchone():
                raise AlreadyExists("the phone number is already declared")
            row = connection.execute("SELECT COUNT(*) FROM users WHERE organisation_id = %s",
                                     (found.organisation_id,)).fetchone()
            assert row is not None
            if row[0] >= found.seats:
                raise SeatLimitReached(seats=found.seats)
            try:
                connection.execute(
                    "INSERT INTO users (user_id, organisation_id, phone, state, declared_at,"
                    " declaration_sequence) VALUES (%s, %s, %s, %s, %s, %s)",
                    (user_id, found.organisation_id, phone, UserState.DECLARED.value, now,
                     _next_sequence(connection)))
            except psycopg.errors.UniqueViolation as error:
                # The phone taken meanwhile by another node, or the user id reused.
                raise AlreadyExists("the phone number or user id is already taken") from error
            return User(user_id=user_id, organisation_id=found.organisation_id, phone=phone,
                        state=UserState.DECLARED, declared_at=now, enrolled_at=None)
        return await self._write(work)

    async def list_users(self, organisation: str) -> list[User]:
        def work(connection: Connection) -> list[User]:
            found = _require_organisation(connection, organisation)
            rows = connection.execute(
                "SELECT user_id, organisation_id, phone, state, declared_at, enrolled_at"
                " FROM users WHERE organisation_id = %s ORDER BY phone COLLATE \"C\"",
                (found.organisation_id,)).fetchall()
            return [user_from_row(row) for row in rows]
        return await self._read(work)

    async def delete_user(self, *, organisation: str, phone: str) -> User:
        def work(connection: Connection) -> User:
            found = _require_organisation(connection, organisation)
            row = connection.execute(
                _SELECT_USER_BY_PHONE + " FOR UPDATE", (phone,)).fetchone()
            if row is None or row[1] != found.organisation_id:
                raise NotFound("no such user in this organisation")
            # Nodes holding its devices close them on commit (several nodes).
            notify_revoked_devices(connection, user_id=row[0])
            # Devices and their queued envelopes go by ON DELETE CASCADE; the
            # pending code is made unusable by declaration_sequence (as SQLite).
            connection.execute("DELETE FROM users WHERE user_id = %s", (row[0],))
            return user_from_row(row)
        return await self._write(work)

    async def find_user_by_phone(self, phone: str) -> User | None:
        def work(connection: Connection) -> User | None:
            row = connection.execute(_SELECT_USER_BY_PHONE, (phone,)).fetchone()
            return None if row is None else user_from_row(row)
        return await self._read(work)

    async def list_devices(self, user_id: str) -> list[Device]:
        def work(connection: Connection) -> list[Device]:
            rows = connection.execute(
                "SELECT user_id, device_id, identity_key, registered_at FROM devices"
                " WHERE user_id = %s ORDER BY device_id", (user_id,)).fetchall()
            return [device_from_row(row) for row in rows]
        return await self._read(work)

    async def load_principal(self, user_id: str, device_id: int) -> Principal | None:
        def work(connection: Connection) -> Principal | None:
            row = connection.execute(
                "SELECT u.user_id, u.organisation_id, u.phone, u.state, u.declared_at,"
                " u.enrolled_at, d.user_id, d.device_id, d.identity_key, d.registered_at,"
                " o.organisation_id, o.name, o.seats, o.state, o.created_at"
                " FROM devices AS d JOIN users AS u ON u.user_id = d.user_id"
                " JOIN organisations AS o ON o.organisation_id = u.organisation_id"
                " WHERE d.user_id = %s AND d.device_id = %s", (user_id, device_id)).fetchone()
            if row is None:
                return None
            return Principal(user=user_from_row(row[0:6]), device=device_from_row(row[6:10]),
                             organisation=organisation_from_row(row[10:15]))
        return await self._read(work)

    # -- SMS verification ----------------------------------------------------

    async def record_verification_code(self, *, phone_key: bytes, code_hash: bytes, now: int,
                                       expires_at: int, window_ms: int,
                                       max_sends: int) -> bool:
        def work(connection: Connection) -> bool:
            _lock_phone_key(connection, phone_key)
            window_start = now - window_ms
            # Sends older than the window can never count again.
            connection.execute("DELETE FROM sms_sends WHERE phone_key = %s AND sent_at <= %s",
                               (phone_key, window_start))
            row = connection.execute(
                "SELECT COUNT(*) FROM sms_sends WHERE phone_key = %s AND sent_at > %s"
                " AND sent_at <= %s", (phone_key, window_start, now)).fetchone()
            assert row is not None
            if row[0] >= max_sends:
                return False
            connection.execute("INSERT INTO sms_sends (phone_key, sent_at) VALUES (%s, %s)",
                               (phone_key, now))
            connection.execute(
                "INSERT INTO verification_codes (phone_key, code_hash, attempts, expires_at,"
                " recorded_sequence) VALUES (%s, %s, 0, %s, %s) ON CONFLICT (phone_key)"
                " DO UPDATE SET code_hash = excluded.code_hash, attempts = 0,"
                " expires_at = excluded.expires_at,"
                " recorded_sequence = excluded.recorded_sequence",
                (phone_key, code_hash, expires_at, _next_sequence(connection)))
            return True
        return await self._write(work)

    async def take_verification_attempt(self, *, phone_key: bytes, now: int,
                                        max_attempts: int) -> bytes | None:
        def work(connection: Connection) -> bytes | None:
            # One statement: the check and the increment are atomic.
            row = connection.execute(
                "UPDATE verification_codes SET attempts = attempts + 1 WHERE phone_key = %s"
                " AND expires_at > %s AND attempts < %s RETURNING code_hash",
                (phone_key, now, max_attempts)).fetchone()
            return None if row is None else bytes(row[0])
        return await self._write(work)

    async def register_device(self, *, phone: str, phone_key: bytes, code_hash: bytes,
                              identity_key: bytes, now: int, max_devices: int) -> Device:
        def work(connection: Connection) -> Device:
            # Locked until commit: a concurrent registration on another node
            # with the same code waits, then finds it gone (single use).
            code = connection.execute(
                "SELECT code_hash, recorded_sequence FROM verification_codes"
                " WHERE phone_key = %s FOR UPDATE", (phone_key,)).fetchone()
            if code is None or not hmac.compare_digest(bytes(code[0]), code_hash):
                raise RegistrationRefused(RegistrationRefusal.CODE_CONSUMED)
            user = connection.execute(_SELECT_USER_BY_PHONE + " FOR UPDATE",
                                      (phone,)).fetchone()
            if user is None:
                raise RegistrationRefused(RegistrationRefusal.NOT_DECLARED)
            user_id, organisation_id, next_device_id, declaration_sequence = (
                user[0], user[1], user[6], user[7])
            if code[1] < declaration_sequence:
                # Sent for an earlier declaration of this number (since deleted).
                raise RegistrationRefused(RegistrationRefusal.CODE_CONSUMED)
            organisation_row = connection.execute(
                "SELECT state FROM organisations WHERE organisation_id = %s FOR SHARE",
                (organisation_id,)).fetchone()
            assert organisation_row is not None
            if organisation_row[0] != OrganisationState.ACTIVE.value:
                raise RegistrationRefused(RegistrationRefusal.ORGANISATION_INACTIVE)
            count = connection.execute("SELECT COUNT(*) FROM devices WHERE user_id = %s",
                                       (user_id,)).fetchone()
            assert count is not None
            if count[0] >= max_devices:
                raise RegistrationRefused(RegistrationRefusal.TOO_MANY_DEVICES)
            connection.execute("DELETE FROM verification_codes WHERE phone_key = %s",
                               (phone_key,))
            connection.execute(
                "INSERT INTO devices (user_id, device_id, identity_key, registered_at)"
                " VALUES (%s, %s, %s, %s)", (user_id, next_device_id, identity_key, now))
            connection.execute(
                "UPDATE users SET next_device_id = next_device_id + 1, state = %s,"
                " enrolled_at = COALESCE(enrolled_at, %s) WHERE user_id = %s",
                (UserState.ENROLLED.value, now, user_id))
            return Device(user_id=str(user_id), device_id=int(next_device_id),
                          identity_key=identity_key, registered_at=now)
        return await self._write(work)

    # -- envelopes -------------------------------------------------------------

    def submit_send(self, send: NewSend) -> PendingResult[SendOutcome]:
        payloads = dict(send.payloads)  # a snapshot: the caller may reuse its mapping
        skip_channel = self.node_channel
        return self._writer.submit(
            lambda connection: _commit_send(connection, send, payloads, skip_channel),
            locks=(send.recipient_user_id,))

    async def fetch_queue(self, *, user_id: str, device_id: int, after_envelope_id: int,
                          limit: int, now: int) -> list[Envelope]:
        def work(connection: Connection) -> list[Envelope]:
            rows = connection.execute(
                _SELECT_ENVELOPES_AFTER,
                (user_id, device_id, after_envelope_id, now, limit)).fetchall()
            return [envelope_from_row(row) for row in rows]
        return await self._read(work)

    async def acknowledge(self, *, user_id: str, device_id: int,
                          envelope_ids: Sequence[int]) -> int:
        return await self.submit_acknowledge(
            user_id=user_id, device_id=device_id, envelope_ids=envelope_ids).wait()

    def submit_acknowledge(self, *, user_id: str, device_id: int,
                           envelope_ids: Sequence[int]) -> PendingResult[int]:
        unique_ids = sorted(set(envelope_ids))

        def work(connection: Connection) -> int:
            if not unique_ids:
                return 0
            # The recipient columns in the WHERE clause are the ownership check.
            deleted = connection.execute(
                "DELETE FROM envelopes WHERE envelope_id = ANY(%s) AND recipient_user_id = %s"
                " AND recipient_device_id = %s",
                (unique_ids, user_id, device_id)).rowcount
            if deleted:
                connection.execute(
                    "UPDATE devices SET queue_depth = queue_depth - %s"
                    " WHERE user_id = %s AND device_id = %s", (deleted, user_id, device_id))
            return deleted
        return self._writer.submit(work, locks=(user_id,))

    async def queue_depth(self, *, user_id: str, device_id: int) -> int:
        def work(connection: Connection) -> int:
            row = connection.execute(
                "SELECT queue_depth FROM devices WHERE user_id = %s AND device_id = %s",
                (user_id, device_id)).fetchone()
            return 0 if row is None else int(row[0])
        return await self._read(work)

    async def expire(self, *, now: int, limit: int) -> int:
        def work(connection: Connection) -> int:
            # SKIP LOCKED: another node's sweeper takes other rows rather than wait.
            expired = connection.execute(
                "DELETE FROM envelopes WHERE envelope_id IN (SELECT envelope_id FROM envelopes"
                " WHERE expires_at <= %s ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                " RETURNING recipient_user_id, recipient_device_id", (now, limit)).fetchall()
            per_device = collections.Counter((row[0], row[1]) for row in expired)
            # In key order, so that two sweepers cannot deadlock on device rows.
            for (user_id, device_id), count in sorted(per_device.items()):
                connection.execute(
                    "UPDATE devices SET queue_depth = queue_depth - %s"
                    " WHERE user_id = %s AND device_id = %s", (count, user_id, device_id))
            connection.execute(
                "DELETE FROM idempotency_records WHERE (sender_user_id, sender_device_id,"
                " client_message_id) IN (SELECT sender_user_id, sender_device_id,"
                " client_message_id FROM idempotency_records WHERE expires_at <= %s"
                " ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED)", (now, limit))
            forget_idle_buckets(connection, now=now, limit=limit)
            return len(expired)
        return await self._write(work)

    async def take_tokens(self, *, key: str, cost: int, capacity: int, period_ms: int,
                          now: int) -> bool:
        return await self._write(lambda connection: take_tokens(
            connection, key=key, cost=cost, capacity=capacity, period_ms=period_ms, now=now))

    # -- prekeys (the SQL is shared with SQLite: storage.prekey_sql) -----------

    async def store_prekeys(self, *, user_id: str, device_id: int, upload: PrekeyUpload,
                            now: int, max_pool_size: int) -> PrekeyCounts:
        return await self._write(lambda connection: store_prekeys(
            connection, POSTGRES, user_id=user_id, device_id=device_id, upload=upload, now=now,
            max_pool_size=max_pool_size))

    async def prekey_counts(self, *, user_id: str, device_id: int) -> PrekeyCounts:
        return await self._read(lambda connection: prekey_counts(
            connection, POSTGRES, user_id=user_id, device_id=device_id))

    async def claim_bundles(self, *, user_id: str,
                            device_ids: Sequence[int] | None) -> list[ClaimedBundle]:
        wanted = None if device_ids is None else tuple(device_ids)
        return await self._write(lambda connection: claim_bundles(
            connection, POSTGRES, user_id=user_id, device_ids=wanted))


def _commit_send(connection: Connection, send: NewSend, payloads: dict[int, bytes],
                 skip_channel: str | None = None) -> SendOutcome:
    """Check and insert one send. Runs on the writer thread, in the batch transaction."""
    sender = (send.sender_user_id, send.sender_device_id, send.client_message_id)
    # Lock the recipient's device rows first: the device set and the queue
    # depths then cannot change (on another node) before this commits, and a
    # concurrent identical send elsewhere is seen by the idempotency check below.
    depths: dict[int, int] = {
        int(device_id): int(depth) for device_id, depth in connection.execute(
            "SELECT device_id, queue_depth FROM devices WHERE user_id = %s"
            " ORDER BY device_id FOR UPDATE", (send.recipient_user_id,)).fetchall()}
    # Idempotency first: a retry after the recipient changed devices is still
    # the same message, already delivered, not a device mismatch.
    remembered = connection.execute(
        "SELECT expires_at FROM idempotency_records WHERE sender_user_id = %s"
        " AND sender_device_id = %s AND client_message_id = %s", sender).fetchone()
    if remembered is not None and remembered[0] > send.accepted_at:
        return SendOutcome(status=SendStatus.DUPLICATE)
    if not depths:
        return SendOutcome(status=SendStatus.UNKNOWN_RECIPIENT)
    if send.sender_organisation_id is not None:
        refusal = send_refusal(connection, POSTGRES,
                               sender_organisation_id=send.sender_organisation_id,
                               recipient_user_id=send.recipient_user_id)
        if refusal is not None:
            return SendOutcome(status=refusal)
    required = set(depths) - {send.exclude_device_id}
    missing = sorted(required - payloads.keys())
    extra = sorted(payloads.keys() - depths.keys())
    if missing or extra:
        return SendOutcome(status=SendStatus.MISMATCHED_DEVICES,
                           missing_devices=tuple(missing), extra_devices=tuple(extra))
    full = sorted(device for device in payloads if depths[device] >= send.max_queue_depth)
    if full:
        return SendOutcome(status=SendStatus.QUEUE_FULL, full_devices=tuple(full))
    envelopes = []
    for device_id in sorted(payloads):
        row = connection.execute(
            "INSERT INTO envelopes (recipient_user_id, recipient_device_id, sender_user_id,"
            " sender_device_id, client_message_id, ciphertext, accepted_at, expires_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING envelope_id",
            (send.recipient_user_id, device_id, *sender, payloads[device_id],
             send.accepted_at, send.expires_at)).fetchone()
        assert row is not None
        envelopes.append(Envelope(
            envelope_id=int(row[0]), recipient_user_id=send.recipient_user_id,
            recipient_device_id=device_id, sender_user_id=send.sender_user_id,
            sender_device_id=send.sender_device_id, client_message_id=send.client_message_id,
            ciphertext=payloads[device_id], accepted_at=send.accepted_at,
            expires_at=send.expires_at))
    connection.execute(
        "UPDATE devices SET queue_depth = queue_depth + 1"
        " WHERE user_id = %s AND device_id = ANY(%s)",
        (send.recipient_user_id, sorted(payloads)))
    # NOTIFY fires on commit only: the node holding a recipient wakes once the
    # envelopes are readable, never for a send that rolled back.
    notify_recipient_nodes(connection, user_id=send.recipient_user_id,
                           device_ids=sorted(payloads), now=send.accepted_at,
                           skip_channel=skip_channel)
    # The record lives as long as the envelopes it guards against duplicating.
    connection.execute(
        "INSERT INTO idempotency_records (sender_user_id, sender_device_id, client_message_id,"
        " expires_at) VALUES (%s, %s, %s, %s) ON CONFLICT (sender_user_id, sender_device_id,"
        " client_message_id) DO UPDATE SET expires_at = excluded.expires_at",
        (*sender, send.expires_at))
    return SendOutcome(status=SendStatus.ACCEPTED, envelopes=tuple(envelopes))


# -- opening -------------------------------------------------------------------------


def _configure_reader(connection: Connection) -> None:
    # Applied to every transaction the connection opens from now on.
    connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    connection.read_only = True


def _open_pools(dsn: str) -> tuple[ConnectionPool[Connection], ConnectionPool[Connection]]:
    """Migrate the schema, then open the writer's and the readers' pools (in a thread)."""
    with psycopg.connect(dsn, connect_timeout=int(CONNECT_TIMEOUT_S)) as connection:
        apply_migrations(connection)
    writer_pool: ConnectionPool[Connection] = ConnectionPool(
        dsn, min_size=1, max_size=1, open=False, name="postgres-writer")
    reader_pool: ConnectionPool[Connection] = ConnectionPool(
        dsn, min_size=READER_POOL_SIZE, max_size=READER_POOL_SIZE, open=False,
        configure=_configure_reader, name="postgres-readers")
    try:
        writer_pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        reader_pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
    except BaseException:
        writer_pool.close()
        reader_pool.close()
        raise
    return writer_pool, reader_pool


@asynccontextmanager
async def open_postgres_store(dsn: str) -> AsyncIterator[PostgresStore]:
    """Open the store in the database ``dsn`` names (migrating it); close it on exit.

    The tables live in the first schema of the connection's ``search_path``
    (set it with ``options=-csearch_path=...`` in the DSN to share a database).
    Must run inside trio: results are handed back to this trio run.

    Args:
        dsn: A libpq connection string or URI.

    Raises:
        SchemaVersionTooNew: The database was written by a newer release.
        psycopg.Error, psycopg_pool.PoolTimeout: The database is unreachable.
    """
    trio_token = trio.lowlevel.current_trio_token()
    writer_pool, reader_pool = await trio.to_thread.run_sync(_open_pools, dsn)
    writer = postgres_writer(writer_pool, trio_token)
    store = PostgresStore(writer=writer, readers=reader_pool)
    writer.start()
    try:
        yield store
    finally:
        await store.close()
