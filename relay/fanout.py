"""MULTI_SEND: one shared ciphertext fanned out to many devices, checked as SEND checks.

A device session hands its MULTI_SEND frames here. The checks are SEND's, made for every
recipient user: the sender device's send budget first (``budget_cost``: the SENDs it would
take to queue as many envelopes, and the bytes it uploaded: the shared ciphertext once plus
every device's key material), before any store work; then, in the store's one transaction,
each user's reachability, its exact device set, its queues' depth and the sender's share of
them. The submission is synchronous and goes through the same commit pipeline as SEND, so a
device's sends and multi-sends are committed and answered in the order they arrived, and
answered only once durable; the committed envelopes are then offered to the connected
recipients' pumps, whose DELIVER carries the shared ciphertext.

Only the per-sender checks (the budget, the idempotency key, the queue share) know the sender:
``fan_out`` takes them as a ``FanOutSender``, so that a sender-less variant keyed by delivery
token and connection can use the same path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

from relay.context import RelayContext
from relay.limits import sender_queue_share
from storage.base import SendStatus
from storage.fanout_records import MultiSendOutcome, NewMultiSend
from wire.codec import encode_frame
from wire.frames import Error, ErrorCode
from wire.group_frames import MultiSend, MultiSendAccepted, UserDevices
from wire.limits import MAX_DEVICES_PER_SEND

__all__ = ["FanOutSender", "budget_cost", "fan_out", "multi_send_answer"]

_REFUSALS: dict[SendStatus, tuple[ErrorCode, str]] = {
    SendStatus.UNKNOWN_RECIPIENT: (ErrorCode.UNKNOWN_RECIPIENT,
                                   "a recipient does not exist or cannot be reached"),
    SendStatus.MISMATCHED_DEVICES: (ErrorCode.MISMATCHED_DEVICES,
                                    "the key material does not address the recipients' devices "
                                    "(users lists them)"),
    SendStatus.QUEUE_FULL: (ErrorCode.QUEUE_FULL,
                            "a recipient device's queue is full (users lists them); retry later"),
    SendStatus.SENDER_SHARE_FULL: (ErrorCode.QUEUE_FULL,
                                   "your share of a recipient device's queue is used up (users "
                                   "lists them); retry once it has read some"),
    SendStatus.ORGANISATION_SUSPENDED: (ErrorCode.ORGANISATION_SUSPENDED,
                                        "organisation suspended"),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class FanOutSender:
    """Who a multi-recipient send is charged to: its budget, idempotency key and queue share."""

    user_id: str
    device_id: int
    organisation_id: int | None


def budget_cost(frame: MultiSend) -> tuple[int, int]:
    """What a MULTI_SEND takes from its sender's send budget: (SENDs, bytes).

    Bytes: what the sender uploaded, the shared ciphertext once and every device's key
    material. SENDs: as many as it would take to queue as many envelopes (each SEND reaches at
    most MAX_DEVICES_PER_SEND devices), so that one device cannot make the relay write more
    envelope rows a minute through MULTI_SENDs than through SENDs.
    """
    uploaded = len(frame.shared) + sum(len(material) for recipient in frame.recipients
                                       for material in recipient.devices.values())
    return -(-frame.device_count() // MAX_DEVICES_PER_SEND), uploaded


def fan_out(relay: RelayContext, sender: FanOutSender, frame: MultiSend,
            answer: Callable[[bytes], None]) -> None:
    """Check ``frame`` against the sender's budget, submit it, and ``answer`` with the
    encoded response once it is committed (or at once, when refused before the store)."""
    settings, metrics = relay.settings, relay.metrics
    now = relay.now_ms()
    messages, uploaded = budget_cost(frame)
    wait_ms = relay.send_budgets.take((sender.user_id, sender.device_id), messages=messages,
                                      payload_bytes=uploaded, now=now)
    if wait_ms is not None:
        metrics.rate_limited += 1
        metrics.count_multi_send(None)
        answer(encode_frame(Error(
            code=ErrorCode.RATE_LIMITED, retry_after_ms=wait_ms,
            reason=f"too many sends from this device (at most {settings.sends_per_minute} "
                   f"sends and {settings.send_bytes_per_minute / 2**20:g} MiB a minute); "
                   f"retry after {-(-wait_ms // 1000)} s")))
        return
    pending = relay.store.submit_multi_send(NewMultiSend(
        sender_user_id=sender.user_id, sender_device_id=sender.device_id,
        client_message_id=frame.client_message_id, shared=frame.shared,
        recipients={recipient.user_id: recipient.devices for recipient in frame.recipients},
        accepted_at=now, expires_at=now + settings.envelope_ttl_ms,
        max_queue_depth=settings.max_queue_depth,
        max_sender_share=sender_queue_share(settings.max_queue_depth,
                                            settings.sender_queue_share_percent),
        sender_organisation_id=sender.organisation_id))
    submitted_at = trio.current_time()
    urgent, wakeups = frame.urgent, relay.wakeups

    def committed(outcome: MultiSendOutcome | BaseException) -> None:
        metrics.commit_latency.observe(trio.current_time() - submitted_at)
        metrics.count_multi_send(outcome)
        answer(multi_send_answer(outcome))
        if wakeups is not None and isinstance(outcome, MultiSendOutcome) and outcome.envelopes:
            wakeups.note_committed(outcome.envelopes, urgent=urgent)

    relay.pipeline.submit_fan_out(pending, committed)


def multi_send_answer(outcome: MultiSendOutcome | BaseException) -> bytes:
    """The response frame for a committed (or failed) multi-recipient send."""
    if isinstance(outcome, BaseException):
        return encode_frame(Error(code=ErrorCode.INTERNAL_ERROR,
                                  reason="the send could not be stored; retry"))
    if outcome.status in (SendStatus.ACCEPTED, SendStatus.DUPLICATE):
        return encode_frame(MultiSendAccepted(duplicate=outcome.status is SendStatus.DUPLICATE))
    code, reason = _REFUSALS[outcome.status]
    return encode_frame(Error(code=code, reason=reason, users=tuple(
        UserDevices(user_id=refusal.user_id, missing_devices=refusal.missing_devices,
                    extra_devices=refusal.extra_devices, full_devices=refusal.full_devices)
        for refusal in outcome.refusals)))
