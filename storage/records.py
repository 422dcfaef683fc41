"""The values and errors of the ``storage.base.Store`` contract: pure data, no other import.

Every other storage module builds on these (``storage.base`` re-exports them with the
interface, so callers may import the whole contract from there). Times are milliseconds since
the Unix epoch, UTC, as everywhere in the store.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "AlreadyExists",
    "BlobInfo",
    "BlobOffsetMismatch",
    "BlobPastSize",
    "BlobQuotaExceeded",
    "Device",
    "Envelope",
    "GuessBudgetSpent",
    "NewSend",
    "NotFound",
    "Organisation",
    "OrganisationState",
    "Principal",
    "RegistrationRefusal",
    "RegistrationRefused",
    "SeatLimitReached",
    "SendOutcome",
    "SendStatus",
    "StoreError",
    "User",
    "UserState",
]


class StoreError(Exception):
    """Base class of the errors a store raises on purpose."""


class AlreadyExists(StoreError):
    """The organisation name or phone number is already taken."""


class NotFound(StoreError):
    """The organisation, user or device does not exist."""


class SeatLimitReached(StoreError):
    """Declaring one more user would exceed the organisation's seat licence."""

    def __init__(self, *, seats: int) -> None:
        super().__init__(f"all {seats} seats of the licence are in use")
        self.seats = seats


class BlobQuotaExceeded(StoreError):
    """Creating the blob would take its organisation's live blobs past their quota; nothing
    was stored."""

    def __init__(self, *, quota_bytes: int) -> None:
        super().__init__(
            f"the organisation's files would exceed their quota of {quota_bytes} bytes")
        self.quota_bytes = quota_bytes


class BlobOffsetMismatch(StoreError):
    """An append did not start where the blob's durable bytes end; nothing was stored.

    ``received`` is what the store holds durably: the offset to resume from."""

    def __init__(self, received: int) -> None:
        super().__init__(f"the blob holds {received} bytes: append from there")
        self.received = received


class BlobPastSize(StoreError):
    """An append would end past the blob's declared ``size``; nothing was stored."""

    def __init__(self, *, size: int) -> None:
        super().__init__(f"the blob was declared with {size} bytes")
        self.size = size


class RegistrationRefusal(enum.Enum):
    """Why ``Store.register_device`` refused."""

    CODE_CONSUMED = "code_consumed"  # the pending code was used or replaced meanwhile
    NOT_DECLARED = "not_declared"  # the number is not (or no longer) declared
    ORGANISATION_INACTIVE = "organisation_inactive"  # suspended or terminated
    SAME_ACCOUNT_KEY = "same_account_key"  # the user already has this account key
    TOO_MANY_DEVICES = "too_many_devices"  # the user already has the maximum


class RegistrationRefused(StoreError):
    """``register_device`` changed nothing, for ``reason``."""

    def __init__(self, reason: RegistrationRefusal) -> None:
        super().__init__(reason.value)
        self.reason = reason


class GuessBudgetSpent(StoreError):
    """``take_verification_attempt`` changed nothing: the number's checks are used up until
    ``resume_at`` (ms since the epoch)."""

    def __init__(self, *, resume_at: int) -> None:
        super().__init__(f"no checks left for this number until {resume_at}")
        self.resume_at = resume_at


class OrganisationState(enum.Enum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    TERMINATED = "terminated"


class UserState(enum.Enum):
    DECLARED = "declared"  # declared by an administrator, no device yet
    ENROLLED = "enrolled"  # at least one device registered


@dataclass(frozen=True, kw_only=True, slots=True)
class Organisation:
    organisation_id: int
    """Store-assigned identifier."""
    name: str
    """Unique short name used by operators (``acme``)."""
    seats: int
    """Number of users the licence allows."""
    state: OrganisationState
    """Whether its users may communicate."""
    created_at: int
    """Milliseconds since the epoch."""


@dataclass(frozen=True, kw_only=True, slots=True)
class User:
    user_id: str
    """Opaque identifier (32 lowercase hex digits), never reused."""
    organisation_id: int
    """Organisation that declared the user."""
    phone: str
    """E.164 phone number."""
    state: UserState
    """Declared or enrolled."""
    declared_at: int
    """Milliseconds since the epoch."""
    enrolled_at: int | None
    """When the first device registered, or None."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Device:
    user_id: str
    """Owner."""
    device_id: int
    """Small positive integer, unique per user, never reused for that user."""
    identity_key: bytes
    """Ed25519 public key (32 bytes) the device authenticates with."""
    registered_at: int
    """Milliseconds since the epoch."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Principal:
    """Everything the relay checks when a device authenticates."""

    user: User
    device: Device
    organisation: Organisation


@dataclass(frozen=True, kw_only=True, slots=True)
class Envelope:
    envelope_id: int
    """Store-assigned, strictly increasing in commit order across the store."""
    recipient_user_id: str
    recipient_device_id: int
    sender_user_id: str
    sender_device_id: int
    client_message_id: int
    """Sender-chosen idempotency key (0 <= id < 2**63)."""
    ciphertext: bytes
    """Opaque sealed payload for this recipient device."""
    accepted_at: int
    """Milliseconds since the epoch, when the relay committed it."""
    expires_at: int
    """Milliseconds since the epoch; the sweeper deletes it after that."""
    shared: bytes | None = None
    """A multi-recipient send's shared ciphertext (stored once for all its envelopes; then
    ``ciphertext`` is this device's key material); None for an ordinary send's envelope."""


@dataclass(frozen=True, kw_only=True, slots=True)
class NewSend:
    """One send: the same logical message for every device of one recipient user."""

    sender_user_id: str
    sender_device_id: int
    recipient_user_id: str
    client_message_id: int
    payloads: Mapping[int, bytes]
    """Recipient device id -> ciphertext for that device."""
    accepted_at: int
    expires_at: int
    max_queue_depth: int
    """Refuse the whole send if any addressed device already holds this many envelopes."""
    exclude_device_id: int | None = None
    """A device that need not be addressed (the sender's own, on a send to self)."""
    max_sender_share: int | None = None
    """Refuse the whole send (SENDER_SHARE_FULL) if an addressed device's queue already holds
    this many envelopes from the sender's user (any of its devices), so that one sender cannot
    fill a queue its recipient's other contacts need. Sends to one's own user are exempt; None
    sets no share."""
    queue_share_key: str | None = None
    """What ``max_sender_share`` counts in place of the sender user, kept in the envelopes'
    ``share_key`` column: a sealed send's share is keyed by a value derived from the delivery
    token it showed, never by a user (relay/sealed.py). None: the sender user."""
    sender_organisation_id: int | None = None
    """The sender's organisation: the send is refused as ORGANISATION_SUSPENDED if it is not
    active, and as UNKNOWN_RECIPIENT unless the recipient belongs to it or both organisations
    allow cross-organisation traffic (checked in the send's transaction, so on every node).
    None skips both checks."""


class SendStatus(enum.Enum):
    ACCEPTED = "accepted"  # committed now
    DUPLICATE = "duplicate"  # the same (sender device, client message id) was committed before
    UNKNOWN_RECIPIENT = "unknown_recipient"  # no such user, or it has no device
    MISMATCHED_DEVICES = "mismatched_devices"  # payloads do not address exactly the devices
    QUEUE_FULL = "queue_full"  # an addressed device's queue is at max_queue_depth
    SENDER_SHARE_FULL = "sender_share_full"  # the sender holds its share of a device's queue
    ORGANISATION_SUSPENDED = "organisation_suspended"  # the sender's organisation is inactive


@dataclass(frozen=True, kw_only=True, slots=True)
class SendOutcome:
    status: SendStatus
    envelopes: tuple[Envelope, ...] = ()
    """The committed envelopes (ACCEPTED only), in envelope id order."""
    missing_devices: tuple[int, ...] = ()
    """MISMATCHED_DEVICES: current devices with no payload."""
    extra_devices: tuple[int, ...] = ()
    """MISMATCHED_DEVICES: payloads for devices that do not exist (or are revoked)."""
    full_devices: tuple[int, ...] = ()
    """QUEUE_FULL: devices whose queue is full; SENDER_SHARE_FULL: devices whose queue holds
    the sender's share."""


@dataclass(frozen=True, kw_only=True, slots=True)
class BlobInfo:
    """What the store knows of one blob (an encrypted file's ciphertext); never its bytes."""

    blob_id: bytes
    """32 random bytes: whoever holds them may download the complete blob."""
    organisation_id: int
    """The uploader's organisation, charged for the blob's size."""
    user_id: str
    """The uploader."""
    device_id: int
    """The device that created the blob: the only one that may upload its bytes."""
    size: int
    """Declared size in bytes, fixed at creation."""
    received: int
    """Bytes held durably, from offset 0: where an upload resumes."""
    created_ms: int
    """Milliseconds since the epoch."""
    expires_ms: int
    """Milliseconds since the epoch; gone for every caller from then on, swept after."""
    upload_deadline_ms: int
    """Milliseconds since the epoch (at most ``expires_ms``); gone then unless complete."""

    @property
    def complete(self) -> bool:
        """Whether every declared byte is held (only then may it be downloaded)."""
        return self.received == self.size

    def live(self, now_ms: int) -> bool:
        """Whether it has not expired at ``now_ms``."""
        return now_ms < self.expires_ms and (self.complete or now_ms < self.upload_deadline_ms)
