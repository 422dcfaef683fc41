"""``AdminStore``: organisations, declared users, licences and policy, with the console's
``AccountStore`` (accounts, sessions, API tokens) and the ``AuditLog``.

The store acts for whoever calls it: deciding who may act on which organisation is the
administration service's rule (``enrolment.web.service.AdminService``), checked before every
call. Secrets reach the store only hashed: session and token hashes are SHA-256 of random
values the caller drew, password hashes are Argon2id. Emails are lowercased by callers. The
value types are in ``storage.admin_records``.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Protocol

from storage.admin_records import (
    Account,
    AccountRole,
    AdminSession,
    ApiToken,
    AuditEntry,
    Licence,
    LicenceOffer,
    LoginAttempt,
    SeatReduction,
)
from storage.records import Device, Organisation, OrganisationState, User

__all__ = ["AccountStore", "AdminStore", "AuditLog"]


class AccountStore(Protocol):
    """Console accounts, their sessions, and organisations' API tokens."""

    async def create_account(self, *, email: str, role: AccountRole, organisation: str | None,
                             password_hash: str, password_is_one_time: bool,
                             now: int) -> Account:
        """Create an operator (``organisation`` None) or an organisation administrator, its
        password ``PasswordState.ONE_TIME`` if ``password_is_one_time`` (else CHOSEN).

        Raises AlreadyExists (email taken), NotFound (organisation), ValueError (a role that
        does not fit ``organisation``); changes nothing then.
        """
        ...

    async def find_account(self, email: str) -> Account | None:
        """The account with this (lowercased) email, or None. The caller verifies the
        password against ``Account.password_hash``."""
        ...

    async def set_account_password(self, *, account_id: int, password_hash: str,
                                   keep_session_hash: bytes | None,
                                   password_is_one_time: bool = False) -> None:
        """Replace the password hash, CHOSEN by the account holder (or a ONE_TIME one an
        operator issues) and, in the same transaction, end every session of the account
        except ``keep_session_hash`` (the one changing it). Raises NotFound."""
        ...

    async def take_login_attempt(self, *, keys: Sequence[bytes], allowed: int,
                                 window_ms: int, now: int) -> LoginAttempt:
        """Count one password guess on every key of ``keys`` (SHA-256 of an email, of a
        network address), before the password is checked, if each has counted fewer than
        ``allowed`` in its current window; otherwise count none and say how long until
        every refusing key's window has ended.

        A key's window opens at the first guess counted once the previous one has ended, and
        lasts ``window_ms``. Atomic: concurrent takers (on any node) are granted at most
        ``allowed`` guesses per key and window, whatever their number. Keys whose window has
        ended are forgotten a few at a time by the takes themselves. Raises ValueError
        (no keys, ``allowed`` or ``window_ms`` below 1).
        """
        ...

    async def refund_login_attempt(self, *, keys: Sequence[bytes], now: int) -> None:
        """Give back one guess counted by ``take_login_attempt`` on every key whose window
        is still open (the password was right: only wrong ones use the budget)."""
        ...

    async def create_admin_session(self, *, session_hash: bytes, account_id: int,
                                   csrf_token: str, now: int, expires_at: int,
                                   spends_one_time_password: bool = False) -> bool:
        """Start a console session (and forget sessions expired by ``now``); True.

        With ``spends_one_time_password``, atomically also turn the account's ONE_TIME
        password into ONE_TIME_USED; if it is not ONE_TIME (a concurrent login spent it, or
        it was changed) return False and start nothing. Raises NotFound.
        """
        ...

    async def load_admin_session(self, *, session_hash: bytes,
                                 now: int) -> AdminSession | None:
        """The session with its account, or None if unknown or expired by ``now``."""
        ...

    async def delete_admin_session(self, session_hash: bytes) -> None:
        """Log out; an unknown hash is ignored."""
        ...

    async def create_api_token(self, *, organisation: str, token_hash: bytes,
                               now: int) -> ApiToken:
        """Record a token for that organisation only. Raises NotFound."""
        ...

    async def find_api_token(self, token_hash: bytes) -> ApiToken | None:
        """The token with this hash unless unknown or revoked."""
        ...

    async def list_api_tokens(self, organisation: str) -> list[ApiToken]:
        """Tokens of the organisation, revoked ones included, by id. Raises NotFound."""
        ...

    async def revoke_api_token(self, *, organisation: str, token_id: int,
                               now: int) -> ApiToken:
        """Revoke (idempotent; the first revocation time is kept). Raises NotFound, also for a
        token of another organisation."""
        ...


class AuditLog(Protocol):
    """Each organisation's append-only log of administrative actions and reads of
    personal data."""

    async def append_audit(self, *, organisation_id: int, actor: str, action: str,
                           subject: str, address: str, now: int) -> AuditEntry:
        """Append one entry. The log is append-only: no method deletes or edits an entry,
        except ``AdminStore.erase_user`` and ``AdminStore.terminate_organisation`` replacing
        erased numbers by pseudonyms."""
        ...

    async def list_audit(self, *, organisation_id: int, action: str | None = None,
                         subject: str | None = None, before_entry_id: int | None = None,
                         limit: int) -> list[AuditEntry]:
        """The organisation's entries (never another's), newest first, filtered by exact
        action and subject when given, older than ``before_entry_id`` when given (paging).
        Raises ValueError unless 1 <= limit <= storage.admin_sql.MAX_AUDIT_PAGE."""
        ...


class AdminStore(AccountStore, AuditLog, Protocol):
    """Organisations, their declared users, licences and policy; accounts and audit."""

    # -- organisations -----------------------------------------------------------------

    async def create_organisation(self, *, name: str, seats: int, now: int) -> Organisation:
        """Create an active organisation. Raises AlreadyExists if the name is taken."""
        ...

    async def list_organisations(self) -> list[Organisation]:
        """Every organisation, by name (for operators only: the caller checks)."""
        ...

    async def set_organisation_state(self, *, name: str,
                                     state: OrganisationState) -> Organisation:
        """Set the organisation's state and nothing else. Raises NotFound.

        Queued envelopes, devices and users are kept, and no live connection is closed:
        resuming uses it; to suspend or terminate, ``suspend_organisation`` and
        ``terminate_organisation`` also close (or remove) the users. The relay refuses
        service to an inactive organisation's users whichever way it became inactive.
        """
        ...

    async def suspend_organisation(self, name: str) -> list[User]:
        """Mark the organisation SUSPENDED, keeping users, devices and queues, and return its
        users so the caller can close their connections; in a cluster the other nodes are
        told to close them when this commits. Raises NotFound."""
        ...

    async def terminate_organisation(self, name: str) -> list[User]:
        """Atomically delete every user (devices, queues, prekeys with them), replace their
        numbers in the organisation's audit entries by pseudonyms
        (``storage.admin_sql.terminated_pseudonym``) and mark the organisation TERMINATED.
        Returns the deleted users so the caller can close their connections (other nodes
        are told on commit). Raises NotFound."""
        ...

    # -- declared users ------------------------------------------------------------------

    async def declare_user(self, *, organisation: str, phone: str, user_id: str,
                           now: int) -> User:
        """Declare ``phone`` in ``organisation`` under the new ``user_id``.

        Atomic: the seat check and the insert happen in one transaction, so
        concurrent declarations (on any node) never exceed the licence.
        Raises NotFound (organisation), AlreadyExists (phone declared anywhere),
        SeatLimitReached.
        """
        ...

    async def list_users(self, organisation: str) -> list[User]:
        """Users of the organisation, ordered by phone. Raises NotFound."""
        ...

    async def delete_user(self, *, organisation: str, phone: str) -> User:
        """Delete the user with its devices, queued envelopes and prekeys.

        A code sent to the number before can no longer register a device, even if the number
        is declared again (``EnrolmentStore.register_device``). Atomic. Returns the deleted
        user so the caller can close its connections (other nodes are told on commit).
        Raises NotFound, also for a user of another organisation.
        """
        ...

    async def erase_user(self, *, organisation: str, phone: str, pseudonym: str) -> User:
        """Delete the user as ``delete_user`` does and, in the same transaction, replace
        ``phone`` by ``pseudonym`` in the subject of the organisation's audit entries.
        Raises NotFound."""
        ...

    async def revoke_device(self, *, organisation: str, phone: str, device_id: int,
                            now: int) -> Device:
        """Delete one device of the organisation's user of ``phone`` (with its queue and
        prekeys), keeping a revocation notice (the device is told why, and a device list
        that still names its key cannot register it again); its id is never reused. Returns
        it so the caller can close its connection (other nodes are told on commit). Raises
        NotFound (also for a device of another organisation's user)."""
        ...

    # -- licence -------------------------------------------------------------------------

    async def get_licence(self, organisation: str) -> Licence:
        """Seats in force and contract terms (month to month from the organisation's
        creation day if none were set). Raises NotFound."""
        ...

    async def set_licence_terms(self, *, organisation: str, offer: LicenceOffer,
                                period_start: datetime.date) -> Licence:
        """Record the contract's offer and start. Raises NotFound."""
        ...

    async def add_seats(self, *, organisation: str, added: int) -> Licence:
        """Add ``added`` >= 1 seats at once (ValueError otherwise). Raises NotFound."""
        ...

    async def request_seat_reduction(self, *, organisation: str, seats: int,
                                     effective_on: datetime.date, now: int) -> SeatReduction:
        """Record a pending reduction to ``seats``, applied on ``effective_on``.

        Atomic against declarations: raises ReductionBelowDeclared if more than ``seats``
        users are declared, ValueError unless 0 <= seats < current seats, NotFound; changes
        nothing then.
        """
        ...

    async def list_seat_reductions(self, organisation: str) -> list[SeatReduction]:
        """Pending reductions, by effective date. Raises NotFound."""
        ...

    async def apply_due_seat_reductions(self, *, today: datetime.date) -> int:
        """Apply (and forget) every reduction effective on or before ``today``; when several
        of one organisation are due, the latest request wins. Returns how many were due."""
        ...

    # -- policy --------------------------------------------------------------------------

    async def set_cross_organisation_allowed(self, *, organisation: str,
                                             allowed: bool) -> None:
        """Allow or refuse the organisation's users to communicate with other organisations
        (read back by ``OrganisationPolicy.cross_organisation_allowed``; sends committed
        from then on follow it, on every node). Raises NotFound."""
        ...
