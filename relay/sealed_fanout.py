"""SEALED_MULTI_SEND: the fan-out of relay/fanout.py, sent sealed (PROTOCOL.md "Sealed sender").

The same store path as MULTI_SEND (the shared ciphertext once, an envelope per device, one
transaction), with the sealed sender's rules instead of a sender's: no sender is stored (the
envelopes' sender is ``storage.sealed_sql.SEALED_SENDER_USER``, device 0, as SEALED_SEND's);
every recipient user must admit it, with its own delivery token or in its "organisation" mode
from a connection authenticated in its own organisation (``relay.sealed.authorised``), and any
refusal is the one DELIVERY_TOKEN_REFUSED for the whole send, naming nobody; the budgets are
sealed sender's (the connection's, each token's, each recipient's: relay/sealed_limits.py),
each taken once per send, and the queue share per recipient device, keyed as a SEALED_SEND's
is: by the token shown (in the store) and by connection (in the session's memory). The
idempotency key is derived from the recipients and the client's random id, so that it names no
sender and two senders' ids never meet. Nothing is logged per send.
"""

from __future__ import annotations

import hashlib

import trio

from relay.context import RelayContext
from relay.limits import sender_queue_share
from relay.sealed import TOKEN_REFUSED_REASON, authorised, share_key
from relay.sealed_limits import SealedConnection
from storage.base import SendStatus
from storage.fanout_records import MultiSendOutcome, NewMultiSend
from storage.sealed_sql import SEALED_SENDER_USER
from wire.catalogue import ErrorCode
from wire.codec import encode_frame
from wire.frames import Error
from wire.group_frames import SealedMultiSend, SealedMultiSendAccepted, UserDevices
from wire.limits import MAX_CLIENT_MESSAGE_ID

__all__ = ["sealed_fan_out", "sealed_multi_message_id"]

_SEALED_DEVICE = 0
"""The sender device of a sealed envelope's row: none (device ids start at 1)."""
_SHARE_USED = ("the share of a recipient device's queue open to sealed sends with its token, or "
               "from this connection, is used up; retry once it has read some")


def sealed_multi_message_id(user_ids: list[str], client_message_id: bytes) -> int:
    """The send's idempotency key: a hash of (its recipients, the client's random id), under
    MAX_CLIENT_MESSAGE_ID; it names no sender."""
    recipients = b"\x00".join(user_id.encode() for user_id in sorted(user_ids))
    digest = hashlib.sha256(b"cryptopass sealed multi-send id v1\x00" + recipients + b"\x00\x00"
                            + client_message_id).digest()
    return int.from_bytes(digest[:8], "big") & MAX_CLIENT_MESSAGE_ID


async def sealed_fan_out(relay: RelayContext, frame: SealedMultiSend, *,
                         connection: SealedConnection, organisation_id: int | None) -> bytes:
    """Authorise, limit and commit one sealed multi-recipient send; the encoded answer.

    ``connection``: what the connection's sealed sends are counted against;
    ``organisation_id``: the organisation of the device the connection authenticated as, None
    if it did not.
    """
    sealed, metrics = relay.sealed, relay.metrics
    now = relay.now_ms()
    token_hashes = {recipient.user_id: None if recipient.delivery_token is None
                    else hashlib.sha256(recipient.delivery_token).digest()
                    for recipient in frame.recipients}
    wait_ms = connection.budget.take(None, now=now)
    for token_hash in {token_hash for token_hash in token_hashes.values()}:
        if wait_ms is None:
            wait_ms = sealed.per_token.take(token_hash, now=now)
    if wait_ms is not None:
        return _rate_limited(relay, wait_ms)
    organisation_users = []
    refused = False
    for user_id, token_hash in token_hashes.items():
        access = await relay.store.delivery_access(user_id)
        refused |= not authorised(access, token_hash, organisation_id)
        if access is not None and access.mode == "organisation":
            organisation_users.append(user_id)
    if refused:
        metrics.multi_sends["sealed_token_refused"] += 1
        return encode_frame(Error(code=ErrorCode.DELIVERY_TOKEN_REFUSED,
                                  reason=TOKEN_REFUSED_REASON))
    for user_id in token_hashes:
        if wait_ms is None:
            wait_ms = sealed.per_recipient.take(user_id, now=now)
    if wait_ms is not None:
        return _rate_limited(relay, wait_ms)
    settings = relay.settings
    share = sender_queue_share(settings.max_queue_depth, settings.sender_queue_share_percent)
    if any(connection.accepted[user_id] >= share for user_id in token_hashes):
        metrics.multi_sends["sealed_queue_full"] += 1
        return encode_frame(Error(code=ErrorCode.QUEUE_FULL, reason=_SHARE_USED))
    pending = relay.store.submit_multi_send(NewMultiSend(
        sender_user_id=SEALED_SENDER_USER, sender_device_id=_SEALED_DEVICE,
        client_message_id=sealed_multi_message_id(list(token_hashes), frame.client_message_id),
        shared=frame.shared,
        recipients={recipient.user_id: recipient.devices for recipient in frame.recipients},
        accepted_at=now, expires_at=now + settings.envelope_ttl_ms,
        max_queue_depth=settings.max_queue_depth, max_sender_share=share,
        queue_share_keys={user_id: share_key(None if user_id in organisation_users else token_hash)
                          for user_id, token_hash in token_hashes.items()},
        # Users in organisation mode admit the sender's organisation, checked in the send's
        # transaction; a user with a token chose its senders itself.
        sender_organisation_id=organisation_id if organisation_users else None,
        organisation_checked=frozenset(organisation_users)))
    committed = trio.Event()
    result: list[MultiSendOutcome | BaseException] = []

    def answer(outcome: MultiSendOutcome | BaseException) -> None:
        result.append(outcome)
        committed.set()
        if (relay.wakeups is not None and isinstance(outcome, MultiSendOutcome)
                and outcome.envelopes):
            relay.wakeups.note_committed(outcome.envelopes, urgent=frame.urgent)

    relay.pipeline.submit_fan_out(pending, answer)
    await committed.wait()
    outcome = result[0]
    if isinstance(outcome, MultiSendOutcome) and outcome.status is SendStatus.ACCEPTED:
        for user_id in token_hashes:
            connection.note_accepted(user_id)
    return _answer(relay, outcome)


def _rate_limited(relay: RelayContext, wait_ms: int) -> bytes:
    relay.metrics.multi_sends["sealed_rate_limited"] += 1
    relay.metrics.rate_limited += 1
    return encode_frame(Error(code=ErrorCode.RATE_LIMITED, retry_after_ms=wait_ms,
                              reason=f"too many sealed sends; retry after "
                                     f"{-(-wait_ms // 1000)} s"))


def _answer(relay: RelayContext, outcome: MultiSendOutcome | BaseException) -> bytes:
    metrics = relay.metrics
    if isinstance(outcome, BaseException):
        metrics.multi_sends["sealed_error"] += 1
        return encode_frame(Error(code=ErrorCode.INTERNAL_ERROR,
                                  reason="the send could not be stored; retry"))
    metrics.multi_sends[f"sealed_{outcome.status.value}"] += 1
    if outcome.status in (SendStatus.ACCEPTED, SendStatus.DUPLICATE):
        metrics.fanned_out += len(outcome.envelopes)
        return encode_frame(SealedMultiSendAccepted())
    if outcome.status in (SendStatus.UNKNOWN_RECIPIENT, SendStatus.ORGANISATION_SUSPENDED):
        return encode_frame(Error(code=ErrorCode.DELIVERY_TOKEN_REFUSED,
                                  reason=TOKEN_REFUSED_REASON))
    users = tuple(UserDevices(user_id=refusal.user_id, missing_devices=refusal.missing_devices,
                              extra_devices=refusal.extra_devices,
                              full_devices=refusal.full_devices)
                  for refusal in outcome.refusals)
    if outcome.status is SendStatus.MISMATCHED_DEVICES:
        return encode_frame(Error(code=ErrorCode.MISMATCHED_DEVICES, users=users,
                                  reason="the key material does not address the recipients' "
                                         "devices (users lists them)"))
    return encode_frame(Error(code=ErrorCode.QUEUE_FULL, users=users, reason=(
        _SHARE_USED if outcome.status is SendStatus.SENDER_SHARE_FULL
        else "a recipient device's queue is full (users lists them); retry later")))
