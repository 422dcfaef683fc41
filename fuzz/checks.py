"""What must hold whatever a peer sends: the oracle shared by the hypothesis properties
(tests/test_fuzz_protocol.py) and the coverage-guided targets (fuzz/targets.py).

- Only protocol errors (``wire.errors.ProtocolError``) escape the decoder and the state machines;
  any other exception is a finding.
- A call that raises a protocol error leaves the machine exactly as it was (``snapshot``).
- A stream that failed is ignored until the peer ends or resets it, and changes nothing.
- The budgets hold after every step: held frames, buffered bytes per connection and in the pool
  every connection shares, all given back when a connection closes; no request that needs a
  proven device reaches the shell before the shell confirmed one.

Findings are raised as ``FuzzFinding`` (an ``AssertionError``), never with ``assert``, so the
checks keep checking under ``python -O``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import TypeVar

from nacl.signing import SigningKey

from wire.buffers import BufferPool
from wire.codec import FrameDecoder, decode_body, encode_frame
from wire.errors import ProtocolError, RemoteProtocolError
from wire.frames import LENGTH_PREFIX_SIZE, MAX_FRAME_SIZE, ErrorCode, Frame, auth_transcript
from wire.protocol import (
    ALLOWED_REQUESTS,
    BUFFER_BUDGETS,
    MAX_HELD_FRAMES,
    PUSH_FRAME_TYPES,
    RESPONSE_FRAME_TYPES,
    AuthenticationRequested,
    ClientProtocol,
    ConnectionState,
    PushReceived,
    RequestReceived,
    ResponseReceived,
    ServerProtocol,
    StreamBytes,
    StreamEnded,
    StreamFailed,
    is_client_bidirectional,
    is_server_unidirectional,
)

__all__ = ["DEVICE_KEY", "ClientDriver", "FuzzFinding", "ServerDriver", "check_frame_stream",
           "require", "snapshot"]

T = TypeVar("T")

DEVICE_KEY = SigningKey(bytes(range(32)))
"""The identity key of every device the fuzzers claim: a fixed seed, so a finding reproduces."""

UNAUTHENTICATED_REQUESTS = ALLOWED_REQUESTS[ConnectionState.NEW] | ALLOWED_REQUESTS[
    ConnectionState.CHALLENGED]
"""Requests the shell may see before it confirmed a device; every other one needs it."""


class FuzzFinding(AssertionError):
    """A property of the protocol does not hold for this input."""


def require(condition: bool, finding: str) -> None:
    """Raise ``FuzzFinding(finding)`` unless ``condition`` (an ``assert`` that ``-O`` keeps)."""
    if not condition:
        raise FuzzFinding(finding)


def snapshot(value: object) -> object:
    """A comparable picture of ``value`` and everything it holds, down to plain values.

    Objects are pictured by their attributes (``__dict__`` or ``__slots__``), so the picture
    covers private state too without naming it; frames compare as values; exceptions by type,
    code, reason and retry-after.
    """
    if value is None or isinstance(value, bool | int | float | str | bytes | enum.Enum):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, BaseException):
        return (type(value).__name__, str(value), getattr(value, "retry_after_ms", None))
    if isinstance(value, list | tuple):
        return tuple(snapshot(item) for item in value)
    if isinstance(value, set | frozenset):
        return frozenset(repr(snapshot(item)) for item in value)
    if isinstance(value, dict):
        return tuple(sorted(((repr(snapshot(key)), snapshot(item)) for key, item in value.items()),
                            key=lambda pair: pair[0]))
    parameters = getattr(type(value), "__dataclass_params__", None)
    if parameters is not None and parameters.frozen:
        return value  # frames and events: values with their own equality (mutable ones below)
    names = list(getattr(value, "__dict__", {}))
    for cls in type(value).__mro__:
        names += [name for name in getattr(cls, "__slots__", ()) if hasattr(value, name)]
    return (type(value).__name__, tuple((name, snapshot(getattr(value, name)))
                                        for name in sorted(set(names))))


def unchanged_on_protocol_error(machine: object, call: Callable[[], T], what: str) -> T | None:
    """Run ``call``; a protocol error is allowed if ``machine`` is then exactly as before.

    Returns:
        What ``call`` returned, or None after a protocol error. Any other exception propagates
        (a finding in itself).
    """
    before = snapshot(machine)
    try:
        return call()
    except ProtocolError as error:
        require(snapshot(machine) == before, f"{what} raised {error} and changed the state")
        return None


# --- The frame decoder ----------------------------------------------------------------------------
def _decode_in_chunks(data: bytes, cuts: Sequence[int],
                      max_frame_size: int) -> tuple[list[Frame], ErrorCode | None]:
    """Feed ``data`` cut at ``cuts``; the frames until the first error, and its code."""
    decoder = FrameDecoder()
    frames: list[Frame] = []
    start = 0
    for cut in [*sorted(cut % (len(data) + 1) for cut in cuts), len(data)]:
        chunk, start = data[start:cut], max(start, cut)
        try:
            frames += decoder.feed(chunk, max_frame_size=max_frame_size)
        except RemoteProtocolError as error:
            _check_poisoned(decoder, error)
            require(decoder.buffered == 0, "a decoder that refused bytes still holds some")
            return frames, error.code
        garbage = decoder.error  # behind the frames returned: raised by the next call
        if garbage is not None:
            _check_poisoned(decoder, garbage)
            require(decoder.buffered == 0, "a decoder that refused bytes still holds some")
            return frames, garbage.code
        incomplete = decoder.incomplete_frame_size
        require(decoder.buffered <= incomplete, "buffered more than the frame it counts")
        require(incomplete <= LENGTH_PREFIX_SIZE + max_frame_size,
                f"an incomplete frame of {incomplete} bytes is over the limit {max_frame_size}")
    try:
        decoder.end_of_stream()
    except RemoteProtocolError as error:
        _check_poisoned(decoder, error)
        return frames, error.code
    return frames, None


def _check_poisoned(decoder: FrameDecoder, error: RemoteProtocolError) -> None:
    require(decoder.error is error, "the decoder forgot its error")
    before = snapshot(decoder)
    for again in (lambda: decoder.feed(b"\x00\x00\x00\x00"), decoder.end_of_stream):
        try:
            again()
        except RemoteProtocolError as later:
            require(later is error, f"a poisoned decoder raised {later}, not {error}")
        else:
            raise FuzzFinding("a poisoned decoder accepted more bytes")
    require(snapshot(decoder) == before, "a poisoned decoder changed")


def check_frame_stream(data: bytes, cuts: Sequence[int], *,
                       max_frame_size: int = MAX_FRAME_SIZE) -> list[Frame]:
    """The decoder's properties on one stream's bytes, received whole and in chunks.

    Only RemoteProtocolError escapes; chunking changes neither the frames nor the error; a
    failed decoder stays failed and holds nothing; an incomplete frame never holds more than
    its declared size, which is within ``max_frame_size``; each frame decoded re-encodes to
    bytes that decode to it again. Returns the frames decoded before any error.
    """
    whole = _decode_in_chunks(data, (), max_frame_size)
    chunked = _decode_in_chunks(data, cuts, max_frame_size)
    require(whole == chunked, f"chunking changed the outcome: {whole!r} != {chunked!r}")
    frames = whole[0]
    for frame in frames:
        again = decode_body(encode_frame(frame)[LENGTH_PREFIX_SIZE:])
        require(again == frame, f"{frame!r} re-encoded decodes to {again!r}")
    return frames


# --- The relay's state machine --------------------------------------------------------------------
class ServerDriver:
    """Connections of one relay (ServerProtocol cores sharing one BufferPool), driven as a shell
    would, with every property checked after every step.

    ``authenticate(valid=True)`` signs the transcript of the challenge this shell issued, as a
    device holding DEVICE_KEY would, so a fuzzer reaches the authenticated state.
    """

    def __init__(self, connections: int = 2, *, pool: BufferPool | None = None) -> None:
        self.pool = pool if pool is not None else BufferPool()
        self.connections = [ServerProtocol(buffers=self.pool) for _ in range(connections)]
        self._nonces: list[bytes | None] = [None] * connections
        self._failed: list[set[int]] = [set() for _ in range(connections)]
        self.states_seen: set[ConnectionState] = {ConnectionState.NEW}
        """Every state a connection was in after a step (what a corpus reaches)."""
        self.events_seen: set[str] = set()
        """Kinds of events returned (``RequestReceived:SEND``, ``StreamFailed:RATE_LIMITED``)."""

    def receive(self, connection: int, stream_id: int, data: bytes, end_stream: bool) -> None:
        core = self.connections[connection]
        state_before = core.state
        ignored = stream_id in self._failed[connection]
        before = snapshot(core) if ignored and not end_stream else None
        events = unchanged_on_protocol_error(
            core, lambda: core.receive_stream_data(stream_id, data, end_stream),
            f"receive_stream_data({stream_id})") or []
        self._check_events(events, stream_id, state_before)
        if ignored:
            require(events == [], f"stream {stream_id} failed, yet its data gave {events!r}")
            if before is not None:
                require(snapshot(core) == before, f"data on failed stream {stream_id} changed "
                                                  "the connection")
        if end_stream:
            self._failed[connection].discard(stream_id)
        elif any(isinstance(event, StreamFailed) for event in events):
            self._failed[connection].add(stream_id)
        self._check(f"receive({stream_id})")

    def _check_events(self, events: Sequence[object], stream_id: int,
                      state_before: ConnectionState) -> None:
        for position, event in enumerate(events):
            require(getattr(event, "stream_id", None) == stream_id,
                    f"{event!r} names another stream than {stream_id}")
            if isinstance(event, StreamFailed | StreamEnded):
                require(position == len(events) - 1, f"{event!r} is not the stream's last event")
            match event:
                case StreamFailed(error=error):
                    self.events_seen.add(f"StreamFailed:{error.code.name}")
                    require(isinstance(error.code, ErrorCode), f"{error!r} has no wire code")
                    if error.code is ErrorCode.RATE_LIMITED:
                        require(error.retry_after_ms is not None,
                                f"RATE_LIMITED without a retry-after: {error}")
                case RequestReceived(frame=frame):
                    self._check_request(frame, state_before)
                case AuthenticationRequested():
                    self.events_seen.add("AuthenticationRequested")
                    require(state_before is ConnectionState.NEW, "a HELLO after NEW was accepted")
                case StreamEnded():
                    self.events_seen.add("StreamEnded")
                case StreamBytes(data=data):  # a blob's bytes behind its BLOB_UPLOAD
                    self.events_seen.add("StreamBytes")
                    require(bool(data), f"{event!r} carries no bytes")
                case _:
                    raise FuzzFinding(f"the relay's core returned {event!r}")

    def _check_request(self, frame: Frame, state: ConnectionState) -> None:
        self.events_seen.add(f"RequestReceived:{frame.frame_type.name}")
        require(frame.frame_type < 64, f"{frame!r} is not a request")
        if frame.frame_type not in UNAUTHENTICATED_REQUESTS:
            require(state is ConnectionState.AUTHENTICATED,
                    f"{frame.frame_type.name} reached the shell in state {state.name}")

    def reset(self, connection: int, stream_id: int) -> None:
        core = self.connections[connection]
        unchanged_on_protocol_error(core, lambda: core.stream_reset(stream_id), "stream_reset")
        self._failed[connection].discard(stream_id)
        self._check("reset")

    def challenge(self, connection: int, nonce: bytes) -> None:
        core = self.connections[connection]
        frame = unchanged_on_protocol_error(core, lambda: core.issue_challenge(nonce),
                                            "issue_challenge")
        if frame is not None:
            self._nonces[connection] = nonce
        self._check("issue_challenge")

    def authenticate(self, connection: int, *, valid: bool) -> None:
        """check_authentication with a good signature (if a challenge and a claim exist) or a
        bad one."""
        core = self.connections[connection]
        nonce, claimed = self._nonces[connection], core.claimed_device
        self._nonces[connection] = None  # one attempt per challenge, whatever the outcome
        signature = b"\x00" * 64
        if valid and nonce is not None and claimed is not None:
            transcript = auth_transcript(nonce=nonce, user_id=claimed[0], device_id=claimed[1])
            signature = DEVICE_KEY.sign(transcript).signature
        verified = unchanged_on_protocol_error(
            core, lambda: core.check_authentication(signature, DEVICE_KEY.verify_key.encode()),
            "check_authentication")
        if verified:
            require(core.state is ConnectionState.AUTHENTICATING, "verified, yet not held")
        else:
            require(core.state is ConnectionState.CLOSED, "a refused answer left it open")
        self._check("check_authentication")

    def confirm(self, connection: int) -> None:
        core = self.connections[connection]
        events = unchanged_on_protocol_error(core, core.confirm_authentication,
                                             "confirm_authentication")
        for event in events or []:
            if isinstance(event, RequestReceived):
                self._check_request(event.frame, core.state)
        self._check("confirm_authentication")

    def refuse(self, connection: int) -> None:
        core = self.connections[connection]
        unchanged_on_protocol_error(core, core.refuse_authentication, "refuse_authentication")
        self._check("refuse_authentication")

    def close(self, connection: int) -> None:
        core = self.connections[connection]
        unchanged_on_protocol_error(core, core.close, "close")
        self._check("close")

    def probe(self, connection: int) -> None:
        """Read every public property (``authenticated_device`` raises unless authenticated)."""
        core = self.connections[connection]
        device = unchanged_on_protocol_error(core, lambda: core.authenticated_device,
                                             "authenticated_device")
        require((device is not None) == (core.state is ConnectionState.AUTHENTICATED),
                f"authenticated_device in state {core.state.name}: {device!r}")
        self._check("authenticated_device")

    def _check(self, step: str) -> None:
        pool = self.pool
        for core in self.connections:
            self.states_seen.add(core.state)
            require(core.held_frames <= MAX_HELD_FRAMES,
                    f"after {step}: {core.held_frames} frames held")
            require(0 <= core.buffered_bytes <= BUFFER_BUDGETS[core.state],
                    f"after {step}: {core.buffered_bytes} bytes buffered in {core.state.name}")
            if core.state is ConnectionState.CLOSED:
                require(core.buffered_bytes == core.held_frames == 0,
                        f"after {step}: a closed connection still holds something")
        require(pool.used == sum(core.buffered_bytes for core in self.connections),
                f"after {step}: the pool counts {pool.used} bytes, the connections "
                f"{[core.buffered_bytes for core in self.connections]}")
        unauthenticated = sum(core.buffered_bytes for core in self.connections
                              if core.state is not ConnectionState.AUTHENTICATED)
        require(pool.used_unauthenticated == unauthenticated,
                f"after {step}: the pool's unauthenticated share is {pool.used_unauthenticated},"
                f" the connections hold {unauthenticated}")
        require(pool.used <= pool.limit and pool.used_unauthenticated
                <= pool.unauthenticated_limit, f"after {step}: the pool is over its limits")


# --- The client's state machine -------------------------------------------------------------------
class ClientDriver:
    """The reference client's core, fed what a relay could send, checked after every step."""

    def __init__(self) -> None:
        self.core = ClientProtocol()
        self._failed: set[int] = set()
        self.events_seen: set[str] = set()

    def receive(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        core = self.core
        ignored = stream_id in self._failed
        before = snapshot(core) if ignored and not end_stream else None
        events = unchanged_on_protocol_error(
            core, lambda: core.receive_stream_data(stream_id, data, end_stream),
            f"receive_stream_data({stream_id})") or []
        for position, event in enumerate(events):
            match event:
                case PushReceived(frame=frame):
                    self.events_seen.add(f"PushReceived:{frame.frame_type.name}")
                    require(is_server_unidirectional(stream_id),
                            f"a push on stream {stream_id}")
                    require(frame.frame_type in PUSH_FRAME_TYPES, f"{frame!r} is not a push")
                case ResponseReceived(frame=frame):
                    self.events_seen.add(f"ResponseReceived:{frame.frame_type.name}")
                    require(is_client_bidirectional(stream_id) and event.stream_id == stream_id,
                            f"a response on stream {stream_id}")
                    require(frame.frame_type in RESPONSE_FRAME_TYPES,
                            f"{frame!r} is not a response")
                case StreamFailed() | StreamEnded():
                    self.events_seen.add(type(event).__name__)
                    require(event.stream_id == stream_id and position == len(events) - 1,
                            f"{event!r} out of place")
                case StreamBytes(data=data):  # a blob's bytes behind its BLOB_DATA
                    self.events_seen.add("StreamBytes")
                    require(event.stream_id == stream_id and bool(data), f"{event!r} out of place")
                case _:
                    raise FuzzFinding(f"the client's core returned {event!r}")
        if ignored:
            require(events == [], f"stream {stream_id} failed, yet its data gave {events!r}")
            if before is not None:
                require(snapshot(core) == before, f"data on failed stream {stream_id} changed "
                                                  "the client")
        if end_stream:
            self._failed.discard(stream_id)
        elif any(isinstance(event, StreamFailed) for event in events):
            self._failed.add(stream_id)
        require(core.buffered_bytes >= 0, "negative buffered bytes")

    def reset(self, stream_id: int) -> None:
        core = self.core
        unchanged_on_protocol_error(core, lambda: core.stream_reset(stream_id), "stream_reset")
        self._failed.discard(stream_id)
