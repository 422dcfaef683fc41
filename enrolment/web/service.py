"""Organisation administration: who may do what, and the audit entry every action leaves.

Knows no HTTP. The console and the API reach the store only through ``AdminService``, where
every authorisation rule lives. Its authentication methods turn an API token or a session
cookie into a ``Caller`` and open, close and re-key console sessions; every other method takes
the ``Caller`` and the organisation's name, checks that the caller may act on that
organisation, acts through the store, and appends an audit entry for every change and every
read of personal data. Live connections are closed through ``ConnectionCloser`` (the relay),
at once.

The operator CLI (``cryptopass-relay admin``) acts through the same methods as ``CLI_CALLER``,
so that its changes are checked and audited as the API's are.
"""

from __future__ import annotations

import datetime
import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from enrolment import admin
from enrolment.errors import InvalidRequest, OrganisationInactive
from enrolment.licence_dates import check_contract_start, reduction_effective_on
from enrolment.numbers import parse_phone
from enrolment.web.auth import (
    MAX_PASSWORD_CHARS,
    MIN_PASSWORD_CHARS,
    PASSWORD_GUESS_WINDOW_MS,
    PASSWORD_GUESSES_ALLOWED,
    PasswordHashing,
    PasswordHashingBusy,
    guess_keys,
    new_api_token,
    new_one_time_password,
    new_secret,
    secret_hash,
)
from storage.admin_records import (
    RELAY_WIDE_AUDIT,
    Account,
    AccountRole,
    AdminSession,
    ApiToken,
    AuditEntry,
    Licence,
    LicenceOffer,
    PasswordState,
    SeatReduction,
)
from storage.admin_sql import MAX_AUDIT_PAGE
from storage.base import (
    AdminStore,
    AlreadyExists,
    Device,
    DeviceActivity,
    Directory,
    NotFound,
    Organisation,
    OrganisationPolicy,
    OrganisationState,
    SeatLimitReached,
    User,
    UserState,
)
from wire.phone import national_format

__all__ = [
    "CLI_CALLER",
    "MAX_ACTION_CHARS",
    "MAX_EMAIL_CHARS",
    "AdminService",
    "AdminServiceStore",
    "Caller",
    "ConnectionCloser",
    "Forbidden",
    "NewSession",
    "OneTimePasswordUsed",
    "PasswordChangeRequired",
    "TooManyGuesses",
    "UserView",
    "audit_json",
    "normalised_email",
]

PSEUDONYM_BYTES = 8
"""Random bytes of an erased user's pseudonym in the audit log: unique among an organisation's
erasures, and no link to the number it replaces."""

MAX_ACTION_CHARS = 64
"""Longest audit action filter accepted (actions are short verb phrases)."""

MAX_CSV_IMPORT_ROWS = 10_000
"""Phone numbers one CSV import may declare (the largest licences are smaller)."""

MAX_EMAIL_CHARS = 254
"""RFC 5321's limit on a forward path."""
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class Forbidden(Exception):
    """The caller may not do this (another organisation, or an operator-only action)."""


class PasswordChangeRequired(Exception):
    """The session was opened with a one-time password: it may only change the password."""

    def __init__(self) -> None:
        super().__init__("change your one-time password first, on the console's Account page "
                         "(/account); until then this session may do nothing else")


class OneTimePasswordUsed(Exception):
    """A login with a one-time password that already opened its session; nothing changed."""

    def __init__(self) -> None:
        super().__init__("this one-time password was already used: ask an operator for a new "
                         "one (cryptopass-relay admin account reset-password)")


class TooManyGuesses(Exception):
    """PASSWORD_GUESSES_ALLOWED wrong passwords for this email or from this address within
    PASSWORD_GUESS_WINDOW_MS: the password was not checked."""

    def __init__(self, retry_after_ms: int) -> None:
        minutes = -(-retry_after_ms // 60_000)
        super().__init__(f"too many wrong passwords: try again in {minutes} "
                         f"minute{'s' if minutes > 1 else ''}")
        self.retry_after_ms = retry_after_ms


def normalised_email(text: str) -> str:
    """Lowercased, trimmed email; raises InvalidRequest if it cannot be one."""
    email = text.strip().lower()
    if len(email) > MAX_EMAIL_CHARS or _EMAIL.fullmatch(email) is None:
        raise InvalidRequest("this is not an email address")
    return email


class ConnectionCloser(Protocol):
    """What the relay offers to end live connections at once."""

    def user_deleted(self, user_id: str) -> int:
        """Close the user's connections as revoked; returns how many were closed."""
        ...

    def device_revoked(self, user_id: str, device_id: int) -> int:
        """Close that one device's connection as revoked; returns how many were closed."""
        ...

    def organisation_suspended(self, user_id: str) -> int:
        """Close the user's connections as suspended; returns how many were closed."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class Caller:
    """Who makes a request."""

    actor: str
    """For the audit log: ``account:<email>`` or ``token:<id>``."""
    role: AccountRole
    organisation_id: int | None
    """The only organisation an organisation administrator or a token may touch."""
    address: str
    """The client's network address, for the audit log."""

    def may_act_on(self, organisation: Organisation) -> bool:
        return self.role is AccountRole.OPERATOR \
            or self.organisation_id == organisation.organisation_id


CLI_CALLER = Caller(actor="cli", role=AccountRole.OPERATOR, organisation_id=None,
                    address="local")
"""The operator CLI: an operator, audited as ``cli`` from ``local``."""


@dataclass(frozen=True, kw_only=True, slots=True)
class UserView:
    """A user as the console and the API show it."""

    user: User
    devices: tuple[Device, ...]
    last_seen: dict[int, datetime.date]
    """Device id -> the day it last authenticated (absent: not since the relay records it)."""

    def as_json(self) -> dict[str, Any]:
        seen = [self.last_seen[device.device_id] for device in self.devices
                if device.device_id in self.last_seen]
        return {
            "phone": self.user.phone,
            "phone_national": national_format(self.user.phone),
            "status": self.user.state.value,
            "declared_on": _day(self.user.declared_at),
            "enrolled_on": None if self.user.enrolled_at is None else _day(self.user.enrolled_at),
            # The day any of its devices last authenticated (relay.last_seen).
            "last_seen_on": max(seen).isoformat() if seen else None,
            "devices": [{"device_id": device.device_id,
                         "registered_on": _day(device.registered_at),
                         "last_seen_on": self.last_seen[device.device_id].isoformat()
                         if device.device_id in self.last_seen else None}
                        for device in self.devices],
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class NewSession:
    """A console session just opened: what the browser keeps. The store has only the cookie's
    hash."""

    cookie: str
    """The session cookie's value."""
    csrf_token: str
    """What every form and state-changing API call of the session must echo back."""
    must_change_password: bool
    """Opened with a one-time password: it may only change the password
    (``PasswordChangeRequired`` otherwise)."""


class AdminServiceStore(AdminStore, Directory, OrganisationPolicy, DeviceActivity, Protocol):
    """What administration needs of the store: the administrative side, the directory, the
    cross-organisation policy, and when devices were last seen."""


def _day(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).date().isoformat()


class AdminService:
    """The rules of organisation administration, over one store (which only it reaches)."""

    def __init__(self, store: AdminServiceStore, closer: ConnectionCloser,
                 now_ms: Callable[[], int], *, hashing: PasswordHashing | None = None) -> None:
        self._store = store
        self._closer = closer
        self._now_ms = now_ms
        self._hashing = hashing or PasswordHashing()

    def now(self) -> int:
        """Milliseconds since the epoch (the relay's clock)."""
        return self._now_ms()

    def today(self) -> datetime.date:
        return datetime.datetime.fromtimestamp(self._now_ms() / 1000, datetime.UTC).date()

    # -- authentication ------------------------------------------------------------------

    async def token_caller(self, token: str, *, address: str) -> Caller | None:
        """The caller an API token stands for, or None if it is unknown or revoked.

        A token acts as an administrator of its own organisation only, never as an operator.
        """
        found = await self._store.find_api_token(secret_hash(token))
        if found is None:
            return None
        return Caller(actor=f"token:{found.token_id}", role=AccountRole.ORGANISATION_ADMIN,
                      organisation_id=found.organisation_id, address=address)

    async def session(self, cookie: str) -> AdminSession | None:
        """The console session of a session cookie, unless unknown or expired (by the relay's
        clock)."""
        return await self._store.load_admin_session(session_hash=secret_hash(cookie),
                                                    now=self._now_ms())

    @staticmethod
    def session_caller(session: AdminSession, *, address: str,
                       changing_password: bool = False) -> Caller:
        """The caller a console session stands for: its account, with the account's role.

        Raises PasswordChangeRequired if the session was opened with a one-time password,
        unless ``changing_password`` (the account page, the change itself, logging out).
        """
        account = session.account
        if account.must_change_password and not changing_password:
            raise PasswordChangeRequired
        return Caller(actor=f"account:{account.email}", role=account.role,
                      organisation_id=account.organisation_id, address=address)

    async def log_in(self, email: str, password: str, *, address: str,
                     lifetime_ms: int) -> NewSession | None:
        """Open a console session of ``lifetime_ms`` if ``password`` is the account's.

        The guess is counted first, for the email and for ``address``
        (``AccountStore.take_login_attempt``), and given back if the password is right.
        None for an unknown email and for a wrong or over-long password alike, after the
        same work (a password hash is checked either way, in a hashing thread), so the
        answer does not tell which emails have accounts.

        A one-time password opens one session, which must change it
        (``NewSession.must_change_password``); it is then spent: raises OneTimePasswordUsed
        when it is given again (only to whoever knows it; the guess stays counted).

        Raises TooManyGuesses, PasswordHashingBusy (nothing counted then).
        """
        keys = guess_keys(email=email, address=address)
        async with self._password_guess(keys):
            account = await self._store.find_account(email) if email else None
            if len(password) > MAX_PASSWORD_CHARS:
                account = None
            if account is None:
                await self._hashing.spend_verification_time(password[:MAX_PASSWORD_CHARS])
                return None
            if not await self._hashing.verify(account.password_hash, password):
                return None
        if account.password_state is PasswordState.ONE_TIME_USED:
            raise OneTimePasswordUsed
        await self._store.refund_login_attempt(keys=keys, now=self._now_ms())
        opened = NewSession(cookie=new_secret(), csrf_token=new_secret(),
                            must_change_password=account.must_change_password)
        now = self._now_ms()
        if not await self._store.create_admin_session(
                session_hash=secret_hash(opened.cookie), account_id=account.account_id,
                csrf_token=opened.csrf_token, now=now, expires_at=now + lifetime_ms,
                spends_one_time_password=account.password_state is PasswordState.ONE_TIME):
            raise OneTimePasswordUsed  # a concurrent login spent it first
        return opened

    @asynccontextmanager
    async def _password_guess(self, keys: list[bytes]) -> AsyncIterator[None]:
        """Count one password guess on ``keys``, then hold a place among the pending password
        checks (``PasswordHashing.admit``) while the block checks it.

        Counting first means that refused guesses never queue; a guess counted but not
        admitted is given back. Raises TooManyGuesses, PasswordHashingBusy.
        """
        attempt = await self._store.take_login_attempt(
            keys=keys, allowed=PASSWORD_GUESSES_ALLOWED, window_ms=PASSWORD_GUESS_WINDOW_MS,
            now=self._now_ms())
        if not attempt.granted:
            raise TooManyGuesses(attempt.retry_after_ms)
        try:
            admission = self._hashing.admit()
        except PasswordHashingBusy:
            await self._store.refund_login_attempt(keys=keys, now=self._now_ms())
            raise
        with admission:
            yield

    async def log_out(self, session: AdminSession) -> None:
        """End this console session (others of the account go on)."""
        await self._store.delete_admin_session(session.session_hash)

    async def change_password(self, session: AdminSession, *, current: str, new: str,
                              address: str) -> None:
        """Change the password of the session's own account (no one changes another's) and
        end the account's other sessions; this one goes on (free to do anything, if it was
        opened with a one-time password). Audited as ``account.password``.

        ``current`` is a guess like a login's: counted for the account's email and for
        ``address`` first, and given back if right.

        Raises Forbidden (``current`` is not the password), InvalidRequest (``new`` has not
        MIN_PASSWORD_CHARS to MAX_PASSWORD_CHARS characters, or is the one-time password),
        TooManyGuesses, PasswordHashingBusy; nothing changes then.
        """
        account = session.account
        keys = guess_keys(email=account.email, address=address)
        async with self._password_guess(keys):
            if not await self._hashing.verify(account.password_hash,
                                              current[:MAX_PASSWORD_CHARS]):
                raise Forbidden("the current password is wrong")
            await self._store.refund_login_attempt(keys=keys, now=self._now_ms())
            if not MIN_PASSWORD_CHARS <= len(new) <= MAX_PASSWORD_CHARS:
                raise InvalidRequest(
                    f"a password has {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")
            if account.must_change_password and new == current:
                raise InvalidRequest("choose a password other than the one-time password")
            password_hash = await self._hashing.hash(new)
        await self._store.set_account_password(
            account_id=account.account_id, password_hash=password_hash,
            keep_session_hash=session.session_hash)
        caller = self.session_caller(session, address=address, changing_password=True)
        await self._audit_account(caller, account, "account.password")

    # -- accounts and tokens (operators: the CLI) -------------------------------------------

    async def _audit_account(self, caller: Caller, account: Account,
                             action: str) -> AuditEntry:
        """Audited in the account's organisation; an operator's in the relay-wide entries
        (``RELAY_WIDE_AUDIT``)."""
        return await self._store.append_audit(
            organisation_id=account.organisation_id if account.organisation_id is not None
            else RELAY_WIDE_AUDIT, actor=caller.actor, action=action, subject=account.email,
            address=caller.address, now=self._now_ms())

    @staticmethod
    def _require_operator(caller: Caller) -> None:
        if caller.role is not AccountRole.OPERATOR:
            raise Forbidden("only an operator may do this")

    async def create_account(self, caller: Caller, email_text: str, *,
                             organisation: str | None) -> tuple[Account, str]:
        """Operators: an administrator of ``organisation``, or an operator if None, with a
        fresh one-time password (returned, stored only hashed). Audited as ``account.create``.

        Raises InvalidRequest (email), AlreadyExists (email taken), NotFound (organisation).
        """
        self._require_operator(caller)
        email = normalised_email(email_text)
        if organisation is not None:
            await self.organisation(caller, organisation)
        password = new_one_time_password()
        account = await self._store.create_account(
            email=email, role=AccountRole.OPERATOR if organisation is None
            else AccountRole.ORGANISATION_ADMIN, organisation=organisation,
            password_hash=await self._hashing.hash(password), password_is_one_time=True,
            now=self._now_ms())
        await self._audit_account(caller, account, "account.create")
        return account, password

    async def reset_password(self, caller: Caller, email_text: str) -> tuple[Account, str]:
        """Operators: give the account a fresh one-time password (returned) and end its
        sessions, for a lost password or a one-time password spent without a change.
        Audited as ``account.password_reset``. Raises InvalidRequest, NotFound."""
        self._require_operator(caller)
        account = await self._store.find_account(normalised_email(email_text))
        if account is None:
            raise NotFound("no account with this email")
        password = new_one_time_password()
        await self._store.set_account_password(
            account_id=account.account_id, password_hash=await self._hashing.hash(password),
            keep_session_hash=None, password_is_one_time=True)
        await self._audit_account(caller, account, "account.password_reset")
        return account, password

    async def create_api_token(self, caller: Caller, name: str) -> tuple[ApiToken, str]:
        """Operators: a token for organisation ``name`` (returned once, stored as its
        SHA-256). Audited as ``token.create``."""
        organisation = await self._operator_organisation(caller, name)
        token = new_api_token()
        created = await self._store.create_api_token(
            organisation=name, token_hash=secret_hash(token), now=self._now_ms())
        await self._audit(caller, organisation, "token.create", f"token:{created.token_id}")
        return created, token

    async def revoke_api_token(self, caller: Caller, name: str, token_id: int) -> ApiToken:
        """Operators: revoke a token of organisation ``name`` (NotFound for another's).
        Audited as ``token.revoke``."""
        organisation = await self._operator_organisation(caller, name)
        revoked = await self._store.revoke_api_token(organisation=name, token_id=token_id,
                                                     now=self._now_ms())
        await self._audit(caller, organisation, "token.revoke", f"token:{token_id}")
        return revoked

    # -- organisations -------------------------------------------------------------------

    async def create_organisation(self, caller: Caller, name: str, seats: int, *,
                                  offer: LicenceOffer = LicenceOffer.MONTHLY,
                                  contract_start: datetime.date | None = None
                                  ) -> tuple[Organisation, Licence]:
        """Operators: an active organisation with a licence of ``seats`` on ``offer`` from
        ``contract_start`` (today, UTC, if None). Everything is checked before anything
        changes. Audited as ``organisation.create`` and ``licence.terms``.

        Raises InvalidRequest (name, seats, start), AlreadyExists (name taken).
        """
        self._require_operator(caller)
        admin.check_organisation(name, seats)
        start = self.today() if contract_start is None else contract_start
        check_contract_start(start, today=self.today())
        organisation = await admin.create_organisation(self._store, name, seats,
                                                       self._now_ms())
        licence = await self._store.set_licence_terms(organisation=name, offer=offer,
                                                      period_start=start)
        await self._audit(caller, organisation, "organisation.create", name)
        await self._audit(caller, organisation, "licence.terms",
                          f"{seats} seats, {offer.value} from {start.isoformat()}")
        return organisation, licence

    async def organisations(self, caller: Caller) -> list[Organisation]:
        """The organisations the caller may act on, by name: every one for an operator, its
        own (if it still exists) for anyone else."""
        return [found for found in await self._store.list_organisations()
                if caller.may_act_on(found)]

    async def organisation(self, caller: Caller, name: str) -> Organisation:
        """The organisation if the caller may act on it.

        Raises Forbidden (for an organisation administrator, also when it does not exist, so
        that names of other customers cannot be probed) or NotFound (operators).
        """
        found = await self._store.get_organisation(name)
        if found is None:
            if caller.role is AccountRole.OPERATOR:
                raise NotFound(f"no organisation named {name!r}")
            raise Forbidden("you may not administer this organisation")
        if not caller.may_act_on(found):
            raise Forbidden("you may not administer this organisation")
        return found

    async def _audit(self, caller: Caller, organisation: Organisation, action: str,
                     subject: str) -> AuditEntry:
        return await self._store.append_audit(
            organisation_id=organisation.organisation_id, actor=caller.actor, action=action,
            subject=subject, address=caller.address, now=self._now_ms())

    async def _view(self, user: User) -> UserView:
        devices = tuple(await self._store.list_devices(user.user_id))
        last_seen = await self._store.devices_last_seen(user.user_id) if devices else {}
        return UserView(user=user, devices=devices, last_seen=last_seen)

    # -- users -------------------------------------------------------------------------

    async def list_users(self, caller: Caller, name: str, *,
                         search: str | None = None) -> list[UserView]:
        """Users with their devices, by phone; ``search`` keeps numbers containing its digits."""
        await self.organisation(caller, name)
        users = await self._store.list_users(name)
        digits = "".join(character for character in search or "" if character.isdigit())
        if digits:
            users = [user for user in users if digits in user.phone]
        return [await self._view(user) for user in users]

    async def declared_count(self, caller: Caller, name: str) -> int:
        """How many users the organisation has declared (the seats in use)."""
        await self.organisation(caller, name)
        return len(await self._store.list_users(name))

    async def get_user(self, caller: Caller, name: str, phone_text: str) -> UserView:
        """One user with its devices; the read of its personal data is audited."""
        organisation = await self.organisation(caller, name)
        view = await self._view(await self._user_of(organisation, phone_text))
        await self._audit(caller, organisation, "user.read", view.user.phone)
        return view

    async def _user_of(self, organisation: Organisation, phone_text: str) -> User:
        user = await self._store.find_user_by_phone(parse_phone(phone_text))
        if user is None or user.organisation_id != organisation.organisation_id:
            raise NotFound("no such user in this organisation")
        return user

    async def declare(self, caller: Caller, name: str, phone_text: str) -> User:
        """Raises InvalidPhoneNumber, AlreadyExists, SeatLimitReached, Forbidden, NotFound."""
        organisation = await self.organisation(caller, name)
        self._require_active(organisation)
        # A reduction that became due limits declarations from its first day on.
        await self._store.apply_due_seat_reductions(today=self.today())
        return await self._declare_in(caller, organisation, phone_text)

    async def _declare_in(self, caller: Caller, organisation: Organisation,
                          phone_text: str) -> User:
        user = await self._store.declare_user(organisation=organisation.name,
                                             phone=parse_phone(phone_text),
                                             user_id=admin.new_user_id(), now=self._now_ms())
        await self._audit(caller, organisation, "user.declare", user.phone)
        return user

    async def delete(self, caller: Caller, name: str, phone_text: str) -> User:
        """Delete the user, its devices and queue; close its connections at once."""
        organisation = await self.organisation(caller, name)
        user = await self._store.delete_user(organisation=name, phone=parse_phone(phone_text))
        self._closer.user_deleted(user.user_id)
        await self._audit(caller, organisation, "user.delete", user.phone)
        return user

    async def revoke_device(self, caller: Caller, name: str, phone_text: str,
                            device_id: int) -> Device:
        """Revoke one device of a user (a lost phone); its connection is closed at once."""
        organisation = await self.organisation(caller, name)
        phone = parse_phone(phone_text)
        device = await self._store.revoke_device(organisation=name, phone=phone,
                                                device_id=device_id, now=self.now())
        self._closer.device_revoked(device.user_id, device.device_id)
        await self._audit(caller, organisation, "device.revoke", phone)
        return device

    async def replace(self, caller: Caller, name: str, old_phone_text: str,
                      new_phone_text: str) -> User:
        """Delete one number and declare another, which takes the freed seat.

        Both numbers are checked before anything changes; if the declaration still fails
        (a concurrent declaration took the number), the old user stays deleted.
        """
        organisation = await self.organisation(caller, name)
        self._require_active(organisation)
        old = await self._user_of(organisation, old_phone_text)
        new_phone = parse_phone(new_phone_text)
        if await self._store.find_user_by_phone(new_phone) is not None:
            raise AlreadyExists("the new phone number is already declared")
        await self.delete(caller, name, old.phone)
        return await self.declare(caller, name, new_phone)

    async def import_csv(self, caller: Caller, name: str, text: str) -> list[str]:
        """Declare every number of a CSV (first column; a header line is skipped).

        Returns one line per row that could not be declared, naming why; the others are
        declared (each declaration stands alone, as if made one by one).
        """
        organisation = await self.organisation(caller, name)
        rows = [line.split(",", 1)[0].strip().strip('"') for line in text.splitlines()]
        rows = [row for row in rows if row and row.lower() != "phone"]
        if len(rows) > MAX_CSV_IMPORT_ROWS:
            raise InvalidRequest(f"a CSV import holds at most {MAX_CSV_IMPORT_ROWS} numbers")
        problems = []
        self._require_active(organisation)
        await self._store.apply_due_seat_reductions(today=self.today())
        for number, row in enumerate(rows, start=1):
            try:
                await self._declare_in(caller, organisation, row)
            except (InvalidRequest, AlreadyExists, SeatLimitReached) as error:
                problems.append(f"row {number}: {error}")
        return problems

    async def export_csv(self, caller: Caller, name: str) -> str:
        views = await self.list_users(caller, name)
        lines = ["phone,status,declared_on,enrolled_on,devices"]
        for view in views:
            shown = view.as_json()
            lines.append(f"{shown['phone']},{shown['status']},{shown['declared_on']},"
                         f"{shown['enrolled_on'] or ''},{len(view.devices)}")
        return "\n".join(lines) + "\n"

    # -- personal data -----------------------------------------------------------------

    async def export_personal_data(self, caller: Caller, name: str,
                                   phone_text: str) -> dict[str, Any]:
        """Everything the relay holds about one user (GDPR art. 15); the read is audited."""
        organisation = await self.organisation(caller, name)
        view = await self._view(await self._user_of(organisation, phone_text))
        await self._audit(caller, organisation, "personal_data.read", view.user.phone)
        entries = await self._store.list_audit(organisation_id=organisation.organisation_id,
                                              subject=view.user.phone, limit=MAX_AUDIT_PAGE)
        return {"organisation": organisation.name, "user": view.as_json(),
                "audit": [audit_json(entry) for entry in entries]}

    async def erase(self, caller: Caller, name: str, phone_text: str) -> str:
        """Erase a user (GDPR art. 17): deleted, and its number replaced by a pseudonym in
        the audit log. Returns the pseudonym."""
        organisation = await self.organisation(caller, name)
        pseudonym = "erased-" + secrets.token_hex(PSEUDONYM_BYTES)
        user = await self._store.erase_user(organisation=name, phone=parse_phone(phone_text),
                                           pseudonym=pseudonym)
        self._closer.user_deleted(user.user_id)
        await self._audit(caller, organisation, "user.erase", pseudonym)
        return pseudonym

    # -- licence -----------------------------------------------------------------------

    async def licence(self, caller: Caller, name: str) -> tuple[Licence, list[SeatReduction]]:
        await self.organisation(caller, name)
        await self._store.apply_due_seat_reductions(today=self.today())
        return await self._store.get_licence(name), await self._store.list_seat_reductions(name)

    async def request_reduction(self, caller: Caller, name: str, seats: int) -> SeatReduction:
        """Raises InvalidRequest, ReductionBelowDeclared, Forbidden, NotFound."""
        organisation = await self.organisation(caller, name)
        licence = await self._store.get_licence(name)
        if not 0 <= seats < licence.seats:
            raise InvalidRequest(f"a reduction asks for fewer than the {licence.seats} seats "
                                 "of the licence")
        effective_on = reduction_effective_on(offer=licence.offer, requested_on=self.today(),
                                              contract_start=licence.period_start)
        reduction = await self._store.request_seat_reduction(
            organisation=name, seats=seats, effective_on=effective_on, now=self._now_ms())
        await self._audit(caller, organisation, "licence.reduce",
                          f"{seats} seats from {effective_on.isoformat()}")
        return reduction

    async def add_seats(self, caller: Caller, name: str, added: int) -> Licence:
        """Operators only: additions are immediate."""
        organisation = await self._operator_organisation(caller, name)
        if not 1 <= added <= 1_000_000:
            raise InvalidRequest("add between 1 and 1000000 seats")
        licence = await self._store.add_seats(organisation=name, added=added)
        await self._audit(caller, organisation, "licence.add", f"{added} seats")
        return licence

    async def set_licence_terms(self, caller: Caller, name: str, *, offer: LicenceOffer,
                                contract_start: datetime.date) -> Licence:
        """Operators: the offer and the contract start (the commitment periods count from
        it). Audited as ``licence.terms``, as on creation. Raises InvalidRequest (the start
        is out of range), Forbidden, NotFound."""
        organisation = await self._operator_organisation(caller, name)
        check_contract_start(contract_start, today=self.today())
        licence = await self._store.set_licence_terms(organisation=name, offer=offer,
                                                      period_start=contract_start)
        await self._audit(caller, organisation, "licence.terms",
                          f"{licence.seats} seats, {offer.value} from "
                          f"{contract_start.isoformat()}")
        return licence

    async def seat_use(self, caller: Caller, name: str) -> tuple[int, int]:
        """(declared, enrolled): the users holding a seat, and those with a device."""
        await self.organisation(caller, name)
        users = await self._store.list_users(name)
        return len(users), sum(user.state is UserState.ENROLLED for user in users)

    # -- audit -------------------------------------------------------------------------

    async def audit(self, caller: Caller, name: str, *, action: str | None = None,
                    subject: str | None = None, before_entry_id: int | None = None,
                    limit: int = 100) -> list[AuditEntry]:
        organisation = await self.organisation(caller, name)
        if action is not None and len(action) > MAX_ACTION_CHARS:
            raise InvalidRequest("the action filter is too long")
        if subject is not None and subject.startswith("+"):
            subject = parse_phone(subject)
        if not 1 <= limit <= MAX_AUDIT_PAGE:
            raise InvalidRequest(f"limit is between 1 and {MAX_AUDIT_PAGE}")
        return await self._store.list_audit(
            organisation_id=organisation.organisation_id, action=action, subject=subject,
            before_entry_id=before_entry_id, limit=limit)

    # -- lifecycle (operators) ------------------------------------------------------------

    async def _operator_organisation(self, caller: Caller, name: str) -> Organisation:
        self._require_operator(caller)
        return await self.organisation(caller, name)

    async def set_state(self, caller: Caller, name: str, state: OrganisationState) -> None:
        """Suspend (connections closed, data kept), resume, or terminate (every user
        removed and disconnected, audit entries pseudonymised as for erasure)."""
        organisation = await self._operator_organisation(caller, name)
        if state is OrganisationState.TERMINATED:
            users = await self._store.terminate_organisation(name)
            for user in users:
                self._closer.user_deleted(user.user_id)
        elif state is OrganisationState.SUSPENDED:
            for user in await self._store.suspend_organisation(name):
                self._closer.organisation_suspended(user.user_id)
        else:
            await self._store.set_organisation_state(name=name, state=state)
        await self._audit(caller, organisation, f"organisation.{state.value}", name)

    async def cross_organisation(self, caller: Caller, name: str) -> bool:
        """Whether the organisation's users may reach other organisations' users."""
        organisation = await self.organisation(caller, name)
        return await self._store.cross_organisation_allowed(organisation.organisation_id)

    async def set_cross_organisation(self, caller: Caller, name: str, allowed: bool) -> None:
        organisation = await self._operator_organisation(caller, name)
        await self._store.set_cross_organisation_allowed(organisation=name, allowed=allowed)
        await self._audit(caller, organisation, "policy.cross_organisation",
                          "allowed" if allowed else "refused")

    @staticmethod
    def _require_active(organisation: Organisation) -> None:
        if organisation.state is not OrganisationState.ACTIVE:
            raise OrganisationInactive(organisation.state)



def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {"id": entry.entry_id, "actor": entry.actor, "action": entry.action,
            "subject": entry.subject, "address": entry.address,
            "at": datetime.datetime.fromtimestamp(entry.at / 1000, datetime.UTC)
            .isoformat(timespec="seconds")}

