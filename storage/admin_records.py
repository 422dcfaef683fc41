"""Value types of organisation administration: accounts, sessions, API tokens, audit
entries and licences. Pure data, shared by ``storage.base`` and every backend.

Secrets never appear here in clear: sessions and API tokens are known by the SHA-256 of
their random value, passwords by their Argon2id hash.
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass

__all__ = [
    "RELAY_WIDE_AUDIT",
    "Account",
    "AccountRole",
    "AdminSession",
    "ApiToken",
    "AuditEntry",
    "Licence",
    "LicenceOffer",
    "LoginAttempt",
    "PasswordState",
    "ReductionBelowDeclared",
    "SeatReduction",
]


class AccountRole(enum.Enum):
    OPERATOR = "operator"  # runs the relay: every organisation
    ORGANISATION_ADMIN = "organisation_admin"  # one organisation


class PasswordState(enum.Enum):
    """Whether an account's password may open sessions, and what those sessions may do."""

    CHOSEN = "chosen"
    """Chosen by the account holder: logs in as often as needed."""
    ONE_TIME = "one_time"
    """Printed once by the operator CLI and not used yet: opens one session, which may do
    nothing but change the password."""
    ONE_TIME_USED = "one_time_used"
    """A one-time password that opened its session: refused at login; the session it opened
    may still change it (and nothing else)."""


RELAY_WIDE_AUDIT = 0
"""The ``organisation_id`` of audit entries that concern no organisation (operator accounts):
no organisation has it (ids start at 1)."""


class LicenceOffer(enum.Enum):
    MONTHLY = "monthly"  # month to month, without commitment
    ANNUAL_COMMITMENT = "annual_commitment"  # 12-month commitment periods


@dataclass(frozen=True, kw_only=True, slots=True)
class Account:
    account_id: int
    """Store-assigned identifier."""
    email: str
    """Login name, lowercase."""
    role: AccountRole
    organisation_id: int | None
    """The administered organisation; None for an operator."""
    password_hash: str
    """Argon2id hash in PHC string form."""
    created_at: int
    """Milliseconds since the epoch."""
    password_state: PasswordState

    @property
    def must_change_password(self) -> bool:
        """Whether its sessions may do nothing but change the password (a one-time one)."""
        return self.password_state is not PasswordState.CHOSEN


@dataclass(frozen=True, kw_only=True, slots=True)
class AdminSession:
    session_hash: bytes
    """SHA-256 of the cookie value (the value itself is never stored)."""
    account: Account
    csrf_token: str
    """Random value every form of this session must echo back."""
    expires_at: int
    """Milliseconds since the epoch."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiToken:
    token_id: int
    """Store-assigned identifier, shown to administrators to revoke it."""
    organisation_id: int
    """The only organisation the token may read or change."""
    created_at: int
    revoked_at: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditEntry:
    entry_id: int
    """Store-assigned, strictly increasing."""
    organisation_id: int
    actor: str
    """Who: ``account:<email>``, ``token:<id>`` or ``cli``."""
    action: str
    """What, as a short verb phrase (``user.declare``, ``personal_data.read``)."""
    subject: str
    """On what: a phone number, or its pseudonym once the user is erased."""
    address: str
    """From which network address."""
    at: int
    """When, in milliseconds since the epoch."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LoginAttempt:
    """The answer to one password guess asked of the guess budget
    (``AccountStore.take_login_attempt``)."""

    granted: bool
    """Counted on every key: the password may be checked."""
    retry_after_ms: int
    """When refused, how long until the window of every refusing key has ended; 0 when
    granted."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Licence:
    organisation_id: int
    seats: int
    """Seats in force today (pending reductions not applied)."""
    offer: LicenceOffer
    period_start: datetime.date
    """Start of the contract; commitment periods are 12 months from it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SeatReduction:
    reduction_id: int
    organisation_id: int
    seats: int
    """Seat count once the reduction takes effect."""
    requested_at: int
    """Milliseconds since the epoch."""
    effective_on: datetime.date
    """The first day the reduced count applies."""


class ReductionBelowDeclared(Exception):
    """A seat reduction below the number of declared users; nothing changed."""

    def __init__(self, *, seats: int, declared: int) -> None:
        super().__init__(
            f"{declared} users are declared: delete {declared - seats} of them "
            f"before reducing the licence to {seats} seats")
        self.seats = seats
        self.declared = declared
