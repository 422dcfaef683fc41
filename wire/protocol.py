"""Per-connection protocol state machines, sans-IO: stream bytes in, events out.

The shell (transport/quic.py) feeds every stream's bytes to ``receive_stream_data`` and acts on the
returned events; it writes the bytes of ``encode_frame`` (and ``issue_challenge``) itself. Nothing
here does I/O, reads the clock or draws random numbers. PROTOCOL.md is the contract.

Streams (RFC 9000 section 2.1): requests travel only on client-initiated bidirectional streams,
pushes only on server-initiated unidirectional streams.

Raw streams (PROTOCOL.md "Attachments"): a BLOB_UPLOAD (to the relay) or a BLOB_DATA (to the
client), as the first frame of a stream, ends that direction's framing: every later byte until
FIN is the blob's, reported as ``StreamBytes`` and never buffered here. Such a frame anywhere
but first is refused (UNEXPECTED_FRAME), and so is any frame after a BLOB_DOWNLOAD, which must
be its stream's only one (the answer is raw). Every other stream keeps its framing and budgets.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import nacl.exceptions
import nacl.signing

from wire.buffers import BufferPool
from wire.call_frames import CallEnded, CallMembers
from wire.codec import FrameDecoder, encode_frame
from wire.frames import (
    Authenticate,
    Challenge,
    Deliver,
    ErrorCode,
    Frame,
    FrameType,
    Hello,
    LocalProtocolError,
    ProtocolError,
    QueueEmpty,
    RemoteProtocolError,
    auth_transcript,
)
from wire.limits import (
    MAX_BUFFERED_BYTES_BEFORE_AUTHENTICATION,
    MAX_BUFFERED_BYTES_PER_CONNECTION,
    MAX_FRAME_SIZE,
    MAX_FRAME_SIZE_BEFORE_AUTHENTICATION,
    RETRY_AFTER_BUFFERS_MS,
)
from wire.prekey_frames import PrekeysLow

__all__ = [
    "ALLOWED_REQUESTS",
    "BUFFER_BUDGETS",
    "HOLDING_STATES",
    "MAX_HELD_BYTES",
    "MAX_HELD_FRAMES",
    "PUSH_FRAME_TYPES",
    "RAW_OPENING_REQUESTS",
    "RAW_OPENING_RESPONSES",
    "RESPONSE_FRAME_TYPES",
    "SMALL_FRAME_STATES",
    "SOLE_REQUESTS",
    "TRANSITIONS",
    "AuthenticationRequested",
    "ClientEvent",
    "ClientProtocol",
    "ConnectionState",
    "Event",
    "PushReceived",
    "RequestReceived",
    "ResponseReceived",
    "ServerEvent",
    "ServerProtocol",
    "StreamBytes",
    "StreamEnded",
    "StreamFailed",
    "is_client_bidirectional",
    "is_server_unidirectional",
]


class ConnectionState(Enum):
    """Where a connection stands, as seen by the relay."""

    NEW = "new"  # only enrolment and HELLO
    CHALLENGED = "challenged"  # HELLO received; waiting for AUTHENTICATE
    AUTHENTICATING = "authenticating"  # AUTHENTICATE received; frames are held until decided
    AUTHENTICATED = "authenticated"  # acts for ``authenticated_device``
    CLOSED = "closed"  # nothing more is accepted


# Requests of a device without credentials: enrolling, or being linked to an account (the new
# device's side of a link channel; LINK_POST and LINK_FETCH serve the approver once
# authenticated).
_LINKING = frozenset({FrameType.LINK_POST, FrameType.LINK_FETCH})
# Sealed sender: its keys, and sealed sends, which by default travel on a connection that never
# authenticates (so that it names no sender); they are allowed once authenticated too.
_ANONYMOUS = frozenset({FrameType.GET_SENDER_KEYS, FrameType.SEALED_SEND,
                        FrameType.SEALED_MULTI_SEND})
_UNAUTHENTICATED = frozenset({FrameType.ENROL_START, FrameType.ENROL_VERIFY,
                              FrameType.LINK_OPEN}) | _LINKING | _ANONYMOUS

# The whole state machine: which requests each state accepts...
ALLOWED_REQUESTS: dict[ConnectionState, frozenset[FrameType]] = {
    ConnectionState.NEW: _UNAUTHENTICATED | {FrameType.HELLO},
    ConnectionState.CHALLENGED: _UNAUTHENTICATED | {FrameType.AUTHENTICATE},
    # Nothing is judged while the answer is checked: every frame is held (HOLDING_STATES), then
    # judged by the AUTHENTICATED table once confirmed, or dropped with the connection if refused.
    ConnectionState.AUTHENTICATING: frozenset(),
    ConnectionState.AUTHENTICATED: frozenset({
        FrameType.LOOKUP, FrameType.SEND, FrameType.ACK, FrameType.UPLOAD_PREKEYS,
        FrameType.FETCH_BUNDLE, FrameType.GET_PREKEY_COUNTS, FrameType.LIST_DEVICES,
        FrameType.PUBLISH_DEVICE_LIST, FrameType.PUSH_SET, FrameType.PUSH_CLEAR, FrameType.PUSH_GET,
        FrameType.BLOB_CREATE, FrameType.BLOB_UPLOAD, FrameType.BLOB_STATUS,
        FrameType.BLOB_DOWNLOAD, FrameType.MULTI_SEND,
        FrameType.CALL_OPEN, FrameType.CALL_JOIN, FrameType.CALL_LEAVE,
        FrameType.GET_SENDER_CERTIFICATE, FrameType.SET_DELIVERY_TOKEN,
    }) | _LINKING | _ANONYMOUS,
    ConnectionState.CLOSED: frozenset(),
}
# ...and which accepted requests move it (the others leave the state as it is). The moves out of
# AUTHENTICATING are made by ServerProtocol.confirm_authentication (to AUTHENTICATED, once the
# signature verified and the shell has claimed the device) and by a failed check_authentication,
# refuse_authentication or close() (to CLOSED).
TRANSITIONS: dict[tuple[ConnectionState, FrameType], ConnectionState] = {
    (ConnectionState.NEW, FrameType.HELLO): ConnectionState.CHALLENGED,
    (ConnectionState.CHALLENGED, FrameType.AUTHENTICATE): ConnectionState.AUTHENTICATING,
}
# States in which received frames are held, in arrival order, instead of judged: a client may send
# requests right behind AUTHENTICATE without waiting for its answer.
HOLDING_STATES = frozenset({ConnectionState.AUTHENTICATING})
MAX_HELD_FRAMES = 64  # frames held while authenticating: a full pipeline window and then some
MAX_HELD_BYTES = 4 * 1024 * 1024  # bytes received while authenticating: two full SENDs
# Before AUTHENTICATE, only small frames are allowed (MAX_FRAME_SIZE_BEFORE_AUTHENTICATION); an
# AUTHENTICATE lifts the limit for the frames behind it. Incomplete frames are counted at their
# declared size against the connection's budget, which its state sets:
BUFFER_BUDGETS: dict[ConnectionState, int] = {
    ConnectionState.NEW: MAX_BUFFERED_BYTES_BEFORE_AUTHENTICATION,
    ConnectionState.CHALLENGED: MAX_BUFFERED_BYTES_BEFORE_AUTHENTICATION,
    ConnectionState.AUTHENTICATING: MAX_BUFFERED_BYTES_BEFORE_AUTHENTICATION,
    ConnectionState.AUTHENTICATED: MAX_BUFFERED_BYTES_PER_CONNECTION,
    ConnectionState.CLOSED: 0,
}
SMALL_FRAME_STATES = frozenset({ConnectionState.NEW, ConnectionState.CHALLENGED})

RESPONSE_FRAME_TYPES = frozenset(frame_type for frame_type in FrameType if 64 <= frame_type < 128)
RAW_OPENING_REQUESTS = frozenset({FrameType.BLOB_UPLOAD})  # the client's bytes after it are raw
RAW_OPENING_RESPONSES = frozenset({FrameType.BLOB_DATA})  # the relay's bytes after it are raw
SOLE_REQUESTS = frozenset({FrameType.BLOB_DOWNLOAD})  # its stream's only frame: the answer is raw
PUSH_FRAME_TYPES = frozenset({FrameType.DELIVER, FrameType.QUEUE_EMPTY, FrameType.PREKEYS_LOW,
                              FrameType.CALL_MEMBERS, FrameType.CALL_ENDED})


def is_client_bidirectional(stream_id: int) -> bool:
    """A client-initiated bidirectional stream: the only place for requests and responses."""
    return stream_id % 4 == 0


def is_server_unidirectional(stream_id: int) -> bool:
    """A server-initiated unidirectional stream: the only place for pushes."""
    return stream_id % 4 == 3


# --- Events ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A request the connection's state allows; answer it on the same stream, in order."""

    stream_id: int  #: the client bidirectional stream it arrived on
    frame: Frame  #: the request


@dataclass(frozen=True, slots=True)
class AuthenticationRequested:
    """A HELLO: look the device up and answer with ``issue_challenge``."""

    stream_id: int  #: the stream to write the CHALLENGE on
    user_id: str  #: the claimed user
    device_id: int  #: the claimed device


@dataclass(frozen=True, slots=True)
class StreamFailed:
    """The stream carried something invalid; answer with an ERROR frame and end the stream.

    Reported once per stream; later data on it is dropped. The connection survives.
    """

    stream_id: int  #: the failed stream
    error: ProtocolError  #: its ``code`` and ``reason`` go into the ERROR frame


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer finished sending on this stream, cleanly; end our side once answers are out."""

    stream_id: int  #: the finished stream


@dataclass(frozen=True, slots=True)
class StreamBytes:
    """Raw bytes of a stream whose framing an opening frame ended (a blob's bytes, in order)."""

    stream_id: int  #: the raw stream
    data: bytes  #: the next bytes, never empty


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """Client side: a response on the stream that carried the request."""

    stream_id: int  #: the client bidirectional stream
    frame: Frame  #: the response (ERROR included)


@dataclass(frozen=True, slots=True)
class PushReceived:
    """Client side: a DELIVER, QUEUE_EMPTY, PREKEYS_LOW, CALL_MEMBERS or CALL_ENDED from the
    relay's push stream.

    ``frame`` is typed as exactly those classes (PUSH_FRAME_TYPES), so a client can dispatch
    on it with ``match`` and ``typing.assert_never``.
    """

    frame: Deliver | QueueEmpty | PrekeysLow | CallMembers | CallEnded  #: the push


ServerEvent = RequestReceived | AuthenticationRequested | StreamBytes | StreamFailed | StreamEnded
ClientEvent = ResponseReceived | PushReceived | StreamBytes | StreamFailed | StreamEnded
Event = ServerEvent | ClientEvent


# --- Stream reassembly, shared by both sides ------------------------------------------------------
class _StreamReader:
    """One FrameDecoder per receiving stream; a failed stream is reported once, then ignored.

    Each stream's incomplete frame is counted at its declared size (``buffered_bytes``);
    ``_reserve`` may refuse more, which fails the stream that asked. A stream opened by one of
    ``_raw_openers`` is raw from then on (``_raw_events``); ``_first_only`` frames must open
    their stream, and ``_sole`` ones must be its only frame.
    """

    _raw_openers: frozenset[FrameType] = frozenset()
    _sole: frozenset[FrameType] = frozenset()

    def __init__(self) -> None:
        self._raw: set[int] = set()  # streams whose framing ended: their bytes are raw
        self._opened_by: dict[int, FrameType] = {}  # stream -> the type of its first frame
        self._decoders: dict[int, FrameDecoder] = {}
        # Failed streams, forgotten when the peer ends or resets them (QUIC sends nothing after).
        self._failed: set[int] = set()
        self._counted: dict[int, int] = {}  # stream -> bytes counted for its incomplete frame
        self._buffered_bytes = 0

    @property
    def buffered_bytes(self) -> int:
        """Bytes counted for the incomplete frames of every stream, at their declared size."""
        return self._buffered_bytes

    def _frame_size_limit(self) -> int:
        """The largest frame accepted now (after the prefix)."""
        return MAX_FRAME_SIZE

    def _limit_after(self, frame: Frame) -> int:
        """The largest frame accepted behind ``frame`` in the same bytes."""
        return self._frame_size_limit()

    def _reserve(self, size: int) -> ProtocolError | None:
        """Count ``size`` more bytes of incomplete frames, or say why not (nothing counted)."""
        return None

    def _release(self, size: int) -> None:
        """``size`` bytes counted by ``_reserve`` are no longer held."""

    def _opens_raw(self, frame: Frame) -> bool:
        return frame.frame_type in self._raw_openers

    def _raw_events(self, stream_id: int, data: bytes, end_stream: bool) -> list[StreamBytes
                                                                               | StreamEnded]:
        """A raw stream's bytes, as they come; its end forgets it."""
        events: list[StreamBytes | StreamEnded] = []
        if data:
            events.append(StreamBytes(stream_id, data))
        if end_stream:
            self._raw.discard(stream_id)
            events.append(StreamEnded(stream_id))
        return events

    def _misplaced(self, stream_id: int, frames: list[Frame]) -> int | None:
        """The index of the first frame out of place on its stream (an opening frame that is
        not the stream's first, a frame behind a sole one), or None; remembers the first."""
        opened_by = self._opened_by.get(stream_id)
        for index, frame in enumerate(frames):
            frame_type = frame.frame_type
            if opened_by is None:
                opened_by = self._opened_by[stream_id] = frame_type
            elif opened_by in self._sole or frame_type in self._raw_openers | self._sole:
                return index
        return None

    def _receive(
        self, stream_id: int, data: bytes, end_stream: bool
    ) -> tuple[list[Frame], ProtocolError | None, bytes | None]:
        """The frames completed by ``data``, the error that ended the stream if any, and the
        bytes behind a raw stream's opening frame (None unless the framing ended here)."""
        decoder = self._decoders.get(stream_id)
        if decoder is None:
            decoder = self._decoders[stream_id] = FrameDecoder()
        frames: list[Frame] = []
        try:
            if data:
                frames = decoder.feed(data, max_frame_size=self._frame_size_limit(),
                                      limit_after=self._limit_after, stop_after=self._opens_raw)
            misplaced = self._misplaced(stream_id, frames)
            if misplaced is not None:
                frame = frames[misplaced]
                del frames[misplaced:]
                reason = (f"{frame.frame_type.name} may not follow "
                          f"{self._opened_by_name(stream_id, frame)} on stream {stream_id}")
                self._fail(stream_id, end_stream)
                return frames, _unexpected(reason), None
            if decoder.stopped:
                rest = decoder.take_rest()
                self._drop(stream_id)
                return frames, None, rest
            if decoder.error is not None:
                raise decoder.error  # garbage after the frames returned
            if end_stream:
                self._drop(stream_id)
                decoder.end_of_stream()
        except RemoteProtocolError as error:
            self._fail(stream_id, end_stream)
            # The error may be held (while authenticating) or kept by the decoder: without its
            # traceback, whose frames would keep this call's bytes and decoder alive, nor the
            # error it replaced (a msgpack or field error), whose own traceback does the same.
            error.__traceback__ = None
            error.__context__ = error.__cause__ = None
            return frames, self._explain(error), None
        refusal = self._count(stream_id, decoder.incomplete_frame_size)
        if refusal is not None:
            self._fail(stream_id, end_stream)
        return frames, refusal, None

    def _opened_by_name(self, stream_id: int, frame: Frame) -> str:
        opened_by = self._opened_by.get(stream_id)
        if opened_by is None or frame.frame_type in self._raw_openers | self._sole:
            return "another frame (it must open a fresh stream)"
        return f"{opened_by.name} (its stream's only frame)"

    def _explain(self, error: RemoteProtocolError) -> ProtocolError:
        """The error to report for a stream's bad bytes (a subclass may say more)."""
        return error

    def _count(self, stream_id: int, size: int) -> ProtocolError | None:
        """Count ``size`` bytes for the stream's incomplete frame (instead of what was)."""
        previous = self._counted.get(stream_id, 0)
        if size > previous:
            refusal = self._reserve(size - previous)
            if refusal is not None:
                return refusal
        elif size < previous:
            self._release(previous - size)
        self._buffered_bytes += size - previous
        if size:
            self._counted[stream_id] = size
        else:
            self._counted.pop(stream_id, None)
        return None

    def _drop(self, stream_id: int) -> None:
        """Forget the stream's decoder and what was counted for it."""
        self._decoders.pop(stream_id, None)
        self._opened_by.pop(stream_id, None)
        counted = self._counted.pop(stream_id, 0)
        if counted:
            self._buffered_bytes -= counted
            self._release(counted)

    def _drop_all(self) -> None:
        for stream_id in list(self._decoders):
            self._drop(stream_id)
        self._raw.clear()
        self._opened_by.clear()

    def _ignores(self, stream_id: int, end_stream: bool) -> bool:
        """True for a stream that already failed: its data is dropped without a word."""
        if stream_id not in self._failed:
            return False
        if end_stream:
            self._failed.discard(stream_id)
        return True

    def _fail(self, stream_id: int, end_stream: bool) -> None:
        self._drop(stream_id)
        self._raw.discard(stream_id)
        if not end_stream:
            self._failed.add(stream_id)

    def _refuse_stream(self, stream_id: int, data: bytes, end_stream: bool) -> list[StreamFailed]:
        """Data on a stream kind that carries nothing in this version: report it once."""
        if not (data or end_stream):
            return []
        self._fail(stream_id, end_stream)
        reason = f"stream {stream_id} may not carry frames to this endpoint"
        return [StreamFailed(stream_id, _unexpected(reason))]

    def stream_reset(self, stream_id: int) -> None:
        """The peer reset the stream: forget its partial frame; nothing is reported."""
        self._drop(stream_id)
        self._failed.discard(stream_id)
        self._raw.discard(stream_id)


def _unexpected(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.UNEXPECTED_FRAME, reason)


def _finish(
    events: list[ServerEvent] | list[ClientEvent],
    stream_id: int,
    end_stream: bool,
    error: ProtocolError | None,
) -> None:
    if error is not None:
        events.append(StreamFailed(stream_id, error))
    elif end_stream:
        events.append(StreamEnded(stream_id))


# --- Server side ----------------------------------------------------------------------------------
class ServerProtocol(_StreamReader):
    """The relay's view of one client connection.

    Authentication: HELLO yields ``AuthenticationRequested``; the shell calls ``issue_challenge``
    with a fresh random nonce and writes the bytes returned; AUTHENTICATE yields
    ``RequestReceived``. From then on the core holds every frame it receives. The shell calls
    ``check_authentication`` with the device's stored key (or ``refuse_authentication`` when it
    knows no key), does what must precede service (claiming the device in a cluster), then calls
    ``confirm_authentication``, which returns the held frames as events judged in the
    AUTHENTICATED state. "Authenticated" is thus one fact, this core's state: no request of the
    device reaches the shell before the shell has confirmed.

    Budgets (PROTOCOL.md "Connection budgets"): until AUTHENTICATE arrives a frame may hold at
    most MAX_FRAME_SIZE_BEFORE_AUTHENTICATION bytes; incomplete frames are counted at their
    declared size against ``BUFFER_BUDGETS[state]`` and against ``buffers``, the pool every
    connection of the relay shares. A frame that does not fit fails its stream with
    RATE_LIMITED (and a retry-after); ``close`` gives everything back.

    Args:
        buffers: the relay's shared pool; None counts this connection alone.
    """

    _raw_openers = RAW_OPENING_REQUESTS
    _sole = SOLE_REQUESTS

    def __init__(self, *, buffers: BufferPool | None = None) -> None:
        super().__init__()
        self.state = ConnectionState.NEW
        self._claimed_device: tuple[str, int] | None = None
        self._nonce: bytes | None = None
        self._challenge_issued = False
        self._signature_verified = False
        self._held: list[tuple[int, Frame | StreamBytes | StreamFailed | StreamEnded]] = []
        self._held_bytes = 0
        self._pool = buffers
        self._pooled_as_authenticated = False  # which share of the pool our bytes are counted in

    @property
    def claimed_device(self) -> tuple[str, int] | None:
        """``(user_id, device_id)`` named by the HELLO, before it is proven; or None."""
        return self._claimed_device

    @property
    def authenticated_device(self) -> tuple[str, int]:
        """``(user_id, device_id)`` of the authenticated device.

        Raises:
            LocalProtocolError: the connection is not authenticated.
        """
        if self.state is not ConnectionState.AUTHENTICATED or self._claimed_device is None:
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_FRAME, f"not authenticated (state {self.state.name})"
            )
        return self._claimed_device

    # -- budgets (the _StreamReader hooks) -------------------------------------------------------

    def _frame_size_limit(self) -> int:
        return (MAX_FRAME_SIZE_BEFORE_AUTHENTICATION if self.state in SMALL_FRAME_STATES
                else MAX_FRAME_SIZE)

    def _limit_after(self, frame: Frame) -> int:
        # Frames behind an AUTHENTICATE are judged once authenticated: full size (and held).
        return MAX_FRAME_SIZE if isinstance(frame, Authenticate) else self._frame_size_limit()

    def _explain(self, error: RemoteProtocolError) -> ProtocolError:
        if error.code is ErrorCode.FRAME_TOO_LARGE and self.state in SMALL_FRAME_STATES:
            return RemoteProtocolError(
                ErrorCode.FRAME_TOO_LARGE, f"{error.reason} (the limit before AUTHENTICATE)")
        return error

    def _reserve(self, size: int) -> ProtocolError | None:
        if self.state is ConnectionState.CLOSED:
            return _unexpected("the connection is closing")
        budget = BUFFER_BUDGETS[self.state]
        if self._buffered_bytes + size > budget:
            return RemoteProtocolError(
                ErrorCode.RATE_LIMITED,
                f"this connection's incomplete frames would hold {self._buffered_bytes + size} "
                f"bytes, over its {budget}; retry once its other frames are complete",
                retry_after_ms=RETRY_AFTER_BUFFERS_MS)
        pool = self._pool
        if pool is not None and not pool.reserve(
                size, authenticated=self._pooled_as_authenticated):
            return RemoteProtocolError(
                ErrorCode.RATE_LIMITED,
                "the relay holds too many incomplete frames; retry later",
                retry_after_ms=RETRY_AFTER_BUFFERS_MS)
        return None

    def _release(self, size: int) -> None:
        if self._pool is not None:
            self._pool.release(size, authenticated=self._pooled_as_authenticated)

    @property
    def held_frames(self) -> int:
        """Frames received behind AUTHENTICATE and held until the shell decides."""
        return sum(1 for _, item in self._held
                   if not isinstance(item, StreamBytes | StreamFailed | StreamEnded))

    def receive_stream_data(
        self, stream_id: int, data: bytes, end_stream: bool
    ) -> list[ServerEvent]:
        """Feed bytes received on a stream; return what they mean, in stream order.

        While authenticating, what arrives (frames, a stream's end or failure) is held instead,
        and returned by ``confirm_authentication``.
        """
        events: list[ServerEvent] = []
        if stream_id in self._raw:
            if self.state in HOLDING_STATES:
                self._hold(stream_id, [], None, end_stream, len(data), raw=data)
            elif self.state is not ConnectionState.CLOSED:
                events.extend(self._raw_events(stream_id, data, end_stream))
            return events
        if self._ignores(stream_id, end_stream):
            return events
        if not is_client_bidirectional(stream_id):
            events.extend(self._refuse_stream(stream_id, data, end_stream))
            return events
        frames, error, rest = self._receive(stream_id, data, end_stream)
        for index, frame in enumerate(frames):
            if self.state in HOLDING_STATES:  # from the start, or behind this chunk's AUTHENTICATE
                self._hold(stream_id, frames[index:], error, end_stream, len(data), raw=rest)
                return events
            try:
                events.append(self._accept(stream_id, frame))
            except RemoteProtocolError as refusal:
                # The requests before it stand; the stream is finished for everything after.
                self._fail(stream_id, end_stream)
                error, rest = refusal, None
                break
        if self.state in HOLDING_STATES:
            self._hold(stream_id, [], error, end_stream, len(data))
            return events
        if rest is not None:  # the BLOB_UPLOAD was accepted: the rest is the blob's
            self._raw.add(stream_id)
            events.extend(self._raw_events(stream_id, rest, end_stream))
            return events
        _finish(events, stream_id, end_stream, error)
        return events

    def _accept(self, stream_id: int, frame: Frame) -> ServerEvent:
        frame_type = frame.frame_type
        if frame_type not in ALLOWED_REQUESTS[self.state]:
            raise _unexpected(f"{frame_type.name} is not allowed in state {self.state.name}")
        self.state = TRANSITIONS.get((self.state, frame_type), self.state)
        if isinstance(frame, Hello):
            self._claimed_device = (frame.user_id, frame.device_id)
            return AuthenticationRequested(stream_id, frame.user_id, frame.device_id)
        return RequestReceived(stream_id, frame)

    def _hold(self, stream_id: int, frames: list[Frame], error: ProtocolError | None,
              end_stream: bool, size: int, *, raw: bytes | None = None) -> None:
        """Keep what arrived while authenticating, within MAX_HELD_FRAMES and MAX_HELD_BYTES.

        ``raw``: bytes of a raw stream (behind its BLOB_UPLOAD, held among ``frames`` or
        earlier), kept in order like frames; the stream is raw from now on.
        """
        self._held_bytes += size
        over = RemoteProtocolError(
            ErrorCode.RATE_LIMITED,
            "too many requests before authentication completed; retry once authenticated",
            retry_after_ms=RETRY_AFTER_BUFFERS_MS)
        for frame in frames:
            if len(self._held) >= MAX_HELD_FRAMES or self._held_bytes > MAX_HELD_BYTES:
                self._fail(stream_id, end_stream)
                error, raw = over, None
                break
            self._held.append((stream_id, frame))
        if error is None and raw is not None:
            if self._held_bytes > MAX_HELD_BYTES:
                self._fail(stream_id, end_stream)
                error = over
            else:
                self._raw.add(stream_id)
                if raw:
                    self._held.append((stream_id, StreamBytes(stream_id, raw)))
        if error is not None:
            self._held.append((stream_id, StreamFailed(stream_id, error)))
        elif end_stream:
            self._raw.discard(stream_id)
            self._held.append((stream_id, StreamEnded(stream_id)))

    def issue_challenge(self, nonce: bytes) -> bytes:
        """Remember ``nonce`` as this connection's only challenge; return the CHALLENGE frame.

        Args:
            nonce: NONCE_SIZE fresh random bytes (the caller owns the random source).

        Raises:
            LocalProtocolError: not right after a HELLO, a challenge was already issued, or the
                nonce has the wrong size.
        """
        if self.state is not ConnectionState.CHALLENGED or self._challenge_issued:
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_FRAME,
                f"a challenge needs a fresh HELLO (state {self.state.name})",
            )
        frame = encode_frame(Challenge(nonce=nonce))  # validates the size
        self._nonce = nonce
        self._challenge_issued = True
        return frame

    def check_authentication(self, signature: bytes, identity_key: bytes) -> bool:
        """Verify the AUTHENTICATE signature with the claimed device's identity key.

        The nonce is consumed whatever the outcome: one attempt per connection. On success the
        state stays AUTHENTICATING until ``confirm_authentication``; on failure (including no
        outstanding challenge, a malformed key or signature) it becomes CLOSED, the held frames
        are dropped, and the shell closes the connection with AUTHENTICATION_FAILED.
        """
        nonce, self._nonce = self._nonce, None
        claimed = self._claimed_device
        if (
            nonce is None
            or claimed is None
            or self.state not in (ConnectionState.CHALLENGED, ConnectionState.AUTHENTICATING)
        ):
            self.close()
            return False
        transcript = auth_transcript(nonce=nonce, user_id=claimed[0], device_id=claimed[1])
        try:
            nacl.signing.VerifyKey(identity_key).verify(transcript, signature)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            self.close()
            return False
        self.state = ConnectionState.AUTHENTICATING  # until confirmed
        self._signature_verified = True
        return True

    def confirm_authentication(self) -> list[ServerEvent]:
        """The shell is ready to serve the verified device: become AUTHENTICATED.

        Returns:
            The frames held since AUTHENTICATE, judged now by the AUTHENTICATED table, in the
            order they arrived; the shell handles them as if they had just been received.

        Raises:
            LocalProtocolError: no successful ``check_authentication`` on this connection.
        """
        if self.state is not ConnectionState.AUTHENTICATING or not self._signature_verified:
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_FRAME,
                f"nothing verified to confirm (state {self.state.name})",
            )
        self.state = ConnectionState.AUTHENTICATED
        if self._pool is not None:
            self._pool.authenticate(self._buffered_bytes)
        self._pooled_as_authenticated = True
        held, self._held, self._held_bytes = self._held, [], 0
        events: list[ServerEvent] = []
        refused: set[int] = set()
        for stream_id, item in held:
            if stream_id in refused:
                if isinstance(item, StreamEnded):
                    self._failed.discard(stream_id)  # as _ignores does when the peer ends it
                continue
            if isinstance(item, StreamBytes | StreamFailed | StreamEnded):
                events.append(item)
                continue
            try:
                events.append(self._accept(stream_id, item))
            except RemoteProtocolError as refusal:
                refused.add(stream_id)
                self._fail(stream_id, end_stream=False)
                events.append(StreamFailed(stream_id, refusal))
        return events

    def refuse_authentication(self) -> None:
        """The shell refuses the device (unknown, revoked, suspended): consume the nonce, close.

        The held frames are dropped; the shell answers AUTHENTICATE with the reason and closes.
        """
        self.close()

    def close(self) -> None:
        """Refuse everything from now on (the shell is closing the connection); drop every
        incomplete frame and give its bytes back to the pool."""
        self.state = ConnectionState.CLOSED
        self._nonce = None
        self._signature_verified = False
        self._held.clear()
        self._held_bytes = 0
        self._drop_all()


# --- Client side ----------------------------------------------------------------------------------
class ClientProtocol(_StreamReader):
    """The reference client's view: responses on its own streams, pushes on the relay's."""

    _raw_openers = RAW_OPENING_RESPONSES

    def receive_stream_data(
        self, stream_id: int, data: bytes, end_stream: bool
    ) -> list[ClientEvent]:
        """Feed bytes received on a stream; return what they mean, in stream order."""
        events: list[ClientEvent] = []
        if stream_id in self._raw:
            events.extend(self._raw_events(stream_id, data, end_stream))
            return events
        if self._ignores(stream_id, end_stream):
            return events
        pushes = is_server_unidirectional(stream_id)
        if not (pushes or is_client_bidirectional(stream_id)):
            events.extend(self._refuse_stream(stream_id, data, end_stream))
            return events
        frames, error, rest = self._receive(stream_id, data, end_stream)
        if rest is not None and pushes:  # a BLOB_DATA is no push: refused below
            self._fail(stream_id, end_stream)
            rest = None
        for frame in frames:
            # The class check is the PUSH_FRAME_TYPES check, in a form mypy narrows.
            if pushes and isinstance(frame, Deliver | QueueEmpty | PrekeysLow | CallMembers
                                     | CallEnded):
                events.append(PushReceived(frame))
            elif not pushes and frame.frame_type in RESPONSE_FRAME_TYPES:
                events.append(ResponseReceived(stream_id, frame))
            else:
                self._fail(stream_id, end_stream)
                error = _unexpected(f"{frame.frame_type.name} is not allowed on stream {stream_id}")
                break
        else:
            if rest is not None:  # a BLOB_DATA opened the stream: the rest is the blob's
                self._raw.add(stream_id)
                events.extend(self._raw_events(stream_id, rest, end_stream))
                return events
        _finish(events, stream_id, end_stream, error)
        return events
