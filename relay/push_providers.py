"""The one interface every push provider implements, and what a send of a wake-up returns.

The wake-up scheduler (``relay/wakeups.py``) decides *when* a device is woken and calls the
provider named by the device's registered target; a provider only knows *how* to deliver one
opaque "wake" to one target. Providers: ``webpush``, ``fcm``, ``apns`` and ``outbox``
(development), each configured in ``RelaySettings``; ``build_providers`` makes the configured
ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

__all__ = ["PushOutcome", "PushProvider", "PushResult", "PushTarget"]


@dataclass(frozen=True, kw_only=True, slots=True)
class PushTarget:
    """A device's registered push target, as the store keeps it."""

    provider: str
    """``webpush``, ``fcm``, ``apns`` or ``outbox``."""
    token: str
    """The endpoint URL (Web Push) or the platform's device token (FCM, APNs, outbox)."""
    p256dh: bytes | None = None
    """Web Push only: the subscription's P-256 public key, 65 bytes uncompressed."""
    auth: bytes | None = None
    """Web Push only: the subscription's 16-byte authentication secret."""


class PushResult(Enum):
    """What the provider's service answered, as the scheduler acts on it."""

    SENT = "sent"
    """Accepted by the push service: the wake-up is done."""
    RETRY = "retry"
    """5xx, 429 or a network failure: try again later (after ``retry_after_s`` if given)."""
    GONE = "gone"
    """The target no longer exists (404/410, ``Unregistered``, ``BadDeviceToken``): delete it."""
    FAILED = "failed"
    """Refused for good for another reason (e.g. 400/403): give this wake-up up, keep the target."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PushOutcome:
    result: PushResult
    retry_after_s: float | None = None
    """The service's ``Retry-After``, in seconds, when it gave one."""
    detail: str = ""
    """A short reason for logs and metrics: never a token, endpoint or credential."""


class PushProvider(Protocol):
    """Delivers one opaque wake-up to one target; never raises for the service's answers."""

    @property
    def name(self) -> str:
        """The provider's name, as targets and metrics spell it."""
        ...

    def check_target(self, target: PushTarget) -> str | None:
        """Why this target is unacceptable (e.g. a Web Push endpoint host not allowed), or None.

        Called when a device registers its target, so that a bad one is refused with a clear
        error and never stored.
        """
        ...

    async def send(self, target: PushTarget, *, urgent: bool) -> PushOutcome:
        """Send one wake-up; ``urgent`` asks the platform for immediate, high-priority delivery.

        The payload is only an opaque wake marker: never a sender, size, count or content.
        Network failures and timeouts come back as ``PushResult.RETRY``.
        """
        ...
