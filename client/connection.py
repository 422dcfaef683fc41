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

Failures (`client.errors`): `RelayError` when the relay refuses a request (its
``retry_after_ms`` says how long to wait before asking again when the refusal is for now:
RATE_LIMITED), `ConnectionClosed` once the connection ended (`RelayUnreachable` and
`HandshakeFailed` when it never opened; ``HandshakeFailed.connection_refused`` when the relay
turned it away, e.g. too many connections from this address), `wire.errors.RemoteProtocolError`
when the relay breaks the protocol (garbage, or an answer of the wrong kind),
`CertificateFileError` for a CA file that cannot be used.

Failover: ``connect_any([(host1, port1), (host2, port2)], ca=...)`` tries the addresses in
order and uses the first that completes the handshake (a cluster's other node when this
device's node stopped); `NoRelayReached` when none did, naming each address and why.

A connection keeps at most 32 request streams open at once (docs/PROTOCOL.md, "Connection
budgets"): further requests wait in QUIC until earlier ones are answered, never fail.

Files (docs/PROTOCOL.md, "Attachments"): ``create_blob``, then ``upload_blob`` streams the
ciphertext on a stream of its own as fast as the relay stores it (``blob_status`` tells where an
interrupted upload resumes); ``download_blob`` streams it back, from any offset. Neither holds
more than a QUIC window of the file in memory.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TypeVar, assert_never

import trio
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from nacl.signing import SigningKey

from client.blob_streams import RawChunks
from client.call_media import CallElsewhereError, CallHandle
from client.errors import (
    CertificateFileError,
    ConnectionClosed,
    HandshakeFailed,
    NoRelayReached,
    RelayError,
    RelayUnreachable,
    expect_answer,
)
from crypto.device_list import sign_device_list
from crypto.primitives import Ed25519KeyPair
from transport.quic import DATAGRAM_FRAME_SIZE, QuicEndpoint, QuicLink, open_udp_socket
from wire.account_frames import (
    DeviceListPublished,
    LinkFetch,
    LinkMessages,
    LinkOpen,
    LinkOpened,
    LinkPost,
    LinkPosted,
    PublishDeviceList,
)
from wire.blob_frames import (
    BlobCreate,
    BlobCreated,
    BlobData,
    BlobDownload,
    BlobState,
    BlobStatus,
    BlobUpload,
    BlobUploaded,
)
from wire.call_frames import (
    CallElsewhere,
    CallEnded,
    CallJoin,
    CallJoined,
    CallLeave,
    CallLeft,
    CallMembers,
    CallOpen,
    CallOpened,
    unpack_media,
)
from wire.codec import encode_frame
from wire.frames import (
    ALPN,
    MAX_CLIENT_MESSAGE_ID,
    Ack,
    Acked,
    Authenticate,
    Authenticated,
    Challenge,
    Deliver,
    DirectoryEntry,
    Enrolled,
    EnrolStart,
    EnrolStarted,
    EnrolVerify,
    Error,
    ErrorCode,
    Frame,
    Hello,
    Lookup,
    LookupResult,
    ProtocolError,
    QueueEmpty,
    RemoteProtocolError,
    Send,
    SendAccepted,
    auth_transcript,
)
from wire.group_frames import (
    MultiSend,
    MultiSendAccepted,
    MultiSendRecipient,
    SealedMultiSend,
    SealedMultiSendAccepted,
)
from wire.prekey_frames import (
    Bundle,
    DeviceBundle,
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
from wire.protocol import (
    ClientEvent,
    ClientProtocol,
    PushReceived,
    ResponseReceived,
    StreamBytes,
    StreamEnded,
    StreamFailed,
    is_server_unidirectional,
)
from wire.push_frames import (
    PushClear,
    PushCleared,
    PushGet,
    PushSet,
    PushTargetSet,
    RegisteredPushTarget,
)
from wire.sealed_frames import (
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

__all__ = ["CONNECT_TIMEOUT_SECONDS", "PUSH_BUFFER", "CertificateFileError", "ConnectionClosed",
           "HandshakeFailed", "MismatchedDevices", "NoRelayReached", "RelayClient", "RelayError",
           "RelayUnreachable", "check_ca_file", "connect_anonymous", "connect_any",
           "connect_relay"]

CONNECT_TIMEOUT_SECONDS = 10.0
"""How long a handshake may go unanswered before the relay counts as unreachable (and a
client with several addresses moves to the next)."""

KEEPALIVE_SECONDS = 15.0
"""PING interval, well under the relay's 60 s idle timeout."""

SETTLE_SECONDS = 5.0
"""How long closing waits for the relay to confirm pending acknowledgements."""

ACK_FLUSH_DELAY_SECONDS = 0.01
"""How long acknowledgements gather before they leave (see _flush_acks_soon)."""

ACK_FLUSH_MAX = 512
"""Envelope ids per ACK frame sent by the client (the protocol allows 1024)."""

PUSH_BUFFER = math.inf
"""Pushes held for readers (`RelayClient.deliveries`, `RelayClient.next_prekeys_low`):
unbounded, as before there were memory channels, because no finite bound can be kept
without losing a push. A push is taken in the endpoint's synchronous event handler, which
cannot wait for a reader; and aioquic grants the relay new stream credit as bytes arrive,
not as a reader takes them, so a full buffer could not hold the relay back through QUIC
flow control. A full buffer would thus have to drop a DELIVER and deliver the ones after
it, out of order. What keeps the buffer small is the relay: it stops pushing to a device
that holds MAX_UNACKNOWLEDGED (1024) envelopes not yet acknowledged, and a client
acknowledges only what a reader took."""

RECEIVE_WINDOW_BYTES = 16 * 1024 * 1024
"""Bytes the relay may send beyond what this client has consumed (transport/flow_control.py):
what a download not yet read, or pushes not yet handled, may make the client hold."""

UPLOAD_SEND_BUFFER_BYTES = 1024 * 1024
"""Unacknowledged upload bytes written before the next chunk waits: about the relay's receive
window, so an upload never holds much more of the file than is in flight."""

_Push = TypeVar("_Push", Deliver | QueueEmpty, PrekeysLow)
_Answer = TypeVar("_Answer", bound=Frame)


class _Waiter:
    """One request's answer: set once, with the frame or the error that ends the wait."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Frame | BaseException | None = None

    def set(self, result: Frame | BaseException) -> None:
        self.result = result
        self.done.set()


Delivery = Deliver | QueueEmpty


class MismatchedDevices(RelayError):
    """A MULTI_SEND did not address exactly its users' current devices; nothing was stored.

    ``users`` maps each user concerned to (current devices not addressed, addressed devices
    that do not exist): fetch the missing ones' bundles, drop the others, and send again.
    """

    def __init__(self, error: Error) -> None:
        super().__init__(error)
        self.users: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
            entry.user_id: (entry.missing_devices, entry.extra_devices)
            for entry in error.users}


class RelayClient:
    """One connection to a relay. Use ``connect_relay`` to make one."""

    def __init__(self) -> None:
        self._core = ClientProtocol()
        self._link: QuicLink | None = None
        self._waiters: dict[int, deque[_Waiter]] = {}
        self._handshake = trio.Event()  # set once the handshake completed or failed
        self._opened = False  # the handshake completed
        self._closed: ConnectionClosed | None = None
        # Closed (the send side) when the connection closes: readers take what is
        # buffered, then get EndOfChannel and raise ConnectionClosed.
        self._deliveries_in, self._deliveries_out = trio.open_memory_channel[Delivery](
            PUSH_BUFFER)
        self._prekeys_low_in, self._prekeys_low_out = trio.open_memory_channel[PrekeysLow](
            PUSH_BUFFER)
        self._send_stream: int | None = None
        self._ack_stream: int | None = None
        self._pending_acks: list[int] = []
        self._nursery: trio.Nursery | None = None
        self._unconfirmed_ack: int | None = None  # last id sent in an unanswered ACK
        self._downloads: dict[int, RawChunks] = {}  # download stream -> its raw bytes
        self.anonymous = False
        """Opened by ``connect_anonymous``: it never authenticates, so that it names no sender."""
        self.user_id: str | None = None
        self.device_id: int | None = None
        self._calls: dict[int, CallHandle] = {}  # by this connection's tag

    # -- the handler side (called by the endpoint) --------------------------------

    def quic_events(self, link: QuicLink, batch: list[quic_events.QuicEvent]) -> None:
        """Handle one batch of the connection's QUIC events (the endpoint calls this)."""
        for event in batch:
            match event:
                case quic_events.HandshakeCompleted():
                    self._opened = True
                    self._handshake.set()
                case quic_events.StreamDataReceived():
                    for core_event in self._core.receive_stream_data(
                            event.stream_id, event.data, event.end_stream):
                        self._core_event(core_event)
                case quic_events.StreamReset():
                    self._core.stream_reset(event.stream_id)
                    self._stream_broken(event.stream_id, RemoteProtocolError(
                        ErrorCode.UNEXPECTED_FRAME,
                        f"the relay reset stream {event.stream_id} (code {event.error_code})"))
                case quic_events.DatagramFrameReceived():
                    self._media(event.data)
                case quic_events.ConnectionTerminated():
                    self._fail_all(ConnectionClosed(event.error_code, event.reason_phrase))
                case _:
                    pass  # pings, connection ids, ...: the transport's business

    def _core_event(self, event: ClientEvent) -> None:
        match event:
            case ResponseReceived():
                self._answer(event.stream_id, event.frame)
            case PushReceived():
                self._push(event.frame)
            case StreamBytes():
                download = self._downloads.get(event.stream_id)
                if download is not None:
                    download.feed(event.data)
            case StreamFailed():
                self._stream_broken(event.stream_id, event.error)
            case StreamEnded():
                download = self._downloads.get(event.stream_id)
                if download is not None:
                    download.end()
                self._stream_ended(event.stream_id)
            case _:
                assert_never(event)

    def _answer(self, stream_id: int, frame: Frame) -> None:
        queue = self._waiters.get(stream_id)
        if not queue:
            # Nothing asked: an ACKED for a quiet ACK (a relay predating ``answer``) is one.
            return
        queue.popleft().set(frame)
        if not queue and stream_id not in (self._send_stream, self._ack_stream):
            del self._waiters[stream_id]  # a one-request stream is done

    def _push(self, frame: Deliver | QueueEmpty | PrekeysLow | CallMembers | CallEnded) -> None:
        if self._closed is not None:
            return  # the channels are closed; unacknowledged, it comes again next connection
        match frame:
            case Deliver() | QueueEmpty():
                self._deliveries_in.send_nowait(frame)  # never full: PUSH_BUFFER
            case PrekeysLow():
                self._prekeys_low_in.send_nowait(frame)
            case CallMembers():
                if (handle := self._call_by_id(frame.call_id)) is not None:
                    handle.members(frame.participants)
            case CallEnded():
                if (handle := self._call_by_id(frame.call_id)) is not None:
                    self._calls.pop(handle.tag, None)
                    handle.end(frame.reason)
            case _:
                assert_never(frame)

    def _stream_broken(self, stream_id: int, error: ProtocolError) -> None:
        """The relay's stream failed (garbage, a frame out of place) or was reset."""
        if is_server_unidirectional(stream_id):
            # A push stream: no delivery can follow on this connection. Close it, so
            # that readers raise ConnectionClosed (the envelopes stay stored).
            self.close(error.code, error.reason)
            self._fail_all(ConnectionClosed(error.code, error.reason))
        else:
            self._end_requests(stream_id, error)

    def _stream_ended(self, stream_id: int) -> None:
        # The relay ends a stream after the answers to every request on it, or after
        # the ERROR of a request that failed the stream: the requests behind that
        # one were dropped unanswered.
        queue = self._waiters.get(stream_id)
        if queue:
            self._end_requests(stream_id, RemoteProtocolError(
                ErrorCode.UNEXPECTED_FRAME,
                f"the relay ended stream {stream_id} with {len(queue)} request(s) unanswered"))
        else:
            self._forget_stream(stream_id)

    def _end_requests(self, stream_id: int, error: BaseException) -> None:
        """No answer will come on ``stream_id``: fail its waiting requests with ``error``."""
        for waiter in self._waiters.pop(stream_id, ()):
            waiter.set(error)
        download = self._downloads.get(stream_id)
        if download is not None:
            download.fail(error)
        self._forget_stream(stream_id)

    def _forget_stream(self, stream_id: int) -> None:
        """Never use ``stream_id`` again: the next send or acknowledgement opens a new one.

        Our side of a long-lived stream is ended too: a stream the relay has finished stays
        open until both sides are, and an open one takes one of the 32 the relay lets a
        connection keep (PROTOCOL.md, "Connection budgets").
        """
        if stream_id in (self._send_stream, self._ack_stream):
            if self._send_stream == stream_id:
                self._send_stream = None
            if self._ack_stream == stream_id:
                self._ack_stream = None
            link = self._link
            if link is not None and self._closed is None:
                link.send_stream_data(stream_id, b"", end_stream=True)

    def _fail_all(self, error: ConnectionClosed) -> None:
        if self._closed is None:
            self._closed = error
        self._handshake.set()
        for queue in self._waiters.values():
            for waiter in queue:
                waiter.set(self._closed)
        self._waiters.clear()
        for download in self._downloads.values():
            download.fail(self._closed)
        self._deliveries_in.close()
        self._prekeys_low_in.close()
        calls, self._calls = self._calls, {}
        for handle in calls.values():
            handle.end("disconnected")

    def _media(self, datagram: bytes) -> None:
        """A media datagram: to its call's handle; one for no call of ours is dropped."""
        unpacked = unpack_media(datagram)
        if unpacked is not None and (handle := self._calls.get(unpacked[0])) is not None:
            handle.deliver(unpacked[1])

    def _call_by_id(self, call_id: bytes) -> CallHandle | None:
        return next((handle for handle in self._calls.values() if handle.call_id == call_id),
                    None)

    @property
    def link(self) -> QuicLink:
        """The QUIC connection under this client: for diagnostics, and for tests that play a
        misbehaving app (raw frames on a stream of their own, stopped streams).

        Raises:
            RuntimeError: the client is not connected.
        """
        return self._require_link()

    def _require_link(self) -> QuicLink:
        if self._link is None:
            raise RuntimeError("this RelayClient is not connected: use connect_relay")
        return self._link

    async def _next_push(self, channel: trio.MemoryReceiveChannel[_Push]) -> _Push:
        """The next push of ``channel``, once the connection closed: ConnectionClosed."""
        try:
            try:
                # A buffered push is taken at once, without a checkpoint, as the
                # deque these channels replaced did: draining a backlog stays cheap.
                return channel.receive_nowait()
            except trio.WouldBlock:
                return await channel.receive()
        except trio.EndOfChannel:
            raise self._closed_error() from None

    def _closed_error(self) -> ConnectionClosed:
        if self._closed is None:  # the channels close only after _closed is set
            return ConnectionClosed(ErrorCode.NO_ERROR, "connection closed")
        return self._closed

    # -- requests --------------------------------------------------------------------

    async def request(self, frame: Frame, *, stream_id: int | None = None,
                      end_stream: bool = False) -> Frame:
        """Send one request and wait for its answer.

        Raises:
            RelayError: the relay answered with an ERROR frame.
            ConnectionClosed: the connection ended first.
            RemoteProtocolError: the relay broke the protocol on the request's stream.
        """
        if self._closed is not None:
            raise self._closed
        link = self._require_link()
        if stream_id is None:
            stream_id = link.new_stream()
            end_stream = True
        waiter = _Waiter()
        self._waiters.setdefault(stream_id, deque()).append(waiter)
        link.send_stream_data(stream_id, encode_frame(frame), end_stream)
        await waiter.done.wait()
        result = waiter.result
        if result is None:  # done is set only with a result
            raise RuntimeError("a request's wait ended without an answer")
        if isinstance(result, BaseException):
            raise result
        if isinstance(result, Error):
            raise RelayError(result)
        return result

    async def _ask(self, frame: Frame, expected: type[_Answer], *,
                   stream_id: int | None = None, end_stream: bool = False) -> _Answer:
        """`request`, then `expect_answer`: RemoteProtocolError for an answer of another kind."""
        return expect_answer(await self.request(frame, stream_id=stream_id,
                                                end_stream=end_stream), expected)

    async def enrol_start(self, phone: str) -> None:
        """Ask the relay to send an enrolment code by SMS to ``phone``."""
        await self._ask(EnrolStart(phone=phone), EnrolStarted)

    async def enrol_verify(self, phone: str, code: str, identity_key: bytes,
                           account: Ed25519KeyPair) -> Enrolled:
        """Create a new account for ``phone`` with the SMS ``code``, this device its only one.

        Signs the account's first device list (version 1, ``identity_key`` only) with
        ``account``, a fresh account key pair. The number's earlier devices, if any, are
        revoked. Returns the credentials for HELLO (``user_id``, ``device_id``).

        Raises:
            RelayError: VERIFICATION_FAILED, ORGANISATION_SUSPENDED, INVALID_REQUEST, ...
        """
        signed = sign_device_list(account, version=1, devices=[identity_key])
        return await self._ask(EnrolVerify(phone=phone, code=code, identity_key=identity_key,
                                           account_key=account.public_key,
                                           device_list=signed.encoded), Enrolled)

    async def authenticate(self, user_id: str, device_id: int, signing_key: SigningKey) -> None:
        """Prove possession of the device key; the relay then starts delivering.

        Raises:
            RuntimeError: this connection was opened by ``connect_anonymous`` (nothing sent).
        """
        if self.anonymous:
            raise RuntimeError("an anonymous connection never authenticates: it would tie its "
                               "sealed sends to the device")
        challenge = await self._ask(Hello(user_id=user_id, device_id=device_id), Challenge)
        transcript = auth_transcript(nonce=challenge.nonce, user_id=user_id, device_id=device_id)
        await self._ask(Authenticate(signature=signing_key.sign(transcript).signature),
                        Authenticated)
        self.user_id, self.device_id = user_id, device_id

    async def lookup(self, phones: Sequence[str]) -> list[DirectoryEntry]:
        """The enrolled users among ``phones``, with their current devices."""
        answer = await self._ask(Lookup(phones=tuple(phones)), LookupResult)
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
        return await self._ask(UploadPrekeys(
            signed_prekey=signed_prekey, kem_last_resort_prekey=kem_last_resort_prekey,
            one_time_prekeys=tuple(one_time_prekeys),
            kem_one_time_prekeys=tuple(kem_one_time_prekeys)), PrekeysUploaded)

    async def fetch_bundle(self, user_id: str,
                           device_ids: Sequence[int] = ()) -> list[DeviceBundle]:
        """Claim a bundle per current device of ``user_id`` (only ``device_ids`` if given;
        never this device itself). Verify every signature before using a bundle.

        Raises:
            RelayError: UNKNOWN_RECIPIENT, or RATE_LIMITED.
        """
        answer = await self._ask(FetchBundle(user_id=user_id, device_ids=tuple(device_ids)),
                                 Bundle)
        return list(answer.bundles)

    async def prekey_counts(self) -> PrekeyCounts:
        """How many prekeys the relay holds for this device."""
        return await self._ask(GetPrekeyCounts(), PrekeyCounts)

    async def list_devices(self, user_id: str | None = None) -> DeviceList:
        """The current devices of ``user_id`` (by default this device's own user), each with
        its identity key, and the account key and signed device list vouching for them.

        The relay's word only: check ``signed_list`` (``crypto.device_list``) against the
        pinned account key, and address only devices whose identity key it lists.
        """
        return await self._ask(ListDevices(user_id=user_id), DeviceList)

    # -- accounts and linking (PROTOCOL.md "Accounts, device lists and linking") -------

    async def publish_device_list(self, encoded: bytes) -> DeviceListPublished:
        """Replace this account's device list with ``encoded`` (signed by the account key).

        Listed keys without a device get one (``added``, with their new ids); devices whose key
        is no longer listed are revoked (``revoked``).

        Raises:
            RelayError: STALE_DEVICE_LIST, INVALID_DEVICE_LIST, TOO_MANY_DEVICES, RATE_LIMITED.
        """
        return await self._ask(PublishDeviceList(device_list=encoded), DeviceListPublished)

    async def link_open(self) -> LinkOpened:
        """Open a link channel (a new device, before it has credentials).

        Raises:
            RelayError: RATE_LIMITED.
        """
        return await self._ask(LinkOpen(), LinkOpened)

    async def link_post(self, channel_id: bytes, payload: bytes) -> None:
        """Leave ``payload`` for the other side of the channel: for the approver if this
        connection is not authenticated, for the new device if it is.

        Raises:
            RelayError: LINK_CHANNEL_UNKNOWN (unknown, expired, this side's posts used up, or
                bound to another account), PAYLOAD_TOO_LARGE.
        """
        await self._ask(LinkPost(channel_id=channel_id, payload=payload), LinkPosted)

    async def link_fetch(self, channel_id: bytes) -> list[bytes]:
        """Take what the other side left on the channel, oldest first; waits up to
        LINK_FETCH_WAIT_MS for something to arrive, and may return nothing.

        Raises:
            RelayError: LINK_CHANNEL_UNKNOWN, RATE_LIMITED (too many fetches waiting on this
                connection).
        """
        answer = await self._ask(LinkFetch(channel_id=channel_id), LinkMessages)
        return list(answer.payloads)

    # -- files (PROTOCOL.md "Attachments") ----------------------------------------------

    async def create_blob(self, size: int) -> bytes:
        """Reserve a blob of ``size`` ciphertext bytes; returns its id (the capability to
        download it: share it only inside end-to-end encrypted messages).

        Raises:
            RelayError: BLOB_TOO_LARGE, BLOB_QUOTA_EXCEEDED, RATE_LIMITED.
        """
        return (await self._ask(BlobCreate(size=size), BlobCreated)).blob_id

    async def blob_status(self, blob_id: bytes) -> tuple[int, int]:
        """(size, received) of a blob this device created: resume an upload at ``received``.

        Raises:
            RelayError: BLOB_UNKNOWN (unknown, expired, or created by another device).
        """
        state = await self._ask(BlobStatus(blob_id=blob_id), BlobState)
        return state.size, state.received

    async def upload_blob(self, blob_id: bytes, offset: int,
                          chunks: AsyncIterable[bytes]) -> int:
        """Upload the blob's bytes from ``offset`` (what the relay holds: 0 for a new blob),
        as ``chunks`` yields them, on a stream of their own; returns the bytes the relay now
        holds (the blob's size once complete).

        A chunk is written once the relay has acknowledged all but UPLOAD_SEND_BUFFER_BYTES of
        the earlier ones, so memory stays flat however large the file; the relay's flow control
        paces it to what its store writes. If the connection breaks, ask ``blob_status`` on a
        new one and resume from its ``received``.

        Raises:
            RelayError: BLOB_UNKNOWN, BLOB_OFFSET_MISMATCH (resume from BLOB_STATUS),
                BLOB_TOO_LARGE (more bytes than the blob's size), RATE_LIMITED.
            ConnectionClosed: the connection ended first.
        """
        if self._closed is not None:
            raise self._closed
        link = self._require_link()
        stream_id = link.new_stream()
        waiter = _Waiter()
        self._waiters[stream_id] = deque([waiter])
        link.send_stream_data(stream_id, encode_frame(BlobUpload(blob_id=blob_id, offset=offset)))
        async for chunk in chunks:
            await link.wait_send_room(stream_id, UPLOAD_SEND_BUFFER_BYTES)
            if waiter.done.is_set():
                break  # answered early: a refusal; the relay reads no more
            link.send_stream_data(stream_id, chunk)
        if not waiter.done.is_set():
            link.send_stream_data(stream_id, b"", end_stream=True)
        await waiter.done.wait()
        result = waiter.result
        if result is None:  # done is set only with a result
            raise RuntimeError("an upload's wait ended without an answer")
        if isinstance(result, BaseException):
            raise result
        if isinstance(result, Error):
            raise RelayError(result)
        return expect_answer(result, BlobUploaded).received

    def download_blob(self, blob_id: bytes, offset: int) -> AbstractAsyncContextManager[
            tuple[int, AsyncIterator[bytes]]]:
        """Read a complete blob from ``offset``: ``(size, chunks)``, the chunks being the bytes
        from ``offset`` to ``size`` as the relay streams them (resume an interrupted download
        from the bytes kept). Leaving the block early stops the transfer.

            async with client.download_blob(blob_id, 0) as (size, chunks):
                async for chunk in chunks:
                    ...

        Raises:
            RelayError: BLOB_UNKNOWN (unknown, wrong, expired or incomplete), INVALID_REQUEST
                (``offset`` past the size), RATE_LIMITED.
            ConnectionClosed: the connection ended first (from the iteration too).
            RemoteProtocolError: the relay ended the stream short of the size.
        """
        return self._download(blob_id, offset)

    @asynccontextmanager
    async def _download(self, blob_id: bytes,
                        offset: int) -> AsyncIterator[tuple[int, AsyncIterator[bytes]]]:
        if self._closed is not None:
            raise self._closed
        link = self._require_link()
        stream_id = link.new_stream()
        chunks = RawChunks(hold=link.hold_received, release=link.release_received)
        self._downloads[stream_id] = chunks
        header: BlobData | None = None
        try:
            header = await self._ask(BlobDownload(blob_id=blob_id, offset=offset), BlobData,
                                     stream_id=stream_id, end_stream=True)
            if header.offset != offset:
                raise RemoteProtocolError(
                    ErrorCode.UNEXPECTED_FRAME,
                    f"the relay answered a download from {offset} with bytes from "
                    f"{header.offset}")
            yield header.size, self._download_chunks(stream_id, chunks, header)
        finally:
            self._downloads.pop(stream_id, None)
            chunks.discard()
            if (self._closed is None and header is not None
                    and header.offset + chunks.received < header.size):
                link.stop_stream(stream_id, int(ErrorCode.NO_ERROR))  # the rest is not wanted

    async def _download_chunks(self, stream_id: int, chunks: RawChunks,
                               header: BlobData) -> AsyncIterator[bytes]:
        expected = header.size - header.offset
        while (chunk := await chunks.take()) is not None:
            if chunks.received > expected:
                raise RemoteProtocolError(
                    ErrorCode.UNEXPECTED_FRAME,
                    f"the relay sent more than the file's {expected} bytes from offset "
                    f"{header.offset} on stream {stream_id}")
            yield chunk
        if chunks.received != expected:
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED_FRAME,
                f"the relay ended stream {stream_id} after {chunks.received} of the file's "
                f"{expected} bytes from offset {header.offset}")

    async def next_prekeys_low(self) -> PrekeysLow:
        """Wait for the relay to say a one-time pool of this device runs low.

        Raises:
            ConnectionClosed: the connection ended (after every PREKEYS_LOW received).
        """
        return await self._next_push(self._prekeys_low_out)

    async def set_push_target(self, provider: str, token: str, *, p256dh: bytes | None = None,
                              auth: bytes | None = None) -> None:
        """Register this device's push target, replacing any earlier one: while the device is
        not connected, the relay wakes it through ``provider`` when something arrives for it.

        Args:
            provider: ``webpush``, ``fcm``, ``apns`` or ``outbox`` (``wire.push_frames``).
            token: the Web Push endpoint URL, or the platform's device token.
            p256dh: Web Push only (and required there): the subscription's 65-byte
                uncompressed P-256 public key.
            auth: Web Push only (and required there): the subscription's 16-byte secret.

        Raises:
            LocalProtocolError: MALFORMED_FRAME for a target of the wrong shape (nothing sent).
            RelayError: PUSH_PROVIDER_UNAVAILABLE (this relay does not serve ``provider``),
                INVALID_PUSH_TARGET (the provider refused the target; the reason says why).
        """
        await self._ask(PushSet(provider=provider, token=token, p256dh=p256dh, auth=auth),
                        PushTargetSet)

    async def clear_push_target(self) -> None:
        """Remove this device's push target (nothing happens if it had none)."""
        await self._ask(PushClear(), PushCleared)

    async def get_push_target(self) -> tuple[str, str] | None:
        """This device's registered target as (provider, token), or None without one."""
        answer = await self._ask(PushGet(), RegisteredPushTarget)
        if answer.provider is None or answer.token is None:
            return None
        return (answer.provider, answer.token)

    # -- calls (PROTOCOL.md "Calls") ------------------------------------------------------

    async def open_call(self, invitees: Sequence[str]) -> CallHandle:
        """Ask the relay for a media session with these users (1 to 7 user ids); this device
        joins it at once. Put ``handle.call_id`` in the end-to-end encrypted offer.

        Raises:
            RelayError: UNKNOWN_RECIPIENT (an invitee is unknown or out of reach under the
                organisations' policy), RATE_LIMITED, CALLS_UNAVAILABLE.
        """
        opened = await self._ask(CallOpen(invitees=tuple(invitees)), CallOpened)
        return self._joined(opened.call_id, opened.tag)

    async def join_call(self, call_id: bytes) -> CallHandle:
        """Join the call ``call_id`` (from an offer) as a device of an invited user.

        Raises:
            RelayError: CALL_UNKNOWN (wrong id, ended, or not invited), CALL_FULL,
                RATE_LIMITED, CALLS_UNAVAILABLE.
            CallElsewhereError: the call lives on another node of the cluster: connect there
                and join again.
        """
        answer = await self.request(CallJoin(call_id=call_id))
        if isinstance(answer, CallElsewhere):
            raise CallElsewhereError(answer.call_id, answer.address)
        joined = expect_answer(answer, CallJoined)
        existing = self._calls.get(joined.tag)
        if existing is not None and existing.call_id == call_id:
            return existing
        return self._joined(call_id, joined.tag, joined.participants)

    def _joined(self, call_id: bytes, tag: int, participants: int = 1) -> CallHandle:
        handle = CallHandle(call_id=call_id, tag=tag, link=self._require_link(),
                            leave=self._leave_call)
        handle.participants = participants
        self._calls[tag] = handle
        return handle

    async def _leave_call(self, handle: CallHandle) -> None:
        self._calls.pop(handle.tag, None)
        if self._closed is None:
            await self._ask(CallLeave(call_id=handle.call_id), CallLeft)

    # -- sealed sender (PROTOCOL.md "Sealed sender") ------------------------------------

    async def get_sender_keys(self) -> tuple[SenderKey, ...]:
        """The relay's sender-certificate keys: the signing one (``not_after_ms`` None) and
        those still accepted. Allowed on any connection, authenticated or not."""
        return (await self._ask(GetSenderKeys(), SenderKeys)).keys

    async def get_sender_certificate(self) -> SenderCertificateIssued:
        """A fresh sender certificate for this authenticated device (its ``certificate`` bytes
        and ``expires_ms``); renew it before it expires."""
        return await self._ask(GetSenderCertificate(), SenderCertificateIssued)

    async def set_delivery_token(self, token_hash: bytes | None, *,
                                 mode: str = "token") -> None:
        """Register how this user admits sealed sends, replacing the earlier registration.

        Args:
            token_hash: SHA-256 of the delivery token contacts will show (a new one rotates
                it; the old token is refused from then on); None in "organisation" mode, or
                in "token" mode to refuse every sealed send.
            mode: "token", or "organisation" (tokens off: sealed sends are accepted from
                authenticated devices of this user's organisation).

        Raises:
            LocalProtocolError: MALFORMED_FRAME for a hash of the wrong size or an unknown mode.
        """
        await self._ask(SetDeliveryToken(mode=mode, token_hash=token_hash), DeliveryTokenSet)

    async def sealed_send(self, recipient_user_id: str, payloads: Mapping[int, bytes], *,
                          client_message_id: bytes, delivery_token: bytes | None,
                          urgent: bool = False) -> None:
        """Send one sealed envelope per recipient device; a re-send with the same
        ``client_message_id`` (16 random bytes) is accepted again and stored once.

        Raises:
            RelayError: DELIVERY_TOKEN_REFUSED (bad, rotated or absent token, or no such
                recipient: one answer), MISMATCHED_DEVICES, QUEUE_FULL, RATE_LIMITED, ...
        """
        await self._ask(SealedSend(recipient_user_id=recipient_user_id,
                                   client_message_id=client_message_id,
                                   payloads=dict(payloads), delivery_token=delivery_token,
                                   urgent=urgent), SealedSendAccepted)

    async def send(self, recipient_user_id: str, payloads: Mapping[int, bytes], *,
                   client_message_id: int, urgent: bool = False) -> bool:
        """Send one envelope per recipient device; returns True if it was a re-send.

        Sends made from one client are committed in the order they were made. ``urgent``
        (a call offer) asks the relay to wake a recipient device that is not connected at
        once, even if it woke the device moments ago (PROTOCOL.md "Wake-up pushes").
        """
        if self._send_stream is None:
            self._send_stream = self._require_link().new_stream()
        answer = await self._ask(
            Send(recipient_user_id=recipient_user_id, client_message_id=client_message_id,
                 payloads=dict(payloads), urgent=urgent), SendAccepted,
            stream_id=self._send_stream)
        return answer.duplicate

    async def multi_send(self, recipients: Mapping[str, Mapping[int, bytes]], shared: bytes, *,
                         client_message_id: int | None = None, urgent: bool = False) -> bool:
        """Send one shared ciphertext to many devices, with each device's own key material.

        ``recipients`` maps each recipient user to its devices' key material (every current
        device of the user, as ``send`` requires; the sender's own user may leave out this
        device). The relay stores ``shared`` once, and queues one envelope per device whose
        DELIVER carries ``shared`` too; it is accepted for every device or for none. Returns
        True if it was a re-send. Ordered with this client's ``send`` calls. A
        ``client_message_id`` of None draws a random one (no retry can then be recognised).

        Raises:
            MismatchedDevices: a user's device set is not its current one (``users`` says how).
            RelayError: QUEUE_FULL (``error.users`` names the full devices; nothing stored),
                UNKNOWN_RECIPIENT, RATE_LIMITED, PAYLOAD_TOO_LARGE and the like.
            LocalProtocolError: the request breaks a limit (MAX_MULTI_SEND_DEVICES,
                MAX_KEY_MATERIAL_SIZE, MAX_CIPHERTEXT_SIZE); nothing was sent.
        """
        if client_message_id is None:
            client_message_id = secrets.randbelow(MAX_CLIENT_MESSAGE_ID + 1)
        frame = MultiSend(client_message_id=client_message_id, shared=shared, urgent=urgent,
                          recipients=tuple(MultiSendRecipient(user_id=user_id,
                                                              devices=dict(devices))
                                           for user_id, devices in recipients.items()))
        if self._send_stream is None:
            self._send_stream = self._require_link().new_stream()
        try:
            answer = await self._ask(frame, MultiSendAccepted, stream_id=self._send_stream)
        except RelayError as refusal:
            if refusal.code is ErrorCode.MISMATCHED_DEVICES:
                raise MismatchedDevices(refusal.error) from None
            raise
        return answer.duplicate

    async def sealed_multi_send(self, recipients: Mapping[str, Mapping[int, bytes]],
                                shared: bytes, *, delivery_tokens: Mapping[str, bytes | None],
                                client_message_id: bytes, urgent: bool = False) -> None:
        """``multi_send`` sealed: no sender is named to the relay or stored (the shared
        ciphertext and each device's key material are sealed envelopes). Each recipient user
        admits it with its delivery token (``delivery_tokens[user_id]``; None for a user in
        "organisation" mode, which needs this connection authenticated in a reachable
        organisation). A re-send with the same ``client_message_id`` (16 random bytes) to the
        same users is accepted again and stored once. Use a ``connect_anonymous`` connection
        so that nothing ties the send to this device.

        Raises:
            MismatchedDevices: a user's device set is not its current one.
            RelayError: DELIVERY_TOKEN_REFUSED (one answer for every user's bad, rotated or
                absent token, or unknown user: nothing stored), QUEUE_FULL, RATE_LIMITED, ...
        """
        frame = SealedMultiSend(
            client_message_id=client_message_id, shared=shared, urgent=urgent,
            recipients=tuple(MultiSendRecipient(user_id=user_id, devices=dict(devices),
                                                delivery_token=delivery_tokens.get(user_id))
                             for user_id, devices in recipients.items()))
        try:
            await self._ask(frame, SealedMultiSendAccepted)
        except RelayError as refusal:
            if refusal.code is ErrorCode.MISMATCHED_DEVICES:
                raise MismatchedDevices(refusal.error) from None
            raise

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
        if link is None or self._closed is not None or not self._pending_acks:
            return
        ack_stream = self._ack_stream
        if ack_stream is None:
            # One long-lived stream for every ACK: opening a stream per batch
            # costs stream frames and credit updates in both directions.
            ack_stream = self._ack_stream = link.new_stream()
        while self._pending_acks:
            batch = self._pending_acks[:ACK_FLUSH_MAX]
            del self._pending_acks[:ACK_FLUSH_MAX]
            # No answer: an ACKED would cost the relay a packet, and us an
            # ACK-only packet back, for each batch. settle() asks for one.
            link.send_stream_data(ack_stream, encode_frame(
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
            await self._ask(Ack(envelope_ids=(last,)), Acked, stream_id=self._ack_stream)

    async def deliveries(self) -> AsyncIterator[Delivery]:
        """Deliveries in queue order, then QUEUE_EMPTY once, then live ones.

        Raises:
            ConnectionClosed: the connection ended (after every delivery received).
        """
        while True:
            yield await self._next_push(self._deliveries_out)

    async def _keepalive(self) -> None:
        while True:
            await trio.sleep(KEEPALIVE_SECONDS)
            if self._link is not None and self._closed is None:
                self._link.ping()

    def close(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close the connection with ``code`` (``connect_relay`` closes it on exit)."""
        if self._link is not None:
            self._link.close(int(code), reason)


def client_configuration(*, ca: Path | None, server_name: str | None = None,
                         verify: bool = True) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[ALPN],
                                      max_datagram_frame_size=DATAGRAM_FRAME_SIZE,
                                      max_stream_data=4 * 1024 * 1024,
                                      max_data=16 * 1024 * 1024, server_name=server_name)
    if ca is not None:
        check_ca_file(ca)
        configuration.load_verify_locations(cafile=str(ca))
    if not verify:
        configuration.verify_mode = ssl.CERT_NONE
    return configuration


def check_ca_file(ca: Path) -> None:
    """Load ``ca`` as a TLS context would, so that a missing or wrong file fails here, once and
    clearly, rather than inside the handshake (where aioquic reads it, at the first packet).

    Raises:
        CertificateFileError: no such file, unreadable, or no PEM certificate in it.
    """
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(ca))
    except FileNotFoundError as error:
        raise CertificateFileError(ca, "no such file", missing=True) from error
    except ssl.SSLError as error:
        raise CertificateFileError(ca, "not a PEM certificate", missing=False) from error
    except OSError as error:
        raise CertificateFileError(ca, error.strerror or str(error), missing=False) from error


@asynccontextmanager
async def connect_relay(host: str, port: int, *, ca: Path | None,
                        server_name: str | None = None,
                        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
                        endpoint: QuicEndpoint | None = None) -> AsyncIterator[RelayClient]:
    """Connect to a relay over QUIC; the connection closes when the block exits.

    Args:
        endpoint: a running client endpoint to share (a load generator drives
            hundreds of connections from one socket); by default each
            connection gets its own socket.

    Raises:
        CertificateFileError: ``ca`` is missing or holds no certificate (nothing was sent).
        RelayUnreachable: no answer to the handshake within ``connect_timeout`` seconds.
        HandshakeFailed: the handshake was refused (``certificate_refused``: the relay's
            certificate is not trusted).
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
async def connect_any(addresses: Sequence[tuple[str, int]], *, ca: Path | None,
                      server_name: str | None = None,
                      connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
                      endpoint: QuicEndpoint | None = None) -> AsyncIterator[RelayClient]:
    """`connect_relay` to the first of ``addresses`` that completes the handshake, trying them
    in order: one that does not answer within ``connect_timeout`` seconds, or refuses the
    handshake, is passed over for the next. A failure after the handshake (a refused request,
    a connection closed later) is the caller's, as with `connect_relay`: nothing is resent.

    With one address this is `connect_relay` itself, errors included.

    Raises:
        ValueError: ``addresses`` is empty.
        CertificateFileError: ``ca`` is missing or holds no certificate (nothing was sent).
        NoRelayReached: none of several addresses opened; it names each and why.
    """
    if not addresses:
        raise ValueError("no relay address to connect to")
    if len(addresses) == 1:
        [(host, port)] = addresses
        async with connect_relay(host, port, ca=ca, server_name=server_name,
                                 connect_timeout=connect_timeout, endpoint=endpoint) as client:
            yield client
        return
    if ca is not None:
        check_ca_file(ca)  # a bad file is no reason to try the next address
    failures: list[tuple[str, int, ConnectionClosed]] = []
    async with contextlib.AsyncExitStack() as stack:
        for host, port in addresses:
            try:
                client = await stack.enter_async_context(connect_relay(
                    host, port, ca=ca, server_name=server_name,
                    connect_timeout=connect_timeout, endpoint=endpoint))
            except BaseException as error:  # re-raised below unless the handshake failed
                refusal = _never_opened(error)
                if refusal is None:
                    raise
                failures.append((host, port, refusal))
            else:
                break
        else:
            raise NoRelayReached(failures)
        yield client


@asynccontextmanager
async def connect_anonymous(host: str, port: int, *, ca: Path | None,
                            server_name: str | None = None,
                            connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
                            ) -> AsyncIterator[RelayClient]:
    """`connect_relay` on a socket of its own, for a connection that never authenticates: the
    sealed sends made on it name no device (``RelayClient.authenticate`` refuses to run on it).
    It is still one network address and one moment: PROTOCOL.md "Sealed sender" says what the
    relay can correlate."""
    async with connect_relay(host, port, ca=ca, server_name=server_name,
                             connect_timeout=connect_timeout) as client:
        client.anonymous = True
        yield client


def _never_opened(error: BaseException) -> RelayUnreachable | HandshakeFailed | None:
    """The handshake failure ``error`` is, inside the nurseries' single-member groups; None for
    anything else (a cancellation, a bug), which must propagate."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error if isinstance(error, RelayUnreachable | HandshakeFailed) else None


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
    configuration = client_configuration(ca=ca, server_name=server_name or host)
    client = RelayClient()
    async with trio.open_nursery() as nursery:
        client._link = endpoint.connect((host, port), configuration, client,
                                        receive_window=RECEIVE_WINDOW_BYTES)
        with trio.move_on_after(connect_timeout):
            await client._handshake.wait()
        if client._closed is not None:
            if not client._opened:
                raise HandshakeFailed(client._closed.code, client._closed.reason)
            raise client._closed
        if not client._handshake.is_set():
            client.close()
            raise RelayUnreachable(host, port, connect_timeout)
        client._nursery = nursery
        nursery.start_soon(client._keepalive)
        try:
            yield client
        finally:
            with trio.move_on_after(SETTLE_SECONDS) as settling, \
                    contextlib.suppress(ConnectionClosed, RelayError, RemoteProtocolError):
                # A connection the relay closed meanwhile has nothing to settle.
                settling.shield = True
                await client.settle()
            client.close()
            nursery.cancel_scope.cancel()
