"""The values of a multi-recipient send (``storage.interfaces.fanout.FanOutQueue``): pure data.

A multi-recipient send is one message to many users' devices: one shared ciphertext and each
device's own key material. It names users and devices only; whatever groups them (a group's id,
name or members) is end-to-end encrypted inside the payloads and never reaches the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from storage.records import Envelope, SendStatus

__all__ = ["MultiSendOutcome", "NewMultiSend", "RecipientRefusal"]


@dataclass(frozen=True, kw_only=True, slots=True)
class NewMultiSend:
    """One message to many users: the shared ciphertext once, key material per device.

    The checks and limits are ``NewSend``'s, applied to every recipient user in one
    transaction; the sender fields serve the idempotency key and the sender's queue share only.
    """

    sender_user_id: str
    sender_device_id: int
    client_message_id: int
    shared: bytes
    """The ciphertext every addressed device receives, stored once."""
    recipients: Mapping[str, Mapping[int, bytes]]
    """Recipient user id -> (device id -> that device's key material)."""
    accepted_at: int
    expires_at: int
    max_queue_depth: int
    max_sender_share: int | None = None
    queue_share_keys: Mapping[str, str] | None = None
    """Recipient user -> what ``max_sender_share`` counts in that user's queues in place of
    the sender user (``NewSend.queue_share_key``, kept in the envelopes' ``share_key``): a
    sealed send's share is keyed by its delivery token, never by a user. None: the sender."""
    sender_organisation_id: int | None = None
    """As ``NewSend``'s, checked for each recipient user in ``organisation_checked``."""
    organisation_checked: frozenset[str] | None = None
    """The users ``sender_organisation_id`` is checked against; None: every one. A sealed
    send checks only the users that admit it by organisation rather than by token."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RecipientRefusal:
    """Why one recipient user refused a multi-recipient send (the devices concerned)."""

    user_id: str
    missing_devices: tuple[int, ...] = ()
    extra_devices: tuple[int, ...] = ()
    full_devices: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class MultiSendOutcome:
    status: SendStatus
    envelopes: tuple[Envelope, ...] = ()
    """The committed envelopes (ACCEPTED only), in envelope id order; each carries ``shared``."""
    refusals: tuple[RecipientRefusal, ...] = ()
    """MISMATCHED_DEVICES, QUEUE_FULL and SENDER_SHARE_FULL: each user concerned, by user id."""
