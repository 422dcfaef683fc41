"""Administration tables and the statements on them, shared by the SQLite and PostgreSQL stores.

Accounts, console sessions, API tokens, the audit log, licence terms, pending seat reductions
and the cross-organisation policy. As in ``storage.prekey_sql``, both backends run the same SQL
through a ``storage.sql_dialect.Dialect``; every function runs inside the caller's transaction
(a write's savepoint or a read's snapshot), so whatever it raises undoes everything it did.

The audit log is append-only: triggers refuse deleting a row or changing anything but its
subject, and the subject changes only to pseudonymise an erased user.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any

from storage import account_sql
from storage.account_records import ADMIN_REVOKE_REASON
from storage.admin_records import (
    Account,
    AccountRole,
    AdminSession,
    ApiToken,
    AuditEntry,
    Licence,
    LicenceOffer,
    PasswordState,
    ReductionBelowDeclared,
    SeatReduction,
)
from storage.enrolment_sql import (
    device_from_row,
    organisation_from_row,
    require_organisation,
    user_from_row,
)
from storage.records import (
    AlreadyExists,
    Device,
    NotFound,
    Organisation,
    OrganisationState,
    SendStatus,
    User,
)
from storage.sql_dialect import Connection, Dialect

__all__ = [
    "MAX_AUDIT_PAGE",
    "ONE_TIME_PASSWORDS",
    "POSTGRES_ADMIN_TABLES",
    "SQLITE_ADMIN_TABLES",
    "BeforeDeviceDeleted",
    "BeforeUserDeleted",
    "add_seats",
    "append_audit",
    "apply_due_seat_reductions",
    "create_account",
    "create_admin_session",
    "create_api_token",
    "cross_organisation_allowed",
    "delete_admin_session",
    "erase_user",
    "find_account",
    "find_api_token",
    "get_licence",
    "list_api_tokens",
    "list_audit",
    "list_organisations",
    "list_seat_reductions",
    "load_admin_session",
    "refusal_of",
    "remove_all_users",
    "request_seat_reduction",
    "revoke_api_token",
    "revoke_device",
    "send_refusal",
    "set_account_password",
    "set_cross_organisation_allowed",
    "set_licence_terms",
    "suspend_organisation",
    "terminated_pseudonym",
]


def _tables(*, identity: str, blob: str, big: str, boolean: str) -> tuple[str, ...]:
    return (
        f"""
        CREATE TABLE accounts (
            account_id {identity},
            email TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('operator', 'organisation_admin')),
            organisation_id INTEGER
                REFERENCES organisations (organisation_id) ON DELETE CASCADE,
            password_hash TEXT NOT NULL,
            created_at {big} NOT NULL,
            CHECK ((role = 'operator') = (organisation_id IS NULL))
        )
        """,
        f"""
        CREATE TABLE admin_sessions (
            session_hash {blob} PRIMARY KEY,
            account_id INTEGER NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
            csrf_token TEXT NOT NULL,
            expires_at {big} NOT NULL
        )
        """,
        f"""
        CREATE TABLE api_tokens (
            token_id {identity},
            token_hash {blob} NOT NULL UNIQUE,
            organisation_id INTEGER NOT NULL
                REFERENCES organisations (organisation_id) ON DELETE CASCADE,
            created_at {big} NOT NULL,
            revoked_at {big}
        )
        """,
        # No foreign key: the log outlives whatever it mentions.
        f"""
        CREATE TABLE audit_log (
            entry_id {identity},
            organisation_id INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            subject TEXT NOT NULL,
            address TEXT NOT NULL,
            at {big} NOT NULL
        )
        """,
        "CREATE INDEX audit_log_by_organisation ON audit_log (organisation_id, entry_id)",
        # Dates as ISO text (YYYY-MM-DD): they sort and compare as dates in both databases.
        """
        CREATE TABLE licence_terms (
            organisation_id INTEGER PRIMARY KEY
                REFERENCES organisations (organisation_id) ON DELETE CASCADE,
            offer TEXT NOT NULL CHECK (offer IN ('monthly', 'annual_commitment')),
            period_start TEXT NOT NULL
        )
        """,
        f"""
        CREATE TABLE seat_reductions (
            reduction_id {identity},
            organisation_id INTEGER NOT NULL
                REFERENCES organisations (organisation_id) ON DELETE CASCADE,
            seats INTEGER NOT NULL CHECK (seats >= 0),
            requested_at {big} NOT NULL,
            effective_on TEXT NOT NULL
        )
        """,
        f"""
        CREATE TABLE organisation_policies (
            organisation_id INTEGER PRIMARY KEY
                REFERENCES organisations (organisation_id) ON DELETE CASCADE,
            cross_organisation {boolean} NOT NULL
        )
        """,
    )


SQLITE_ADMIN_TABLES: tuple[str, ...] = (
    *_tables(identity="INTEGER PRIMARY KEY AUTOINCREMENT", blob="BLOB", big="INTEGER",
             boolean="INTEGER"),
    """
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
    """,
    """
    CREATE TRIGGER audit_log_only_pseudonymised
    BEFORE UPDATE OF entry_id, organisation_id, actor, action, address, at ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
    """,
)

POSTGRES_ADMIN_TABLES: tuple[str, ...] = (
    *_tables(identity="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", blob="BYTEA",
             big="BIGINT", boolean="BOOLEAN"),
    """
    CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' OR NEW.entry_id <> OLD.entry_id
           OR NEW.organisation_id <> OLD.organisation_id OR NEW.actor <> OLD.actor
           OR NEW.action <> OLD.action OR NEW.address <> OLD.address OR NEW.at <> OLD.at THEN
            RAISE EXCEPTION 'the audit log is append-only';
        END IF;
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()
    """,
)

# A later migration (both backends): whether the password is a one-time one the CLI printed,
# and whether it opened its session. Accounts made before it keep the password they have.
ONE_TIME_PASSWORDS: tuple[str, ...] = (
    """
    ALTER TABLE accounts ADD COLUMN password_state TEXT NOT NULL DEFAULT 'chosen'
        CHECK (password_state IN ('chosen', 'one_time', 'one_time_used'))
    """,
)

_ACCOUNT_COLUMNS = ("account_id, email, role, organisation_id, password_hash, created_at,"
                    " password_state")
_AUDIT_COLUMNS = "entry_id, organisation_id, actor, action, subject, address, at"
_ORGANISATION_COLUMNS = "organisation_id, name, seats, state, created_at"
_USER_COLUMNS = "user_id, organisation_id, phone, state, declared_at, enrolled_at"

# What a caller may ask of the audit log at once: a page, not the whole history.
MAX_AUDIT_PAGE = 500
"""Largest page of audit entries one call returns."""


def _account(row: Sequence[Any]) -> Account:
    account_id, email, role, organisation_id, password_hash, created_at, password_state = row
    return Account(account_id=int(account_id), email=str(email), role=AccountRole(role),
                   organisation_id=None if organisation_id is None else int(organisation_id),
                   password_hash=str(password_hash), created_at=int(created_at),
                   password_state=PasswordState(password_state))


def _audit(row: Sequence[Any]) -> AuditEntry:
    entry_id, organisation_id, actor, action, subject, address, at = row
    return AuditEntry(entry_id=int(entry_id), organisation_id=int(organisation_id),
                      actor=str(actor), action=str(action), subject=str(subject),
                      address=str(address), at=int(at))


def list_organisations(connection: Connection, dialect: Dialect) -> list[Organisation]:
    """Every organisation, by name."""
    rows = connection.execute(dialect.sql(
        f"SELECT {_ORGANISATION_COLUMNS} FROM organisations ORDER BY name")).fetchall()  # noqa: S608
    return [organisation_from_row(row) for row in rows]


# -- accounts and sessions -------------------------------------------------------


def create_account(connection: Connection, dialect: Dialect, *, email: str, role: AccountRole,
                   organisation: str | None, password_hash: str, password_is_one_time: bool,
                   now: int) -> Account:
    """See ``Store.create_account``."""
    organisation_id = None
    if organisation is not None:
        organisation_id = require_organisation(connection, dialect, organisation).organisation_id
    if (role is AccountRole.OPERATOR) != (organisation_id is None):
        raise ValueError("an operator has no organisation; an organisation admin has one")
    if connection.execute(dialect.sql("SELECT 1 FROM accounts WHERE email = ?"),
                          (email,)).fetchone() is not None:
        raise AlreadyExists("an account with this email already exists")
    state = PasswordState.ONE_TIME if password_is_one_time else PasswordState.CHOSEN
    row = connection.execute(dialect.sql(
        "INSERT INTO accounts (email, role, organisation_id, password_hash, created_at,"  # noqa: S608
        f" password_state) VALUES (?, ?, ?, ?, ?, ?) RETURNING {_ACCOUNT_COLUMNS}"),
        (email, role.value, organisation_id, password_hash, now, state.value)).fetchone()
    return _account(row)


def find_account(connection: Connection, dialect: Dialect, email: str) -> Account | None:
    row = connection.execute(dialect.sql(
        f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE email = ?"), (email,)).fetchone()  # noqa: S608
    return None if row is None else _account(row)


def set_account_password(connection: Connection, dialect: Dialect, *, account_id: int,
                         password_hash: str, keep_session_hash: bytes | None,
                         password_is_one_time: bool = False) -> None:
    """See ``Store.set_account_password``."""
    state = PasswordState.ONE_TIME if password_is_one_time else PasswordState.CHOSEN
    row = connection.execute(dialect.sql(
        "UPDATE accounts SET password_hash = ?, password_state = ? WHERE account_id = ?"
        " RETURNING account_id"), (password_hash, state.value, account_id)).fetchone()
    if row is None:
        raise NotFound("no such account")
    connection.execute(dialect.sql(
        "DELETE FROM admin_sessions WHERE account_id = ? AND session_hash <> ?"),
        (account_id, keep_session_hash if keep_session_hash is not None else b""))


def create_admin_session(connection: Connection, dialect: Dialect, *, session_hash: bytes,
                         account_id: int, csrf_token: str, now: int, expires_at: int,
                         spends_one_time_password: bool = False) -> bool:
    """See ``Store.create_admin_session``."""
    connection.execute(dialect.sql("DELETE FROM admin_sessions WHERE expires_at <= ?"), (now,))
    if connection.execute(dialect.sql("SELECT 1 FROM accounts WHERE account_id = ?"),
                          (account_id,)).fetchone() is None:
        raise NotFound("no such account")
    # One statement decides, so that of two logins racing with the one-time password, one
    # opens a session and the other changes nothing.
    if spends_one_time_password and connection.execute(dialect.sql(
            "UPDATE accounts SET password_state = ? WHERE account_id = ? AND password_state = ?"
            " RETURNING account_id"), (PasswordState.ONE_TIME_USED.value, account_id,
                                       PasswordState.ONE_TIME.value)).fetchone() is None:
        return False
    connection.execute(dialect.sql(
        "INSERT INTO admin_sessions (session_hash, account_id, csrf_token, expires_at)"
        " VALUES (?, ?, ?, ?)"), (session_hash, account_id, csrf_token, expires_at))
    return True


def load_admin_session(connection: Connection, dialect: Dialect, *, session_hash: bytes,
                       now: int) -> AdminSession | None:
    row = connection.execute(dialect.sql(
        "SELECT s.csrf_token, s.expires_at, a.account_id, a.email, a.role, a.organisation_id,"
        " a.password_hash, a.created_at, a.password_state FROM admin_sessions AS s"
        " JOIN accounts AS a ON a.account_id = s.account_id"
        " WHERE s.session_hash = ? AND s.expires_at > ?"), (session_hash, now)).fetchone()
    if row is None:
        return None
    return AdminSession(session_hash=session_hash, account=_account(row[2:]),
                        csrf_token=str(row[0]), expires_at=int(row[1]))


def delete_admin_session(connection: Connection, dialect: Dialect, session_hash: bytes) -> None:
    connection.execute(dialect.sql("DELETE FROM admin_sessions WHERE session_hash = ?"),
                       (session_hash,))


# -- API tokens ----------------------------------------------------------------


def _token(row: Sequence[Any]) -> ApiToken:
    token_id, organisation_id, created_at, revoked_at = row
    return ApiToken(token_id=int(token_id), organisation_id=int(organisation_id),
                    created_at=int(created_at),
                    revoked_at=None if revoked_at is None else int(revoked_at))


def create_api_token(connection: Connection, dialect: Dialect, *, organisation: str,
                     token_hash: bytes, now: int) -> ApiToken:
    found = require_organisation(connection, dialect, organisation)
    row = connection.execute(dialect.sql(
        "INSERT INTO api_tokens (token_hash, organisation_id, created_at) VALUES (?, ?, ?)"
        " RETURNING token_id, organisation_id, created_at, revoked_at"),
        (token_hash, found.organisation_id, now)).fetchone()
    return _token(row)


def find_api_token(connection: Connection, dialect: Dialect,
                   token_hash: bytes) -> ApiToken | None:
    row = connection.execute(dialect.sql(
        "SELECT token_id, organisation_id, created_at, revoked_at FROM api_tokens"
        " WHERE token_hash = ? AND revoked_at IS NULL"), (token_hash,)).fetchone()
    return None if row is None else _token(row)


def list_api_tokens(connection: Connection, dialect: Dialect, organisation: str) -> list[ApiToken]:
    found = require_organisation(connection, dialect, organisation)
    rows = connection.execute(dialect.sql(
        "SELECT token_id, organisation_id, created_at, revoked_at FROM api_tokens"
        " WHERE organisation_id = ? ORDER BY token_id"), (found.organisation_id,)).fetchall()
    return [_token(row) for row in rows]


def revoke_api_token(connection: Connection, dialect: Dialect, *, organisation: str,
                     token_id: int, now: int) -> ApiToken:
    found = require_organisation(connection, dialect, organisation)
    row = connection.execute(dialect.sql(
        "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?)"
        " WHERE token_id = ? AND organisation_id = ?"
        " RETURNING token_id, organisation_id, created_at, revoked_at"),
        (now, token_id, found.organisation_id)).fetchone()
    if row is None:
        raise NotFound("no such token in this organisation")
    return _token(row)


# -- audit log -------------------------------------------------------------------


def append_audit(connection: Connection, dialect: Dialect, *, organisation_id: int, actor: str,
                 action: str, subject: str, address: str, now: int) -> AuditEntry:
    row = connection.execute(dialect.sql(
        "INSERT INTO audit_log (organisation_id, actor, action, subject, address, at)"  # noqa: S608
        f" VALUES (?, ?, ?, ?, ?, ?) RETURNING {_AUDIT_COLUMNS}"),
        (organisation_id, actor, action, subject, address, now)).fetchone()
    return _audit(row)


def list_audit(connection: Connection, dialect: Dialect, *, organisation_id: int,
               action: str | None, subject: str | None, before_entry_id: int | None,
               limit: int) -> list[AuditEntry]:
    """See ``Store.list_audit``."""
    if not 1 <= limit <= MAX_AUDIT_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_AUDIT_PAGE}")
    # Every filter is a bound parameter; a NULL parameter disables its filter.
    rows = connection.execute(dialect.sql(
        f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE organisation_id = ?"  # noqa: S608
        " AND (CAST(? AS TEXT) IS NULL OR action = ?)"
        " AND (CAST(? AS TEXT) IS NULL OR subject = ?)"
        " AND (CAST(? AS BIGINT) IS NULL OR entry_id < ?)"
        " ORDER BY entry_id DESC LIMIT ?"),
        (organisation_id, action, action, subject, subject, before_entry_id, before_entry_id,
         limit)).fetchall()
    return [_audit(row) for row in rows]


BeforeUserDeleted = Callable[[Any, str], None]
"""Called with (connection, user_id) in the deleting transaction, before the delete: the
PostgreSQL store tells the nodes holding the user's devices to close them on commit."""


def erase_user(connection: Connection, dialect: Dialect, *, organisation: str, phone: str,
               pseudonym: str, before_delete: BeforeUserDeleted) -> User:
    """See ``Store.erase_user``."""
    found = require_organisation(connection, dialect, organisation)
    row = connection.execute(dialect.sql(
        f"SELECT {_USER_COLUMNS} FROM users WHERE phone = ? AND organisation_id = ?"),  # noqa: S608
        (phone, found.organisation_id)).fetchone()
    if row is None:
        raise NotFound("no such user in this organisation")
    before_delete(connection, str(row[0]))
    connection.execute(dialect.sql("DELETE FROM users WHERE user_id = ?"), (row[0],))
    connection.execute(dialect.sql(
        "UPDATE audit_log SET subject = ? WHERE organisation_id = ? AND subject = ?"),
        (pseudonym, found.organisation_id, phone))
    return user_from_row(row)


BeforeDeviceDeleted = Callable[[Any, str, int], None]
"""Called with (connection, user_id, device_id) before one device is deleted."""


def revoke_device(connection: Connection, dialect: Dialect, *, organisation: str, phone: str,
                  device_id: int, now: int, before_delete: BeforeDeviceDeleted) -> Device:
    """See ``Store.revoke_device``."""
    found = require_organisation(connection, dialect, organisation)
    row = connection.execute(dialect.sql(
        "SELECT d.user_id, d.device_id, d.identity_key, d.registered_at FROM devices AS d"
        " JOIN users AS u ON u.user_id = d.user_id"
        " WHERE u.phone = ? AND u.organisation_id = ? AND d.device_id = ?"),
        (phone, found.organisation_id, device_id)).fetchone()
    if row is None:
        raise NotFound("no such device of a user of this organisation")
    device = device_from_row(row)
    # Its queued envelopes and prekeys go by ON DELETE CASCADE; the id is never reused
    # (users.next_device_id); the notice tells the device why, and keeps a device list that
    # still names its key from registering it again.
    account_sql.revoke_devices(connection, dialect, user_id=device.user_id,
                               devices=[(device.device_id, device.identity_key)],
                               reason=ADMIN_REVOKE_REASON, now=now, before_delete=before_delete)
    return device


def remove_all_users(connection: Connection, dialect: Dialect, organisation: str, *,
                     before_delete: BeforeUserDeleted) -> list[User]:
    """See ``Store.terminate_organisation``: deletes every user, returns them."""
    found = require_organisation(connection, dialect, organisation, lock=True)
    for (user_id,) in connection.execute(dialect.sql(
            "SELECT user_id FROM users WHERE organisation_id = ?"),
            (found.organisation_id,)).fetchall():
        before_delete(connection, str(user_id))
    rows = connection.execute(dialect.sql(
        f"DELETE FROM users WHERE organisation_id = ? RETURNING {_USER_COLUMNS}"),  # noqa: S608
        (found.organisation_id,)).fetchall()
    users = sorted((user_from_row(row) for row in rows), key=lambda user: user.phone)
    for user in users:
        # Personal data goes as on erasure. The random user id, whose row is gone, makes a
        # pseudonym nothing links back to the number.
        connection.execute(dialect.sql(
            "UPDATE audit_log SET subject = ? WHERE organisation_id = ? AND subject = ?"),
            (terminated_pseudonym(user), found.organisation_id, user.phone))
    connection.execute(dialect.sql("UPDATE organisations SET state = ? WHERE organisation_id = ?"),
                       (OrganisationState.TERMINATED.value, found.organisation_id))
    return users


def suspend_organisation(connection: Connection, dialect: Dialect, organisation: str, *,
                         before_close: BeforeUserDeleted) -> list[User]:
    """See ``Store.suspend_organisation``."""
    found = require_organisation(connection, dialect, organisation, lock=True)
    rows = connection.execute(dialect.sql(
        f"SELECT {_USER_COLUMNS} FROM users WHERE organisation_id = ? ORDER BY phone"),  # noqa: S608
        (found.organisation_id,)).fetchall()
    users = [user_from_row(row) for row in rows]
    for user in users:
        before_close(connection, user.user_id)
    connection.execute(dialect.sql("UPDATE organisations SET state = ? WHERE organisation_id = ?"),
                       (OrganisationState.SUSPENDED.value, found.organisation_id))
    return users


def terminated_pseudonym(user: User) -> str:
    """What replaces a number in the audit log when its organisation is terminated."""
    return f"erased-{user.user_id[:16]}"


# -- licence ---------------------------------------------------------------------


def get_licence(connection: Connection, dialect: Dialect, organisation: str) -> Licence:
    """See ``Store.get_licence``."""
    found = require_organisation(connection, dialect, organisation)
    row = connection.execute(dialect.sql(
        "SELECT offer, period_start FROM licence_terms WHERE organisation_id = ?"),
        (found.organisation_id,)).fetchone()
    if row is None:  # no terms recorded: month to month since the organisation was created
        start = datetime.datetime.fromtimestamp(found.created_at / 1000, datetime.UTC).date()
        return Licence(organisation_id=found.organisation_id, seats=found.seats,
                       offer=LicenceOffer.MONTHLY, period_start=start)
    return Licence(organisation_id=found.organisation_id, seats=found.seats,
                   offer=LicenceOffer(row[0]), period_start=datetime.date.fromisoformat(row[1]))


def set_licence_terms(connection: Connection, dialect: Dialect, *, organisation: str,
                      offer: LicenceOffer, period_start: datetime.date) -> Licence:
    found = require_organisation(connection, dialect, organisation)
    connection.execute(dialect.sql(
        "INSERT INTO licence_terms (organisation_id, offer, period_start) VALUES (?, ?, ?)"
        " ON CONFLICT (organisation_id) DO UPDATE SET offer = excluded.offer,"
        " period_start = excluded.period_start"),
        (found.organisation_id, offer.value, period_start.isoformat()))
    return get_licence(connection, dialect, organisation)


def add_seats(connection: Connection, dialect: Dialect, *, organisation: str,
              added: int) -> Licence:
    """See ``Store.add_seats``."""
    if added < 1:
        raise ValueError("add at least one seat")
    found = require_organisation(connection, dialect, organisation, lock=True)
    connection.execute(dialect.sql(
        "UPDATE organisations SET seats = seats + ? WHERE organisation_id = ?"),
        (added, found.organisation_id))
    return get_licence(connection, dialect, organisation)


def _reduction(row: Sequence[Any]) -> SeatReduction:
    reduction_id, organisation_id, seats, requested_at, effective_on = row
    return SeatReduction(reduction_id=int(reduction_id), organisation_id=int(organisation_id),
                         seats=int(seats), requested_at=int(requested_at),
                         effective_on=datetime.date.fromisoformat(effective_on))


_REDUCTION_COLUMNS = "reduction_id, organisation_id, seats, requested_at, effective_on"


def request_seat_reduction(connection: Connection, dialect: Dialect, *, organisation: str,
                           seats: int, effective_on: datetime.date, now: int) -> SeatReduction:
    """See ``Store.request_seat_reduction``."""
    # The lock orders this against concurrent declarations on other nodes.
    found = require_organisation(connection, dialect, organisation, lock=True)
    if not 0 <= seats < found.seats:
        raise ValueError(f"a reduction goes below the current {found.seats} seats")
    (declared,) = connection.execute(dialect.sql(
        "SELECT COUNT(*) FROM users WHERE organisation_id = ?"),
        (found.organisation_id,)).fetchone()
    if int(declared) > seats:
        raise ReductionBelowDeclared(seats=seats, declared=int(declared))
    row = connection.execute(dialect.sql(
        "INSERT INTO seat_reductions (organisation_id, seats, requested_at, effective_on)"  # noqa: S608
        f" VALUES (?, ?, ?, ?) RETURNING {_REDUCTION_COLUMNS}"),
        (found.organisation_id, seats, now, effective_on.isoformat())).fetchone()
    return _reduction(row)


def list_seat_reductions(connection: Connection, dialect: Dialect,
                         organisation: str) -> list[SeatReduction]:
    found = require_organisation(connection, dialect, organisation)
    rows = connection.execute(dialect.sql(
        f"SELECT {_REDUCTION_COLUMNS} FROM seat_reductions WHERE organisation_id = ?"  # noqa: S608
        " ORDER BY effective_on, reduction_id"), (found.organisation_id,)).fetchall()
    return [_reduction(row) for row in rows]


def apply_due_seat_reductions(connection: Connection, dialect: Dialect, *,
                              today: datetime.date) -> int:
    """See ``Store.apply_due_seat_reductions``."""
    rows = connection.execute(dialect.sql(
        f"DELETE FROM seat_reductions WHERE effective_on <= ? RETURNING {_REDUCTION_COLUMNS}"),  # noqa: S608
        (today.isoformat(),)).fetchall()
    # The latest request of each organisation wins (it was made knowing the earlier ones).
    latest: dict[int, SeatReduction] = {}
    for reduction in sorted((_reduction(row) for row in rows),
                            key=lambda found: (found.effective_on, found.reduction_id)):
        latest[reduction.organisation_id] = reduction
    for reduction in latest.values():
        connection.execute(dialect.sql(
            "UPDATE organisations SET seats = ? WHERE organisation_id = ?"),
            (reduction.seats, reduction.organisation_id))
    return len(rows)


# -- policy ----------------------------------------------------------------------


def send_refusal(connection: Connection, dialect: Dialect, *, sender_organisation_id: int,
                 recipient_user_id: str) -> SendStatus | None:
    """Why a user of ``sender_organisation_id`` may not send to ``recipient_user_id`` now:
    ORGANISATION_SUSPENDED (the sender's organisation is not active), UNKNOWN_RECIPIENT (no
    such user, a user of an organisation that is not active, which a look-up hides too, or
    another organisation and one of the two refuses cross-organisation traffic); None if it
    may."""
    # One statement of primary-key lookups: this runs in every send's transaction, where each
    # statement costs more than the lookups themselves. A missing policy row means allowed.
    row = connection.execute(dialect.sql(
        "SELECT u.organisation_id, o.state, recipient_organisation.state,"
        " sender_policy.cross_organisation, recipient_policy.cross_organisation FROM users AS u"
        " JOIN organisations AS o ON o.organisation_id = ?"
        " JOIN organisations AS recipient_organisation"
        " ON recipient_organisation.organisation_id = u.organisation_id"
        " LEFT JOIN organisation_policies AS sender_policy"
        " ON sender_policy.organisation_id = o.organisation_id"
        " LEFT JOIN organisation_policies AS recipient_policy"
        " ON recipient_policy.organisation_id = u.organisation_id"
        " WHERE u.user_id = ?"), (sender_organisation_id, recipient_user_id)).fetchone()
    return refusal_of(row, sender_organisation_id)


def refusal_of(row: Sequence[Any] | None, sender_organisation_id: int) -> SendStatus | None:
    """``send_refusal``'s answer from its row: (recipient's organisation id, sender's
    organisation state, recipient's organisation state, sender's and recipient's
    cross-organisation policies), None where the user or the sender's organisation is
    missing. The send path reads the same columns with its device rows (one statement)."""
    if row is None or row[1] is None:
        return SendStatus.UNKNOWN_RECIPIENT
    (recipient_organisation_id, sender_state, recipient_state, sender_allows,
     recipient_allows) = row
    if sender_state != OrganisationState.ACTIVE.value:
        return SendStatus.ORGANISATION_SUSPENDED
    if recipient_state != OrganisationState.ACTIVE.value:
        return SendStatus.UNKNOWN_RECIPIENT  # as a look-up answers: suspended users are hidden
    if int(recipient_organisation_id) == sender_organisation_id or (
            (sender_allows is None or bool(sender_allows))
            and (recipient_allows is None or bool(recipient_allows))):
        return None
    return SendStatus.UNKNOWN_RECIPIENT


def cross_organisation_allowed(connection: Connection, dialect: Dialect,
                               organisation_id: int) -> bool:
    """Allowed unless the organisation turned it off (the product's default is allowed)."""
    row = connection.execute(dialect.sql(
        "SELECT cross_organisation FROM organisation_policies WHERE organisation_id = ?"),
        (organisation_id,)).fetchone()
    return True if row is None else bool(row[0])


def set_cross_organisation_allowed(connection: Connection, dialect: Dialect, *,
                                   organisation: str, allowed: bool) -> None:
    found = require_organisation(connection, dialect, organisation)
    connection.execute(dialect.sql(
        "INSERT INTO organisation_policies (organisation_id, cross_organisation) VALUES (?, ?)"
        " ON CONFLICT (organisation_id) DO UPDATE SET"
        " cross_organisation = excluded.cross_organisation"),
        (found.organisation_id, allowed))
