"""One device connection on the server: glue between the QUIC link, the sans-IO
protocol core, enrolment, the store and delivery.

Everything here runs in the relay's trio thread. ``quic_events`` is
synchronous: frames are decoded and sends are submitted to the store in the
order they arrived; slow work (store reads, enrolment) runs in tasks of the
relay's nursery and answers through per-stream response slots, so answers on
one stream keep the order of its requests.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Awaitable

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
from relay.cluster import DeviceGone
from relay.context import RelayContext
from relay.delivery import DeliveryPump
from relay.limits import LOOKUP_PERIOD_MS, LOOKUPS_PER_MINUTE
from relay.reachability import may_reach
from storage.base import NewSend, OrganisationState, SendOutcome, SendStatus, UserState
from transport.quic import QuicLink
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
from wire.phone import InvalidPhoneNumber, parse_phone
from wire.prekey_frames import FetchBundle, GetPrekeyCounts, ListDevices, UploadPrekeys
from wire.protocol import (
    AuthenticationRequested,
    ConnectionState,
    RequestReceived,
    ServerProtocol,
    StreamEnded,
    StreamFailed,
)

__all__ = ["DeviceSession"]

log = structlog.get_logger("relay.session")

_ENROLMENT_ERRORS: dict[type[EnrolmentError], ErrorCode] = {
    RateLimited: ErrorCode.RATE_LIMITED,
    VerificationFailed: ErrorCode.VERIFICATION_FAILED,
    TooManyDevices: ErrorCode.TOO_MANY_DEVICES,
    OrganisationInactive: ErrorCode.ORGANISATION_SUSPENDED,
    InvalidRequest: ErrorCode.INVALID_REQUEST,
}

_SEND_REFUSALS: dict[SendStatus, tuple[ErrorCode, str]] = {
    SendStatus.UNKNOWN_RECIPIENT: (ErrorCode.UNKNOWN_RECIPIENT, "no such recipient"),
    SendStatus.MISMATCHED_DEVICES: (ErrorCode.MISMATCHED_DEVICES,
                                    "the payloads do not address the recipient's devices"),
    SendStatus.QUEUE_FULL: (ErrorCode.QUEUE_FULL,
                            "a recipient device's queue is full; retry later"),
    SendStatus.ORGANISATION_SUSPENDED: (ErrorCode.ORGANISATION_SUSPENDED,
                                        "organisation suspended"),
}


class _Slot:
    __slots__ = ("data", "end_stream")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.end_stream = False


class DeviceSession:
    """Server side of one QUIC connection (enrolling, then one authenticated device)."""

    def __init__(self, relay: RelayContext, link: QuicLink) -> None:
        self._relay = relay
        self._link = link
        self._core = ServerProtocol()
        self._slots: dict[int, deque[_Slot]] = {}
        self._ended_by_peer: set[int] = set()
        self._pump: DeliveryPump | None = None
        self._push_stream: int | None = None
        self.device: tuple[str, int] | None = None
        self.organisation_id: int | None = None
        """The authenticated device's organisation (reachability policy)."""
        self._log = log.bind(connection_id=link.connection_id)
        relay.metrics.connections_opened += 1

    # -- QUIC events -----------------------------------------------------------

    def quic_events(self, link: QuicLink, batch: list[quic_events.QuicEvent]) -> None:
        for event in batch:
            if isinstance(event, quic_events.StreamDataReceived):
                for core_event in self._core.receive_stream_data(
                        event.stream_id, event.data, event.end_stream):
                    self._dispatch(core_event)
            elif isinstance(event, quic_events.StopSendingReceived):
                if event.stream_id == self._push_stream:
                    # Deliveries have nowhere to go: stop rather than fill the queue of
                    # unacknowledged envelopes (they stay stored for the next connection).
                    self.close(ErrorCode.UNEXPECTED_FRAME,
                               "the delivery stream was stopped; deliveries need it")
                # A request stream's answers are dropped by the link (the peer refused them).
            elif isinstance(event, quic_events.StreamReset):
                self._core.stream_reset(event.stream_id)
                self._slots.pop(event.stream_id, None)
                self._ended_by_peer.discard(event.stream_id)
            elif isinstance(event, quic_events.ConnectionTerminated):
                self._terminated()

    def _dispatch(self, event: object) -> None:
        if isinstance(event, RequestReceived):
            self._request(event.stream_id, event.frame)
        elif isinstance(event, AuthenticationRequested):
            slot = self._reserve(event.stream_id)
            self._fill(event.stream_id, slot, self._core.issue_challenge(secrets.token_bytes(32)))
        elif isinstance(event, StreamFailed):
            slot = self._reserve(event.stream_id)
            self._fill(event.stream_id, slot, _error(event.error.code, event.error.reason),
                       end_stream=True)
        elif isinstance(event, StreamEnded):
            self._ended_by_peer.add(event.stream_id)
            self._finish_if_answered(event.stream_id)

    def _request(self, stream_id: int, frame: Frame) -> None:
        slot = self._reserve(stream_id)
        if isinstance(frame, Send):
            self._submit_send(stream_id, slot, frame)
        elif isinstance(frame, Authenticate):
            self._spawn(stream_id, slot, self._authenticate(frame))
        elif isinstance(frame, EnrolStart):
            self._spawn(stream_id, slot, self._enrol_start(frame))
        elif isinstance(frame, EnrolVerify):
            self._spawn(stream_id, slot, self._enrol_verify(frame))
        elif isinstance(frame, Lookup):
            self._spawn(stream_id, slot, self._lookup(frame))
        elif isinstance(frame, Ack):
            self._submit_acknowledge(stream_id, slot, frame)
        elif isinstance(frame, UploadPrekeys | FetchBundle | GetPrekeyCounts | ListDevices):
            assert self.device is not None  # the state table allows them only when authenticated
            self._spawn(stream_id, slot, self._relay.prekeys.handle(self.device, frame))
        else:  # the core's state table lets nothing else through
            self._fill(stream_id, slot, _error(ErrorCode.UNEXPECTED_FRAME,
                                               f"{type(frame).__name__} is not a request"))

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
        while queue and queue[0].data is not None:
            ready = queue.popleft()
            assert ready.data is not None
            if ready.data or ready.end_stream:  # an unanswered request leaves no bytes
                self._link.send_stream_data(stream_id, ready.data, ready.end_stream)
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

    def _spawn(self, stream_id: int, slot: _Slot, work: Awaitable[bytes]) -> None:
        async def run() -> None:
            try:
                data = await work
            except Exception:
                self._log.exception("request_failed")
                data = _error(ErrorCode.INTERNAL_ERROR, "internal error")
            self._fill(stream_id, slot, data)

        self._relay.nursery.start_soon(run)

    # -- requests ------------------------------------------------------------------

    def _submit_send(self, stream_id: int, slot: _Slot, frame: Send) -> None:
        assert self.device is not None  # the state table only lets SEND through when authenticated
        user_id, device_id = self.device
        now = self._relay.now_ms()
        pending = self._relay.store.submit_send(NewSend(
            sender_user_id=user_id, sender_device_id=device_id,
            recipient_user_id=frame.recipient_user_id,
            client_message_id=frame.client_message_id, payloads=frame.payloads,
            accepted_at=now, expires_at=now + self._relay.settings.envelope_ttl_ms,
            max_queue_depth=self._relay.settings.max_queue_depth,
            exclude_device_id=device_id if frame.recipient_user_id == user_id else None,
            sender_organisation_id=self.organisation_id))

        submitted_at = trio.current_time()

        def answer(outcome: SendOutcome | BaseException) -> None:
            self._relay.metrics.commit_latency.observe(trio.current_time() - submitted_at)
            self._relay.metrics.count_send(outcome)
            self._fill(stream_id, slot, _send_answer(outcome))

        self._relay.pipeline.submit(pending, answer)

    async def _authenticate(self, frame: Authenticate) -> bytes:
        claimed = self._core.claimed_device
        principal = None
        if claimed is not None:
            principal = await self._relay.store.load_principal(*claimed)
        if principal is None:
            self._core.check_authentication(frame.signature, bytes(32))  # consume the nonce
            return self._refuse(ErrorCode.AUTHENTICATION_FAILED, "unknown or revoked device")
        if not self._core.check_authentication(frame.signature, principal.device.identity_key):
            return self._refuse(ErrorCode.AUTHENTICATION_FAILED, "the signature does not verify")
        if principal.organisation.state is not OrganisationState.ACTIVE:
            return self._refuse(ErrorCode.ORGANISATION_SUSPENDED,
                                f"organisation {principal.organisation.state.value}")
        if self._link.closed.is_set():
            return b""
        device = (principal.user.user_id, principal.device.device_id)
        cluster = self._relay.cluster
        if cluster is not None:
            # Held cluster-wide before the pump's first read (see relay.cluster).
            try:
                await cluster.claim(device, self)
            except DeviceGone:  # deleted since load_principal read it
                return self._refuse(ErrorCode.DEVICE_REVOKED, "this device was revoked")
            if self._link.closed.is_set():
                cluster.release(device, self)
                return b""
        self.device = device
        self.organisation_id = principal.organisation.organisation_id
        self._log = self._log.bind(organisation_id=principal.organisation.organisation_id)
        self._relay.attach(self)
        self._start_pump()
        self._log.info("device_authenticated")
        return encode_frame(Authenticated())

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

    def _start_pump(self) -> None:
        stream_id = self._link.new_stream(unidirectional=True)
        self._push_stream = stream_id
        assert self.device is not None
        pump = DeliveryPump(store=self._relay.store, device=self.device,
                            write=lambda data: self._link.send_stream_data(stream_id, data),
                            now_ms=self._relay.now_ms, nursery=self._relay.nursery,
                            on_pushed=self._relay.metrics.count_delivered)
        self._pump = pump
        self._relay.presence.attach(pump)
        pump.start()

    async def _enrol_start(self, frame: EnrolStart) -> bytes:
        try:
            await self._relay.enrolment.start(frame.phone, self._relay.now_ms())
        except InvalidPhoneNumber as error:
            return self._enrolment_refused("start", ErrorCode.INVALID_PHONE_NUMBER, str(error))
        except EnrolmentError as error:
            return self._enrolment_refused("start", _enrolment_code(error), str(error))
        self._relay.metrics.enrolment["start", "ok"] += 1
        return encode_frame(EnrolStarted())

    async def _enrol_verify(self, frame: EnrolVerify) -> bytes:
        try:
            device = await self._relay.enrolment.verify(
                frame.phone, frame.code, frame.identity_key, self._relay.now_ms())
        except InvalidPhoneNumber as error:
            return self._enrolment_refused("verify", ErrorCode.INVALID_PHONE_NUMBER, str(error))
        except EnrolmentError as error:
            return self._enrolment_refused("verify", _enrolment_code(error), str(error))
        self._relay.metrics.enrolment["verify", "ok"] += 1
        self._log.info("device_enrolled")
        return encode_frame(Enrolled(user_id=device.user_id, device_id=device.device_id))

    def _enrolment_refused(self, step: str, code: ErrorCode, reason: str) -> bytes:
        self._relay.metrics.enrolment[step, code.name.lower()] += 1
        return _error(code, reason)

    async def _lookup(self, frame: Lookup) -> bytes:
        assert self.device is not None
        if not await self._relay.store.take_tokens(
                key=f"lookup {self.device[0]} {self.device[1]}", cost=len(frame.phones),
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
            entry = await self._directory_entry(phone)
            if entry is not None:
                entries.append(entry)
        return encode_frame(LookupResult(entries=tuple(entries)))

    async def _directory_entry(self, phone: str) -> DirectoryEntry | None:
        store = self._relay.store
        user = await store.find_user_by_phone(phone)
        if user is None or user.state is not UserState.ENROLLED:
            return None
        devices = await store.list_devices(user.user_id)
        if not devices:
            return None
        principal = await store.load_principal(user.user_id, devices[0].device_id)
        if principal is None or principal.organisation.state is not OrganisationState.ACTIVE:
            return None  # users of a suspended organisation cannot be reached
        if not await may_reach(store, from_organisation_id=self.organisation_id,
                               to_organisation_id=principal.organisation.organisation_id):
            return None  # the organisations' policy keeps them apart: as if unknown
        return DirectoryEntry(phone=phone, user_id=user.user_id,
                              device_ids=tuple(device.device_id for device in devices))

    def _submit_acknowledge(self, stream_id: int, slot: _Slot, frame: Ack) -> None:
        assert self.device is not None  # the state table only lets ACK through when authenticated
        if self._pump is not None:
            # Counted as acknowledged now: the delete commits in submission order, and an
            # envelope whose delete failed is still queued and read back on reconnection.
            self._pump.acknowledged(frame.envelope_ids)
        pending = self._relay.store.submit_acknowledge(
            user_id=self.device[0], device_id=self.device[1], envelope_ids=frame.envelope_ids)

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
        if self._core.state is not ConnectionState.CLOSED:
            self._core.close()
        if self._pump is not None:
            self._pump.close()
            self._relay.presence.detach(self._pump)
        if self.device is not None and self._relay.cluster is not None:
            self._relay.cluster.release(self.device, self)
        self._relay.detach(self)
        if not keep_answers:
            self._slots.clear()


def _error(code: ErrorCode, reason: str) -> bytes:
    return encode_frame(Error(code=code, reason=reason))


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

