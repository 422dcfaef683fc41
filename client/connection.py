"""The reference client library: what a Cryptopass app does, over real QUIC.

    async with connect_relay("127.0.0.1", 4433, ca=Path("cert.pem")) as client:
        await client.authenticate(user_id, device_id, signing_key)
        await client.send(recipient_user_id, {1: ciphertext}, client_message_id=7)
        async for delivery in client.deliveries():
            ...  # hand it over, then
            client.acknowledge(delivery.envelope_id)

Requests each open their own stream, except sends, which share one stream
so that the relay commits them in the order they were made while many are
in flight (see docs/PROTOCOL.md, "Ordering").
"""

from __future__ import annotations

import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from nacl.signing import SigningKey

from transport.quic import QuicEndpoint, QuicLink, open_udp_socket
from wire.codec import encode_frame
from wire.frames import (
    ALPN,
    Ack,
    Authenticate,
    Challenge,
    Deliver,
    DirectoryEntry,
    Enrolled,
    EnrolStart,
    EnrolVerify,
    Error,
    ErrorCode,
    Frame,
    Hello,
    Lookup,
    LookupResult,
    QueueEmpty,
    Send,
    SendAccepted,
    auth_transcript,
)
from wire.prekey_frames import (
    Bundle,
    DeviceBundle,
    DeviceInfo,
    DeviceList,
    FetchBundle,
    GetPrekeyCounts,
    KemPrekey,
    ListDevices,
    OneTimePrekey,
    PrekeyCounts,
    PrekeysLow,
    PrekeysUploaded,
    SignedPrekey,
    UploadPrekeys,
)
from wire.protocol import ClientProtocol, PushReceived, ResponseReceived, StreamFailed

__all__ = ["ConnectionClosed", "RelayClient", "RelayError", "connect_relay"]

KEEPALIVE_SECONDS = 15.0
"""PING interval, well under the relay's 60 s idle timeout."""

SETTLE_SECONDS = 5.0
"""How long closing waits for the relay to confirm pending acknowledgements."""

ACK_FLUSH_DELAY_SECONDS = 0.01
"""How long acknowledgements gather before they leave (see _flush_acks_soon)."""

ACK_FLUSH_MAX = 512
"""Envelope ids per ACK frame sent by the client (the protocol allows 1024)."""


class RelayError(Exception):
    """The relay answered a request with an ERROR frame."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code.name}: {error.reason}")
        self.code = error.code
        self.reason = error.reason
        self.error = error


class ConnectionClosed(Exception):
    """The connection ended; ``code`` is the application error code when there is one."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed ({_code_name(code)}): {reason}")
        self.code = code
        self.reason = reason


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


class _Waiter:
    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Frame | BaseException | None = None


Delivery = Deliver | QueueEmpty


class RelayClient:
    """One connection to a relay. Use ``connect_relay`` to make one."""

    def __init__(self) -> None:
        self._core = ClientProtocol()
        self._link: QuicLink | None = None
        self._waiters: dict[int, deque[_Waiter]] = {}
        self._handshake = trio.Event()
        self._closed: ConnectionClosed | None = None
        self._pushes: deque[Delivery] = deque()
        self._push_event = trio.Event()
        self._prekeys_low: deque[PrekeysLow] = deque()
        self._prekeys_low_event = trio.Event()
        self._send_stream: int | None = None
        self._ack_stream: int | None = None
        self._pending_acks: list[int] = []
        self._nursery: trio.Nursery | None = None
        self._unconfirmed_ack: int | None = None  # last id sent in an unanswered ACK
        self.user_id: str | None = None
        self.device_id: int | None = None

    # -- the handler side (called by the endpoint) --------------------------------

    def quic_events(self, link: QuicLink, batch: list[quic_events.QuicEvent]) -> None:
        for event in batch:
            if isinstance(event, quic_events.HandshakeCompleted):
                self._handshake.set()
            elif isinstance(event, quic_events.StreamDataReceived):
                for core_event in self._core.receive_stream_data(
                        event.stream_id, event.data, event.end_stream):
                    self._core_event(core_event)
            elif isinstance(event, quic_events.ConnectionTerminated):
                self._fail_all(ConnectionClosed(event.error_code, event.reason_phrase))

    def _core_event(self, event: object) -> None:
        if isinstance(event, ResponseReceived):
            queue = self._waiters.get(event.stream_id)
            if queue:
                waiter = queue.popleft()
                waiter.result = event.frame
                waiter.done.set()
                if not queue and event.stream_id not in (self._send_stream, self._ack_stream):
                    del self._waiters[event.stream_id]  # a one-request stream is done
        elif isinstance(event, PushReceived):
            if isinstance(event.frame, Deliver | QueueEmpty):
                self._pushes.append(event.frame)
                self._push_event.set()
            elif isinstance(event.frame, PrekeysLow):
                self._prekeys_low.append(event.frame)
                self._prekeys_low_event.set()
        elif isinstance(event, StreamFailed):
            queue = self._waiters.pop(event.stream_id, deque())
            for waiter in queue:
                waiter.result = event.error
                waiter.done.set()

    def _fail_all(self, error: ConnectionClosed) -> None:
        self._closed = error
        self._handshake.set()
        for queue in self._waiters.values():
            for waiter in queue:
                waiter.result = error
                waiter.done.set()
        self._waiters.clear()
        self._push_event.set()
        self._prekeys_low_event.set()

    # -- requests --------------------------------------------------------------------

    async def request(self, frame: Frame, *, stream_id: int | None = None) -> Frame:
        """Send one request and wait for its answer; raise RelayError on an ERROR frame."""
        if self._closed is not None:
            raise self._closed
        link = self._link
        assert link is not None
        if stream_id is None:
            stream_id = link.new_stream()
            end_stream = True
        else:
            end_stream = False
        waiter = _Waiter()
        self._waiters.setdefault(stream_id, deque()).append(waiter)
        link.send_stream_data(stream_id, encode_frame(frame), end_stream)
        await waiter.done.wait()
        result = waiter.result
        if isinstance(result, BaseException):
            raise result
        if isinstance(result, Error):
            raise RelayError(result)
        assert result is not None
        return result

    async def enrol_start(self, phone: str) -> None:
        await self.request(EnrolStart(phone=phone))

    async def enrol_verify(self, phone: str, code: str, identity_key: bytes) -> tuple[str, int]:
        answer = await self.request(EnrolVerify(phone=phone, code=code,
                                                identity_key=identity_key))
        assert isinstance(answer, Enrolled)
        return answer.user_id, answer.device_id

    async def authenticate(self, user_id: str, device_id: int, signing_key: SigningKey) -> None:
        """Prove possession of the device key; the relay then starts delivering."""
        challenge = await self.request(Hello(user_id=user_id, device_id=device_id))
        assert isinstance(challenge, Challenge)
        transcript = auth_transcript(nonce=challenge.nonce, user_id=user_id, device_id=device_id)
        await self.request(Authenticate(signature=signing_key.sign(transcript).signature))
        self.user_id, self.device_id = user_id, device_id

    async def lookup(self, phones: Sequence[str]) -> list[DirectoryEntry]:
        answer = await self.request(Lookup(phones=tuple(phones)))
        assert isinstance(answer, LookupResult)
        return list(answer.entries)

    # -- prekeys (PROTOCOL.md "Prekeys") -----------------------------------------------

    async def upload_prekeys(self, *, signed_prekey: SignedPrekey | None = None,
                             kem_last_resort_prekey: KemPrekey | None = None,
                             one_time_prekeys: Sequence[OneTimePrekey] = (),
                             kem_one_time_prekeys: Sequence[KemPrekey] = ()) -> PrekeysUploaded:
        """Publish this device's prekeys (at most MAX_PREKEYS_PER_UPLOAD per one-time kind).

        Raises:
            RelayError: INVALID_PREKEY_SIGNATURE or PREKEY_POOL_FULL (nothing was stored).
        """
        answer = await self.request(UploadPrekeys(
            signed_prekey=signed_prekey, kem_last_resort_prekey=kem_last_resort_prekey,
            one_time_prekeys=tuple(one_time_prekeys),
            kem_one_time_prekeys=tuple(kem_one_time_prekeys)))
        assert isinstance(answer, PrekeysUploaded)
        return answer

    async def fetch_bundle(self, user_id: str,
                           device_ids: Sequence[int] = ()) -> list[DeviceBundle]:
        """Claim a bundle per current device of ``user_id`` (only ``device_ids`` if given;
        never this device itself). Verify every signature before using a bundle.

        Raises:
            RelayError: UNKNOWN_RECIPIENT, or RATE_LIMITED.
        """
        answer = await self.request(FetchBundle(user_id=user_id, device_ids=tuple(device_ids)))
        assert isinstance(answer, Bundle)
        return list(answer.bundles)

    async def prekey_counts(self) -> PrekeyCounts:
        """How many prekeys the relay holds for this device."""
        answer = await self.request(GetPrekeyCounts())
        assert isinstance(answer, PrekeyCounts)
        return answer

    async def list_devices(self, user_id: str | None = None) -> list[DeviceInfo]:
        """The current devices of ``user_id`` (by default this device's own user)."""
        answer = await self.request(ListDevices(user_id=user_id))
        assert isinstance(answer, DeviceList)
        return list(answer.devices)

    async def next_prekeys_low(self) -> PrekeysLow:
        """Wait for the relay to say a one-time pool of this device runs low."""
        while not self._prekeys_low:
            if self._closed is not None:
                raise self._closed
            await self._prekeys_low_event.wait()
            self._prekeys_low_event = trio.Event()
        return self._prekeys_low.popleft()

    async def send(self, recipient_user_id: str, payloads: Mapping[int, bytes], *,
                   client_message_id: int) -> bool:
        """Send one envelope per recipient device; returns True if it was a re-send.

        Sends made from one client are committed in the order they were made.
        """
        if self._send_stream is None:
            assert self._link is not None
            self._send_stream = self._link.new_stream()
        answer = await self.request(
            Send(recipient_user_id=recipient_user_id, client_message_id=client_message_id,
                 payloads=dict(payloads)), stream_id=self._send_stream)
        assert isinstance(answer, SendAccepted)
        return answer.duplicate

    def acknowledge(self, envelope_id: int) -> None:
        """Mark a delivery handed over; acknowledgements leave in batches."""
        self._pending_acks.append(envelope_id)
        if len(self._pending_acks) == 1 and self._nursery is not None:
            self._nursery.start_soon(self._flush_acks_soon)
        elif len(self._pending_acks) >= ACK_FLUSH_MAX:
            self._flush_acks()

    async def _flush_acks_soon(self) -> None:
        # Every id acknowledged meanwhile shares one ACK frame, which often
        # rides in the same packet as a send: an acknowledgement only frees
        # the relay's storage, so a few milliseconds cost no delivery latency.
        await trio.sleep(ACK_FLUSH_DELAY_SECONDS)
        self._flush_acks()

    def _flush_acks(self) -> None:
        link = self._link
        if link is None or self._closed is not None:
            return
        if self._pending_acks and self._ack_stream is None:
            # One long-lived stream for every ACK: opening a stream per batch
            # costs stream frames and credit updates in both directions.
            self._ack_stream = link.new_stream()
        while self._pending_acks:
            batch = self._pending_acks[:ACK_FLUSH_MAX]
            del self._pending_acks[:ACK_FLUSH_MAX]
            assert self._ack_stream is not None
            # No answer: an ACKED would cost the relay a packet, and us an
            # ACK-only packet back, for each batch. settle() asks for one.
            link.send_stream_data(self._ack_stream, encode_frame(
                Ack(envelope_ids=tuple(batch), answer=False)))
            self._unconfirmed_ack = batch[-1]

    async def settle(self) -> None:
        """Send pending acknowledgements and wait until the relay has them.

        Closing a QUIC connection discards stream data not yet sent, so a client
        that closes right after handing messages over must settle first, or the
        relay would deliver them again on the next connection. The relay
        answers the requests of one stream in order, so one answered ACK (of an
        id already acknowledged: acknowledging is idempotent) confirms every
        unanswered one before it.
        """
        self._flush_acks()
        last, self._unconfirmed_ack = self._unconfirmed_ack, None
        if last is not None and self._ack_stream is not None and self._closed is None:
            await self.request(Ack(envelope_ids=(last,)), stream_id=self._ack_stream)

    async def deliveries(self) -> AsyncIterator[Delivery]:
        """Deliveries in queue order, then QUEUE_EMPTY once, then live ones."""
        while True:
            while self._pushes:
                yield self._pushes.popleft()
            if self._closed is not None:
                raise self._closed
            await self._push_event.wait()
            self._push_event = trio.Event()

    async def _keepalive(self) -> None:
        while True:
            await trio.sleep(KEEPALIVE_SECONDS)
            if self._link is not None and self._closed is None:
                self._link.ping()

    def close(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        if self._link is not None:
            self._link.close(int(code), reason)


def client_configuration(*, ca: Path | None, server_name: str | None = None,
                         verify: bool = True) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[ALPN],
                                      max_stream_data=4 * 1024 * 1024,
                                      max_data=16 * 1024 * 1024, server_name=server_name)
    if ca is not None:
        configuration.load_verify_locations(cafile=str(ca))
    if not verify:
        configuration.verify_mode = ssl.CERT_NONE
    return configuration


@asynccontextmanager
async def connect_relay(host: str, port: int, *, ca: Path | None,
                        server_name: str | None = None,
                        connect_timeout: float = 10.0,
                        endpoint: QuicEndpoint | None = None) -> AsyncIterator[RelayClient]:
    """Connect to a relay over QUIC; the connection closes when the block exits.

    Args:
        endpoint: a running client endpoint to share (a load generator drives
            hundreds of connections from one socket); by default each
            connection gets its own socket.
    """
    if endpoint is not None:
        async with _connection(endpoint, host, port, ca=ca, server_name=server_name,
                               connect_timeout=connect_timeout) as client:
            yield client
        return
    async with open_client_endpoint(host) as own_endpoint, _connection(
            own_endpoint, host, port, ca=ca, server_name=server_name,
            connect_timeout=connect_timeout) as client:
        yield client


@asynccontextmanager
async def open_client_endpoint(host: str = "127.0.0.1") -> AsyncIterator[QuicEndpoint]:
    """A running client endpoint on an ephemeral UDP port of ``host``'s family."""
    family_host = "::" if ":" in host else "0.0.0.0"  # noqa: S104 - an ephemeral client port
    sock = open_udp_socket(family_host, 0)
    try:
        endpoint = QuicEndpoint(sock, retry=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.run)
            try:
                yield endpoint
            finally:
                with trio.move_on_after(1) as draining:
                    draining.shield = True
                    await endpoint.drain()
                nursery.cancel_scope.cancel()
    finally:
        sock.close()


@asynccontextmanager
async def _connection(endpoint: QuicEndpoint, host: str, port: int, *, ca: Path | None,
                      server_name: str | None,
                      connect_timeout: float) -> AsyncIterator[RelayClient]:
    client = RelayClient()
    async with trio.open_nursery() as nursery:
        configuration = client_configuration(ca=ca, server_name=server_name or host)
        client._link = endpoint.connect((host, port), configuration, client)
        with trio.fail_after(connect_timeout):
            await client._handshake.wait()
        if client._closed is not None:
            raise client._closed
        client._nursery = nursery
        nursery.start_soon(client._keepalive)
        try:
            yield client
        finally:
            with trio.move_on_after(SETTLE_SECONDS) as settling, \
                    contextlib.suppress(ConnectionClosed, RelayError):
                # A connection the relay closed meanwhile has nothing to settle.
                settling.shield = True
                await client.settle()
            client.close()
            nursery.cancel_scope.cancel()
