"""Storage interfaces: the narrow contract every backend implements.

Each method states its atomicity rule. Backends never read the clock or the
random source: callers pass ``now`` (milliseconds since the Unix epoch, UTC)
and any random material in. Phone numbers are E.164 strings already validated
by the caller; ``phone_key`` values are keyed hashes of phone numbers (see
``enrolment.codes``), so that numbers which were never declared are not kept
in clear.

Backends must pass ``tests/storage_conformance.py``. The values and errors named here are
defined in ``storage.records``, ``storage.prekey_records`` and ``storage.admin_records``.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Protocol, TypeVar

from storage.admin_records import (
    Account,
    AccountRole,
    AdminSession,
    ApiToken,
    AuditEntry,
    Licence,
    LicenceOffer,
    SeatReduction,
)
from storage.prekey_records import ClaimedBundle, PrekeyCounts, PrekeyUpload

# The contract's values and errors live in storage.records (which imports nothing, so that
# storage.prekey_records can build on them); they are re-exported here with the interface.
from storage.records import (
    AlreadyExists,
    Device,
    Envelope,
    NewSend,
    NotFound,
    Organisation,
    OrganisationState,
    Principal,
    RegistrationRefusal,
    RegistrationRefused,
    SeatLimitReached,
    SendOutcome,
    SendStatus,
    StoreError,
    User,
    UserState,
)

__all__ = [
    "AlreadyExists",
    "Device",
    "Envelope",
    "NewSend",
    "NotFound",
    "Organisation",
    "OrganisationState",
    "PendingResult",
    "Principal",
    "RegistrationRefusal",
    "RegistrationRefused",
    "SeatLimitReached",
    "SendOutcome",
    "SendStatus",
    "Store",
    "StoreError",
    "User",
    "UserState",
]

T_co = TypeVar("T_co", covariant=True)


class PendingResult(Protocol[T_co]):
    """A submitted write whose commit can be awaited."""

    async def wait(self) -> T_co:
        """Wait for the commit and return its result (or raise its error)."""
        ...

    @property
    def done(self) -> bool:
        """Whether the commit (or its failure) is known; ``result()`` may then be called."""
        ...

    def result(self) -> T_co:
        """The result of a write that is ``done`` (or raise its error), without waiting.

        Lets a consumer take a whole committed batch in one go instead of
        yielding to the scheduler once per write.

        Raises:
            RuntimeError: the write is not done yet.
        """
        ...


class Store(Protocol):
    """The relay's whole persistent state. All methods are safe to call concurrently."""

    # -- lifecycle -----------------------------------------------------------

    @property
    def commit_count(self) -> int:
        """Write transactions committed since opening; several writes may share one
        (group commit), which is what lets tests and operators see it working."""
        ...

    async def close(self) -> None:
        """Finish writes already submitted, then release every resource."""
        ...

    async def get_or_create_secret(self, name: str, candidate: bytes) -> bytes:
        """Return the secret stored under ``name``; store ``candidate`` first if none is.

        Atomic: concurrent callers all receive the same value.
        """
        ...

    # -- organisations and users ---------------------------------------------

    async def create_organisation(self, *, name: str, seats: int, now: int) -> Organisation:
        """Create an active organisation. Raises AlreadyExists if the name is taken."""
        ...

    async def get_organisation(self, name: str) -> Organisation | None:
        ...

    async def set_organisation_state(self, *, name: str,
                                     state: OrganisationState) -> Organisation:
        """Suspend, reactivate or terminate an organisation. Raises NotFound.

        Changes nothing else: queued envelopes and devices are kept (the relay
        refuses service to an inactive organisation's users).
        """
        ...

    async def declare_user(self, *, organisation: str, phone: str, user_id: str,
                           now: int) -> User:
        """Declare ``phone`` in ``organisation`` under the new ``user_id``.

        Atomic: the seat check and the insert happen in one transaction, so
        concurrent declarations never exceed the licence.
        Raises NotFound (organisation), AlreadyExists (phone declared anywhere),
        SeatLimitReached.
        """
        ...

    async def list_users(self, organisation: str) -> list[User]:
        """Users of the organisation, ordered by phone. Raises NotFound."""
        ...

    async def delete_user(self, *, organisation: str, phone: str) -> User:
        """Delete the user with its devices, queued envelopes and pending code.

        Atomic. Returns the deleted user so the caller can close its connections.
        Raises NotFound.
        """
        ...

    async def find_user_by_phone(self, phone: str) -> User | None:
        ...

    async def list_devices(self, user_id: str) -> list[Device]:
        """Current devices of the user, by device id."""
        ...

    async def load_principal(self, user_id: str, device_id: int) -> Principal | None:
        """The current device with its user and organisation, or None if any is gone."""
        ...

    # -- SMS verification ----------------------------------------------------

    async def record_verification_code(self, *, phone_key: bytes, code_hash: bytes, now: int,
                                       expires_at: int, window_ms: int,
                                       max_sends: int) -> bool:
        """Record one code sent to ``phone_key``, unless the sending limit is reached.

        Atomic: if fewer than ``max_sends`` codes were recorded for the key in
        ``(now - window_ms, now]``, record this send and make ``code_hash`` the
        key's only pending code (its attempt count starts at 0); return True.
        Otherwise change nothing and return False.
        """
        ...

    async def take_verification_attempt(self, *, phone_key: bytes, now: int,
                                        max_attempts: int) -> bytes | None:
        """Count one check of the pending code and return its hash.

        Atomic: if the key has a pending code with ``expires_at > now`` and fewer
        than ``max_attempts`` attempts, increment its attempts and return its
        hash; otherwise change nothing and return None.
        """
        ...

    async def register_device(self, *, phone: str, phone_key: bytes, code_hash: bytes,
                              identity_key: bytes, now: int, max_devices: int) -> Device:
        """Consume the pending code and register a new device for the user of ``phone``.

        Atomic and single-use: the pending code of ``phone_key`` is deleted only
        if it still equals ``code_hash``; in the same transaction the device is
        created (next unused device id of the user) and the user becomes
        ENROLLED. Raises RegistrationRefused (changing nothing) otherwise.
        """
        ...

    # -- envelopes -------------------------------------------------------------

    def submit_send(self, send: NewSend) -> PendingResult[SendOutcome]:
        """Queue a send for commit; await ``wait()`` for its outcome.

        Submission is synchronous, so sends submitted in a given order are
        committed in that order (envelope ids increase accordingly). The device
        set check, the queue-depth check, the idempotency check and the inserts
        happen in one transaction: either every payload is committed or none.
        A send whose (sender user, sender device, client message id) was
        committed before returns DUPLICATE and inserts nothing.
        """
        ...

    async def fetch_queue(self, *, user_id: str, device_id: int, after_envelope_id: int,
                          limit: int, now: int) -> list[Envelope]:
        """Unexpired envelopes for the device with id > after_envelope_id, by id."""
        ...

    async def acknowledge(self, *, user_id: str, device_id: int,
                          envelope_ids: Sequence[int]) -> int:
        """Delete those envelopes if (and only if) they belong to the device.

        Returns how many were deleted; unknown ids are ignored.
        """
        ...

    def submit_acknowledge(self, *, user_id: str, device_id: int,
                           envelope_ids: Sequence[int]) -> PendingResult[int]:
        """``acknowledge``, submitted synchronously: committed in submission order
        with the sends around it (in the same group commit), so a device's
        acknowledgements cost no task and no wait of their own."""
        ...

    async def queue_depth(self, *, user_id: str, device_id: int) -> int:
        ...

    async def expire(self, *, now: int, limit: int) -> int:
        """Delete up to ``limit`` envelopes, and up to ``limit`` idempotency records,
        with expires_at <= now (a record expires with the send it remembers).

        Keeps every device's queue depth exact. Returns the envelopes deleted.
        Also forgets up to ``limit`` rate-limit buckets idle long enough to be full.
        """
        ...

    # -- rate limits (storage.rate_limits) ---------------------------------------

    async def take_tokens(self, *, key: str, cost: int, capacity: int, period_ms: int,
                          now: int) -> bool:
        """Take ``cost`` tokens from the bucket ``key`` (``capacity`` tokens, refilled
        evenly over ``period_ms``; a new bucket is full) if it holds that many.

        Returns whether they were taken. Concurrent takers never take more than the
        bucket holds, and every process using the store shares the bucket (a cluster's
        nodes grant one allowance between them, not one each).
        """
        ...

    # -- prekeys (value types in storage.prekey_records) -------------------------

    async def store_prekeys(self, *, user_id: str, device_id: int, upload: PrekeyUpload,
                            now: int, max_pool_size: int) -> PrekeyCounts:
        """Store one device's upload, whole or not at all; return the counts after it.

        The caller has verified every signature against the device's identity key.
        Atomic: the signed and last-resort prekeys given replace the device's; the
        one-time keys join their pools (a key id already pooled is overwritten, so a
        retried upload adds nothing twice). If a pool would then hold more than
        ``max_pool_size`` keys, raises PrekeyPoolFull and changes nothing. Raises
        NotFound (changing nothing) if the device does not exist (any more).
        """
        ...

    async def prekey_counts(self, *, user_id: str, device_id: int) -> PrekeyCounts:
        """What the store holds for the device. Raises NotFound."""
        ...

    async def claim_bundles(self, *, user_id: str,
                            device_ids: Sequence[int] | None) -> list[ClaimedBundle]:
        """Claim a bundle from each current device of the user (only those of
        ``device_ids`` if given; unknown ids are ignored), by device id.

        A one-time prekey is handed out at most once, ever: in one transaction, each
        device that has both a signed prekey and a last-resort KEM prekey gives up its
        oldest one-time X25519 prekey and its oldest one-time KEM prekey, if any; they
        are deleted as they are returned, so concurrent callers, on any node, never
        receive the same key. When the KEM pool is empty, the last-resort KEM prekey is
        served (and kept). A device lacking a signed prekey or a last-resort prekey is
        returned with what it has and nothing is claimed from it. Deleted devices are
        absent (their prekeys went with them). A user without devices gives [].
        """
        ...

    # -- administration (value types in storage.admin_records) -------------------
    # Secrets reach the store only hashed: session and token hashes are SHA-256 of random
    # values the caller drew; password hashes are Argon2id. Emails are lowercased by callers.

    async def list_organisations(self) -> list[Organisation]:
        """Every organisation, by name."""
        ...

    async def create_account(self, *, email: str, role: AccountRole, organisation: str | None,
                             password_hash: str, now: int) -> Account:
        """Create an operator (``organisation`` None) or an organisation administrator.

        Raises AlreadyExists (email taken), NotFound (organisation), ValueError (a role that
        does not fit ``organisation``); changes nothing then.
        """
        ...

    async def find_account(self, email: str) -> Account | None:
        ...

    async def set_account_password(self, *, account_id: int, password_hash: str,
                                   keep_session_hash: bytes | None) -> None:
        """Replace the password hash and, in the same transaction, end every session of the
        account except ``keep_session_hash`` (the one changing it). Raises NotFound."""
        ...

    async def create_admin_session(self, *, session_hash: bytes, account_id: int,
                                   csrf_token: str, now: int, expires_at: int) -> None:
        """Start a console session (and forget sessions expired by ``now``). Raises NotFound."""
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

    async def append_audit(self, *, organisation_id: int, actor: str, action: str,
                           subject: str, address: str, now: int) -> AuditEntry:
        """Append one entry. The log is append-only: no method deletes or edits an entry,
        except ``erase_user`` replacing an erased number by its pseudonym."""
        ...

    async def list_audit(self, *, organisation_id: int, action: str | None = None,
                         subject: str | None = None, before_entry_id: int | None = None,
                         limit: int) -> list[AuditEntry]:
        """The organisation's entries, newest first, filtered by exact action and subject
        when given, older than ``before_entry_id`` when given (paging). Raises ValueError
        unless 1 <= limit <= storage.admin_sql.MAX_AUDIT_PAGE."""
        ...

    async def erase_user(self, *, organisation: str, phone: str, pseudonym: str) -> User:
        """Delete the user as ``delete_user`` does and, in the same transaction, replace
        ``phone`` by ``pseudonym`` in the subject of the organisation's audit entries.
        Raises NotFound."""
        ...

    async def revoke_device(self, *, organisation: str, phone: str, device_id: int) -> Device:
        """Delete one device of the organisation's user of ``phone`` (with its queue and
        prekeys); its id is never reused. Returns it so the caller can close its connection.
        Raises NotFound (also for a device of another organisation's user)."""
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
        Returns the deleted users so the caller can close their connections. Raises NotFound."""
        ...

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

    async def cross_organisation_allowed(self, organisation_id: int) -> bool:
        """Whether its users may communicate with other organisations (default True)."""
        ...

    async def set_cross_organisation_allowed(self, *, organisation: str,
                                             allowed: bool) -> None:
        """Raises NotFound."""
        ...
