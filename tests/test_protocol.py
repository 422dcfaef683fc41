"""The per-connection state machines: the whole table, authentication, streams, client side."""

from __future__ import annotations

import itertools

import pytest
from nacl.signing import SigningKey

from tests.test_frames import SAMPLE_FRAMES, chunkings
from wire.codec import decode_body, encode_frame
from wire.frames import (
    NONCE_SIZE,
    Ack,
    Authenticate,
    Challenge,
    Deliver,
    ErrorCode,
    FrameType,
    Hello,
    LocalProtocolError,
    Lookup,
    QueueEmpty,
    SendAccepted,
    auth_transcript,
)
from wire.protocol import (
    ALLOWED_REQUESTS,
    HOLDING_STATES,
    MAX_HELD_BYTES,
    MAX_HELD_FRAMES,
    TRANSITIONS,
    AuthenticationRequested,
    ClientProtocol,
    ConnectionState,
    PushReceived,
    RequestReceived,
    ResponseReceived,
    ServerEvent,
    ServerProtocol,
    StreamEnded,
    StreamFailed,
)

USER_ID = "u-1"
DEVICE_ID = 3
NONCE = bytes(range(NONCE_SIZE))
OTHER_NONCE = bytes(NONCE_SIZE)
DEVICE_KEY = SigningKey(bytes(range(32, 64)))
IDENTITY_KEY = bytes(DEVICE_KEY.verify_key)


def sign(nonce: bytes, key: SigningKey = DEVICE_KEY) -> bytes:
    transcript = auth_transcript(nonce=nonce, user_id=USER_ID, device_id=DEVICE_ID)
    return key.sign(transcript).signature


def receive_every_way(
    server_factory: type[ServerProtocol], data: bytes, stream_id: int = 0
) -> list[ServerEvent]:
    """Feed a fresh server ``data`` whole, byte by byte and in random chunks; all must agree."""
    results = []
    for chunks in chunkings(data):
        server = server_factory()
        events = [
            event
            for chunk in chunks
            for event in server.receive_stream_data(stream_id, chunk, False)
        ]
        results.append(events)
    assert all(result == results[0] for result in results)
    return results[0]


def hello(server: ServerProtocol, stream_id: int = 0) -> list[ServerEvent]:
    return server.receive_stream_data(
        stream_id, encode_frame(Hello(user_id=USER_ID, device_id=DEVICE_ID)), False
    )


def server_in(state: ConnectionState) -> ServerProtocol:
    """A server brought to ``state`` through the real exchange."""
    server = ServerProtocol()
    if state is ConnectionState.CLOSED:
        server.close()
    if state in (ConnectionState.NEW, ConnectionState.CLOSED):
        return server
    hello(server)
    server.issue_challenge(NONCE)
    if state is ConnectionState.CHALLENGED:
        return server
    server.receive_stream_data(0, encode_frame(Authenticate(signature=sign(NONCE))), False)
    if state is ConnectionState.AUTHENTICATING:
        return server
    assert server.check_authentication(sign(NONCE), IDENTITY_KEY)
    assert server.confirm_authentication() == []
    return server


@pytest.mark.parametrize("state", ConnectionState)
def test_server_in_reaches_each_state(state: ConnectionState) -> None:
    assert server_in(state).state is state


# --- the table, exhaustively ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("state", "frame_type"),
    list(itertools.product(ConnectionState, FrameType)),
    ids=lambda value: value.name,
)
def test_every_state_and_frame_type(state: ConnectionState, frame_type: FrameType) -> None:
    server = server_in(state)
    events = server.receive_stream_data(4, encode_frame(SAMPLE_FRAMES[frame_type]), False)
    if state in HOLDING_STATES:
        # Held, not judged: once confirmed, the frame is judged as if it arrived authenticated.
        assert events == []
        assert server.check_authentication(sign(NONCE), IDENTITY_KEY)
        events = server.confirm_authentication()
        state = ConnectionState.AUTHENTICATED
    if frame_type in ALLOWED_REQUESTS[state]:
        assert server.state is TRANSITIONS.get((state, frame_type), state)
        if frame_type is FrameType.HELLO:
            assert events == [AuthenticationRequested(4, SAMPLE_FRAMES[frame_type].user_id, 1)]  # type: ignore[union-attr]
        else:
            assert events == [RequestReceived(4, SAMPLE_FRAMES[frame_type])]
    else:
        assert server.state is state
        (event,) = events
        assert isinstance(event, StreamFailed)
        assert event.error.code is ErrorCode.UNEXPECTED_FRAME
        assert event.error.reason == f"{frame_type.name} is not allowed in state {state.name}"


def test_table_mentions_only_requests() -> None:
    requests = {frame_type for frame_type in FrameType if frame_type < 64}
    for allowed in ALLOWED_REQUESTS.values():
        assert allowed <= requests
    assert set(ALLOWED_REQUESTS) == set(ConnectionState)
    for state, frame_type in TRANSITIONS:
        assert frame_type in ALLOWED_REQUESTS[state]


# --- authentication -------------------------------------------------------------------------------
def test_hello_then_valid_signature_authenticates() -> None:
    server = ServerProtocol()
    assert hello(server) == [AuthenticationRequested(0, USER_ID, DEVICE_ID)]
    assert server.state is ConnectionState.CHALLENGED
    assert decode_body(server.issue_challenge(NONCE)[4:]) == Challenge(nonce=NONCE)
    signature = sign(NONCE)
    events = server.receive_stream_data(0, encode_frame(Authenticate(signature=signature)), False)
    assert events == [RequestReceived(0, Authenticate(signature=signature))]
    assert server.check_authentication(signature, IDENTITY_KEY)
    # Verified, but not yet authenticated: the shell confirms once it can serve the device.
    assert server.state is ConnectionState.AUTHENTICATING  # type: ignore[comparison-overlap]
    with pytest.raises(LocalProtocolError):
        _ = server.authenticated_device
    assert server.confirm_authentication() == []
    assert server.state is ConnectionState.AUTHENTICATED
    assert server.authenticated_device == (USER_ID, DEVICE_ID)


@pytest.mark.parametrize(
    ("signature", "identity_key"),
    [
        (sign(NONCE, SigningKey(bytes(32))), IDENTITY_KEY),  # signed with another key
        (sign(NONCE), bytes(SigningKey(bytes(32)).verify_key)),  # checked against another key
        (sign(OTHER_NONCE), IDENTITY_KEY),  # replayed from a connection with another nonce
        (bytes(64), IDENTITY_KEY),
        (sign(NONCE), b"short key"),
        (b"short signature", IDENTITY_KEY),
    ],
    ids=["wrong-signer", "wrong-key", "replay", "zero-signature", "bad-key", "bad-signature"],
)
def test_bad_authentication_closes(signature: bytes, identity_key: bytes) -> None:
    server = server_in(ConnectionState.AUTHENTICATING)
    assert not server.check_authentication(signature, identity_key)
    assert server.state is ConnectionState.CLOSED
    with pytest.raises(LocalProtocolError):
        _ = server.authenticated_device
    # One attempt per connection: even the right answer is refused now.
    assert not server.check_authentication(sign(NONCE), IDENTITY_KEY)
    (event,) = server.receive_stream_data(
        8, encode_frame(Authenticate(signature=sign(NONCE))), False
    )
    assert isinstance(event, StreamFailed)
    assert event.error.code is ErrorCode.UNEXPECTED_FRAME


def test_nonce_is_single_use() -> None:
    server = server_in(ConnectionState.AUTHENTICATED)
    assert not server.check_authentication(sign(NONCE), IDENTITY_KEY)
    assert server.state is ConnectionState.CLOSED


def test_authenticate_without_a_challenge_fails() -> None:
    server = ServerProtocol()
    hello(server)
    server.receive_stream_data(0, encode_frame(Authenticate(signature=sign(NONCE))), False)
    assert not server.check_authentication(sign(NONCE), IDENTITY_KEY)
    assert server.state is ConnectionState.CLOSED


def test_second_authenticate_while_checking_is_refused() -> None:
    server = server_in(ConnectionState.AUTHENTICATING)
    assert server.receive_stream_data(
        4, encode_frame(Authenticate(signature=sign(NONCE))), False
    ) == []  # held
    assert server.check_authentication(sign(NONCE), IDENTITY_KEY)
    (event,) = server.confirm_authentication()
    assert isinstance(event, StreamFailed)
    assert event.error.code is ErrorCode.UNEXPECTED_FRAME
    assert event.error.reason == "AUTHENTICATE is not allowed in state AUTHENTICATED"


# --- requests sent right behind AUTHENTICATE ------------------------------------------------------
def authenticating_with(data: bytes, stream_id: int = 0) -> ServerProtocol:
    """A server that received AUTHENTICATE on stream 0 and then ``data`` on ``stream_id``."""
    server = server_in(ConnectionState.AUTHENTICATING)
    assert server.receive_stream_data(stream_id, data, False) == []
    return server


def test_requests_behind_authenticate_wait_for_the_confirmation_then_come_out_in_order() -> None:
    requests = [Lookup(phones=("+33612345678",)), Ack(envelope_ids=(7,)), Ack(envelope_ids=(8,))]
    data = b"".join(encode_frame(request) for request in requests)
    for chunks in chunkings(data):
        server = server_in(ConnectionState.AUTHENTICATING)
        for chunk in chunks:
            assert server.receive_stream_data(0, chunk, False) == []
        assert server.receive_stream_data(4, encode_frame(requests[0]), True) == []
        assert server.check_authentication(sign(NONCE), IDENTITY_KEY)
        assert server.confirm_authentication() == [
            *(RequestReceived(0, request) for request in requests),
            RequestReceived(4, requests[0]), StreamEnded(4)]
        # Later frames are judged at once.
        assert server.receive_stream_data(8, encode_frame(requests[1]), False) == [
            RequestReceived(8, requests[1])]


def test_requests_in_the_same_bytes_as_authenticate_are_held_too() -> None:
    requests = [Lookup(phones=("+33612345678",)), Ack(envelope_ids=(7,))]
    data = b"".join(encode_frame(frame) for frame in (Authenticate(signature=sign(NONCE)),
                                                       *requests))
    for chunks in chunkings(data):
        server = server_in(ConnectionState.CHALLENGED)
        events = [event for chunk in chunks for event in server.receive_stream_data(0, chunk, False)]
        assert events == [RequestReceived(0, Authenticate(signature=sign(NONCE)))]
        assert server.check_authentication(sign(NONCE), IDENTITY_KEY)
        assert server.confirm_authentication() == [RequestReceived(0, request)
                                                   for request in requests]


@pytest.mark.parametrize("refuse", ["bad-signature", "refused-by-shell", "closed"])
def test_held_requests_are_dropped_when_authentication_fails(refuse: str) -> None:
    server = authenticating_with(encode_frame(Lookup(phones=("+33612345678",))))
    if refuse == "bad-signature":
        assert not server.check_authentication(sign(OTHER_NONCE), IDENTITY_KEY)
    elif refuse == "refused-by-shell":
        server.refuse_authentication()
    else:
        assert server.check_authentication(sign(NONCE), IDENTITY_KEY)
        server.close()
    assert server.state is ConnectionState.CLOSED
    with pytest.raises(LocalProtocolError):
        server.confirm_authentication()


def test_confirmation_needs_a_verified_signature() -> None:
    for state in ConnectionState:
        with pytest.raises(LocalProtocolError):
            server_in(state).confirm_authentication()


def test_held_frames_are_bounded_in_number() -> None:
    ack = encode_frame(Ack(envelope_ids=(1,)))
    server = authenticating_with(ack * (MAX_HELD_FRAMES + 3))
    assert server.check_authentication(sign(NONCE), IDENTITY_KEY)
    events = server.confirm_authentication()
    assert events[:-1] == [RequestReceived(0, Ack(envelope_ids=(1,)))] * MAX_HELD_FRAMES
    assert isinstance(events[-1], StreamFailed)
    assert events[-1].error.code is ErrorCode.RATE_LIMITED
    assert server.receive_stream_data(0, ack, False) == []  # the failed stream stays failed


def test_held_bytes_are_bounded() -> None:
    chunk = bytes(1024 * 1024)  # part of a frame that never completes
    server = authenticating_with(encode_frame(Ack(envelope_ids=(1,))), stream_id=4)
    for stream_id in range(8, 8 + 4 * (MAX_HELD_BYTES // len(chunk)), 4):
        server.receive_stream_data(stream_id, b"\x00\x01\x00\x00" + chunk[:-4], False)
    assert server.receive_stream_data(12, b"", True) == []
    server.receive_stream_data(4, encode_frame(Ack(envelope_ids=(2,))), False)
    assert server.check_authentication(sign(NONCE), IDENTITY_KEY)
    events = server.confirm_authentication()
    assert events[0] == RequestReceived(4, Ack(envelope_ids=(1,)))
    refused = [event for event in events if isinstance(event, StreamFailed) and event.stream_id == 4]
    assert refused and refused[0].error.code is ErrorCode.RATE_LIMITED


def test_a_malformed_frame_behind_authenticate_fails_its_stream_in_order() -> None:
    good = encode_frame(Ack(envelope_ids=(1,)))
    server = authenticating_with(good + b"\x00\x00\x00\x01\xc1" + good)
    assert server.check_authentication(sign(NONCE), IDENTITY_KEY)
    events = server.confirm_authentication()
    assert events[0] == RequestReceived(0, Ack(envelope_ids=(1,)))
    assert isinstance(events[1], StreamFailed) and events[1].error.code is ErrorCode.MALFORMED_FRAME
    assert len(events) == 2


@pytest.mark.parametrize(
    "state", [ConnectionState.NEW, ConnectionState.AUTHENTICATED, ConnectionState.CLOSED]
)
def test_issue_challenge_needs_a_fresh_hello(state: ConnectionState) -> None:
    with pytest.raises(LocalProtocolError):
        server_in(state).issue_challenge(NONCE)


def test_issue_challenge_once_and_with_a_full_nonce() -> None:
    server = ServerProtocol()
    hello(server)
    with pytest.raises(LocalProtocolError):
        server.issue_challenge(b"short")
    server.issue_challenge(NONCE)
    with pytest.raises(LocalProtocolError):
        server.issue_challenge(OTHER_NONCE)


def test_close_refuses_everything() -> None:
    server = server_in(ConnectionState.AUTHENTICATED)
    server.close()
    assert server.state is ConnectionState.CLOSED
    (event,) = server.receive_stream_data(4, encode_frame(Ack(envelope_ids=(1,))), False)
    assert isinstance(event, StreamFailed)


# --- streams --------------------------------------------------------------------------------------
def test_pipelined_requests_on_one_stream_come_out_in_order() -> None:
    requests = [Ack(envelope_ids=(n,)) for n in range(1, 6)]
    data = b"".join(encode_frame(request) for request in requests)
    events = receive_every_way(lambda: server_in(ConnectionState.AUTHENTICATED), data)  # type: ignore[arg-type]
    assert events == [RequestReceived(0, request) for request in requests]


def test_bad_frame_fails_only_its_stream_once() -> None:
    server = server_in(ConnectionState.AUTHENTICATED)
    good = encode_frame(Lookup(phones=("+1",)))
    events = server.receive_stream_data(4, good + b"\x00\x00\x00\x01\xc1" + good, False)
    assert events[0] == RequestReceived(4, Lookup(phones=("+1",)))
    assert isinstance(events[1], StreamFailed)
    assert events[1].error.code is ErrorCode.MALFORMED_FRAME
    assert len(events) == 2
    assert server.receive_stream_data(4, good, False) == []  # dropped, not reported again
    assert server.receive_stream_data(8, good, False) == [
        RequestReceived(8, Lookup(phones=("+1",)))
    ]
    assert server.receive_stream_data(4, b"", True) == []


def test_refused_request_fails_the_rest_of_its_stream() -> None:
    server = server_in(ConnectionState.NEW)
    data = encode_frame(Ack(envelope_ids=(1,))) + encode_frame(SAMPLE_FRAMES[FrameType.ENROL_START])
    (event,) = server.receive_stream_data(0, data, False)
    assert isinstance(event, StreamFailed)
    assert (
        server.receive_stream_data(0, encode_frame(SAMPLE_FRAMES[FrameType.ENROL_START]), True)
        == []
    )


def test_clean_end_of_stream() -> None:
    server = ServerProtocol()
    frame = SAMPLE_FRAMES[FrameType.ENROL_START]
    assert server.receive_stream_data(0, encode_frame(frame), True) == [
        RequestReceived(0, frame),
        StreamEnded(0),
    ]


def test_truncated_stream_fails() -> None:
    server = ServerProtocol()
    data = encode_frame(SAMPLE_FRAMES[FrameType.ENROL_START])
    assert server.receive_stream_data(0, data[:-1], False) == []
    (event,) = server.receive_stream_data(0, b"", True)
    assert isinstance(event, StreamFailed)
    assert event.error.code is ErrorCode.TRUNCATED_FRAME


def test_stream_reset_forgets_the_partial_frame() -> None:
    server = ServerProtocol()
    data = encode_frame(SAMPLE_FRAMES[FrameType.ENROL_START])
    server.receive_stream_data(0, data[:3], False)
    server.stream_reset(0)
    assert server.receive_stream_data(0, data, False) == [
        RequestReceived(0, SAMPLE_FRAMES[FrameType.ENROL_START])
    ]


@pytest.mark.parametrize("stream_id", [1, 2, 3, 6, 7])
def test_requests_only_on_client_bidirectional_streams(stream_id: int) -> None:
    server = ServerProtocol()
    data = encode_frame(SAMPLE_FRAMES[FrameType.ENROL_START])
    (event,) = server.receive_stream_data(stream_id, data, False)
    assert isinstance(event, StreamFailed)
    assert event.error.code is ErrorCode.UNEXPECTED_FRAME
    assert server.receive_stream_data(stream_id, data, True) == []


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x00\x00\x00\x01\xc1", ErrorCode.MALFORMED_FRAME),
        (b"\xff\xff\xff\xff", ErrorCode.FRAME_TOO_LARGE),
        (b"\x00\x00\x00\x04\x93\x02\x01\x80", ErrorCode.UNSUPPORTED_VERSION),
        (b"\x00\x00\x00\x04\x93\x01\x3f\x80", ErrorCode.UNKNOWN_FRAME_TYPE),
        (encode_frame(Ack(envelope_ids=(1,))), ErrorCode.UNEXPECTED_FRAME),
    ],
)
def test_every_core_error_code_reaches_the_shell(data: bytes, code: ErrorCode) -> None:
    # TRUNCATED_FRAME and PAYLOAD_TOO_LARGE: see test_truncated_stream_fails and test_frames.
    for chunks in chunkings(data):
        server = ServerProtocol()
        events = [
            event for chunk in chunks for event in server.receive_stream_data(0, chunk, False)
        ]
        (event,) = events
        assert isinstance(event, StreamFailed)
        assert event.error.code is code


# --- client side, and the two cores wired together ------------------------------------------------
def test_client_sorts_responses_and_pushes() -> None:
    client = ClientProtocol()
    accepted = SendAccepted(duplicate=False)
    assert client.receive_stream_data(0, encode_frame(accepted), True) == [
        ResponseReceived(0, accepted),
        StreamEnded(0),
    ]
    deliver = SAMPLE_FRAMES[FrameType.DELIVER]
    assert isinstance(deliver, Deliver)
    data = encode_frame(deliver) + encode_frame(QueueEmpty())
    for chunks in chunkings(data):
        client = ClientProtocol()
        events = [
            event for chunk in chunks for event in client.receive_stream_data(3, chunk, False)
        ]
        assert events == [PushReceived(deliver), PushReceived(QueueEmpty())]


@pytest.mark.parametrize(
    ("stream_id", "frame_type"),
    [(0, FrameType.DELIVER), (0, FrameType.SEND), (3, FrameType.SEND_ACCEPTED), (3, FrameType.HELLO),
     (2, FrameType.ERROR), (1, FrameType.DELIVER)],
)  # fmt: skip
def test_client_refuses_frames_on_the_wrong_stream(stream_id: int, frame_type: FrameType) -> None:
    client = ClientProtocol()
    (event,) = client.receive_stream_data(stream_id, encode_frame(SAMPLE_FRAMES[frame_type]), False)
    assert isinstance(event, StreamFailed)
    assert event.error.code is ErrorCode.UNEXPECTED_FRAME


def test_client_reports_garbage() -> None:
    (event,) = ClientProtocol().receive_stream_data(0, b"\x00\x00\x00\x01\xc1", False)
    assert isinstance(event, StreamFailed)
    assert event.error.code is ErrorCode.MALFORMED_FRAME


def test_handshake_between_two_cores_in_memory() -> None:
    client, server = ClientProtocol(), ServerProtocol()
    (requested,) = server.receive_stream_data(
        0, encode_frame(Hello(user_id=USER_ID, device_id=DEVICE_ID)), False
    )
    assert isinstance(requested, AuthenticationRequested)
    (response,) = client.receive_stream_data(0, server.issue_challenge(NONCE), False)
    assert isinstance(response, ResponseReceived)
    assert isinstance(response.frame, Challenge)
    signature = sign(response.frame.nonce)
    (request,) = server.receive_stream_data(
        4, encode_frame(Authenticate(signature=signature)), True
    )[:1]
    assert isinstance(request, RequestReceived)
    assert isinstance(request.frame, Authenticate)
    assert server.check_authentication(request.frame.signature, IDENTITY_KEY)
    assert server.confirm_authentication() == [StreamEnded(4)]
    assert server.authenticated_device == (requested.user_id, requested.device_id)
