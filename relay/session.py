"""One device connection on the server: glue between the QUIC link, the sans-IO
protocol core, enrolment, the store and delivery.

Everything here runs in the relay's trio thread. ``quic_events`` is
synchronous: frames are decoded and sends are submitted to the store in the
order they arrived; slow work (store reads, enrolment) runs in tasks that the
session owns (each in a cancel scope the session cancels when the connection
ends) and answers through per-stream response slots, so answers on one stream
keep the order of its requests.

"Authenticated" is one fact: the core's state. The core holds every request
that arrives behind AUTHENTICATE until the session confirms, and the session
sets its ``AuthenticatedDevice`` record, in one step, just before confirming.
"""

from __future__ import annotations

import functools
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, assert_never

import structlog
import trio
from aioquic.quic import events as quic_events

from enrolment.errors import (
    EnrolmentError,
    InvalidRequest,
    OrganisationInactive,
    RateLimited,
    TooManyDevices,
    VerificationFailed,
)
from enrolment.limits import (
    CONNECTION_PERIOD_MS,
    ENROL_STARTS_PER_CONNECTION,
    ENROL_VERIFIES_PER_CONNECTION,
    Allowance,
)
from enrolment.service import REENROLMENT_REVOKE_REASON
from relay.account_audit import ENROLMENT_ACTOR, audit_device_changes
from relay.blob_streams import ConnectionBlobs
from relay.cluster import DeviceGone
from relay.context import RelayContext
from relay.delivery import DeliveryPump
from relay.fanout import FanOutSender, fan_out
from relay.limits import (
    LOOKUP_PERIOD_MS,
    LOOKUPS_PER_MINUTE,
    MAX_WAITING_LINK_FETCHES,
    sender_queue_share,
)
from relay.linking import address_key
from relay.reachability import may_reach
from relay.sealed_fanout import sealed_fan_out
from relay.sealed_limits import SealedConnection
from storage.base import NewSend, OrganisationState, SendOutcome, SendStatus, UserState
from storage.interfaces.accounts import AccountKeyStore
from storage.interfaces.administration import AuditLog
from storage.interfaces.directory import Directory, OrganisationPolicy
from storage.interfaces.envelope_queue import EnvelopeQueue
from storage.interfaces.rate_limits import RateLimits
from transport.quic import QuicLink
from wire.account_frames import LinkFetch, LinkOpen, LinkPost, PublishDeviceList
from wire.blob_frames import BlobCreate, BlobDownload, BlobStatus, BlobUpload
from wire.call_frames import CALL_SIGNAL_TTL_MS, CallJoin, CallLeave, CallOpen
from wire.codec import encode_frame
from wire.frames import (
    Ack,
    Acked,
    Authenticate,
    Authenticated,
    DirectoryEntry,
    Enrolled,
    EnrolStart,
    EnrolStarted,
    EnrolVerify,
    Error,
    ErrorCode,
    Frame,
    Lookup,
    LookupResult,
    Send,
    SendAccepted,
)
from wire.group_frames import MultiSend, SealedMultiSend
from wire.limits import MAX_RETRY_AFTER_MS, NONCE_SIZE
from wire.phone import InvalidPhoneNumber, parse_phone
from wire.prekey_frames import FetchBundle, GetPrekeyCounts, ListDevices, UploadPrekeys
from wire.protocol import (
    AuthenticationRequested,
    ConnectionState,
    RequestReceived,
    ServerEvent,
    ServerProtocol,
    StreamBytes,
    StreamEnded,
    StreamFailed,
    is_client_bidirectional,
)
from wire.push_frames import PushClear, PushGet, PushSet
from wire.sealed_frames import GetSenderCertificate, GetSenderKeys, SealedSend, SetDeliveryToken

__all__ = ["AuthenticatedDevice", "DeviceSession", "SessionStore"]

log = structlog.get_logger("relay.session")

_ENROLMENT_ERRORS: dict[type[EnrolmentError], ErrorCode] = {
    RateLimited: ErrorCode.RATE_LIMITED,
    VerificationFailed: ErrorCode.VERIFICATION_FAILED,
    TooManyDevices: ErrorCode.TOO_MANY_DEVICES,
    OrganisationInactive: ErrorCode.ORGANISATION_SUSPENDED,
    InvalidRequest: ErrorCode.INVALID_REQUEST,
}

_AUTHENTICATION_REFUSED = "unknown device, or the signature does not verify"
"""One reason for both refusals (PROTOCOL.md "Authentication"): an answer must not tell a
prober which devices exist."""

_SEND_REFUSALS: dict[SendStatus, tuple[ErrorCode, str]] = {
    SendStatus.UNKNOWN_RECIPIENT: (ErrorCode.UNKNOWN_RECIPIENT, "no such recipient"),
    SendStatus.MISMATCHED_DEVICES: (ErrorCode.MISMATCHED_DEVICES,
                                    "the payloads do not address the recipient's devices"),
    SendStatus.QUEUE_FULL: (ErrorCode.QUEUE_FULL,
                            "a recipient device's queue is full; retry later"),
    SendStatus.SENDER_SHARE_FULL: (ErrorCode.QUEUE_FULL,
                                   "your share of a recipient device's queue is used up (one "
                                   "sender may fill only part of it); retry once it has read "
                                   "some"),
    SendStatus.ORGANISATION_SUSPENDED: (ErrorCode.ORGANISATION_SUSPENDED,
                                        "organisation suspended"),
}


class SessionStore(EnvelopeQueue, Directory, OrganisationPolicy, RateLimits, AccountKeyStore,
                   AuditLog, Protocol):
    """What a device session needs of the store: its queue, the directory (authentication and
    look-ups), the cross-organisation policy, its rate limits, the notices of revoked
    devices (authentication tells a revoked device why), and the audit log (a number enrolled
    again is told to its organisation's administrators)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticatedDevice:
    """Who a connection acts for, once authenticated: set once, in one step."""

    user_id: str
    """The device's user."""
    device_id: int
    """The device, within its user."""
    organisation_id: int
    """The user's organisation (reachability policy, sends)."""

    @property
    def key(self) -> tuple[str, int]:
        """(user id, device id): how the relay indexes live sessions."""
        return (self.user_id, self.device_id)


class _Slot:
    __slots__ = ("data", "end_stream")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.end_stream = False


class DeviceSession:
    """Server side of one QUIC connection (enrolling, then one authenticated device)."""

    def __init__(self, relay: RelayContext, link: QuicLink) -> None:
        self._relay = relay
        self._store: SessionStore = relay.store
        self._link = link
        self._core = ServerProtocol(buffers=relay.buffers)
        self._slots: dict[int, deque[_Slot]] = {}
        self._ended_by_peer: set[int] = set()
        self._pump: DeliveryPump | None = None
        self._push_stream: int | None = None
        self._authenticated: AuthenticatedDevice | None = None
        self._requests: set[trio.CancelScope] = set()
        """One scope per request task; all are cancelled when the connection ends."""
        self._link_fetches = 0
        """LINK_FETCHes of this connection in flight (MAX_WAITING_LINK_FETCHES)."""
        self._enrolment_allowances: dict[str, Allowance] = {}
        """"start" and "verify" -> this connection's allowance (``enrolment.limits``)."""
        self._sealed: SealedConnection | None = None
        """What this connection's sealed sends are counted against, made at its first one."""
        self._log = log.bind(connection_id=link.connection_id)
        self._blobs = ConnectionBlobs(service=relay.blobs, link=link, metrics=relay.metrics,
                                      spawn=self._spawn_task)
        """Upload and download streams, answered outside the answer slots (relay/blobs.py)."""
        relay.metrics.connections_opened += 1

    @property
    def authenticated(self) -> AuthenticatedDevice | None:
        """The device this connection acts for; None until authentication is confirmed."""
        return self._authenticated

    @property
    def device(self) -> tuple[str, int] | None:
        """(user id, device id) once authenticated; None before."""
        return None if self._authenticated is None else self._authenticated.key

    @property
    def organisation_id(self) -> int | None:
        """The authenticated device's organisation; None before."""
        return None if self._authenticated is None else self._authenticated.organisation_id

    @property
    def requests_held(self) -> int:
        """Requests sent behind AUTHENTICATE, held until authentication is confirmed."""
        return self._core.held_frames

    @property
    def requests_in_flight(self) -> int:
        """Request tasks running for this connection (store reads, enrolment, prekeys)."""
        return len(self._requests)

    # -- QUIC events -----------------------------------------------------------

    def quic_events(self, link: QuicLink, batch: list[quic_events.QuicEvent]) -> None:
        for event in batch:
            if isinstance(event, quic_events.StreamDataReceived):
                for core_event in self._core.receive_stream_data(
                        event.stream_id, event.data, event.end_stream):
                    self._dispatch(core_event)
            elif isinstance(event, quic_events.DatagramFrameReceived):
                if self._authenticated is not None:  # media only from a joined connection
                    self._relay.calls.media(self, event.data)
                else:
                    self._relay.metrics.call_datagrams_dropped["unknown_tag"] += 1
            elif isinstance(event, quic_events.StopSendingReceived):
                if self._blobs.owns(event.stream_id):
                    self._blobs.stopped(event.stream_id)
                elif event.stream_id == self._push_stream:
                    # Deliveries have nowhere to go: stop rather than fill the queue of
                    # unacknowledged envelopes (they stay stored for the next connection).
                    self.close(ErrorCode.UNEXPECTED_FRAME,
                               "the delivery stream was stopped; deliveries need it")
                # A request stream's answers are dropped by the link (the peer refused them).
            elif isinstance(event, quic_events.StreamReset):
                self._core.stream_reset(event.stream_id)
                if self._blobs.owns(event.stream_id):
                    self._blobs.reset(event.stream_id)
                self._slots.pop(event.stream_id, None)
                self._ended_by_peer.discard(event.stream_id)
            elif isinstance(event, quic_events.ConnectionTerminated):
                self._terminated()

    def _dispatch(self, event: ServerEvent) -> None:
        match event:
            case RequestReceived(stream_id=stream_id, frame=frame):
                self._request(stream_id, frame)
            case AuthenticationRequested(stream_id=stream_id):
                slot = self._reserve(stream_id)
                nonce = secrets.token_bytes(NONCE_SIZE)
                self._fill(stream_id, slot, self._core.issue_challenge(nonce))
            case StreamBytes(stream_id=stream_id, data=data):
                self._blobs.received(stream_id, data)
            case StreamFailed(stream_id=stream_id, error=error) if self._blobs.owns(stream_id):
                self._blobs.failed(stream_id, _error(error.code, error.reason,
                                                     retry_after_ms=error.retry_after_ms))
            case StreamEnded(stream_id=stream_id) if self._blobs.owns(stream_id):
                self._blobs.peer_ended(stream_id)
            case StreamFailed(stream_id=stream_id, error=error) if not is_client_bidirectional(
                    stream_id):
                # A stream the client opened one way: nothing can be written back on it.
                self._link.stop_stream(stream_id, int(error.code))
            case StreamFailed(stream_id=stream_id, error=error):
                slot = self._reserve(stream_id)
                self._fill(stream_id, slot, _error(error.code, error.reason,
                                                   retry_after_ms=error.retry_after_ms),
                           end_stream=True)
            case StreamEnded(stream_id=stream_id):
                self._ended_by_peer.add(stream_id)
                self._finish_if_answered(stream_id)
            case _:
                assert_never(event)

    def _request(self, stream_id: int, frame: Frame) -> None:
        slot = self._reserve(stream_id)
        match frame:
            case Authenticate():
                self._spawn(stream_id, slot, self._authenticate(frame))
            case EnrolStart():
                if (refusal := self._over_connection_allowance("start")) is not None:
                    self._fill(stream_id, slot, refusal)
                else:
                    self._spawn(stream_id, slot, self._enrol_start(frame))
            case EnrolVerify():
                if (refusal := self._over_connection_allowance("verify")) is not None:
                    self._fill(stream_id, slot, refusal)
                else:
                    self._spawn(stream_id, slot, self._enrol_verify(frame))
            case LinkOpen():
                self._spawn(stream_id, slot, self._relay.linking.open(self._peer_host()))
            case LinkPost():
                self._spawn(stream_id, slot, self._relay.linking.post(self._approver(), frame))
            case LinkFetch():
                self._link_fetch(stream_id, slot, frame)
            case GetSenderKeys():
                self._spawn(stream_id, slot, self._relay.sealed.handle(self.device, frame))
            case SealedMultiSend():
                if self._sealed is None:
                    self._sealed = SealedConnection()
                self._spawn(stream_id, slot, sealed_fan_out(
                    self._relay, frame, connection=self._sealed,
                    organisation_id=self.organisation_id))
            case SealedSend():
                # Allowed authenticated or not; either way nothing of this connection's device
                # goes with the send but its organisation, for "organisation" mode.
                if self._sealed is None:
                    self._sealed = SealedConnection()
                self._spawn(stream_id, slot, self._relay.sealed.send(
                    frame, connection=self._sealed, organisation_id=self.organisation_id))
            case _ if self._authenticated is not None:
                self._device_request(stream_id, slot, self._authenticated, frame)
            case _:  # the core releases a device's requests only once authenticated
                self._fill(stream_id, slot, _error(ErrorCode.UNEXPECTED_FRAME,
                                                   f"{type(frame).__name__} needs authentication"))

    def _device_request(self, stream_id: int, slot: _Slot, device: AuthenticatedDevice,
                        frame: Frame) -> None:
        match frame:
            case Send():
                self._submit_send(stream_id, slot, device, frame)
            case MultiSend():
                fan_out(self._relay, FanOutSender(user_id=device.user_id,
                                                  device_id=device.device_id,
                                                  organisation_id=device.organisation_id),
                        frame, functools.partial(self._fill, stream_id, slot))
            case Ack():
                self._submit_acknowledge(stream_id, slot, device, frame)
            case Lookup():
                self._spawn(stream_id, slot, self._lookup(device, frame))
            case UploadPrekeys() | FetchBundle() | GetPrekeyCounts() | ListDevices():
                self._spawn(stream_id, slot, self._relay.prekeys.handle(device.key, frame))
            case PublishDeviceList():
                self._spawn(stream_id, slot, self._relay.device_lists.publish(
                    device.key, frame, self._peer_host()))
            case GetSenderCertificate() | SetDeliveryToken():
                self._spawn(stream_id, slot, self._relay.sealed.handle(device.key, frame))
            case PushSet() | PushClear() | PushGet() if self._relay.push is not None:
                self._spawn(stream_id, slot, self._relay.push.handle(device.key, frame))
            case PushSet() | PushClear() | PushGet():
                self._fill(stream_id, slot, _error(ErrorCode.PUSH_PROVIDER_UNAVAILABLE,
                                                   "this relay sends no wake-up pushes"))
            case BlobCreate():
                self._spawn(stream_id, slot, self._relay.blobs.create(device, frame))
            case BlobStatus():
                self._spawn(stream_id, slot, self._relay.blobs.status(device, frame))
            case BlobUpload():
                self._slots.pop(stream_id, None)  # its stream's only request: answered there
                self._blobs.upload(stream_id, device, frame)
            case BlobDownload():
                self._slots.pop(stream_id, None)
                self._blobs.download(stream_id, frame)
            case CallOpen():
                self._spawn(stream_id, slot, self._relay.calls.open(self, frame))
            case CallJoin():
                self._spawn(stream_id, slot, self._relay.calls.join(self, frame))
            case CallLeave():
                self._fill(stream_id, slot, self._relay.calls.leave(self, frame))
            case _:  # the core's state table lets nothing else through
                self._fill(stream_id, slot, _error(ErrorCode.UNEXPECTED_FRAME,
                                                   f"{type(frame).__name__} is not a request"))

    # -- link channels -------------------------------------------------------------

    def _approver(self) -> str | None:
        """Whose side of a link channel this connection speaks for: the authenticated
        account's (the approver's), or None for a device without credentials (the new one)."""
        return None if self._authenticated is None else self._authenticated.user_id

    def _peer_host(self) -> str:
        return str(self._link.peer_address[0])

    def _link_fetch(self, stream_id: int, slot: _Slot, frame: LinkFetch) -> None:
        """A long poll, at most MAX_WAITING_LINK_FETCHES at once per connection; like every
        request task, it is cancelled when the connection ends."""
        if self._link_fetches >= MAX_WAITING_LINK_FETCHES:
            self._relay.metrics.linking["fetch", "rate_limited"] += 1
            self._fill(stream_id, slot, _error(
                ErrorCode.RATE_LIMITED,
                f"at most {MAX_WAITING_LINK_FETCHES} link fetches may wait per connection"))
            return
        self._link_fetches += 1

        async def fetch() -> bytes:
            try:
                return await self._relay.linking.fetch(self._approver(), frame)
            finally:
                self._link_fetches -= 1

        self._spawn(stream_id, slot, fetch())

    # -- response ordering -------------------------------------------------------

    def _reserve(self, stream_id: int) -> _Slot:
        slot = _Slot()
        self._slots.setdefault(stream_id, deque()).append(slot)
        return slot

    def _fill(self, stream_id: int, slot: _Slot, data: bytes, end_stream: bool = False) -> None:
        slot.data, slot.end_stream = data, end_stream
        queue = self._slots.get(stream_id)
        if queue is None:
            return  # the stream was reset meanwhile
        while queue and (ready_data := queue[0].data) is not None:
            ready = queue.popleft()
            if ready_data or ready.end_stream:  # an unanswered request leaves no bytes
                self._link.send_stream_data(stream_id, ready_data, ready.end_stream)
            if ready.end_stream:
                self._slots.pop(stream_id, None)
                self._ended_by_peer.discard(stream_id)
                return
        self._finish_if_answered(stream_id)

    def _finish_if_answered(self, stream_id: int) -> None:
        """End our side once the peer ended theirs and every request is answered,
        so that neither we nor aioquic keep state for finished streams."""
        if stream_id in self._ended_by_peer and not self._slots.get(stream_id):
            self._ended_by_peer.discard(stream_id)
            self._slots.pop(stream_id, None)
            self._link.send_stream_data(stream_id, b"", end_stream=True)

    def _spawn_task(self, work: Callable[[], Awaitable[None]]) -> trio.CancelScope:
        """Run ``work`` in a task this connection owns (cancelled when it ends); its scope."""
        scope = trio.CancelScope()
        self._requests.add(scope)

        async def run() -> None:
            try:
                with scope:
                    await work()
            finally:
                self._requests.discard(scope)

        self._relay.nursery.start_soon(run)
        return scope

    def _spawn(self, stream_id: int, slot: _Slot, work: Awaitable[bytes]) -> None:
        """Run ``work`` in a task this connection owns; its answer fills ``slot``."""
        scope = trio.CancelScope()
        self._requests.add(scope)

        async def run() -> None:
            try:
                with scope:
                    try:
                        data = await work
                    except Exception:
                        self._log.exception("request_failed")
                        data = _error(ErrorCode.INTERNAL_ERROR, "internal error")
                    self._fill(stream_id, slot, data)
            finally:
                self._requests.discard(scope)

        self._relay.nursery.start_soon(run)

    # -- requests ------------------------------------------------------------------

    def _submit_send(self, stream_id: int, slot: _Slot, device: AuthenticatedDevice,
                     frame: Send) -> None:
        user_id, device_id = device.key
        relay, settings = self._relay, self._relay.settings
        now = relay.now_ms()
        # Before any store work: a device over its budget costs the relay a dictionary look-up.
        wait_ms = relay.send_budgets.take(
            device.key, payload_bytes=sum(map(len, frame.payloads.values())), now=now)
        if wait_ms is not None:
            relay.metrics.rate_limited += 1
            relay.metrics.refused += 1
            relay.metrics.refusals["rate_limited"] += 1
            self._fill(stream_id, slot, encode_frame(Error(
                code=ErrorCode.RATE_LIMITED, retry_after_ms=wait_ms,
                reason=f"too many sends from this device (at most {settings.sends_per_minute} "
                       f"SENDs and {settings.send_bytes_per_minute / 2**20:g} MiB a minute); "
                       f"retry after {-(-wait_ms // 1000)} s")))
            return
        pending = self._store.submit_send(NewSend(
            sender_user_id=user_id, sender_device_id=device_id,
            recipient_user_id=frame.recipient_user_id,
            client_message_id=frame.client_message_id, payloads=frame.payloads,
            accepted_at=now, expires_at=now + _envelope_ttl_ms(frame, settings.envelope_ttl_ms),
            max_queue_depth=settings.max_queue_depth,
            max_sender_share=sender_queue_share(settings.max_queue_depth,
                                                settings.sender_queue_share_percent),
            exclude_device_id=device_id if frame.recipient_user_id == user_id else None,
            sender_organisation_id=device.organisation_id))

        submitted_at = trio.current_time()

        urgent, wakeups = frame.urgent, relay.wakeups

        def answer(outcome: SendOutcome | BaseException) -> None:
            self._relay.metrics.commit_latency.observe(trio.current_time() - submitted_at)
            self._relay.metrics.count_send(outcome)
            self._fill(stream_id, slot, _send_answer(outcome))
            if wakeups is not None and isinstance(outcome, SendOutcome) and outcome.envelopes:
                wakeups.note_committed(outcome.envelopes, urgent=urgent)

        self._relay.pipeline.submit(pending, answer)

    async def _authenticate(self, frame: Authenticate) -> bytes:
        """Check the answer, claim the device, then confirm: the held requests follow."""
        claimed = self._core.claimed_device
        if claimed is None:  # the core accepts AUTHENTICATE only after a HELLO
            self._core.refuse_authentication()
            return self._refuse(ErrorCode.AUTHENTICATION_FAILED, _AUTHENTICATION_REFUSED)
        principal = await self._store.load_principal(*claimed)
        if principal is None:
            return await self._refuse_gone(claimed, frame)
        if not self._core.check_authentication(frame.signature, principal.device.identity_key):
            return self._refuse(ErrorCode.AUTHENTICATION_FAILED, _AUTHENTICATION_REFUSED)
        if principal.organisation.state is not OrganisationState.ACTIVE:
            self._core.refuse_authentication()
            return self._refuse(ErrorCode.ORGANISATION_SUSPENDED,
                                f"organisation {principal.organisation.state.value}")
        device = AuthenticatedDevice(user_id=principal.user.user_id,
                                     device_id=principal.device.device_id,
                                     organisation_id=principal.organisation.organisation_id)
        # A store write on the device's first authentication of the day only (like the read
        # above, the connection may end meanwhile: what follows copes).
        await self._relay.last_seen.authenticated(*device.key)
        cluster = self._relay.cluster
        if cluster is not None:
            # Held cluster-wide before the pump's first read (see relay.cluster).
            try:
                await cluster.claim(device.key, self)
            except DeviceGone:  # deleted since load_principal read it
                self._core.refuse_authentication()
                notice = await self._store.revoked_device(*device.key)
                return self._refuse(ErrorCode.DEVICE_REVOKED, "this device was revoked"
                                    if notice is None else notice.reason)
            if self._core.state is ConnectionState.CLOSED:  # the connection ended meanwhile
                cluster.release(device.key, self)
                return b""
        self._authenticated = device
        self._log = self._log.bind(organisation_id=device.organisation_id)
        self._relay.attach(self)
        self._start_pump(device)
        self._log.info("device_authenticated")
        answer = encode_frame(Authenticated())
        for event in self._core.confirm_authentication():  # requests sent behind AUTHENTICATE
            self._dispatch(event)
        return answer

    async def _refuse_gone(self, claimed: tuple[str, int], frame: Authenticate) -> bytes:
        """The claimed device does not exist. If it was revoked with a notice and the answer
        verifies with the key it had, tell it why (DEVICE_REVOKED and the notice's reason: an
        old phone that was off learns what happened); otherwise the same refusal as a bad
        signature, so that a prober learns nothing."""
        notice = await self._store.revoked_device(*claimed)
        if notice is None:
            self._core.refuse_authentication()
        elif self._core.check_authentication(frame.signature, notice.identity_key):
            self._core.refuse_authentication()
            return self._refuse(ErrorCode.DEVICE_REVOKED, notice.reason)
        return self._refuse(ErrorCode.AUTHENTICATION_FAILED, _AUTHENTICATION_REFUSED)

    def _refuse(self, code: ErrorCode, reason: str) -> bytes:
        """Answer with the error, then close: closing at once would discard the answer."""
        self._log.info("authentication_refused", code=code.name)
        self._stop(keep_answers=True)

        async def close_once_sent() -> None:
            await self._relay.endpoint_drained()
            self._link.close(int(code), reason)

        self._relay.nursery.start_soon(close_once_sent)
        return _error(code, reason)

    def push(self, data: bytes) -> None:
        """Write an encoded push frame (not a DELIVER) on this device's push stream."""
        if self._push_stream is not None and not self._link.closed.is_set():
            self._link.send_stream_data(self._push_stream, data)

    @property
    def connected(self) -> bool:
        """False once the connection ended."""
        return self._core.state is not ConnectionState.CLOSED

    def send_datagram(self, data: bytes) -> bool:
        """Queue one QUIC DATAGRAM (call media); False if it was dropped."""
        return self._link.send_datagram(data)

    def _start_pump(self, device: AuthenticatedDevice) -> None:
        stream_id = self._link.new_stream(unidirectional=True)
        self._push_stream = stream_id
        pump = DeliveryPump(store=self._store, device=device.key,
                            write=lambda data: self._link.send_stream_data(stream_id, data),
                            now_ms=self._relay.now_ms, nursery=self._relay.nursery,
                            on_pushed=self._relay.metrics.count_delivered)
        self._pump = pump
        self._relay.presence.attach(pump)
        pump.start()

    def _over_connection_allowance(self, step: str) -> bytes | None:
        """The refusal of an enrolment request over this connection's allowance (counted
        here, before any task or store work: a flood on one connection costs only this), or
        None if it may go on. The allowances exist once the connection first enrols."""
        now = self._relay.now_ms()
        allowance = self._enrolment_allowances.get(step)
        if allowance is None:
            capacity = (ENROL_STARTS_PER_CONNECTION if step == "start"
                        else ENROL_VERIFIES_PER_CONNECTION)
            allowance = Allowance(capacity, CONNECTION_PERIOD_MS, now=now)
            self._enrolment_allowances[step] = allowance
        wait_ms = allowance.take(now)
        if wait_ms is None:
            return None
        return self._enrolment_refused(step, RateLimited(
            "too many enrolment requests on this connection", retry_after_ms=wait_ms))

    async def _enrol_start(self, frame: EnrolStart) -> bytes:
        try:
            await self._relay.enrolment.start(frame.phone, self._relay.now_ms(),
                                              address=address_key(self._peer_host()))
        except InvalidPhoneNumber as error:
            return self._enrolment_answer("start", ErrorCode.INVALID_PHONE_NUMBER, str(error))
        except EnrolmentError as error:
            return self._enrolment_refused("start", error)
        self._relay.metrics.enrolment["start", "ok"] += 1
        return encode_frame(EnrolStarted())

    async def _enrol_verify(self, frame: EnrolVerify) -> bytes:
        relay = self._relay
        try:
            registration = await relay.enrolment.verify(
                frame.phone, frame.code, frame.identity_key, frame.account_key,
                frame.device_list, relay.now_ms(), address=address_key(self._peer_host()))
        except InvalidPhoneNumber as error:
            return self._enrolment_answer("verify", ErrorCode.INVALID_PHONE_NUMBER, str(error))
        except EnrolmentError as error:
            return self._enrolment_refused("verify", error)
        device = registration.device
        # A new account for the number: its earlier devices are revoked (here at once; on other
        # nodes by the store's revocation notification).
        closed = relay.revoke_devices(device.user_id, registration.revoked,
                                      REENROLMENT_REVOKE_REASON)
        relay.metrics.revoked_devices += closed
        await audit_device_changes(
            self._store, user_id=device.user_id, device_id=device.device_id,
            actor=ENROLMENT_ACTOR, address=self._peer_host(), now=relay.now_ms(),
            changes=[("device.revoked_by_new_enrolment", revoked)
                     for revoked in registration.revoked])
        relay.metrics.enrolment["verify", "ok"] += 1
        self._log.info("device_enrolled", devices_revoked=len(registration.revoked),
                       connections_closed=closed)
        return encode_frame(Enrolled(user_id=device.user_id, device_id=device.device_id))

    def _enrolment_refused(self, step: str, error: EnrolmentError) -> bytes:
        """The ERROR answering an enrolment request that ``error`` refused; a RATE_LIMITED one
        says when to retry (``retry_after_ms``, at most what the field holds)."""
        retry_after_ms = (min(error.retry_after_ms, MAX_RETRY_AFTER_MS)
                          if isinstance(error, RateLimited) else None)
        return self._enrolment_answer(step, _enrolment_code(error), str(error),
                                      retry_after_ms=retry_after_ms)

    def _enrolment_answer(self, step: str, code: ErrorCode, reason: str, *,
                          retry_after_ms: int | None = None) -> bytes:
        self._relay.metrics.enrolment[step, code.name.lower()] += 1
        return encode_frame(Error(code=code, reason=reason, retry_after_ms=retry_after_ms))

    async def _lookup(self, device: AuthenticatedDevice, frame: Lookup) -> bytes:
        if not await self._store.take_tokens(
                key=f"lookup {device.user_id} {device.device_id}", cost=len(frame.phones),
                capacity=LOOKUPS_PER_MINUTE, period_ms=LOOKUP_PERIOD_MS,
                now=self._relay.now_ms()):
            self._relay.metrics.rate_limited += 1
            return _error(ErrorCode.RATE_LIMITED, "too many look-ups; retry later")
        entries = []
        for text in frame.phones:
            try:
                phone = parse_phone(text)
            except InvalidPhoneNumber as error:
                return _error(ErrorCode.INVALID_PHONE_NUMBER, str(error))
            entry = await self._directory_entry(device, phone)
            if entry is not None:
                entries.append(entry)
        return encode_frame(LookupResult(entries=tuple(entries)))

    async def _directory_entry(self, device: AuthenticatedDevice,
                               phone: str) -> DirectoryEntry | None:
        store = self._store
        user = await store.find_user_by_phone(phone)
        if user is None or user.state is not UserState.ENROLLED:
            return None
        devices = await store.list_devices(user.user_id)
        if not devices:
            return None
        principal = await store.load_principal(user.user_id, devices[0].device_id)
        if principal is None or principal.organisation.state is not OrganisationState.ACTIVE:
            return None  # users of a suspended organisation cannot be reached
        if not await may_reach(store, from_organisation_id=device.organisation_id,
                               to_organisation_id=principal.organisation.organisation_id):
            return None  # the organisations' policy keeps them apart: as if unknown
        return DirectoryEntry(phone=phone, user_id=user.user_id,
                              device_ids=tuple(device.device_id for device in devices))

    def _submit_acknowledge(self, stream_id: int, slot: _Slot, device: AuthenticatedDevice,
                            frame: Ack) -> None:
        if self._pump is not None:
            # Counted as acknowledged now: the delete commits in submission order, and an
            # envelope whose delete failed is still queued and read back on reconnection.
            self._pump.acknowledged(frame.envelope_ids)
        pending = self._store.submit_acknowledge(
            user_id=device.user_id, device_id=device.device_id, envelope_ids=frame.envelope_ids)

        def answer(outcome: int | BaseException) -> None:
            if isinstance(outcome, BaseException):
                self._fill(stream_id, slot, _error(ErrorCode.INTERNAL_ERROR,
                                                   "the acknowledgement could not be stored"))
                return
            self._relay.metrics.acknowledged += outcome
            # A quiet ACK sends nothing back; later answers on the stream keep their order.
            self._fill(stream_id, slot, encode_frame(Acked(count=outcome)) if frame.answer
                       else b"")

        self._relay.pipeline.submit_write(pending, answer)

    # -- closing -------------------------------------------------------------------

    def close(self, code: ErrorCode, reason: str) -> None:
        """Close the connection now with an application error code."""
        self._link.close(int(code), reason)
        self._stop()

    def _terminated(self) -> None:
        self._stop()

    def _stop(self, *, keep_answers: bool = False) -> None:
        """The connection is over: stop its pump, its presence and (unless an answer must still
        leave) its requests in flight."""
        if self._core.state is not ConnectionState.CLOSED:
            self._core.close()
        if not keep_answers:
            for scope in self._requests:
                scope.cancel()
            self._blobs.close()
        if self._pump is not None:
            self._pump.close()
            self._relay.presence.detach(self._pump)
        self._relay.calls.disconnect(self)
        if self.device is not None and self._relay.cluster is not None:
            self._relay.cluster.release(self.device, self)
        self._relay.detach(self)
        if not keep_answers:
            self._slots.clear()


def _envelope_ttl_ms(frame: Send, envelope_ttl_ms: int) -> int:
    """How long the envelopes of ``frame`` wait for their devices: an urgent one (call
    signalling) is ephemeral, CALL_SIGNAL_TTL_MS at most (PROTOCOL.md "Calls")."""
    return min(CALL_SIGNAL_TTL_MS, envelope_ttl_ms) if frame.urgent else envelope_ttl_ms


def _error(code: ErrorCode, reason: str, *, retry_after_ms: int | None = None) -> bytes:
    return encode_frame(Error(code=code, reason=reason, retry_after_ms=retry_after_ms))


def _enrolment_code(error: EnrolmentError) -> ErrorCode:
    return next((code for kind, code in _ENROLMENT_ERRORS.items() if isinstance(error, kind)),
                ErrorCode.INVALID_REQUEST)


def _send_answer(outcome: SendOutcome | BaseException) -> bytes:
    if isinstance(outcome, BaseException):
        return _error(ErrorCode.INTERNAL_ERROR, "the send could not be stored; retry")
    if outcome.status in (SendStatus.ACCEPTED, SendStatus.DUPLICATE):
        return encode_frame(SendAccepted(duplicate=outcome.status is SendStatus.DUPLICATE))
    code, reason = _SEND_REFUSALS[outcome.status]
    return encode_frame(Error(code=code, reason=reason,
                              missing_devices=outcome.missing_devices,
                              extra_devices=outcome.extra_devices,
                              full_devices=outcome.full_devices))

