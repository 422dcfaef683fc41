"""Multi-recipient send frames: their limits, DELIVER's shared field, ERROR's per-user detail.

Round trips of one sample per type run in test_frames.py (GROUP_SAMPLE_FRAMES joins its
catalogue); here are the limits specific to MULTI_SEND, each decoded under every chunking.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_frames import assert_rejected_every_way, body_of, decode_every_way, raw_frame
from wire.codec import encode_frame
from wire.frames import (
    MAX_CIPHERTEXT_SIZE,
    MAX_DEVICES_PER_SEND,
    MAX_FRAME_SIZE,
    Deliver,
    Error,
    ErrorCode,
    FrameType,
    LocalProtocolError,
)
from wire.group_frames import (
    MAX_KEY_MATERIAL_SIZE,
    MAX_MULTI_SEND_DEVICES,
    MultiSend,
    MultiSendRecipient,
    SealedMultiSend,
    UserDevices,
)
from wire.protocol import RequestReceived, ServerProtocol, StreamFailed


def _recipients(users: int, devices: int, size: int = 8) -> list[dict[str, Any]]:
    return [{"user_id": f"u-{user}", "devices": {device: b"k" * size
                                                 for device in range(1, devices + 1)}}
            for user in range(users)]


def _multi_send(**changes: object) -> bytes:
    body: dict[str, object] = {"client_message_id": 1, "shared": b"s",
                               "recipients": _recipients(2, 2)}
    body.update(changes)
    return raw_frame(FrameType.MULTI_SEND, body)


def test_the_largest_fan_out_fits_a_frame_and_round_trips() -> None:
    # 1,000 devices (63 users of 16 and one of 8) with realistic key material and a full
    # shared ciphertext: the frame limit, not the device count, bounds what a client can ask.
    recipients = tuple(
        MultiSendRecipient(user_id=f"u-{user}", devices={
            device: bytes([device]) * 1200
            for device in range(1, min(MAX_DEVICES_PER_SEND, MAX_MULTI_SEND_DEVICES
                                       - user * MAX_DEVICES_PER_SEND) + 1)})
        for user in range(-(-MAX_MULTI_SEND_DEVICES // MAX_DEVICES_PER_SEND)))
    frame = MultiSend(client_message_id=5, shared=b"g" * MAX_CIPHERTEXT_SIZE,
                      recipients=recipients, urgent=True)
    assert frame.device_count() == MAX_MULTI_SEND_DEVICES
    encoded = encode_frame(frame)
    assert len(encoded) < MAX_FRAME_SIZE
    assert decode_every_way(encoded) == [frame]


@pytest.mark.parametrize(("changes", "code", "named"), [
    ({"shared": b""}, ErrorCode.MALFORMED_FRAME, "MultiSend.shared"),
    ({"shared": b"s" * (MAX_CIPHERTEXT_SIZE + 1)}, ErrorCode.PAYLOAD_TOO_LARGE,
     "MultiSend.shared"),
    ({"shared": "text"}, ErrorCode.MALFORMED_FRAME, "MultiSend.shared"),
    ({"recipients": []}, ErrorCode.MALFORMED_FRAME, "MultiSend.recipients"),
    ({"recipients": _recipients(1, 1) * 2}, ErrorCode.MALFORMED_FRAME, "MultiSend.recipients"),
    ({"recipients": _recipients(MAX_MULTI_SEND_DEVICES // 10 + 1, 10)},
     ErrorCode.MALFORMED_FRAME, "MultiSend.recipients"),
    ({"recipients": [{"user_id": "u", "devices": {}}]}, ErrorCode.MALFORMED_FRAME,
     "MultiSendRecipient.devices"),
    ({"recipients": [{"user_id": "u", "devices": {0: b"k"}}]}, ErrorCode.MALFORMED_FRAME,
     "MultiSendRecipient.devices"),
    ({"recipients": [{"user_id": "u", "devices": {1: b""}}]}, ErrorCode.MALFORMED_FRAME,
     "MultiSendRecipient.devices"),
    ({"recipients": _recipients(1, 1, MAX_KEY_MATERIAL_SIZE + 1)},
     ErrorCode.PAYLOAD_TOO_LARGE, "MultiSendRecipient.devices"),
    ({"recipients": _recipients(1, MAX_DEVICES_PER_SEND + 1)}, ErrorCode.MALFORMED_FRAME,
     "MultiSendRecipient.devices"),
    ({"recipients": [{"user_id": "", "devices": {1: b"k"}}]}, ErrorCode.MALFORMED_FRAME,
     "MultiSendRecipient.user_id"),
    ({"recipients": [{"devices": {1: b"k"}}]}, ErrorCode.MALFORMED_FRAME,
     "MultiSendRecipient.user_id"),
    ({"recipients": [[1, 2]]}, ErrorCode.MALFORMED_FRAME, "MultiSend.recipients"),
    ({"urgent": 1}, ErrorCode.MALFORMED_FRAME, "MultiSend.urgent"),
    ({"client_message_id": -1}, ErrorCode.MALFORMED_FRAME, "MultiSend.client_message_id"),
])
def test_a_bad_multi_send_is_refused_by_the_field_named(changes: dict[str, object],
                                                        code: ErrorCode, named: str) -> None:
    reason = assert_rejected_every_way(_multi_send(**changes), code)
    assert named in reason


def test_a_multi_send_built_locally_over_a_limit_raises_before_anything_is_sent() -> None:
    with pytest.raises(LocalProtocolError) as raised:
        MultiSendRecipient(user_id="u", devices={1: b"k" * (MAX_KEY_MATERIAL_SIZE + 1)})
    assert raised.value.code is ErrorCode.PAYLOAD_TOO_LARGE


def test_recipient_devices_are_a_private_read_only_copy() -> None:
    devices = {1: b"k"}
    recipient = MultiSendRecipient(user_id="u", devices=devices)
    devices[2] = b"later"
    assert dict(recipient.devices) == {1: b"k"}
    with pytest.raises(TypeError):
        recipient.devices[3] = b"x"  # type: ignore[index]


def test_a_deliver_without_shared_encodes_as_before_and_one_with_it_round_trips() -> None:
    plain = Deliver(envelope_id=1, sender_user_id="u", sender_device_id=1, client_message_id=2,
                    accepted_at=3, ciphertext=b"c")
    assert "shared" not in body_of(plain)  # an old decoder sees the frame it always saw
    fanned = Deliver(envelope_id=1, sender_user_id="u", sender_device_id=1, client_message_id=2,
                     accepted_at=3, ciphertext=b"key", shared=b"group ciphertext")
    assert decode_every_way(encode_frame(fanned)) == [fanned]
    assert fanned.shared == b"group ciphertext"


def test_a_deliver_with_an_oversize_shared_is_refused() -> None:
    body = {"envelope_id": 1, "sender_user_id": "u", "sender_device_id": 1,
            "client_message_id": 2, "accepted_at": 3, "ciphertext": b"c",
            "shared": b"s" * (MAX_CIPHERTEXT_SIZE + 1)}
    reason = assert_rejected_every_way(raw_frame(FrameType.DELIVER, body),
                                       ErrorCode.PAYLOAD_TOO_LARGE)
    assert "Deliver.shared" in reason


def test_an_error_names_the_devices_of_each_user() -> None:
    error = Error(code=ErrorCode.MISMATCHED_DEVICES, reason="devices changed", users=(
        UserDevices(user_id="u-a", missing_devices=(2,)),
        UserDevices(user_id="u-b", extra_devices=(5, 6))))
    assert decode_every_way(encode_frame(error)) == [error]
    assert "users" not in body_of(Error(code=ErrorCode.QUEUE_FULL, reason="full"))


def test_multi_send_needs_authentication() -> None:
    server = ServerProtocol()
    events = server.receive_stream_data(0, encode_frame(MultiSend(
        client_message_id=1, shared=b"s",
        recipients=(MultiSendRecipient(user_id="u", devices={1: b"k"}),))), end_stream=True)
    assert len(events) == 1
    failure = events[0]
    assert isinstance(failure, StreamFailed)
    assert failure.error.code is ErrorCode.UNEXPECTED_FRAME


def test_a_multi_send_carries_no_delivery_token_and_a_sealed_one_may() -> None:
    body = {"client_message_id": 1, "shared": b"s",
            "recipients": [{"user_id": "u", "devices": {1: b"k"}, "delivery_token": b"t" * 16}]}
    reason = assert_rejected_every_way(raw_frame(FrameType.MULTI_SEND, body),
                                       ErrorCode.MALFORMED_FRAME)
    assert "MultiSend.recipients" in reason
    sealed = SealedMultiSend(client_message_id=b"i" * 16, shared=b"s", recipients=(
        MultiSendRecipient(user_id="u", devices={1: b"k"}, delivery_token=b"t" * 16),
        MultiSendRecipient(user_id="v", devices={1: b"k"})))
    assert decode_every_way(encode_frame(sealed)) == [sealed]
    # A recipient without a token encodes without the field.
    plain = MultiSend(client_message_id=1, shared=b"s",
                      recipients=(MultiSendRecipient(user_id="u", devices={1: b"k"}),))
    assert "delivery_token" not in body_of(plain)["recipients"][0]


@pytest.mark.parametrize(("changes", "named"), [
    ({"client_message_id": b"short"}, "SealedMultiSend.client_message_id"),
    ({"client_message_id": 7}, "SealedMultiSend.client_message_id"),
    ({"recipients": [{"user_id": "u", "devices": {1: b"k"}, "delivery_token": b"t" * 15}]},
     "MultiSendRecipient.delivery_token"),
    ({"recipients": []}, "SealedMultiSend.recipients"),
])
def test_a_bad_sealed_multi_send_is_refused_by_the_field_named(changes: dict[str, object],
                                                               named: str) -> None:
    body: dict[str, object] = {"client_message_id": b"i" * 16, "shared": b"s",
                               "recipients": [{"user_id": "u", "devices": {1: b"k"}}]}
    body.update(changes)
    reason = assert_rejected_every_way(raw_frame(FrameType.SEALED_MULTI_SEND, body),
                                       ErrorCode.MALFORMED_FRAME)
    assert named in reason


def test_a_sealed_multi_send_is_allowed_before_authentication() -> None:
    server = ServerProtocol()
    frame = SealedMultiSend(client_message_id=b"i" * 16, shared=b"s", recipients=(
        MultiSendRecipient(user_id="u", devices={1: b"k"}, delivery_token=b"t" * 16),))
    event, *_ = server.receive_stream_data(0, encode_frame(frame), end_stream=True)
    assert isinstance(event, RequestReceived)
    assert event.frame == frame
