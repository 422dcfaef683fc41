"""Organisations, users, devices and enrolment: tables and statements shared by both stores.

This module owns the directory and enrolment tables: ``organisations``, ``users``,
``devices``, ``verification_codes``, ``sms_sends``, ``secrets`` and the enrolment counter
(schema version 1 of both stores), and ``verification_guesses`` and ``secret_fingerprints``
(``*_ENROLMENT_GUESS_TABLES``, a later migration). As for the envelope tables
(``storage.envelope_sql``), change them only through a new migration written here and
appended to the stores' ``MIGRATIONS``, never by editing the DDL below. (The account columns
of ``users`` are ``storage.account_sql``'s migration.) ``secrets`` only holds what an earlier
version kept there, until the relay moves it out.

Every function runs inside the caller's transaction (a write's savepoint in the group-commit
writer, or a read's snapshot), so whatever it raises undoes everything it did. Statements are
built once per dialect, at import; only the dialect's constant clauses are joined into them.
"""

# S608 (SQL built from strings): the statements join only constant text, column lists and the
# dialect's clauses; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from typing import Any

from storage import account_sql
from storage.account_records import Registration
from storage.account_sql import BeforeDeviceDeleted
from storage.records import (
    AlreadyExists,
    Device,
    GuessBudgetSpent,
    NotFound,
    Organisation,
    OrganisationState,
    Principal,
    RegistrationRefusal,
    RegistrationRefused,
    SeatLimitReached,
    User,
    UserState,
)
from storage.sql_dialect import POSTGRES, SQLITE, Connection, Dialect

__all__ = [
    "POSTGRES_ENROLMENT_GUESS_TABLES",
    "POSTGRES_ENROLMENT_TABLES",
    "SQLITE_ENROLMENT_GUESS_TABLES",
    "SQLITE_ENROLMENT_TABLES",
    "create_organisation",
    "declare_user",
    "delete_user",
    "device_from_row",
    "find_user_by_phone",
    "forget_enrolment_records",
    "forget_legacy_secret",
    "get_organisation",
    "keep_secret_fingerprint",
    "legacy_secret",
    "list_devices",
    "list_users",
    "load_principal",
    "organisation_from_row",
    "record_verification_code",
    "register_device",
    "require_organisation",
    "secret_fingerprint",
    "set_organisation_state",
    "take_verification_attempt",
    "user_from_row",
]


def _tables(*, identity: str, blob: str, big: str) -> tuple[str, ...]:
    return (
        f"""
        CREATE TABLE organisations (
            organisation_id {identity},
            name TEXT NOT NULL UNIQUE,
            seats INTEGER NOT NULL CHECK (seats >= 0),
            state TEXT NOT NULL,
            created_at {big} NOT NULL
        )
        """,
        # next_device_id lives on the user so a device id is never reused for that user, even
        # after its device rows are gone. declaration_sequence orders this declaration against
        # verification codes (see verification_codes).
        f"""
        CREATE TABLE users (
            user_id TEXT PRIMARY KEY,
            organisation_id {big} NOT NULL
                REFERENCES organisations (organisation_id) ON DELETE CASCADE,
            phone TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            declared_at {big} NOT NULL,
            enrolled_at {big},
            next_device_id INTEGER NOT NULL DEFAULT 1,
            declaration_sequence {big} NOT NULL
        )
        """,
        "CREATE INDEX users_by_organisation ON users (organisation_id, phone)",
        # queue_depth is kept exact by storage.envelope_sql in the transactions that insert or
        # delete envelopes, so the hot path never counts the queue.
        f"""
        CREATE TABLE devices (
            user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
            device_id INTEGER NOT NULL,
            identity_key {blob} NOT NULL,
            registered_at {big} NOT NULL,
            queue_depth INTEGER NOT NULL DEFAULT 0 CHECK (queue_depth >= 0),
            PRIMARY KEY (user_id, device_id)
        )
        """,
        # recorded_sequence comes from the same counter as users.declaration_sequence: a code
        # recorded before the current declaration of a number (the user was deleted and
        # declared again) is stale, because delete_user is given the number, not its phone_key.
        f"""
        CREATE TABLE verification_codes (
            phone_key {blob} PRIMARY KEY,
            code_hash {blob} NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            expires_at {big} NOT NULL,
            recorded_sequence {big} NOT NULL
        )
        """,
        f"""
        CREATE TABLE sms_sends (
            phone_key {blob} NOT NULL,
            sent_at {big} NOT NULL
        )
        """,
        "CREATE INDEX sms_sends_by_key ON sms_sends (phone_key, sent_at)",
        f"""
        CREATE TABLE secrets (
            name TEXT PRIMARY KEY,
            value {blob} NOT NULL
        )
        """,
    )


# The enrolment counter: a row on SQLite, a SEQUENCE on PostgreSQL (see Dialect).
SQLITE_ENROLMENT_TABLES = (
    *_tables(identity="INTEGER PRIMARY KEY AUTOINCREMENT", blob="BLOB", big="INTEGER"),
    "CREATE TABLE sequences (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT INTO sequences (name, value) VALUES ('enrolment', 0)",
)
POSTGRES_ENROLMENT_TABLES = (
    *_tables(identity="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", blob="BYTEA",
             big="BIGINT"),
    "CREATE SEQUENCE enrolment_sequence AS BIGINT",
)



def _guess_tables(*, blob: str, big: str) -> tuple[str, ...]:
    return (
        # A number's guesses in its current window, which starts at the first guess counted:
        # kept apart from verification_codes, whose row each new code replaces.
        f"""
        CREATE TABLE verification_guesses (
            phone_key {blob} PRIMARY KEY,
            window_start {big} NOT NULL,
            guesses INTEGER NOT NULL
        )
        """,
        "CREATE INDEX verification_guesses_by_age ON verification_guesses (window_start)",
        # What the relay keeps to recognise its secrets, never the secrets themselves.
        f"""
        CREATE TABLE secret_fingerprints (
            name TEXT PRIMARY KEY,
            fingerprint {blob} NOT NULL
        )
        """,
        # The sweeper deletes by age.
        "CREATE INDEX verification_codes_by_expiry ON verification_codes (expires_at)",
        "CREATE INDEX sms_sends_by_age ON sms_sends (sent_at)",
    )


SQLITE_ENROLMENT_GUESS_TABLES = _guess_tables(blob="BLOB", big="INTEGER")
"""The guesses per number, the secrets' fingerprints and the sweeper's indexes (SQLite)."""
POSTGRES_ENROLMENT_GUESS_TABLES = _guess_tables(blob="BYTEA", big="BIGINT")
"""The same for PostgreSQL."""

_ORGANISATION_COLUMNS = "organisation_id, name, seats, state, created_at"
_USER_COLUMNS = "user_id, organisation_id, phone, state, declared_at, enrolled_at"
_DEVICE_COLUMNS = "user_id, device_id, identity_key, registered_at"


class _Statements:
    """This module's statements in one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        sql = dialect.sql
        self.legacy_secret = sql("SELECT value FROM secrets WHERE name = ?")
        self.scrub_legacy_secret = sql("UPDATE secrets SET value = ? WHERE name = ?")
        self.forget_legacy_secret = sql("DELETE FROM secrets WHERE name = ?")
        self.keep_fingerprint = sql(
            "INSERT INTO secret_fingerprints (name, fingerprint) VALUES (?, ?)"
            " ON CONFLICT (name) DO NOTHING")
        self.replace_fingerprint = sql(
            "INSERT INTO secret_fingerprints (name, fingerprint) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint")
        self.fingerprint = sql("SELECT fingerprint FROM secret_fingerprints WHERE name = ?")
        self.create_organisation = sql(
            "INSERT INTO organisations (name, seats, state, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO NOTHING RETURNING organisation_id")
        self.set_organisation_state = sql(
            f"UPDATE organisations SET state = ? WHERE name = ? RETURNING {_ORGANISATION_COLUMNS}")
        self.organisation = sql(
            f"SELECT {_ORGANISATION_COLUMNS} FROM organisations WHERE name = ?")
        self.organisation_locked = self.organisation + dialect.for_update
        self.organisation_state_shared = sql(
            "SELECT state FROM organisations WHERE organisation_id = ?" + dialect.for_share)
        self.phone_declared = sql("SELECT 1 FROM users WHERE phone = ?")
        self.count_users = sql("SELECT COUNT(*) FROM users WHERE organisation_id = ?")
        # No conflict target: a phone number taken meanwhile (another node) or a reused
        # user id both insert nothing.
        self.declare_user = sql(
            "INSERT INTO users (user_id, organisation_id, phone, state, declared_at,"
            " declaration_sequence) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
            " RETURNING user_id")
        self.users_of = sql(
            f"SELECT {_USER_COLUMNS} FROM users WHERE organisation_id = ?"
            f" ORDER BY phone COLLATE {dialect.bytewise_collation}")
        # Then next_device_id, declaration_sequence and account_key, for register_device.
        self.user_by_phone = sql(
            f"SELECT {_USER_COLUMNS}, next_device_id, declaration_sequence, account_key"
            " FROM users WHERE phone = ?")
        self.user_by_phone_locked = self.user_by_phone + dialect.for_update
        self.delete_user = sql("DELETE FROM users WHERE user_id = ?")
        self.devices_of = sql(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE user_id = ?"
            " ORDER BY device_id")
        self.principal = sql(
            "SELECT u.user_id, u.organisation_id, u.phone, u.state, u.declared_at,"
            " u.enrolled_at, d.user_id, d.device_id, d.identity_key, d.registered_at,"
            " o.organisation_id, o.name, o.seats, o.state, o.created_at"
            " FROM devices AS d JOIN users AS u ON u.user_id = d.user_id"
            " JOIN organisations AS o ON o.organisation_id = u.organisation_id"
            " WHERE d.user_id = ? AND d.device_id = ?")
        self.next_sequence = sql(dialect.next_enrolment_sequence)
        self.lock_phone_key = (None if dialect.phone_key_lock is None
                               else sql(dialect.phone_key_lock))
        self.forget_old_sends = sql("DELETE FROM sms_sends WHERE phone_key = ? AND sent_at <= ?")
        self.count_recent_sends = sql(
            "SELECT COUNT(*) FROM sms_sends WHERE phone_key = ? AND sent_at > ? AND sent_at <= ?")
        self.record_send = sql("INSERT INTO sms_sends (phone_key, sent_at) VALUES (?, ?)")
        self.record_code = sql(
            "INSERT INTO verification_codes (phone_key, code_hash, attempts, expires_at,"
            " recorded_sequence) VALUES (?, ?, 0, ?, ?) ON CONFLICT (phone_key) DO UPDATE"
            " SET code_hash = excluded.code_hash, attempts = 0,"
            " expires_at = excluded.expires_at, recorded_sequence = excluded.recorded_sequence")
        # One statement: the check and the increment are atomic.
        self.take_attempt = sql(
            "UPDATE verification_codes SET attempts = attempts + 1 WHERE phone_key = ?"
            " AND expires_at > ? AND attempts < ? RETURNING code_hash")
        self.guesses = sql(
            "SELECT window_start, guesses FROM verification_guesses WHERE phone_key = ?"
            + dialect.for_update)
        self.count_guess = sql(
            "UPDATE verification_guesses SET guesses = guesses + 1 WHERE phone_key = ?")
        self.start_guess_window = sql(
            "INSERT INTO verification_guesses (phone_key, window_start, guesses) VALUES (?, ?, 1)"
            " ON CONFLICT (phone_key) DO UPDATE SET window_start = excluded.window_start,"
            " guesses = 1")
        # The sweeper: oldest first, a bounded batch, rows another sweeper holds skipped.
        self.forget_expired_codes = sql(
            "DELETE FROM verification_codes WHERE phone_key IN (SELECT phone_key FROM"
            " verification_codes WHERE expires_at <= ? ORDER BY expires_at LIMIT ?"
            + dialect.skip_locked + ")")
        self.forget_sends_before = sql(
            "DELETE FROM sms_sends WHERE (phone_key, sent_at) IN (SELECT phone_key, sent_at"
            " FROM sms_sends WHERE sent_at <= ? ORDER BY sent_at LIMIT ?"
            + dialect.skip_locked + ")")
        self.forget_guesses_before = sql(
            "DELETE FROM verification_guesses WHERE phone_key IN (SELECT phone_key FROM"
            " verification_guesses WHERE window_start <= ? ORDER BY window_start LIMIT ?"
            + dialect.skip_locked + ")")
        self.pending_code_locked = sql(
            "SELECT code_hash, recorded_sequence FROM verification_codes WHERE phone_key = ?"
            + dialect.for_update)
        self.delete_code = sql("DELETE FROM verification_codes WHERE phone_key = ?")
        self.insert_device = sql(
            f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?)")
        self.enrol_user = sql(
            "UPDATE users SET next_device_id = next_device_id + 1, state = ?,"
            " enrolled_at = COALESCE(enrolled_at, ?) WHERE user_id = ?")


_STATEMENTS = {dialect: _Statements(dialect) for dialect in (SQLITE, POSTGRES)}


def organisation_from_row(row: Sequence[Any]) -> Organisation:
    """From the organisations columns, in table order."""
    organisation_id, name, seats, state, created_at = row
    return Organisation(organisation_id=int(organisation_id), name=str(name), seats=int(seats),
                        state=OrganisationState(state), created_at=int(created_at))


def user_from_row(row: Sequence[Any]) -> User:
    """From user_id .. enrolled_at, the first six users columns; later columns are ignored."""
    user_id, organisation_id, phone, state, declared_at, enrolled_at = row[:6]
    return User(user_id=str(user_id), organisation_id=int(organisation_id), phone=str(phone),
                state=UserState(state), declared_at=int(declared_at),
                enrolled_at=None if enrolled_at is None else int(enrolled_at))


def device_from_row(row: Sequence[Any]) -> Device:
    """From user_id, device_id, identity_key, registered_at."""
    user_id, device_id, identity_key, registered_at = row
    return Device(user_id=str(user_id), device_id=int(device_id),
                  identity_key=bytes(identity_key), registered_at=int(registered_at))


def legacy_secret(connection: Connection, dialect: Dialect, name: str) -> bytes | None:
    """See ``Store.legacy_secret``."""
    row = connection.execute(_STATEMENTS[dialect].legacy_secret, (name,)).fetchone()
    return None if row is None else bytes(row[0])


def forget_legacy_secret(connection: Connection, dialect: Dialect, name: str) -> None:
    """See ``Store.forget_legacy_secret``."""
    statements = _STATEMENTS[dialect]
    value = legacy_secret(connection, dialect, name)
    if value is None:
        return
    # Zeros of the same size first: SQLite overwrites the cell in place, so the freed page
    # (which a backup copies too) no longer holds the secret once the WAL is checkpointed.
    connection.execute(statements.scrub_legacy_secret, (bytes(len(value)), name))
    connection.execute(statements.forget_legacy_secret, (name,))


def secret_fingerprint(connection: Connection, dialect: Dialect, name: str) -> bytes | None:
    """See ``Store.secret_fingerprint``."""
    row = connection.execute(_STATEMENTS[dialect].fingerprint, (name,)).fetchone()
    return None if row is None else bytes(row[0])


def keep_secret_fingerprint(connection: Connection, dialect: Dialect, name: str,
                            candidate: bytes, *, replace: bool) -> bytes:
    """See ``Store.keep_secret_fingerprint``."""
    statements = _STATEMENTS[dialect]
    # ON CONFLICT waits for a concurrent inserter (another node), and the SELECT, a new
    # statement, sees its committed row.
    keep = statements.replace_fingerprint if replace else statements.keep_fingerprint
    connection.execute(keep, (name, candidate))
    (value,) = connection.execute(statements.fingerprint, (name,)).fetchone()
    return bytes(value)


# -- organisations and users ---------------------------------------------------------


def require_organisation(connection: Connection, dialect: Dialect, name: str, *,
                         lock: bool = False) -> Organisation:
    """The organisation named ``name``, its row locked until commit if ``lock``.

    Raises NotFound.
    """
    statements = _STATEMENTS[dialect]
    query = statements.organisation_locked if lock else statements.organisation
    row = connection.execute(query, (name,)).fetchone()
    if row is None:
        raise NotFound(f"no organisation named {name!r}")
    return organisation_from_row(row)


def create_organisation(connection: Connection, dialect: Dialect, *, name: str, seats: int,
                        now: int) -> Organisation:
    """See ``Store.create_organisation``."""
    row = connection.execute(_STATEMENTS[dialect].create_organisation,
                             (name, seats, OrganisationState.ACTIVE.value, now)).fetchone()
    if row is None:
        raise AlreadyExists(f"organisation {name!r} already exists")
    return Organisation(organisation_id=int(row[0]), name=name, seats=seats,
                        state=OrganisationState.ACTIVE, created_at=now)


def set_organisation_state(connection: Connection, dialect: Dialect, *, name: str,
                           state: OrganisationState) -> Organisation:
    """See ``Store.set_organisation_state``."""
    row = connection.execute(_STATEMENTS[dialect].set_organisation_state,
                             (state.value, name)).fetchone()
    if row is None:
        raise NotFound(f"no organisation named {name!r}")
    return organisation_from_row(row)


def get_organisation(connection: Connection, dialect: Dialect, name: str) -> Organisation | None:
    row = connection.execute(_STATEMENTS[dialect].organisation, (name,)).fetchone()
    return None if row is None else organisation_from_row(row)


def declare_user(connection: Connection, dialect: Dialect, *, organisation: str, phone: str,
                 user_id: str, now: int) -> User:
    """See ``Store.declare_user``."""
    statements = _STATEMENTS[dialect]
    # The row lock makes the count and the insert atomic against declarations committed by
    # other nodes.
    found = require_organisation(connection, dialect, organisation, lock=True)
    if connection.execute(statements.phone_declared, (phone,)).fetchone() is not None:
        raise AlreadyExists("the phone number is already declared")
    (declared,) = connection.execute(statements.count_users,
                                     (found.organisation_id,)).fetchone()
    if declared >= found.seats:
        raise SeatLimitReached(seats=found.seats)
    (sequence,) = connection.execute(statements.next_sequence).fetchone()
    if connection.execute(statements.declare_user, (
            user_id, found.organisation_id, phone, UserState.DECLARED.value, now,
            sequence)).fetchone() is None:
        raise AlreadyExists("the phone number or user id is already taken")
    return User(user_id=user_id, organisation_id=found.organisation_id, phone=phone,
                state=UserState.DECLARED, declared_at=now, enrolled_at=None)


def list_users(connection: Connection, dialect: Dialect, organisation: str) -> list[User]:
    """See ``Store.list_users``."""
    statements = _STATEMENTS[dialect]
    found = require_organisation(connection, dialect, organisation)
    rows = connection.execute(statements.users_of, (found.organisation_id,)).fetchall()
    return [user_from_row(row) for row in rows]


def delete_user(connection: Connection, dialect: Dialect, *, organisation: str, phone: str,
                before_delete: Callable[[Any, str], None]) -> User:
    """See ``Store.delete_user``; ``before_delete(connection, user_id)`` runs just before."""
    statements = _STATEMENTS[dialect]
    found = require_organisation(connection, dialect, organisation)
    row = connection.execute(statements.user_by_phone_locked, (phone,)).fetchone()
    if row is None or row[1] != found.organisation_id:
        raise NotFound("no such user in this organisation")
    before_delete(connection, str(row[0]))
    # Devices and their queued envelopes go by ON DELETE CASCADE. The pending code is keyed
    # by phone_key, which this function is not given: declaration_sequence makes it unusable.
    connection.execute(statements.delete_user, (row[0],))
    return user_from_row(row)


def find_user_by_phone(connection: Connection, dialect: Dialect, phone: str) -> User | None:
    row = connection.execute(_STATEMENTS[dialect].user_by_phone, (phone,)).fetchone()
    return None if row is None else user_from_row(row)


def list_devices(connection: Connection, dialect: Dialect, user_id: str) -> list[Device]:
    """See ``Store.list_devices``."""
    rows = connection.execute(_STATEMENTS[dialect].devices_of, (user_id,)).fetchall()
    return [device_from_row(row) for row in rows]


def load_principal(connection: Connection, dialect: Dialect, user_id: str,
                   device_id: int) -> Principal | None:
    """See ``Store.load_principal``."""
    row = connection.execute(_STATEMENTS[dialect].principal, (user_id, device_id)).fetchone()
    if row is None:
        return None
    return Principal(user=user_from_row(row[0:6]), device=device_from_row(row[6:10]),
                     organisation=organisation_from_row(row[10:15]))


# -- enrolment -----------------------------------------------------------------------


def record_verification_code(connection: Connection, dialect: Dialect, *, phone_key: bytes,
                             code_hash: bytes, now: int, expires_at: int, window_ms: int,
                             max_sends: int) -> bool:
    """See ``Store.record_verification_code``."""
    statements = _STATEMENTS[dialect]
    if statements.lock_phone_key is not None:
        connection.execute(statements.lock_phone_key, (phone_key,))
    window_start = now - window_ms
    # Sends older than the window can never count again. So on refusal only those were
    # pruned: no observable change, as the contract requires.
    connection.execute(statements.forget_old_sends, (phone_key, window_start))
    (recent,) = connection.execute(statements.count_recent_sends,
                                   (phone_key, window_start, now)).fetchone()
    if recent >= max_sends:
        return False
    connection.execute(statements.record_send, (phone_key, now))
    (sequence,) = connection.execute(statements.next_sequence).fetchone()
    connection.execute(statements.record_code, (phone_key, code_hash, expires_at, sequence))
    return True


def take_verification_attempt(connection: Connection, dialect: Dialect, *, phone_key: bytes,
                              now: int, max_attempts: int, guess_window_ms: int,
                              max_guesses: int) -> bytes | None:
    """See ``Store.take_verification_attempt``."""
    statements = _STATEMENTS[dialect]
    if statements.lock_phone_key is not None:
        # Two nodes starting the same number's first window insert one row, not two.
        connection.execute(statements.lock_phone_key, (phone_key,))
    window = connection.execute(statements.guesses, (phone_key,)).fetchone()
    current = window is not None and window[0] + guess_window_ms > now
    if current and window[1] >= max_guesses:
        raise GuessBudgetSpent(resume_at=int(window[0]) + guess_window_ms)
    row = connection.execute(statements.take_attempt, (phone_key, now, max_attempts)).fetchone()
    if row is None:
        return None  # no code to check: no guess either
    if current:
        connection.execute(statements.count_guess, (phone_key,))
    else:
        connection.execute(statements.start_guess_window, (phone_key, now))
    return bytes(row[0])


def forget_enrolment_records(connection: Connection, dialect: Dialect, *, now: int,
                             send_window_ms: int, guess_window_ms: int, limit: int) -> int:
    """See ``Store.forget_enrolment_records``."""
    statements = _STATEMENTS[dialect]
    forgotten = connection.execute(statements.forget_expired_codes, (now, limit)).rowcount
    # As record_verification_code prunes: a send at now - window or before never counts.
    forgotten += connection.execute(statements.forget_sends_before,
                                    (now - send_window_ms, limit)).rowcount
    forgotten += connection.execute(statements.forget_guesses_before,
                                    (now - guess_window_ms, limit)).rowcount
    return forgotten


def register_device(connection: Connection, dialect: Dialect, *, phone: str, phone_key: bytes,
                    code_hash: bytes, identity_key: bytes, account_key: bytes,
                    device_list: bytes, device_list_version: int, now: int, max_devices: int,
                    revoke_reason: str, before_delete: BeforeDeviceDeleted) -> Registration:
    """See ``Store.register_device``; ``before_delete`` runs before each revoked device goes."""
    statements = _STATEMENTS[dialect]
    # Locked until commit: a concurrent registration on another node with the same code
    # waits, then finds it gone (single use).
    code = connection.execute(statements.pending_code_locked, (phone_key,)).fetchone()
    if code is None or not hmac.compare_digest(bytes(code[0]), code_hash):
        raise RegistrationRefused(RegistrationRefusal.CODE_CONSUMED)
    user = connection.execute(statements.user_by_phone_locked, (phone,)).fetchone()
    if user is None:
        raise RegistrationRefused(RegistrationRefusal.NOT_DECLARED)
    user_id, organisation_id, next_device_id, declaration_sequence, stored_account_key = (
        str(user[0]), user[1], user[6], user[7], user[8])
    if code[1] < declaration_sequence:
        # Sent for an earlier declaration of this number (since deleted).
        raise RegistrationRefused(RegistrationRefusal.CODE_CONSUMED)
    (state,) = connection.execute(statements.organisation_state_shared,
                                  (organisation_id,)).fetchone()
    if state != OrganisationState.ACTIVE.value:
        raise RegistrationRefused(RegistrationRefusal.ORGANISATION_INACTIVE)
    if stored_account_key is not None and bytes(stored_account_key) == account_key:
        # An enrolment makes a new account identity, which contacts must see change.
        raise RegistrationRefused(RegistrationRefusal.SAME_ACCOUNT_KEY)
    # Every earlier device goes (the number was enrolled again: a lost phone, a SIM swap),
    # so the new device is the only one left to count.
    if max_devices < 1:
        raise RegistrationRefused(RegistrationRefusal.TOO_MANY_DEVICES)
    earlier = account_sql.device_keys(connection, dialect, user_id)
    revoked = account_sql.revoke_devices(connection, dialect, user_id=user_id,
                                         devices=list(earlier.items()), reason=revoke_reason,
                                         now=now, before_delete=before_delete)
    connection.execute(statements.delete_code, (phone_key,))
    connection.execute(statements.insert_device, (user_id, next_device_id, identity_key, now))
    connection.execute(statements.enrol_user, (UserState.ENROLLED.value, now, user_id))
    account_sql.replace_account(connection, dialect, user_id=user_id, account_key=account_key,
                                device_list=device_list,
                                device_list_version=device_list_version)
    return Registration(device=Device(user_id=user_id, device_id=int(next_device_id),
                                      identity_key=identity_key, registered_at=now),
                        revoked=revoked)
