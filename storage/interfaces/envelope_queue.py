"""``EnvelopeQueue``: sends, each device's queue, acknowledgements and expiry.

The relay's delivery promises rest on these rules: an envelope is durable before the sender
hears it was accepted (``submit_send``'s outcome comes only with the commit), it leaves the
store only when its device acknowledges it (or it expires), and a device reads its queue in
envelope id order, which is commit order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from storage.interfaces.pending import PendingResult
from storage.records import Envelope, NewSend, SendOutcome

__all__ = ["EnvelopeQueue"]


class EnvelopeQueue(Protocol):
    """Every device's queue of envelopes. All methods are safe to call concurrently."""

    def submit_send(self, send: NewSend) -> PendingResult[SendOutcome]:
        """Queue a send for commit; await ``wait()`` for its outcome.

        Submission is synchronous, so sends submitted in a given order are
        committed in that order (envelope ids increase accordingly). The device
        set check, the queue-depth check, the idempotency check and the inserts
        happen in one transaction: either every payload is committed or none.
        A send whose (sender user, sender device, client message id) was
        committed before returns DUPLICATE and inserts nothing. A sender whose
        organisation is inactive, or may not reach the recipient's organisation,
        is refused in the same transaction (``NewSend.sender_organisation_id``).
        So is a send to a device whose queue already holds the sender's share
        (``NewSend.max_sender_share``), counted exactly in that transaction:
        SENDER_SHARE_FULL names those devices in ``full_devices``, and
        acknowledgements and expiry free the share again.
        """
        ...

    async def fetch_queue(self, *, user_id: str, device_id: int, after_envelope_id: int,
                          limit: int, now: int) -> list[Envelope]:
        """Up to ``limit`` unexpired envelopes for the device with id > after_envelope_id,
        by id. Reads only: nothing leaves the queue until it is acknowledged."""
        ...

    async def acknowledge(self, *, user_id: str, device_id: int,
                          envelope_ids: Sequence[int]) -> int:
        """Delete those envelopes if (and only if) they belong to the device.

        Returns how many were deleted; unknown ids, and ids of another device's
        envelopes, are ignored (a device can never delete what it was not sent).
        """
        ...

    def submit_acknowledge(self, *, user_id: str, device_id: int,
                           envelope_ids: Sequence[int]) -> PendingResult[int]:
        """``acknowledge``, submitted synchronously: committed in submission order
        with the sends around it (in the same group commit), so a device's
        acknowledgements cost no task and no wait of their own."""
        ...

    async def queue_depth(self, *, user_id: str, device_id: int) -> int:
        """Envelopes queued for the device now, expired ones not yet swept included (the
        count ``NewSend.max_queue_depth`` is checked against); 0 for an unknown device."""
        ...

    async def deepest_queue(self) -> int:
        """The most envelopes any one device has queued now (0 with no device): what the
        operator's "queue near its limit" alert watches. Reads the kept counts only."""
        ...

    async def expire(self, *, now: int, limit: int) -> int:
        """Delete up to ``limit`` envelopes, and up to ``limit`` idempotency records,
        with expires_at <= now (a record expires with the send it remembers).

        Keeps every device's queue depth exact. Returns the envelopes deleted.
        Also forgets up to ``limit`` rate-limit buckets idle long enough to be full.
        """
        ...
