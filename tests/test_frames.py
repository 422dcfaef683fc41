"""The frame catalogue and codec: known answers, then every way to get a frame wrong."""

from __future__ import annotations

import dataclasses
import random
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.device_list import sign_device_list
from crypto.primitives import SeededRandom, ed25519_generate
from tests.account_samples import ACCOUNT_SAMPLE_FRAMES, CHANNEL_ID
from tests.blob_samples import BLOB_SAMPLE_FRAMES
from tests.call_samples import CALL_SAMPLE_FRAMES
from tests.group_samples import GROUP_SAMPLE_FRAMES
from tests.prekey_samples import PREKEY_SAMPLE_FRAMES
from tests.push_samples import PUSH_SAMPLE_FRAMES
from tests.sealed_samples import SEALED_SAMPLE_FRAMES
from wire.account_frames import (
    AddedDevice,
    DeviceListPublished,
    LinkFetch,
    LinkMessages,
    LinkOpen,
    LinkOpened,
    LinkPost,
    LinkPosted,
    PublishDeviceList,
)
from wire.codec import FrameDecoder, decode_body, encode_frame
from wire.frames import (
    LENGTH_PREFIX_SIZE,
    MAX_ACK_IDS,
    MAX_CIPHERTEXT_SIZE,
    MAX_CLIENT_MESSAGE_ID,
    MAX_DEVICE_ID,
    MAX_DEVICE_LIST_SIZE,
    MAX_DEVICES_PER_SEND,
    MAX_FRAME_SIZE,
    MAX_LOOKUP_PHONES,
    MAX_PHONE_LENGTH,
    MAX_REASON_LENGTH,
    MAX_USER_ID_LENGTH,
    NONCE_SIZE,
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
    FrameType,
    Hello,
    LocalProtocolError,
    Lookup,
    LookupResult,
    ProtocolError,
    QueueEmpty,
    RemoteProtocolError,
    Send,
    SendAccepted,
    auth_transcript,
)
from wire.limits import MAX_LINK_PAYLOAD_SIZE, MAX_LINK_POSTS_PER_SIDE
from wire.prekey_frames import DeviceList

USER_ID = "u-0123456789abcdef"
SAMPLE_FRAMES: dict[FrameType, Frame] = {
    FrameType.ENROL_START: EnrolStart(phone="+447700900123"),
    FrameType.ENROL_VERIFY: EnrolVerify(
        phone="+447700900123", code="123456", identity_key=b"k" * 32, account_key=b"a" * 32,
        device_list=b"l" * 130,
    ),
    FrameType.HELLO: Hello(user_id=USER_ID, device_id=1),
    FrameType.AUTHENTICATE: Authenticate(signature=b"s" * 64),
    FrameType.LOOKUP: Lookup(phones=("+447700900123", "+33612345678")),
    FrameType.SEND: Send(
        recipient_user_id=USER_ID, client_message_id=7, payloads={1: b"c1", 2: b"c2"}
    ),
    FrameType.ACK: Ack(envelope_ids=(10, 11)),
    FrameType.ENROL_STARTED: EnrolStarted(),
    FrameType.ENROLLED: Enrolled(user_id=USER_ID, device_id=2),
    FrameType.CHALLENGE: Challenge(nonce=b"n" * NONCE_SIZE),
    FrameType.AUTHENTICATED: Authenticated(),
    FrameType.LOOKUP_RESULT: LookupResult(
        entries=(DirectoryEntry(phone="+447700900123", user_id=USER_ID, device_ids=(1, 2)),)
    ),
    FrameType.SEND_ACCEPTED: SendAccepted(duplicate=True),
    FrameType.ACKED: Acked(count=2),
    FrameType.ERROR: Error(
        code=ErrorCode.MISMATCHED_DEVICES, reason="devices changed", missing_devices=(3,)
    ),
    FrameType.DELIVER: Deliver(
        envelope_id=10,
        sender_user_id=USER_ID,
        sender_device_id=1,
        client_message_id=7,
        accepted_at=1_700_000_000_000,
        ciphertext=b"c1",
    ),
    FrameType.QUEUE_EMPTY: QueueEmpty(),
    **PREKEY_SAMPLE_FRAMES,
    **ACCOUNT_SAMPLE_FRAMES,
    **PUSH_SAMPLE_FRAMES,
    **BLOB_SAMPLE_FRAMES,
    **CALL_SAMPLE_FRAMES,
    **GROUP_SAMPLE_FRAMES,
    **SEALED_SAMPLE_FRAMES,
}


# --- helpers --------------------------------------------------------------------------------------
def chunkings(data: bytes) -> list[list[bytes]]:
    """Whole, one byte at a time, and random chunks (seeded, so failures reproduce)."""
    rng = random.Random(len(data))
    chunks, offset = [], 0
    while offset < len(data):
        size = rng.randint(1, 7)
        chunks.append(data[offset : offset + size])
        offset += size
    return [[data], [data[i : i + 1] for i in range(len(data))], chunks]


def decode_every_way(data: bytes) -> list[Frame]:
    """Decode ``data`` under every chunking; all must agree; the stream ends cleanly."""
    results = []
    for chunks in chunkings(data):
        decoder = FrameDecoder()
        frames = [frame for chunk in chunks for frame in decoder.feed(chunk)]
        decoder.end_of_stream()
        results.append(frames)
    assert all(result == results[0] for result in results)
    return results[0]


def assert_rejected_every_way(data: bytes, code: ErrorCode, *, at_end: bool = False) -> str:
    """Every chunking raises RemoteProtocolError(code), from feed or (at_end) end_of_stream."""
    reasons = set()
    for chunks in chunkings(data):
        decoder = FrameDecoder()
        with pytest.raises(RemoteProtocolError) as caught:
            for chunk in chunks:
                decoder.feed(chunk)
            assert at_end, "feed accepted the bad input"
            decoder.end_of_stream()
        assert caught.value.code is code, caught.value
        reasons.add(caught.value.reason)
    assert len(reasons) == 1
    return reasons.pop()


def prefixed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def raw_frame(frame_type: int, body: object, version: object = 1) -> bytes:
    return prefixed(msgpack.packb([version, frame_type, body]))


def body_of(frame: Frame) -> dict[str, Any]:
    body: dict[str, Any] = msgpack.unpackb(
        encode_frame(frame)[LENGTH_PREFIX_SIZE:], strict_map_key=False
    )[2]
    return body


# --- known answers --------------------------------------------------------------------------------
def test_catalogue_covers_every_frame_type() -> None:
    assert set(SAMPLE_FRAMES) == set(FrameType)
    for frame_type, frame in SAMPLE_FRAMES.items():
        assert frame.frame_type is frame_type


def test_frame_type_and_error_code_numbers_are_stable() -> None:
    # Wire numbers never change; PROTOCOL.md tables list the same.
    assert {t.name: t.value for t in FrameType} == {
        "ENROL_START": 1, "ENROL_VERIFY": 2, "HELLO": 3, "AUTHENTICATE": 4, "LOOKUP": 5,
        "SEND": 6, "ACK": 7, "ENROL_STARTED": 64, "ENROLLED": 65, "CHALLENGE": 66,
        "AUTHENTICATED": 67, "LOOKUP_RESULT": 68, "SEND_ACCEPTED": 69, "ACKED": 70, "ERROR": 127,
        "DELIVER": 128, "QUEUE_EMPTY": 129,
        "UPLOAD_PREKEYS": 8, "FETCH_BUNDLE": 9, "GET_PREKEY_COUNTS": 10, "LIST_DEVICES": 11,
        "PREKEYS_UPLOADED": 71, "BUNDLE": 72, "PREKEY_COUNTS": 73, "DEVICE_LIST": 74,
        "PREKEYS_LOW": 130,
        "PUBLISH_DEVICE_LIST": 16, "LINK_OPEN": 17, "LINK_POST": 18, "LINK_FETCH": 19,
        "DEVICE_LIST_PUBLISHED": 80, "LINK_OPENED": 81, "LINK_POSTED": 82, "LINK_MESSAGES": 83,
        "PUSH_SET": 56, "PUSH_CLEAR": 57, "PUSH_GET": 58, "PUSH_TARGET_SET": 120,
        "PUSH_CLEARED": 121, "PUSH_TARGET": 122,
        "BLOB_CREATE": 24, "BLOB_UPLOAD": 25, "BLOB_STATUS": 26, "BLOB_DOWNLOAD": 27,
        "BLOB_CREATED": 88, "BLOB_UPLOADED": 89, "BLOB_STATE": 90, "BLOB_DATA": 91,
        "CALL_OPEN": 40, "CALL_JOIN": 41, "CALL_LEAVE": 42, "CALL_OPENED": 104,
        "CALL_JOINED": 105, "CALL_LEFT": 106, "CALL_ELSEWHERE": 107, "CALL_MEMBERS": 148,
        "CALL_ENDED": 149,
        "MULTI_SEND": 32, "MULTI_SEND_ACCEPTED": 96, "SEALED_MULTI_SEND": 33,
        "SEALED_MULTI_SEND_ACCEPTED": 97,
        "GET_SENDER_KEYS": 48, "GET_SENDER_CERTIFICATE": 49, "SET_DELIVERY_TOKEN": 50,
        "SEALED_SEND": 51, "SENDER_KEYS": 112, "SENDER_CERTIFICATE": 113,
        "DELIVERY_TOKEN_SET": 114, "SEALED_SEND_ACCEPTED": 115,
    }  # fmt: skip
    assert {c.name: c.value for c in ErrorCode} == {
        "NO_ERROR": 0, "MALFORMED_FRAME": 1, "FRAME_TOO_LARGE": 2, "UNSUPPORTED_VERSION": 3,
        "UNKNOWN_FRAME_TYPE": 4, "UNEXPECTED_FRAME": 5, "TRUNCATED_FRAME": 6,
        "AUTHENTICATION_FAILED": 10, "DEVICE_REVOKED": 11, "INVALID_PHONE_NUMBER": 20,
        "RATE_LIMITED": 21, "VERIFICATION_FAILED": 22, "TOO_MANY_DEVICES": 23,
        "INVALID_REQUEST": 24, "UNKNOWN_RECIPIENT": 30, "MISMATCHED_DEVICES": 31,
        "QUEUE_FULL": 32, "PAYLOAD_TOO_LARGE": 33, "ORGANISATION_SUSPENDED": 40,
        "INTERNAL_ERROR": 50, "GOING_AWAY": 51, "REPLACED": 52, "IDLE_TIMEOUT": 53,
        "INVALID_PREKEY_SIGNATURE": 60, "PREKEY_POOL_FULL": 61,
        "STALE_DEVICE_LIST": 70, "INVALID_DEVICE_LIST": 71, "LINK_CHANNEL_UNKNOWN": 72,
        "PUSH_PROVIDER_UNAVAILABLE": 120, "INVALID_PUSH_TARGET": 121,
        "BLOB_UNKNOWN": 80, "BLOB_TOO_LARGE": 81, "BLOB_QUOTA_EXCEEDED": 82,
        "BLOB_OFFSET_MISMATCH": 83,
        "CALL_UNKNOWN": 100, "CALL_FULL": 101, "CALLS_UNAVAILABLE": 102,
        "DELIVERY_TOKEN_REFUSED": 110,
    }  # fmt: skip


def test_known_encoding_of_hello() -> None:
    # [1, 3, {"user_id": "u", "device_id": 1}] as msgpack, after a 4-byte length.
    expected_body = bytes.fromhex("93010382a7757365725f6964a175a96465766963655f696401")
    assert encode_frame(Hello(user_id="u", device_id=1)) == prefixed(expected_body)


def test_auth_transcript_known_answer() -> None:
    nonce = bytes(range(32))
    expected = (
        b"cryptopass/1 authenticate\x00"
        + b"\x00\x00\x00\x20" + nonce
        + b"\x00\x00\x00\x03" + b"u-1"
        + b"\x00\x00\x00\x08" + b"\x00\x00\x00\x00\x00\x00\x00\x05"
    )  # fmt: skip
    assert auth_transcript(nonce=nonce, user_id="u-1", device_id=5) == expected


def test_auth_transcript_refuses_bad_fields() -> None:
    with pytest.raises(LocalProtocolError):
        auth_transcript(nonce=b"short", user_id="u", device_id=1)
    with pytest.raises(LocalProtocolError):
        auth_transcript(nonce=bytes(32), user_id="u", device_id=0)


# --- round trips ----------------------------------------------------------------------------------
@pytest.mark.parametrize("frame", SAMPLE_FRAMES.values(), ids=lambda frame: type(frame).__name__)
def test_round_trip(frame: Frame) -> None:
    encoded = encode_frame(frame)
    assert decode_body(encoded[LENGTH_PREFIX_SIZE:]) == frame
    assert decode_every_way(encoded) == [frame]


def test_many_frames_in_one_chunk_come_out_in_order() -> None:
    frames = list(SAMPLE_FRAMES.values())
    assert decode_every_way(b"".join(encode_frame(frame) for frame in frames)) == frames


def test_largest_send_fits_in_a_frame() -> None:
    payloads = {device: b"x" * MAX_CIPHERTEXT_SIZE for device in range(1, 17)}
    frame = Send(
        recipient_user_id="u" * 64, client_message_id=MAX_CLIENT_MESSAGE_ID, payloads=payloads
    )
    encoded = encode_frame(frame)
    assert len(encoded) - LENGTH_PREFIX_SIZE <= MAX_FRAME_SIZE
    decoder = FrameDecoder()
    assert decoder.feed(encoded) == [frame]


def test_a_full_signed_device_list_fits_the_frames_that_carry_it() -> None:
    source = SeededRandom(b"full device list")
    account = ed25519_generate(source)
    devices = [ed25519_generate(source).public_key for _ in range(16)]
    signed = sign_device_list(account, version=2, devices=devices)
    assert len(signed.encoded) == MAX_DEVICE_LIST_SIZE
    publish = PublishDeviceList(device_list=signed.encoded)
    verify = EnrolVerify(phone="+447700900123", code="123456", identity_key=devices[0],
                         account_key=account.public_key, device_list=signed.encoded)
    for frame in (publish, verify):
        assert decode_every_way(encode_frame(frame)) == [frame]


def test_a_full_link_fetch_answer_fits_in_a_frame() -> None:
    frame = LinkMessages(payloads=(b"p" * MAX_LINK_PAYLOAD_SIZE,) * MAX_LINK_POSTS_PER_SIDE)
    assert decode_body(encode_frame(frame)[LENGTH_PREFIX_SIZE:]) == frame


def test_a_device_list_of_an_account_without_a_key_leaves_its_fields_out() -> None:
    # A user enrolled before accounts existed has no account key: the answer says so by
    # omission, and an older client reading a newer answer ignores the fields it does not know.
    frame = DeviceList(user_id=USER_ID, devices=())
    assert "account_key" in body_of(frame) and body_of(frame)["account_key"] is None
    body = body_of(frame)
    del body["account_key"], body["signed_list"]
    assert decode_body(msgpack.packb([1, FrameType.DEVICE_LIST, body])) == frame


def test_unknown_fields_are_ignored() -> None:
    body = {"user_id": "u", "device_id": 1, "future_field": [1, 2, 3]}
    assert decode_every_way(raw_frame(FrameType.HELLO, body)) == [Hello(user_id="u", device_id=1)]


def test_error_optional_fields_default_when_absent() -> None:
    frames = decode_every_way(raw_frame(FrameType.ERROR, {"code": 21, "reason": "slow down"}))
    assert frames == [Error(code=ErrorCode.RATE_LIMITED, reason="slow down")]


def test_unknown_error_code_decodes_as_internal_error() -> None:
    (frame,) = decode_every_way(raw_frame(FrameType.ERROR, {"code": 999, "reason": "new"}))
    assert frame == Error(code=ErrorCode.INTERNAL_ERROR, reason="new")
    assert ErrorCode.from_wire(52) is ErrorCode.REPLACED


def test_send_keeps_a_read_only_copy_of_payloads() -> None:
    payloads = {1: b"a"}
    frame = Send(recipient_user_id="u", client_message_id=1, payloads=payloads)
    payloads[2] = b"b"
    assert dict(frame.payloads) == {1: b"a"}
    with pytest.raises(TypeError):
        frame.payloads[3] = b"c"  # type: ignore[index]


# --- framing errors -------------------------------------------------------------------------------
def test_clean_end_with_nothing_buffered() -> None:
    FrameDecoder().end_of_stream()


@pytest.mark.parametrize("cut", [1, 3, 4, 10])
def test_truncated_frame_at_end_of_stream(cut: int) -> None:
    encoded = encode_frame(SAMPLE_FRAMES[FrameType.SEND])
    reason = assert_rejected_every_way(encoded[:cut], ErrorCode.TRUNCATED_FRAME, at_end=True)
    assert f"{cut} bytes" in reason


def test_oversized_length_prefix_rejected_before_buffering() -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.feed(struct.pack(">I", MAX_FRAME_SIZE + 1))
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    assert decoder.buffered == 0
    assert_rejected_every_way(struct.pack(">I", 2**32 - 1) + b"x" * 10, ErrorCode.FRAME_TOO_LARGE)


def test_maximum_length_prefix_waits_for_the_body() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(struct.pack(">I", MAX_FRAME_SIZE)) == []
    assert decoder.buffered == LENGTH_PREFIX_SIZE


def test_decoder_stays_poisoned() -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(prefixed(b"\xc1"))
    for call in (lambda: decoder.feed(encode_frame(QueueEmpty())), decoder.end_of_stream):
        with pytest.raises(RemoteProtocolError) as caught:
            call()
        assert caught.value.code is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", ErrorCode.MALFORMED_FRAME),  # zero-length frame
        (b"\xc1", ErrorCode.MALFORMED_FRAME),  # the one byte msgpack never uses
        (msgpack.packb([1, 3, {}]) + b"\x00", ErrorCode.MALFORMED_FRAME),  # trailing bytes
        (b"\xdd\xff\xff\xff\xff", ErrorCode.MALFORMED_FRAME),  # 4-billion-item array header
        (b"\xdf\xff\xff\xff\xff", ErrorCode.MALFORMED_FRAME),  # 4-billion-entry map header
        (b"\x93\x01\x03\x81\xa1a\xd4\x01\x00", ErrorCode.MALFORMED_FRAME),  # ext type
        (b"\x93\x01\x05\x81\xa6phones\x91\xa2\xff\xfe", ErrorCode.MALFORMED_FRAME),  # bad UTF-8
        (b"\x91" * 5000 + b"\x01", ErrorCode.MALFORMED_FRAME),  # nesting too deep
        (msgpack.packb({"version": 1}), ErrorCode.MALFORMED_FRAME),  # not an array
        (msgpack.packb(7), ErrorCode.MALFORMED_FRAME),
        (msgpack.packb([1, 3]), ErrorCode.MALFORMED_FRAME),  # two elements
        (msgpack.packb([1, 3, {}, 4]), ErrorCode.MALFORMED_FRAME),  # four elements
        (msgpack.packb([1, 129, []]), ErrorCode.MALFORMED_FRAME),  # body not a map
        (msgpack.packb([1, 129, None]), ErrorCode.MALFORMED_FRAME),
        (msgpack.packb([2, 129, {}]), ErrorCode.UNSUPPORTED_VERSION),
        (msgpack.packb([0, 129, {}]), ErrorCode.UNSUPPORTED_VERSION),
        (msgpack.packb(["1", 129, {}]), ErrorCode.MALFORMED_FRAME),
        (msgpack.packb([True, 129, {}]), ErrorCode.MALFORMED_FRAME),  # bool is not a version
        (msgpack.packb([1, 200, {}]), ErrorCode.UNKNOWN_FRAME_TYPE),
        (msgpack.packb([1, 12, {}]), ErrorCode.UNKNOWN_FRAME_TYPE),  # reserved request number
        (msgpack.packb([1, -1, {}]), ErrorCode.UNKNOWN_FRAME_TYPE),
        (msgpack.packb([1, "HELLO", {}]), ErrorCode.MALFORMED_FRAME),
        (msgpack.packb([1, 1.0, {}]), ErrorCode.MALFORMED_FRAME),
    ],
)
def test_garbage_envelopes(body: bytes, code: ErrorCode) -> None:
    assert_rejected_every_way(prefixed(body), code)


def test_good_frames_before_garbage_are_returned_first() -> None:
    decoder = FrameDecoder()
    good = encode_frame(QueueEmpty())
    assert decoder.feed(good) == [QueueEmpty()]
    with pytest.raises(RemoteProtocolError):
        decoder.feed(prefixed(b"\xc1"))


# --- field errors ---------------------------------------------------------------------------------
def with_field(frame_type: FrameType, **changes: object) -> dict[str, object]:
    body = body_of(SAMPLE_FRAMES[frame_type])
    body.update(changes)
    return body


def without_field(frame_type: FrameType, name: str) -> dict[str, object]:
    body = body_of(SAMPLE_FRAMES[frame_type])
    del body[name]
    return body


_REQUIRED_FIELDS = [
    (frame_type, name)
    for frame_type, frame in SAMPLE_FRAMES.items()
    for name in body_of(frame)
    # Fields with a default may be absent on the wire.
    if next(field for field in dataclasses.fields(frame) if field.name == name).default
    is dataclasses.MISSING
]


@pytest.mark.parametrize(("frame_type", "name"), _REQUIRED_FIELDS)
def test_missing_field_is_named(frame_type: FrameType, name: str) -> None:
    reason = assert_rejected_every_way(
        raw_frame(frame_type, without_field(frame_type, name)), ErrorCode.MALFORMED_FRAME
    )
    assert name in reason


BIG = b"x" * (MAX_CIPHERTEXT_SIZE + 1)
FIELD_ERRORS: list[tuple[FrameType, str, object, ErrorCode]] = [
    (FrameType.ENROL_START, "phone", 447700900123, ErrorCode.MALFORMED_FRAME),
    (FrameType.ENROL_START, "phone", "", ErrorCode.MALFORMED_FRAME),
    (FrameType.ENROL_START, "phone", "+" * (MAX_PHONE_LENGTH + 1), ErrorCode.MALFORMED_FRAME),
    (FrameType.ENROL_START, "phone", b"+4477", ErrorCode.MALFORMED_FRAME),
    (FrameType.ENROL_VERIFY, "code", "12345", ErrorCode.MALFORMED_FRAME),
    (FrameType.ENROL_VERIFY, "code", "12345a", ErrorCode.MALFORMED_FRAME),
    (FrameType.ENROL_VERIFY, "code", "١٢٣٤٥٦", ErrorCode.MALFORMED_FRAME),  # non-ASCII digits
    (FrameType.ENROL_VERIFY, "code", 123456, ErrorCode.MALFORMED_FRAME),
    (FrameType.ENROL_VERIFY, "identity_key", b"k" * 31, ErrorCode.MALFORMED_FRAME),
    (FrameType.ENROL_VERIFY, "identity_key", "k" * 32, ErrorCode.MALFORMED_FRAME),
    (FrameType.HELLO, "device_id", True, ErrorCode.MALFORMED_FRAME),  # bool is not an int
    (FrameType.HELLO, "device_id", 0, ErrorCode.MALFORMED_FRAME),
    (FrameType.HELLO, "device_id", MAX_DEVICE_ID + 1, ErrorCode.MALFORMED_FRAME),
    (FrameType.HELLO, "device_id", 1.0, ErrorCode.MALFORMED_FRAME),
    (FrameType.HELLO, "user_id", "u" * (MAX_USER_ID_LENGTH + 1), ErrorCode.MALFORMED_FRAME),
    (FrameType.AUTHENTICATE, "signature", b"s" * 63, ErrorCode.MALFORMED_FRAME),
    (FrameType.AUTHENTICATE, "signature", b"s" * 65, ErrorCode.MALFORMED_FRAME),
    (FrameType.LOOKUP, "phones", [], ErrorCode.MALFORMED_FRAME),
    (FrameType.LOOKUP, "phones", ["+1"] * (MAX_LOOKUP_PHONES + 1), ErrorCode.MALFORMED_FRAME),
    (FrameType.LOOKUP, "phones", "+1", ErrorCode.MALFORMED_FRAME),
    (FrameType.LOOKUP, "phones", [1], ErrorCode.MALFORMED_FRAME),
    (FrameType.SEND, "recipient_user_id", None, ErrorCode.MALFORMED_FRAME),
    (FrameType.SEND, "client_message_id", -1, ErrorCode.MALFORMED_FRAME),
    (FrameType.SEND, "client_message_id", MAX_CLIENT_MESSAGE_ID + 1, ErrorCode.MALFORMED_FRAME),
    (FrameType.SEND, "client_message_id", False, ErrorCode.MALFORMED_FRAME),
    (FrameType.SEND, "payloads", {}, ErrorCode.MALFORMED_FRAME),
    (FrameType.SEND, "payloads", [b"c"], ErrorCode.MALFORMED_FRAME),
    (FrameType.SEND, "payloads", {"1": b"c"}, ErrorCode.MALFORMED_FRAME),
    (FrameType.SEND, "payloads", {True: b"c"}, ErrorCode.MALFORMED_FRAME),
    (FrameType.SEND, "payloads", {0: b"c"}, ErrorCode.MALFORMED_FRAME),
    (FrameType.SEND, "payloads", {1: b""}, ErrorCode.MALFORMED_FRAME),
    (FrameType.SEND, "payloads", {1: "text"}, ErrorCode.MALFORMED_FRAME),
    (
        FrameType.SEND,
        "payloads",
        {device: b"c" for device in range(1, MAX_DEVICES_PER_SEND + 2)},
        ErrorCode.MALFORMED_FRAME,
    ),
    (FrameType.SEND, "payloads", {1: b"c", 2: BIG}, ErrorCode.PAYLOAD_TOO_LARGE),
    (FrameType.ACK, "envelope_ids", [], ErrorCode.MALFORMED_FRAME),
    (FrameType.ACK, "envelope_ids", [1] * (MAX_ACK_IDS + 1), ErrorCode.MALFORMED_FRAME),
    (FrameType.ACK, "envelope_ids", [True], ErrorCode.MALFORMED_FRAME),
    (FrameType.ACK, "envelope_ids", [-1], ErrorCode.MALFORMED_FRAME),
    (FrameType.ENROLLED, "device_id", "2", ErrorCode.MALFORMED_FRAME),
    (FrameType.CHALLENGE, "nonce", b"n" * (NONCE_SIZE - 1), ErrorCode.MALFORMED_FRAME),
    (
        FrameType.LOOKUP_RESULT,
        "entries",
        [{"phone": "+1", "user_id": "u"}],
        ErrorCode.MALFORMED_FRAME,
    ),
    (FrameType.LOOKUP_RESULT, "entries", [["+1", "u", [1]]], ErrorCode.MALFORMED_FRAME),
    (
        FrameType.LOOKUP_RESULT,
        "entries",
        [{"phone": "+1", "user_id": "u", "device_ids": [0]}],
        ErrorCode.MALFORMED_FRAME,
    ),
    (FrameType.SEND_ACCEPTED, "duplicate", 1, ErrorCode.MALFORMED_FRAME),
    (FrameType.ACKED, "count", MAX_ACK_IDS + 1, ErrorCode.MALFORMED_FRAME),
    (FrameType.ERROR, "code", True, ErrorCode.MALFORMED_FRAME),
    (FrameType.ERROR, "code", "QUEUE_FULL", ErrorCode.MALFORMED_FRAME),
    (FrameType.ERROR, "reason", "r" * (MAX_REASON_LENGTH + 1), ErrorCode.MALFORMED_FRAME),
    (FrameType.ERROR, "missing_devices", [0], ErrorCode.MALFORMED_FRAME),
    (FrameType.ERROR, "full_devices", 3, ErrorCode.MALFORMED_FRAME),
    (FrameType.DELIVER, "ciphertext", BIG, ErrorCode.PAYLOAD_TOO_LARGE),
    (FrameType.DELIVER, "ciphertext", b"", ErrorCode.MALFORMED_FRAME),
    (FrameType.DELIVER, "accepted_at", -1, ErrorCode.MALFORMED_FRAME),
    (FrameType.DELIVER, "envelope_id", 2**63, ErrorCode.MALFORMED_FRAME),
    (FrameType.DELIVER, "sender_device_id", True, ErrorCode.MALFORMED_FRAME),
    (FrameType.ENROL_VERIFY, "account_key", b"a" * 33, ErrorCode.MALFORMED_FRAME),
    (FrameType.ENROL_VERIFY, "device_list", b"", ErrorCode.MALFORMED_FRAME),
    (FrameType.ENROL_VERIFY, "device_list", b"l" * (MAX_DEVICE_LIST_SIZE + 1),
     ErrorCode.MALFORMED_FRAME),
    (FrameType.DEVICE_LIST, "account_key", b"a" * 31, ErrorCode.MALFORMED_FRAME),
    (FrameType.DEVICE_LIST, "signed_list", "l", ErrorCode.MALFORMED_FRAME),
    (FrameType.DEVICE_LIST, "devices", [{"device_id": 1, "registered_at": 0}],
     ErrorCode.MALFORMED_FRAME),
    (FrameType.DEVICE_LIST, "devices",
     [{"device_id": 1, "registered_at": 0, "identity_key": b"i" * 31}],
     ErrorCode.MALFORMED_FRAME),
    (FrameType.PUBLISH_DEVICE_LIST, "device_list", b"", ErrorCode.MALFORMED_FRAME),
    (FrameType.PUBLISH_DEVICE_LIST, "device_list", b"l" * (MAX_DEVICE_LIST_SIZE + 1),
     ErrorCode.MALFORMED_FRAME),
    (FrameType.DEVICE_LIST_PUBLISHED, "version", 0, ErrorCode.MALFORMED_FRAME),
    (FrameType.DEVICE_LIST_PUBLISHED, "added", [{"device_id": 0, "identity_key": b"n" * 32}],
     ErrorCode.MALFORMED_FRAME),
    (FrameType.DEVICE_LIST_PUBLISHED, "added", [{"device_id": 1}], ErrorCode.MALFORMED_FRAME),
    (FrameType.DEVICE_LIST_PUBLISHED, "revoked", [0], ErrorCode.MALFORMED_FRAME),
    (FrameType.LINK_POST, "channel_id", CHANNEL_ID[:15], ErrorCode.MALFORMED_FRAME),
    (FrameType.LINK_POST, "channel_id", CHANNEL_ID + b"x", ErrorCode.MALFORMED_FRAME),
    (FrameType.LINK_POST, "payload", b"", ErrorCode.MALFORMED_FRAME),
    (FrameType.LINK_POST, "payload", b"p" * (MAX_LINK_PAYLOAD_SIZE + 1),
     ErrorCode.PAYLOAD_TOO_LARGE),
    (FrameType.LINK_FETCH, "channel_id", "c" * 16, ErrorCode.MALFORMED_FRAME),
    (FrameType.LINK_OPENED, "expires_at", -1, ErrorCode.MALFORMED_FRAME),
    (FrameType.LINK_MESSAGES, "payloads", [b"p"] * (MAX_LINK_POSTS_PER_SIDE + 1),
     ErrorCode.MALFORMED_FRAME),
    (FrameType.LINK_MESSAGES, "payloads", [b""], ErrorCode.MALFORMED_FRAME),
    (FrameType.LINK_MESSAGES, "payloads", [b"p" * (MAX_LINK_PAYLOAD_SIZE + 1)],
     ErrorCode.MALFORMED_FRAME),
]


@pytest.mark.parametrize(
    ("frame_type", "name", "value", "code"),
    FIELD_ERRORS,
    ids=[
        f"{frame_type.name}-{name}-{index}"
        for index, (frame_type, name, _, _) in enumerate(FIELD_ERRORS)
    ],
)
def test_bad_field_is_named(
    frame_type: FrameType, name: str, value: object, code: ErrorCode
) -> None:
    data = raw_frame(frame_type, with_field(frame_type, **{name: value}))
    if len(data) > 4096:  # byte-at-a-time over ~100 KiB is slow and proves nothing more
        with pytest.raises(RemoteProtocolError) as caught:
            FrameDecoder().feed(data)
        assert caught.value.code is code
        reason = caught.value.reason
    else:
        reason = assert_rejected_every_way(data, code)
    assert name in reason or any(nested in reason for nested in (
        "DirectoryEntry", "DeviceInfo", "AddedDevice"))


# --- building frames locally ----------------------------------------------------------------------
def test_building_a_bad_frame_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        Hello(user_id="u", device_id=True)
    assert caught.value.code is ErrorCode.MALFORMED_FRAME
    assert "Hello.device_id" in caught.value.reason
    with pytest.raises(LocalProtocolError) as caught:
        Send(recipient_user_id="u", client_message_id=1, payloads={1: BIG})
    assert caught.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    with pytest.raises(LocalProtocolError):
        Lookup(phones=["+1"])  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        Error(code=5, reason="")  # type: ignore[arg-type]


def test_only_frames_encode() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(DirectoryEntry(phone="+1", user_id="u", device_ids=()))  # type: ignore[arg-type]


def test_protocol_error_is_abstract_and_printable() -> None:
    with pytest.raises(TypeError):
        ProtocolError(ErrorCode.INTERNAL_ERROR, "x")
    error = RemoteProtocolError(ErrorCode.QUEUE_FULL, "q" * 1000)
    assert len(error.reason) == MAX_REASON_LENGTH
    assert str(error).startswith("QUEUE_FULL: ")


# --- properties -----------------------------------------------------------------------------------
phones = st.text(alphabet="+0123456789", min_size=1, max_size=MAX_PHONE_LENGTH)
user_ids = st.text(min_size=1, max_size=MAX_USER_ID_LENGTH)
device_ids = st.integers(1, MAX_DEVICE_ID)
u63 = st.integers(0, 2**63 - 1)
ciphertexts = st.binary(min_size=1, max_size=300)
device_lists = st.lists(device_ids, max_size=MAX_DEVICES_PER_SEND).map(tuple)
keys = st.binary(min_size=32, max_size=32)
signed_lists = st.binary(min_size=1, max_size=MAX_DEVICE_LIST_SIZE)
channel_ids = st.binary(min_size=16, max_size=16)
link_payloads = st.binary(min_size=1, max_size=300)
FRAME_STRATEGIES: list[st.SearchStrategy[Any]] = [
    st.builds(EnrolStart, phone=phones),
    st.builds(
        EnrolVerify,
        phone=phones,
        code=st.text("0123456789", min_size=6, max_size=6),
        identity_key=keys,
        account_key=keys,
        device_list=signed_lists,
    ),
    st.builds(Hello, user_id=user_ids, device_id=device_ids),
    st.builds(Authenticate, signature=st.binary(min_size=64, max_size=64)),
    st.builds(Lookup, phones=st.lists(phones, min_size=1, max_size=MAX_LOOKUP_PHONES).map(tuple)),
    st.builds(
        Send,
        recipient_user_id=user_ids,
        client_message_id=u63,
        payloads=st.dictionaries(
            device_ids, ciphertexts, min_size=1, max_size=MAX_DEVICES_PER_SEND
        ),
    ),
    st.builds(Ack, envelope_ids=st.lists(u63, min_size=1, max_size=50).map(tuple)),
    st.just(EnrolStarted()),
    st.builds(Enrolled, user_id=user_ids, device_id=device_ids),
    st.builds(Challenge, nonce=st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE)),
    st.just(Authenticated()),
    st.builds(
        LookupResult,
        entries=st.lists(
            st.builds(DirectoryEntry, phone=phones, user_id=user_ids, device_ids=device_lists),
            max_size=5,
        ).map(tuple),
    ),
    st.builds(SendAccepted, duplicate=st.booleans()),
    st.builds(Acked, count=st.integers(0, MAX_ACK_IDS)),
    st.builds(
        Error,
        code=st.sampled_from(ErrorCode),
        reason=st.text(max_size=MAX_REASON_LENGTH),
        missing_devices=device_lists,
        extra_devices=device_lists,
        full_devices=device_lists,
    ),
    st.builds(
        Deliver,
        envelope_id=u63,
        sender_user_id=user_ids,
        sender_device_id=device_ids,
        client_message_id=u63,
        accepted_at=u63,
        ciphertext=ciphertexts,
    ),
    st.just(QueueEmpty()),
    st.builds(PublishDeviceList, device_list=signed_lists),
    st.just(LinkOpen()),
    st.builds(LinkPost, channel_id=channel_ids, payload=link_payloads),
    st.builds(LinkFetch, channel_id=channel_ids),
    st.builds(
        DeviceListPublished,
        version=st.integers(1, 2**63 - 1),
        added=st.lists(st.builds(AddedDevice, device_id=device_ids, identity_key=keys),
                       max_size=4).map(tuple),
        revoked=st.lists(device_ids, max_size=4).map(tuple),
    ),
    st.builds(LinkOpened, channel_id=channel_ids, expires_at=u63),
    st.just(LinkPosted()),
    st.builds(LinkMessages, payloads=st.lists(link_payloads, max_size=MAX_LINK_POSTS_PER_SIDE)
              .map(tuple)),
]
any_frame = st.one_of(FRAME_STRATEGIES)


def feed_in_chunks(
    data: bytes, cuts: list[int], feed: Callable[[bytes], list[Frame]]
) -> list[Frame]:
    frames, start = [], 0
    for cut in [*sorted(cut % (len(data) + 1) for cut in cuts), len(data)]:
        frames += feed(data[start:cut])
        start = max(start, cut)
    return frames


@given(frames=st.lists(any_frame, min_size=1, max_size=5), cuts=st.lists(st.integers(0, 10**6)))
def test_property_valid_frames_round_trip_under_any_chunking(
    frames: list[Frame], cuts: list[int]
) -> None:
    data = b"".join(encode_frame(frame) for frame in frames)
    decoder = FrameDecoder()
    assert feed_in_chunks(data, cuts, decoder.feed) == frames
    decoder.end_of_stream()


@settings(max_examples=300)
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 10**6), max_size=5))
def test_property_random_bytes_only_raise_remote_protocol_error(
    data: bytes, cuts: list[int]
) -> None:
    decoder = FrameDecoder()
    try:
        feed_in_chunks(data, cuts, decoder.feed)
        decoder.end_of_stream()
    except RemoteProtocolError:
        pass


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=150)
@given(
    frame_type=st.sampled_from(FrameType),
    body=st.dictionaries(
        st.sampled_from(["phone", "code", "user_id", "device_id", "payloads", "entries", "code",
                         "reason", "ciphertext", "envelope_ids", "phones", "nonce", "count",
                         "device_list", "channel_id", "payload", "added", "revoked", "version",
                         "account_key", "signed_list", "identity_key", "expires_at"])
        | st.text(max_size=3),
        msgpack_values,
        max_size=8,
    ),
)  # fmt: skip
def test_property_random_bodies_only_raise_remote_protocol_error(
    frame_type: FrameType, body: dict[str, object]
) -> None:
    try:
        frame = decode_body(msgpack.packb([1, frame_type, body]))
    except RemoteProtocolError:
        return
    assert decode_body(encode_frame(frame)[LENGTH_PREFIX_SIZE:]) == frame


def test_garbage_after_good_frames_in_one_chunk_is_reported_next() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(QueueEmpty()) + prefixed(b"\xc1")) == [QueueEmpty()]
    assert decoder.error is not None
    assert decoder.error.code is ErrorCode.MALFORMED_FRAME
    with pytest.raises(RemoteProtocolError):
        decoder.end_of_stream()
