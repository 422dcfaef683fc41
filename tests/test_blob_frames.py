"""The attachments' frames and raw streams, sans-IO (PROTOCOL.md "Attachments").

Frames round-trip and their fields are bounded; a BLOB_UPLOAD (to the relay) or a BLOB_DATA (to
the client) ends its stream's framing, and only as the stream's first frame: every later byte is
the blob's, handed over as it comes, whatever the chunking, and never counted as a frame.
"""

from __future__ import annotations

import msgpack
import pytest

from tests.blob_samples import BLOB_ID, BLOB_SAMPLE_FRAMES
from tests.test_frames import chunkings
from tests.test_protocol import IDENTITY_KEY, server_in, sign
from wire.blob_frames import (
    BlobCreate,
    BlobData,
    BlobDownload,
    BlobState,
    BlobStatus,
    BlobUpload,
    BlobUploaded,
)
from wire.codec import FrameDecoder, decode_body, encode_frame
from wire.frames import ErrorCode, Frame, LocalProtocolError, RemoteProtocolError
from wire.limits import BLOB_ID_SIZE, MAX_BLOB_OFFSET, PROTOCOL_VERSION
from wire.protocol import (
    MAX_HELD_BYTES,
    ClientEvent,
    ClientProtocol,
    ConnectionState,
    RequestReceived,
    ResponseReceived,
    ServerEvent,
    ServerProtocol,
    StreamBytes,
    StreamEnded,
    StreamFailed,
)

PAYLOAD = bytes(range(256)) * 40  # raw bytes that would be garbage as frames
UPLOAD = BlobUpload(blob_id=BLOB_ID, offset=0)


def raw_bytes(events: list[ServerEvent] | list[ClientEvent]) -> bytes:
    return b"".join(event.data for event in events if isinstance(event, StreamBytes))


def frames_of(events: list[ServerEvent] | list[ClientEvent]) -> list[Frame]:
    return [event.frame for event in events if isinstance(event, RequestReceived | ResponseReceived)]


# --- frames ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("frame", BLOB_SAMPLE_FRAMES.values(), ids=lambda frame: type(frame).__name__)
def test_every_blob_frame_round_trips(frame: Frame) -> None:
    encoded = encode_frame(frame)
    assert decode_body(encoded[4:]) == frame


@pytest.mark.parametrize("build", [
    lambda: BlobCreate(size=0),  # a ciphertext is never empty
    lambda: BlobCreate(size=MAX_BLOB_OFFSET + 1),
    lambda: BlobCreate(size=True),
    lambda: BlobUpload(blob_id=b"x" * (BLOB_ID_SIZE - 1), offset=0),
    lambda: BlobUpload(blob_id=b"x" * (BLOB_ID_SIZE + 1), offset=0),
    lambda: BlobUpload(blob_id=BLOB_ID, offset=-1),
    lambda: BlobStatus(blob_id="a str, not bytes"),  # type: ignore[arg-type]
    lambda: BlobDownload(blob_id=BLOB_ID, offset=MAX_BLOB_OFFSET + 1),
    lambda: BlobUploaded(received=3, complete=1),  # type: ignore[arg-type]
    lambda: BlobState(size=10, received=11),  # never more than the size
    lambda: BlobData(size=10, offset=11),
], ids=range(11))
def test_fields_outside_their_limits_are_refused(build: object) -> None:
    with pytest.raises(LocalProtocolError) as refused:
        build()  # type: ignore[operator]
    assert refused.value.code is ErrorCode.MALFORMED_FRAME


def test_a_malformed_blob_frame_from_the_peer_is_a_remote_error_naming_the_field() -> None:
    body = msgpack.packb([PROTOCOL_VERSION, int(UPLOAD.frame_type), {"blob_id": b"short",
                                                                     "offset": 0}])
    with pytest.raises(RemoteProtocolError, match=r"BlobUpload\.blob_id") as refused:
        decode_body(body)
    assert refused.value.code is ErrorCode.MALFORMED_FRAME
    missing = msgpack.packb([PROTOCOL_VERSION, int(UPLOAD.frame_type), {"blob_id": BLOB_ID}])
    with pytest.raises(RemoteProtocolError, match=r"BlobUpload\.offset is missing"):
        decode_body(missing)


def test_the_decoder_hands_over_the_bytes_behind_a_stopping_frame_and_takes_no_more() -> None:
    decoder = FrameDecoder()
    frames = decoder.feed(encode_frame(UPLOAD) + PAYLOAD,
                          stop_after=lambda frame: isinstance(frame, BlobUpload))
    assert frames == [UPLOAD] and decoder.stopped and decoder.buffered == 0
    assert decoder.take_rest() == PAYLOAD
    assert decoder.take_rest() == b""  # handed over once
    with pytest.raises(LocalProtocolError):
        decoder.feed(b"more")


# --- raw streams, relay side (server_in authenticates on stream 0) --------------------------------------------
def test_an_upload_streams_raw_bytes_whatever_the_chunking() -> None:
    data = encode_frame(UPLOAD) + PAYLOAD
    for chunks in chunkings(data):
        server = server_in(ConnectionState.AUTHENTICATED)
        events: list[ServerEvent] = []
        for index, chunk in enumerate(chunks):
            events += server.receive_stream_data(12, chunk, index == len(chunks) - 1)
        assert frames_of(events) == [UPLOAD]
        assert raw_bytes(events) == PAYLOAD
        assert isinstance(events[-1], StreamEnded)
        assert not any(isinstance(event, StreamFailed) for event in events)
        assert server.buffered_bytes == 0  # raw bytes are never counted as frames


def test_raw_bytes_are_not_held_by_the_core_nor_counted_in_the_pool() -> None:
    server = server_in(ConnectionState.AUTHENTICATED)
    server.receive_stream_data(12, encode_frame(UPLOAD), False)
    # A length prefix declaring 1 GiB would be refused as a frame: raw, it is just bytes.
    events = server.receive_stream_data(12, b"\x40\x00\x00\x00" + PAYLOAD, False)
    assert events == [StreamBytes(12, b"\x40\x00\x00\x00" + PAYLOAD)]
    assert server.buffered_bytes == 0


def test_other_streams_keep_their_framing_beside_a_raw_one() -> None:
    server = server_in(ConnectionState.AUTHENTICATED)
    server.receive_stream_data(12, encode_frame(UPLOAD), False)
    status = BlobStatus(blob_id=BLOB_ID)
    assert server.receive_stream_data(16, encode_frame(status), True) == [
        RequestReceived(16, status), StreamEnded(16)]
    garbage = server.receive_stream_data(20, b"\xff" * 8, False)  # a 4 GiB length prefix
    assert isinstance(garbage[-1], StreamFailed)
    assert garbage[-1].error.code is ErrorCode.FRAME_TOO_LARGE


def test_an_upload_that_is_not_the_first_frame_of_its_stream_is_refused() -> None:
    server = server_in(ConnectionState.AUTHENTICATED)
    status = BlobStatus(blob_id=BLOB_ID)
    events = server.receive_stream_data(12, encode_frame(status) + encode_frame(UPLOAD) + PAYLOAD,
                                        False)
    assert events[0] == RequestReceived(12, status)
    assert isinstance(events[1], StreamFailed)
    assert events[1].error.code is ErrorCode.UNEXPECTED_FRAME
    assert len(events) == 2  # no raw bytes: the rest of the stream is dropped
    assert server.receive_stream_data(12, PAYLOAD, False) == []


def test_a_second_opening_frame_on_the_same_stream_is_refused_not_reopened() -> None:
    # Split across two receptions: the first frame is remembered, not only the chunk's.
    server = server_in(ConnectionState.AUTHENTICATED)
    download = BlobDownload(blob_id=BLOB_ID, offset=0)
    assert server.receive_stream_data(12, encode_frame(download), False) == [
        RequestReceived(12, download)]
    events = server.receive_stream_data(12, encode_frame(UPLOAD) + PAYLOAD, False)
    assert len(events) == 1 and isinstance(events[0], StreamFailed)
    assert events[0].error.code is ErrorCode.UNEXPECTED_FRAME
    assert "fresh stream" in events[0].error.reason


def test_a_download_must_be_its_streams_only_frame() -> None:
    server = server_in(ConnectionState.AUTHENTICATED)
    download = BlobDownload(blob_id=BLOB_ID, offset=0)
    events = server.receive_stream_data(
        12, encode_frame(download) + encode_frame(BlobStatus(blob_id=BLOB_ID)), True)
    assert events[0] == RequestReceived(12, download)
    assert isinstance(events[1], StreamFailed)
    assert events[1].error.code is ErrorCode.UNEXPECTED_FRAME


def test_an_upload_before_authentication_is_refused_and_its_bytes_dropped() -> None:
    server = ServerProtocol()
    events = server.receive_stream_data(12, encode_frame(UPLOAD) + PAYLOAD, False)
    assert len(events) == 1 and isinstance(events[0], StreamFailed)
    assert events[0].error.code is ErrorCode.UNEXPECTED_FRAME
    assert server.receive_stream_data(12, PAYLOAD, True) == []


def test_an_upload_behind_authenticate_is_held_with_its_bytes_then_released_in_order() -> None:
    server = server_in(ConnectionState.AUTHENTICATING)
    assert server.receive_stream_data(12, encode_frame(UPLOAD) + PAYLOAD[:100], False) == []
    assert server.receive_stream_data(12, PAYLOAD[100:], True) == []
    assert server.held_frames == 1
    assert server.check_authentication(sign(bytes(range(32))), IDENTITY_KEY)
    events = server.confirm_authentication()
    assert frames_of(events) == [UPLOAD]
    assert raw_bytes(events) == PAYLOAD
    assert events[-1] == StreamEnded(12)


def test_raw_bytes_held_while_authenticating_are_bounded() -> None:
    server = server_in(ConnectionState.AUTHENTICATING)
    server.receive_stream_data(12, encode_frame(UPLOAD), False)
    chunk = b"x" * (1024 * 1024)
    for _ in range(MAX_HELD_BYTES // len(chunk) + 1):
        server.receive_stream_data(12, chunk, False)
    assert server.check_authentication(sign(bytes(range(32))), IDENTITY_KEY)
    events = server.confirm_authentication()
    assert isinstance(events[-1], StreamFailed)
    assert events[-1].error.code is ErrorCode.RATE_LIMITED
    assert len(raw_bytes(events)) <= MAX_HELD_BYTES
    assert server.receive_stream_data(12, chunk, False) == []  # the failed stream is ignored


def test_closing_the_connection_forgets_raw_streams() -> None:
    server = server_in(ConnectionState.AUTHENTICATED)
    server.receive_stream_data(12, encode_frame(UPLOAD), False)
    server.close()
    assert not raw_bytes(server.receive_stream_data(12, PAYLOAD, False))


# --- raw streams, client side ---------------------------------------------------------------------
def test_a_download_answer_streams_raw_bytes_whatever_the_chunking() -> None:
    header = BlobData(size=len(PAYLOAD), offset=0)
    for chunks in chunkings(encode_frame(header) + PAYLOAD):
        client = ClientProtocol()
        events: list[ClientEvent] = []
        for index, chunk in enumerate(chunks):
            events += client.receive_stream_data(0, chunk, index == len(chunks) - 1)
        assert frames_of(events) == [header]
        assert raw_bytes(events) == PAYLOAD
        assert events[-1] == StreamEnded(0)
        assert client.buffered_bytes == 0


def test_blob_data_after_another_answer_or_on_a_push_stream_is_refused() -> None:
    client = ClientProtocol()
    header = BlobData(size=len(PAYLOAD), offset=0)
    state = BlobState(size=10, received=0)
    events = client.receive_stream_data(0, encode_frame(state) + encode_frame(header) + PAYLOAD,
                                        False)
    assert events[0] == ResponseReceived(0, state)
    assert isinstance(events[1], StreamFailed) and len(events) == 2
    pushed = client.receive_stream_data(3, encode_frame(header) + PAYLOAD, False)
    assert len(pushed) == 1 and isinstance(pushed[0], StreamFailed)
    assert pushed[0].error.code is ErrorCode.UNEXPECTED_FRAME


def test_an_upload_answer_keeps_its_framing_on_the_client() -> None:
    client = ClientProtocol()
    answer = BlobUploaded(received=10, complete=True)
    assert client.receive_stream_data(0, encode_frame(answer), True) == [
        ResponseReceived(0, answer), StreamEnded(0)]
