"""The values of wake-up pushes as the store keeps them: targets, and wake-ups due or done.

A wake-up names only its recipient device: never a sender, an envelope or a count, so that
the table says no more than "this device has something waiting".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["ClaimedWakeup", "StoredPushTarget", "WakeupClaims", "WakeupResult", "WakeupsScheduled"]


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredPushTarget:
    """A device's registered push target."""

    provider: str
    """The provider's name (``webpush``, ``fcm``, ``apns``, ``outbox``)."""
    token: str
    """The endpoint URL or the platform's device token."""
    p256dh: bytes | None = None
    """Web Push only: the subscription's public key."""
    auth: bytes | None = None
    """Web Push only: the subscription's authentication secret."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ClaimedWakeup:
    """A due wake-up this node claimed: it alone sends it until ``lease_until``."""

    user_id: str
    device_id: int
    target: StoredPushTarget
    urgent: bool
    """At least one envelope it announces was sent with SEND's ``urgent`` flag."""
    attempts: int
    """Sends tried before this one (0 for the first)."""
    committed_at: int
    """When the first envelope it announces was committed (ms since the epoch)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WakeupClaims:
    """What one claim took, and when the next wake-up not taken falls due."""

    claimed: tuple[ClaimedWakeup, ...]
    next_due_at: int | None
    """The earliest ``next attempt`` of the wake-ups still pending (claimed ones included,
    at their lease's end), or None when none is."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WakeupsScheduled:
    """What scheduling wake-ups for committed envelopes did, by provider."""

    scheduled: dict[str, int]
    """Wake-ups made due now, by provider."""
    coalesced: dict[str, int]
    """Devices left to a wake-up already pending or pushed within the interval."""


class WakeupResult(enum.Enum):
    """How a claimed wake-up ended, as ``finish_wakeup`` records it."""

    PUSHED = "pushed"
    """Sent (or given up): no further push until the interval passed or the device
    connected."""
    RETRY = "retry"
    """Pending again, due at ``retry_at``."""
    GONE = "gone"
    """The target no longer exists at its provider: the target goes, and the wake-up."""
