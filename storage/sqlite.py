"""The embedded store: one SQLite file in WAL mode, one writer thread, group commit.

Every write goes through ``GroupCommitWriter`` (see ``storage.sqlite_threads``):
operations submitted while a transaction is being committed are committed
together in the next one, each under its own SAVEPOINT. Reads run on a small
pool of reader connections. The file may be opened by another process (the
operator CLI) at the same time; ``busy_timeout`` makes each side wait its turn.
"""

from __future__ import annotations

import collections
import hmac
import pathlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

import trio

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
from storage.group_commit import GroupCommitWriter
from storage.prekey_records import ClaimedBundle, PrekeyCounts, PrekeyUpload
from storage.prekey_sql import SQLITE, claim_bundles, prekey_counts, store_prekeys
from storage.rate_limits import MemoryBuckets
from storage.sqlite_schema import (
    SchemaVersionTooNew,
    apply_migrations,
    device_from_row,
    envelope_from_row,
    organisation_from_row,
    user_from_row,
)
from storage.sqlite_threads import ReaderPool, sqlite_writer

__all__ = ["BUSY_TIMEOUT_MS", "READER_POOL_SIZE", "SchemaVersionTooNew", "SqliteStore",
           "open_sqlite_store"]

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
"""How long a connection waits for another process's lock before failing (ms).

The operator CLI holds the write lock only for short transactions."""

READER_POOL_SIZE = 4
"""Concurrent reads: enough to overlap the writer; more only adds threads and memory."""

# A PRAGMA cannot take a bound parameter, so the allowed statements are spelled out.
_SYNCHRONOUS_PRAGMAS = {
    "OFF": "PRAGMA synchronous = OFF",
    "NORMAL": "PRAGMA synchronous = NORMAL",
    "FULL": "PRAGMA synchronous = FULL",
    "EXTRA": "PRAGMA synchronous = EXTRA",
}


def _connect(path: pathlib.Path, synchronous_pragma: str) -> sqlite3.Connection:
    # isolation_level=None: the module must not open transactions behind our
    # back; BEGIN/COMMIT/SAVEPOINT are issued explicitly. check_same_thread is
    # off because trio's worker threads take turns with a pooled connection.
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute(synchronous_pragma)
    except BaseException:
        connection.close()
        raise
    return connection


def _open_writer_connection(path: pathlib.Path, synchronous_pragma: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = _connect(path, synchronous_pragma)
    try:
        (journal_mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(journal_mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch {path} to WAL mode ({journal_mode})")
        apply_migrations(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def _next_sequence(connection: sqlite3.Connection) -> int:
    (value,) = connection.execute(
        "UPDATE sequences SET value = value + 1 WHERE name = 'enrolment' RETURNING value"
    ).fetchone()
    return int(value)


_SELECT_ORGANISATION = (
    "SELECT organisation_id, name, seats, state, created_at FROM organisations WHERE name = ?"
)
_SELECT_USER_BY_PHONE = (
    "SELECT user_id, organisation_id, phone, state, declared_at, enrolled_at,"
    " next_device_id, declaration_sequence FROM users WHERE phone = ?"
)
_SELECT_ENVELOPES_AFTER = (
    "SELECT envelope_id, recipient_user_id, recipient_device_id, sender_user_id,"
    " sender_device_id, client_message_id, ciphertext, accepted_at, expires_at"
    " FROM envelopes WHERE recipient_user_id = ? AND recipient_device_id = ?"
    " AND envelope_id > ? AND expires_at > ? ORDER BY envelope_id LIMIT ?"
)


def _require_organisation(connection: sqlite3.Connection, name: str) -> Organisation:
    row = connection.execute(_SELECT_ORGANISATION, (name,)).fetchone()
    if row is None:
        raise NotFound(f"no organisation named {name!r}")
    return organisation_from_row(row)


class SqliteStore(AdminStoreMethods):
    """``storage.base.Store`` on one SQLite file. Create with ``open_sqlite_store``."""

    _admin_dialect = SQLITE

    def __init__(self, *, path: pathlib.Path, writer: GroupCommitWriter[sqlite3.Connection],
                 readers: ReaderPool) -> None:
        self.path = path
        self._writer = writer
        self._readers = readers
        self._closed = False
        self._buckets = MemoryBuckets()  # one process per embedded store (see rate_limits)

    @property
    def commit_count(self) -> int:
        """Write transactions committed since opening (one per group-committed batch)."""
        return self._writer.commit_count

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._writer.submit(work).wait()

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._readers.run(work)

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
            self._readers.close()

    async def get_or_create_secret(self, name: str, candidate: bytes) -> bytes:
        def work(connection: sqlite3.Connection) -> bytes:
            connection.execute("INSERT INTO secrets (name, value) VALUES (?, ?)"
                               " ON CONFLICT (name) DO NOTHING", (name, candidate))
            (value,) = connection.execute("SELECT value FROM secrets WHERE name = ?",
                                          (name,)).fetchone()
            return bytes(value)
        return await self._write(work)

    # -- organisations and users ---------------------------------------------

    async def create_organisation(self, *, name: str, seats: int, now: int) -> Organisation:
        def work(connection: sqlite3.Connection) -> Organisation:
            if connection.execute(_SELECT_ORGANISATION, (name,)).fetchone() is not None:
                raise AlreadyExists(f"organisation {name!r} already exists")
            cursor = connection.execute(
                "INSERT INTO organisations (name, seats, state, created_at) VALUES (?, ?, ?, ?)",
                (name, seats, OrganisationState.ACTIVE.value, now))
            assert cursor.lastrowid is not None
            return Organisation(organisation_id=cursor.lastrowid, name=name, seats=seats,
                                state=OrganisationState.ACTIVE, created_at=now)
        return await self._write(work)

    async def set_organisation_state(self, *, name: str,
                                     state: OrganisationState) -> Organisation:
        """Suspend, reactivate or terminate an organisation. Raises NotFound.

        """
        def work(connection: sqlite3.Connection) -> Organisation:
            _require_organisation(connection, name)
            connection.execute("UPDATE organisations SET state = ? WHERE name = ?",
                               (state.value, name))
            return _require_organisation(connection, name)
        return await self._write(work)

    async def get_organisation(self, name: str) -> Organisation | None:
        def work(connection: sqlite3.Connection) -> Organisation | None:
            row = connection.execute(_SELECT_ORGANISATION, (name,)).fetchone()
            return None if row is None else organisation_from_row(row)
        return await self._readers.run(work)

    async def declare_user(self, *, organisation: str, phone: str, user_id: str,
                           now: int) -> User:
        def work(connection: sqlite3.Connection) -> User:
            found = _require_organisation(connection, organisation)
            if connection.execute("SELECT 1 FROM users WHERE phone = ?", (phone,)).fetchone():
                raise AlreadyExists("the phone number is already declared")
            (declared,) = connection.execute(
                "SELECT COUNT(*) FROM users WHERE organisation_id = ?",
                (found.organisation_id,)).fetchone()
            if declared >= found.seats:
                raise SeatLimitReached(seats=found.seats)
            try:
                connection.execute(
                    "INSERT INTO users (user_id, organisation_id, phone, state, declared_at,"
                    " declaration_sequence) VALUES (?, ?, ?, ?, ?, ?)",
                    (user_id, found.organisation_id, phone, UserState.DECLARED.value, now,
                     _next_sequence(connection)))
            except sqlite3.IntegrityError as error:
                raise AlreadyExists(f"user id {user_id!r} is already taken") from error
            return User(user_id=user_id, organisation_id=found.organisation_id, phone=phone,
                        state=UserState.DECLARED, declared_at=now, enrolled_at=None)
        return await self._write(work)

    async def list_users(self, organisation: str) -> list[User]:
        def work(connection: sqlite3.Connection) -> list[User]:
            found = _require_organisation(connection, organisation)
            rows = connection.execute(
                "SELECT user_id, organisation_id, phone, state, declared_at, enrolled_at"
                " FROM users WHERE organisation_id = ? ORDER BY phone",
                (found.organisation_id,)).fetchall()
            return [user_from_row(row) for row in rows]
        return await self._readers.run(work)

    async def delete_user(self, *, organisation: str, phone: str) -> User:
        def work(connection: sqlite3.Connection) -> User:
            found = _require_organisation(connection, organisation)
            row = connection.execute(_SELECT_USER_BY_PHONE, (phone,)).fetchone()
            if row is None or row[1] != found.organisation_id:
                raise NotFound("no such user in this organisation")
            # Devices and their queued envelopes go by ON DELETE CASCADE. The
            # pending code is keyed by phone_key, which this method is not
            # given: it is made unusable by declaration_sequence instead.
            connection.execute("DELETE FROM users WHERE user_id = ?", (row[0],))
            return user_from_row(row)
        return await self._write(work)

    async def find_user_by_phone(self, phone: str) -> User | None:
        def work(connection: sqlite3.Connection) -> User | None:
            row = connection.execute(_SELECT_USER_BY_PHONE, (phone,)).fetchone()
            return None if row is None else user_from_row(row)
        return await self._readers.run(work)

    async def list_devices(self, user_id: str) -> list[Device]:
        def work(connection: sqlite3.Connection) -> list[Device]:
            rows = connection.execute(
                "SELECT user_id, device_id, identity_key, registered_at FROM devices"
                " WHERE user_id = ? ORDER BY device_id", (user_id,)).fetchall()
            return [device_from_row(row) for row in rows]
        return await self._readers.run(work)

    async def load_principal(self, user_id: str, device_id: int) -> Principal | None:
        def work(connection: sqlite3.Connection) -> Principal | None:
            row = connection.execute(
                "SELECT u.user_id, u.organisation_id, u.phone, u.state, u.declared_at,"
                " u.enrolled_at, d.user_id, d.device_id, d.identity_key, d.registered_at,"
                " o.organisation_id, o.name, o.seats, o.state, o.created_at"
                " FROM devices AS d JOIN users AS u ON u.user_id = d.user_id"
                " JOIN organisations AS o ON o.organisation_id = u.organisation_id"
                " WHERE d.user_id = ? AND d.device_id = ?", (user_id, device_id)).fetchone()
            if row is None:
                return None
            return Principal(user=user_from_row(row[0:6]), device=device_from_row(row[6:10]),
                             organisation=organisation_from_row(row[10:15]))
        return await self._readers.run(work)

    # -- SMS verification ----------------------------------------------------

    async def record_verification_code(self, *, phone_key: bytes, code_hash: bytes, now: int,
                                       expires_at: int, window_ms: int,
                                       max_sends: int) -> bool:
        def work(connection: sqlite3.Connection) -> bool:
            window_start = now - window_ms
            # Sends older than the window can never count again.
            connection.execute("DELETE FROM sms_sends WHERE phone_key = ? AND sent_at <= ?",
                               (phone_key, window_start))
            (recent,) = connection.execute(
                "SELECT COUNT(*) FROM sms_sends WHERE phone_key = ? AND sent_at > ?"
                " AND sent_at <= ?", (phone_key, window_start, now)).fetchone()
            if recent >= max_sends:
                return False
            connection.execute("INSERT INTO sms_sends (phone_key, sent_at) VALUES (?, ?)",
                               (phone_key, now))
            connection.execute(
                "INSERT INTO verification_codes (phone_key, code_hash, attempts, expires_at,"
                " recorded_sequence) VALUES (?, ?, 0, ?, ?) ON CONFLICT (phone_key) DO UPDATE"
                " SET code_hash = excluded.code_hash, attempts = 0,"
                " expires_at = excluded.expires_at,"
                " recorded_sequence = excluded.recorded_sequence",
                (phone_key, code_hash, expires_at, _next_sequence(connection)))
            return True
        # On refusal only sends that can never count again were pruned: no
        # observable change, as the contract requires.
        return await self._write(work)

    async def take_verification_attempt(self, *, phone_key: bytes, now: int,
                                        max_attempts: int) -> bytes | None:
        def work(connection: sqlite3.Connection) -> bytes | None:
            row = connection.execute(
                "SELECT code_hash, attempts, expires_at FROM verification_codes"
                " WHERE phone_key = ?", (phone_key,)).fetchone()
            if row is None or row[2] <= now or row[1] >= max_attempts:
                return None
            connection.execute("UPDATE verification_codes SET attempts = attempts + 1"
                               " WHERE phone_key = ?", (phone_key,))
            return bytes(row[0])
        return await self._write(work)

    async def register_device(self, *, phone: str, phone_key: bytes, code_hash: bytes,
                              identity_key: bytes, now: int, max_devices: int) -> Device:
        def work(connection: sqlite3.Connection) -> Device:
            code = connection.execute(
                "SELECT code_hash, recorded_sequence FROM verification_codes"
                " WHERE phone_key = ?", (phone_key,)).fetchone()
            if code is None or not hmac.compare_digest(bytes(code[0]), code_hash):
                raise RegistrationRefused(RegistrationRefusal.CODE_CONSUMED)
            user = connection.execute(_SELECT_USER_BY_PHONE, (phone,)).fetchone()
            if user is None:
                raise RegistrationRefused(RegistrationRefusal.NOT_DECLARED)
            user_id, organisation_id, next_device_id, declaration_sequence = (
                user[0], user[1], user[6], user[7])
            if code[1] < declaration_sequence:
                # Sent for an earlier declaration of this number (since deleted).
                raise RegistrationRefused(RegistrationRefusal.CODE_CONSUMED)
            (state,) = connection.execute(
                "SELECT state FROM organisations WHERE organisation_id = ?",
                (organisation_id,)).fetchone()
            if state != OrganisationState.ACTIVE.value:
                raise RegistrationRefused(RegistrationRefusal.ORGANISATION_INACTIVE)
            (devices,) = connection.execute("SELECT COUNT(*) FROM devices WHERE user_id = ?",
                                            (user_id,)).fetchone()
            if devices >= max_devices:
                raise RegistrationRefused(RegistrationRefusal.TOO_MANY_DEVICES)
            connection.execute("DELETE FROM verification_codes WHERE phone_key = ?",
                               (phone_key,))
            connection.execute(
                "INSERT INTO devices (user_id, device_id, identity_key, registered_at)"
                " VALUES (?, ?, ?, ?)", (user_id, next_device_id, identity_key, now))
            connection.execute(
                "UPDATE users SET next_device_id = next_device_id + 1, state = ?,"
                " enrolled_at = COALESCE(enrolled_at, ?) WHERE user_id = ?",
                (UserState.ENROLLED.value, now, user_id))
            return Device(user_id=str(user_id), device_id=int(next_device_id),
                          identity_key=identity_key, registered_at=now)
        return await self._write(work)

    # -- envelopes -------------------------------------------------------------

    def submit_send(self, send: NewSend) -> PendingResult[SendOutcome]:
        payloads = dict(send.payloads)  # a snapshot: the caller may reuse its mapping
        return self._writer.submit(lambda connection: _commit_send(connection, send, payloads))

    async def fetch_queue(self, *, user_id: str, device_id: int, after_envelope_id: int,
                          limit: int, now: int) -> list[Envelope]:
        def work(connection: sqlite3.Connection) -> list[Envelope]:
            rows = connection.execute(
                _SELECT_ENVELOPES_AFTER,
                (user_id, device_id, after_envelope_id, now, limit)).fetchall()
            return [envelope_from_row(row) for row in rows]
        return await self._readers.run(work)

    async def acknowledge(self, *, user_id: str, device_id: int,
                          envelope_ids: Sequence[int]) -> int:
        return await self.submit_acknowledge(
            user_id=user_id, device_id=device_id, envelope_ids=envelope_ids).wait()

    def submit_acknowledge(self, *, user_id: str, device_id: int,
                           envelope_ids: Sequence[int]) -> PendingResult[int]:
        unique_ids = sorted(set(envelope_ids))

        def work(connection: sqlite3.Connection) -> int:
            if not unique_ids:
                return 0
            # The recipient columns in the WHERE clause are the ownership check.
            deleted = connection.executemany(
                "DELETE FROM envelopes WHERE envelope_id = ? AND recipient_user_id = ?"
                " AND recipient_device_id = ?",
                [(envelope_id, user_id, device_id) for envelope_id in unique_ids]).rowcount
            if deleted:
                connection.execute(
                    "UPDATE devices SET queue_depth = queue_depth - ?"
                    " WHERE user_id = ? AND device_id = ?", (deleted, user_id, device_id))
            return deleted
        return self._writer.submit(work)

    async def queue_depth(self, *, user_id: str, device_id: int) -> int:
        def work(connection: sqlite3.Connection) -> int:
            row = connection.execute(
                "SELECT queue_depth FROM devices WHERE user_id = ? AND device_id = ?",
                (user_id, device_id)).fetchone()
            return 0 if row is None else int(row[0])
        return await self._readers.run(work)

    async def take_tokens(self, *, key: str, cost: int, capacity: int, period_ms: int,
                          now: int) -> bool:
        return self._buckets.take(key=key, cost=cost, capacity=capacity,
                                  period_ms=period_ms, now=now)

    async def expire(self, *, now: int, limit: int) -> int:
        def work(connection: sqlite3.Connection) -> int:
            expired = connection.execute(
                "SELECT envelope_id, recipient_user_id, recipient_device_id FROM envelopes"
                " WHERE expires_at <= ? ORDER BY expires_at LIMIT ?", (now, limit)).fetchall()
            connection.executemany("DELETE FROM envelopes WHERE envelope_id = ?",
                                   [(row[0],) for row in expired])
            per_device = collections.Counter((row[1], row[2]) for row in expired)
            connection.executemany(
                "UPDATE devices SET queue_depth = queue_depth - ?"
                " WHERE user_id = ? AND device_id = ?",
                [(count, user_id, device_id)
                 for (user_id, device_id), count in per_device.items()])
            connection.execute(
                "DELETE FROM idempotency_records WHERE rowid IN (SELECT rowid FROM"
                " idempotency_records WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
                (now, limit))
            return len(expired)
        return await self._write(work)


    # -- prekeys (the SQL is shared with PostgreSQL: storage.prekey_sql) --------

    async def store_prekeys(self, *, user_id: str, device_id: int, upload: PrekeyUpload,
                            now: int, max_pool_size: int) -> PrekeyCounts:
        return await self._write(lambda connection: store_prekeys(
            connection, SQLITE, user_id=user_id, device_id=device_id, upload=upload, now=now,
            max_pool_size=max_pool_size))

    async def prekey_counts(self, *, user_id: str, device_id: int) -> PrekeyCounts:
        return await self._readers.run(lambda connection: prekey_counts(
            connection, SQLITE, user_id=user_id, device_id=device_id))

    async def claim_bundles(self, *, user_id: str,
                            device_ids: Sequence[int] | None) -> list[ClaimedBundle]:
        wanted = None if device_ids is None else tuple(device_ids)
        return await self._write(lambda connection: claim_bundles(
            connection, SQLITE, user_id=user_id, device_ids=wanted))


def _commit_send(connection: sqlite3.Connection, send: NewSend,
                 payloads: dict[int, bytes]) -> SendOutcome:
    """Check and insert one send. Runs on the writer thread, in the batch transaction."""
    sender = (send.sender_user_id, send.sender_device_id, send.client_message_id)
    # Idempotency first: a retry after the recipient changed devices is still
    # the same message, already delivered, not a device mismatch.
    remembered = connection.execute(
        "SELECT expires_at FROM idempotency_records WHERE sender_user_id = ?"
        " AND sender_device_id = ? AND client_message_id = ?", sender).fetchone()
    if remembered is not None and remembered[0] > send.accepted_at:
        return SendOutcome(status=SendStatus.DUPLICATE)
    depths = dict(connection.execute(
        "SELECT device_id, queue_depth FROM devices WHERE user_id = ?",
        (send.recipient_user_id,)).fetchall())
    if not depths:
        return SendOutcome(status=SendStatus.UNKNOWN_RECIPIENT)
    if send.sender_organisation_id is not None:
        refusal = send_refusal(connection, SQLITE,
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
        cursor = connection.execute(
            "INSERT INTO envelopes (recipient_user_id, recipient_device_id, sender_user_id,"
            " sender_device_id, client_message_id, ciphertext, accepted_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (send.recipient_user_id, device_id, *sender, payloads[device_id],
             send.accepted_at, send.expires_at))
        assert cursor.lastrowid is not None
        envelopes.append(Envelope(
            envelope_id=cursor.lastrowid, recipient_user_id=send.recipient_user_id,
            recipient_device_id=device_id, sender_user_id=send.sender_user_id,
            sender_device_id=send.sender_device_id, client_message_id=send.client_message_id,
            ciphertext=payloads[device_id], accepted_at=send.accepted_at,
            expires_at=send.expires_at))
        connection.execute("UPDATE devices SET queue_depth = queue_depth + 1"
                           " WHERE user_id = ? AND device_id = ?",
                           (send.recipient_user_id, device_id))
    # The record lives as long as the envelopes it guards against duplicating.
    connection.execute(
        "INSERT INTO idempotency_records (sender_user_id, sender_device_id, client_message_id,"
        " expires_at) VALUES (?, ?, ?, ?) ON CONFLICT (sender_user_id, sender_device_id,"
        " client_message_id) DO UPDATE SET expires_at = excluded.expires_at",
        (*sender, send.expires_at))
    return SendOutcome(status=SendStatus.ACCEPTED, envelopes=tuple(envelopes))


@asynccontextmanager
async def open_sqlite_store(path: pathlib.Path, *,
                            synchronous: str = "FULL") -> AsyncIterator[SqliteStore]:
    """Open (creating if needed) the store in ``path``; close it on exit.

    Must run inside trio: results are handed back to this trio run.

    Args:
        path: The database file; its parent directories are created.
        synchronous: SQLite ``synchronous`` level. FULL (default) makes an
            accepted envelope survive power loss; NORMAL only a process crash.

    Raises:
        ValueError: Unknown ``synchronous`` level.
        SchemaVersionTooNew: The file was written by a newer release.
        sqlite3.Error: The file cannot be opened or put in WAL mode.
    """
    synchronous_pragma = _SYNCHRONOUS_PRAGMAS.get(synchronous.upper())
    if synchronous_pragma is None:
        raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS_PRAGMAS)}")
    trio_token = trio.lowlevel.current_trio_token()
    write_connection = await trio.to_thread.run_sync(
        _open_writer_connection, path, synchronous_pragma)
    writer = sqlite_writer(write_connection, trio_token)
    readers = ReaderPool(lambda: _connect(path, synchronous_pragma), size=READER_POOL_SIZE)
    store = SqliteStore(path=path, writer=writer, readers=readers)
    writer.start()
    try:
        yield store
    finally:
        await store.close()
