"""``FanOutQueue``: multi-recipient sends, one shared ciphertext fanned out to many queues."""

from __future__ import annotations

from typing import Protocol

from storage.fanout_records import MultiSendOutcome, NewMultiSend
from storage.interfaces.pending import PendingResult

__all__ = ["FanOutQueue"]


class FanOutQueue(Protocol):
    """Multi-recipient sends into the device queues of ``EnvelopeQueue``. Safe to call
    concurrently."""

    def submit_multi_send(self, send: NewMultiSend) -> PendingResult[MultiSendOutcome]:
        """Queue a multi-recipient send for commit; await ``wait()`` for its outcome.

        Submitted and committed in order with ``EnvelopeQueue.submit_send``'s sends (the
        same group-commit writer), so one sender device's sends keep their order. In one
        transaction: the idempotency check (the key space is ``submit_send``'s), then every
        recipient user's checks as ``submit_send`` makes them (unknown or unreachable user,
        exact device set, queue depth, the sender's share), then the inserts: the shared
        ciphertext once, with a count of the envelopes referring to it, and one envelope per
        device, whose ``ciphertext`` is the device's key material. All or nothing: a refused
        send stores nothing, and its outcome names every user concerned (``refusals``).

        Deleting an envelope (acknowledgement, expiry, its device's deletion) decrements the
        count in the deleting transaction; the shared ciphertext goes with the last one.
        ``EnvelopeQueue.fetch_queue`` returns it as each envelope's ``shared``.
        """
        ...
