"""Sealed sender on the relay: certificate keys, sender certificates, delivery tokens and
sealed sends (PROTOCOL.md "Sealed sender").

A sealed send arrives, by default, on a connection that never authenticated: the relay learns
its recipient and its size, and nothing of its sender, which is inside the sealed envelopes.
It is authorised by the recipient's delivery token (its SHA-256 compared in constant time with
the one the recipient registered), or, in the recipient's "organisation" mode, by a connection
authenticated as a device of the recipient's own organisation. Every refusal of
authorisation, an unknown recipient's included, is the one DELIVERY_TOKEN_REFUSED, so that the
answer tells no prober which users exist or which token is close.

What it stores: envelopes with no sender (``storage.sealed_sql.SEALED_SENDER_USER``, device 0),
whose queue share is counted by a key derived from the token shown (``_share_key``) and, in
memory, by connection (``SealedConnection``); an idempotency record keyed by a hash of
(recipient, the client's random id), which names neither user; no rate-limit row
(``relay.sealed_limits`` keeps its buckets in memory). Nothing
is logged per sealed send: a log line with the recipient beside the connection would be the
link the store does not keep.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import structlog
import trio

from relay.context import RelayContext
from relay.limits import sender_queue_share
from relay.sealed_limits import (
    SEALED_SENDS_PER_RECIPIENT,
    SEALED_SENDS_PER_TOKEN,
    SealedConnection,
    TokenBuckets,
)
from relay.sender_certificates import (
    RELOAD_INTERVAL_MS,
    SenderKeyError,
    SenderKeyring,
    load_keyring,
)
from storage.base import EnrolmentStore, NewSend, SendOutcome, SendStatus
from storage.sealed_sql import SEALED_SENDER_USER, DeliveryAccess
from wire.catalogue import ErrorCode
from wire.codec import encode_frame
from wire.frames import Error
from wire.limits import MAX_CLIENT_MESSAGE_ID
from wire.sealed_frames import (
    DELIVERY_TOKEN_HASH_SIZE,
    DeliveryTokenSet,
    GetSenderCertificate,
    GetSenderKeys,
    SealedSend,
    SealedSendAccepted,
    SenderCertificateIssued,
    SenderKey,
    SenderKeys,
    SetDeliveryToken,
)

__all__ = ["TOKEN_REFUSED_REASON", "SealedService", "authorised", "check_cluster_keys",
           "sealed_message_id", "share_key"]

log = structlog.get_logger("relay.sealed")

TOKEN_REFUSED_REASON = "no such recipient, or the delivery token is not its current one"  # noqa: S105
"""The one reason of every authorisation refusal."""

_SEALED_DEVICE = 0
"""The sender device of a sealed envelope's row: none (device ids start at 1)."""
_NO_TOKEN_HASH = bytes(DELIVERY_TOKEN_HASH_SIZE)
"""Compared against when there is nothing to compare with, so that every refusal does the same
work."""

_SHARE_USED = ("the share of a recipient device's queue open to sealed sends with this token, or "
               "from this connection, is used up; retry once it has read some")

_REFUSALS: dict[SendStatus, tuple[ErrorCode, str]] = {
    SendStatus.UNKNOWN_RECIPIENT: (ErrorCode.DELIVERY_TOKEN_REFUSED, TOKEN_REFUSED_REASON),
    SendStatus.MISMATCHED_DEVICES: (ErrorCode.MISMATCHED_DEVICES,
                                    "the payloads do not address the recipient's devices"),
    SendStatus.QUEUE_FULL: (ErrorCode.QUEUE_FULL,
                            "a recipient device's queue is full; retry later"),
    SendStatus.SENDER_SHARE_FULL: (ErrorCode.QUEUE_FULL, _SHARE_USED),
    SendStatus.ORGANISATION_SUSPENDED: (ErrorCode.DELIVERY_TOKEN_REFUSED, TOKEN_REFUSED_REASON),
}


def share_key(token_hash: bytes | None) -> str:
    """What a sealed envelope's queue share is counted by (its ``share_key`` column):
    derived from the token shown (every contact holding it shares the share), or one value
    for the sends of organisation mode. It names no user; it tells only which of the
    recipient's tokens was shown."""
    if token_hash is None:
        return "sealed organisation"
    digest = hashlib.sha256(b"cryptopass sealed share v1\x00" + token_hash).hexdigest()
    return f"sealed {digest[:32]}"


def sealed_message_id(recipient_user_id: str, client_message_id: bytes) -> int:
    """The envelope's idempotency key: a hash of (recipient, the client's random id), under
    MAX_CLIENT_MESSAGE_ID. It names neither user, and two senders' random ids never meet."""
    digest = hashlib.sha256(b"cryptopass sealed message id v1\x00"
                            + recipient_user_id.encode() + b"\x00" + client_message_id).digest()
    return int.from_bytes(digest[:8], "big") & MAX_CLIENT_MESSAGE_ID


def _error(code: ErrorCode, reason: str, retry_after_ms: int | None = None) -> bytes:
    return encode_frame(Error(code=code, reason=reason, retry_after_ms=retry_after_ms))


class SealedService:
    """One per relay: answers sealed sender's requests."""

    def __init__(self, relay: RelayContext, keyring: SenderKeyring, key_directory: Path) -> None:
        self._relay = relay
        self._keyring = keyring
        self._key_directory = key_directory
        self._reloading = False
        self.per_token = TokenBuckets(capacity=SEALED_SENDS_PER_TOKEN)
        self.per_recipient = TokenBuckets(capacity=SEALED_SENDS_PER_RECIPIENT)

    # -- keys and certificates ---------------------------------------------------------

    async def keyring(self) -> SenderKeyring:
        """The keys, read again from their directory every RELOAD_INTERVAL_MS (a rotation)."""
        now = self._relay.now_ms()
        if now - self._keyring.loaded_at_ms >= RELOAD_INTERVAL_MS and not self._reloading:
            self._reloading = True
            try:
                self._keyring = await trio.to_thread.run_sync(
                    lambda: load_keyring(self._key_directory, now_ms=now, create=False))
                await check_cluster_keys(self._relay.store, self._keyring)
            except (SenderKeyError, OSError):
                log.exception("sender_keys_unreadable")  # keep signing with what was read
            finally:
                self._reloading = False
        return self._keyring

    async def handle(self, device: tuple[str, int] | None,
                     frame: GetSenderKeys | GetSenderCertificate | SetDeliveryToken) -> bytes:
        """Answer GET_SENDER_KEYS (any connection), GET_SENDER_CERTIFICATE and
        SET_DELIVERY_TOKEN (``device``: the authenticated one; the core lets them through only
        then)."""
        if isinstance(frame, GetSenderKeys):
            keyring = await self.keyring()
            return encode_frame(SenderKeys(keys=tuple(
                SenderKey(key_id=key.key_id, public_key=key.public_key,
                          not_after_ms=key.not_after_ms()) for key in keyring.accepted)))
        if device is None:
            return _error(ErrorCode.UNEXPECTED_FRAME, f"{type(frame).__name__} needs a device")
        if isinstance(frame, GetSenderCertificate):
            return await self._certificate(device)
        mode, token_hash = frame.mode, frame.token_hash
        stored = await self._relay.store.set_delivery_access(
            user_id=device[0], access=DeliveryAccess(mode=mode, token_hash=token_hash),
            now=self._relay.now_ms())
        if not stored:
            return _error(ErrorCode.DEVICE_REVOKED, "this device's user was deleted")
        self._relay.metrics.sealed["token_set" if mode == "token" else "organisation_mode"] += 1
        return encode_frame(DeliveryTokenSet())

    async def _certificate(self, device: tuple[str, int]) -> bytes:
        store = self._relay.store
        principal = await store.load_principal(*device)
        account = await store.account(device[0])
        if principal is None:
            return _error(ErrorCode.DEVICE_REVOKED, "this device was revoked")
        if account is None or account.account_key is None:
            return _error(ErrorCode.INVALID_REQUEST,
                          "this user has no account key: enrol again to get one")
        keyring = await self.keyring()
        certificate, expires_ms = keyring.issue(
            user_id=device[0], device_id=device[1], account_key=account.account_key,
            identity_key=principal.device.identity_key, now_ms=self._relay.now_ms())
        self._relay.metrics.sealed["certificate_issued"] += 1
        return encode_frame(SenderCertificateIssued(certificate=certificate,
                                                    expires_ms=expires_ms))

    # -- sealed sends -------------------------------------------------------------------

    async def send(self, frame: SealedSend, *, connection: SealedConnection,
                   organisation_id: int | None) -> bytes:
        """Authorise, limit and commit one sealed send; the encoded answer.

        ``connection``: what the connection's sealed sends are counted against;
        ``organisation_id``: the organisation of the device the connection authenticated as,
        None if it did not.
        """
        relay, metrics = self._relay, self._relay.metrics
        now = relay.now_ms()
        token_hash = (None if frame.delivery_token is None
                      else hashlib.sha256(frame.delivery_token).digest())
        for buckets, key, what in ((connection.budget, None, "on this connection"),
                                   (self.per_token, token_hash, "with this delivery token")):
            wait_ms = buckets.take(key, now=now)
            if wait_ms is not None:
                return self._rate_limited(what, wait_ms)
        access = await relay.store.delivery_access(frame.recipient_user_id)
        if not authorised(access, token_hash, organisation_id):
            metrics.sealed["token_refused"] += 1
            return _error(ErrorCode.DELIVERY_TOKEN_REFUSED, TOKEN_REFUSED_REASON)
        wait_ms = self.per_recipient.take(frame.recipient_user_id, now=now)
        if wait_ms is not None:
            return self._rate_limited("to this recipient", wait_ms)
        organisation_mode = access is not None and access.mode == "organisation"
        settings = relay.settings
        share = sender_queue_share(settings.max_queue_depth, settings.sender_queue_share_percent)
        if connection.accepted[frame.recipient_user_id] >= share:
            metrics.sealed["queue_full"] += 1
            return _error(ErrorCode.QUEUE_FULL, _SHARE_USED)
        pending = relay.store.submit_send(NewSend(
            sender_user_id=SEALED_SENDER_USER, sender_device_id=_SEALED_DEVICE,
            recipient_user_id=frame.recipient_user_id,
            client_message_id=sealed_message_id(frame.recipient_user_id,
                                                frame.client_message_id),
            payloads=frame.payloads, accepted_at=now, expires_at=now + settings.envelope_ttl_ms,
            max_queue_depth=settings.max_queue_depth, max_sender_share=share,
            queue_share_key=share_key(None if organisation_mode else token_hash),
            # In organisation mode the send's transaction checks again that the organisations
            # are active and may reach each other; with a token, the recipient chose.
            sender_organisation_id=organisation_id if organisation_mode else None))
        committed = trio.Event()
        result: list[SendOutcome | BaseException] = []

        def answer(outcome: SendOutcome | BaseException) -> None:
            result.append(outcome)
            committed.set()
            if (relay.wakeups is not None and isinstance(outcome, SendOutcome)
                    and outcome.envelopes):
                relay.wakeups.note_committed(outcome.envelopes, urgent=frame.urgent)

        relay.pipeline.submit(pending, answer)
        await committed.wait()
        outcome = result[0]
        if isinstance(outcome, SendOutcome) and outcome.status is SendStatus.ACCEPTED:
            connection.note_accepted(frame.recipient_user_id)
        return self._answer(outcome)

    def _rate_limited(self, what: str, wait_ms: int) -> bytes:
        self._relay.metrics.sealed["rate_limited"] += 1
        self._relay.metrics.rate_limited += 1
        return _error(ErrorCode.RATE_LIMITED, f"too many sealed sends {what}; retry after "
                                              f"{-(-wait_ms // 1000)} s", retry_after_ms=wait_ms)

    def _answer(self, outcome: SendOutcome | BaseException) -> bytes:
        metrics = self._relay.metrics.sealed
        if isinstance(outcome, BaseException):
            metrics["error"] += 1
            return _error(ErrorCode.INTERNAL_ERROR, "the send could not be stored; retry")
        if outcome.status in (SendStatus.ACCEPTED, SendStatus.DUPLICATE):
            metrics[outcome.status.value] += 1
            return encode_frame(SealedSendAccepted())
        code, reason = _REFUSALS[outcome.status]
        metrics["token_refused" if code is ErrorCode.DELIVERY_TOKEN_REFUSED
                else outcome.status.value] += 1
        if code is ErrorCode.DELIVERY_TOKEN_REFUSED:
            return _error(code, reason)
        return encode_frame(Error(code=code, reason=reason,
                                  missing_devices=outcome.missing_devices,
                                  extra_devices=outcome.extra_devices,
                                  full_devices=outcome.full_devices))


async def check_cluster_keys(store: EnrolmentStore, keyring: SenderKeyring) -> bool:
    """Whether every node sharing ``store`` signs with the same keys as this one.

    The store keeps, per key id, the SHA-256 of the first public key a node announced under it
    (``keep_secret_fingerprint``, name ``sender-cert-key-<id>``: a public value; the seed never
    leaves the key files). A node whose key differs logs ``sender_key_differs_in_cluster``:
    clients that pinned the others' key would refuse its certificates (docs/CLUSTER.md).
    """
    agreed = True
    for key in keyring.accepted:
        mine = hashlib.sha256(key.public_key).digest()
        kept = await store.keep_secret_fingerprint(f"sender-cert-key-{key.key_id}", mine)
        if not hmac.compare_digest(kept, mine):
            agreed = False
            log.error("sender_key_differs_in_cluster", key_id=key.key_id,
                      this_node=mine.hex()[:16], cluster=kept.hex()[:16])
    return agreed


def authorised(access: DeliveryAccess | None, token_hash: bytes | None,
                organisation_id: int | None) -> bool:
    """Whether the send may go on: the token matches (constant time), or organisation mode on
    a connection authenticated in the recipient's own organisation."""
    registered = None if access is None else access.token_hash
    # Always one comparison of full-size values, whatever is missing.
    matches = hmac.compare_digest(registered or _NO_TOKEN_HASH, token_hash or _NO_TOKEN_HASH)
    if access is None:
        return False
    if access.mode == "organisation":
        return organisation_id is not None and organisation_id == access.organisation_id
    return matches and registered is not None and token_hash is not None
