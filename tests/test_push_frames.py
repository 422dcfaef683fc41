"""Wake-up push frames: the target's shape, its limits, and every way to get it wrong.

Round trips of one sample per type run in test_frames.py (PUSH_SAMPLE_FRAMES joins its
catalogue); here are the limits specific to push targets, each decoded byte by byte.
"""

from __future__ import annotations

import pytest

from tests.push_samples import AUTH_SECRET, P256DH, WEBPUSH_ENDPOINT
from tests.test_frames import assert_rejected_every_way, decode_every_way, raw_frame
from wire.codec import encode_frame
from wire.frames import MAX_FRAME_SIZE, ErrorCode, FrameType, LocalProtocolError, Send
from wire.push_frames import (
    MAX_PUSH_TOKEN_SIZE,
    PUSH_PROVIDERS,
    PushSet,
    RegisteredPushTarget,
)


@pytest.mark.parametrize("provider", [name for name in PUSH_PROVIDERS if name != "webpush"])
def test_a_token_target_round_trips_without_keys(provider: str) -> None:
    frame = PushSet(provider=provider, token="a" * MAX_PUSH_TOKEN_SIZE)
    encoded = encode_frame(frame)
    assert len(encoded) < MAX_FRAME_SIZE
    assert decode_every_way(encoded) == [frame]


def test_the_longest_webpush_target_round_trips() -> None:
    frame = PushSet(provider="webpush", token="h" * MAX_PUSH_TOKEN_SIZE, p256dh=P256DH,
                    auth=AUTH_SECRET)
    assert decode_every_way(encode_frame(frame)) == [frame]


def test_no_target_is_reported_as_two_nones() -> None:
    frame = RegisteredPushTarget()
    assert decode_every_way(encode_frame(frame)) == [frame]
    assert decode_every_way(raw_frame(FrameType.PUSH_TARGET, {})) == [frame]


_WEBPUSH = {"provider": "webpush", "token": WEBPUSH_ENDPOINT, "p256dh": P256DH,
            "auth": AUTH_SECRET}


@pytest.mark.parametrize(("changes", "named"), [
    ({"provider": "sms"}, "PushSet.provider"),
    ({"provider": "WEBPUSH"}, "PushSet.provider"),
    ({"provider": ""}, "PushSet.provider"),
    ({"provider": 1}, "PushSet.provider"),
    ({"token": ""}, "PushSet.token"),
    ({"token": "h" * (MAX_PUSH_TOKEN_SIZE + 1)}, "PushSet.token"),
    ({"token": "https://push.example.test/a b"}, "PushSet.token"),  # a space
    ({"token": "https://push.example.test/\r\nX-Evil: 1"}, "PushSet.token"),  # header injection
    ({"token": "https://push.example.test/é"}, "PushSet.token"),  # not ASCII
    ({"token": b"https://push.example.test/"}, "PushSet.token"),
    ({"p256dh": P256DH[:64]}, "PushSet.p256dh"),
    ({"p256dh": P256DH + b"\x00"}, "PushSet.p256dh"),
    ({"p256dh": b"\x02" + P256DH[1:]}, "PushSet.p256dh"),  # compressed or garbage point
    ({"p256dh": None}, "PushSet.p256dh"),
    ({"auth": AUTH_SECRET[:15]}, "PushSet.auth"),
    ({"auth": AUTH_SECRET + b"\x00"}, "PushSet.auth"),
    ({"auth": None}, "PushSet.auth"),
    ({"provider": "fcm"}, "PushSet.p256dh"),  # keys for a provider that takes none
    ({"provider": "apns", "p256dh": None}, "PushSet.auth"),
])
def test_a_malformed_target_is_refused_by_name(changes: dict[str, object], named: str) -> None:
    body = {**_WEBPUSH, **changes}
    body = {name: value for name, value in body.items() if value is not None}
    reason = assert_rejected_every_way(raw_frame(FrameType.PUSH_SET, body),
                                       ErrorCode.MALFORMED_FRAME)
    assert named in reason


def test_a_missing_field_is_named() -> None:
    reason = assert_rejected_every_way(raw_frame(FrameType.PUSH_SET, {"provider": "outbox"}),
                                       ErrorCode.MALFORMED_FRAME)
    assert "PushSet.token is missing" in reason


def test_a_target_answer_with_half_a_target_is_refused() -> None:
    reason = assert_rejected_every_way(raw_frame(FrameType.PUSH_TARGET, {"provider": "fcm"}),
                                       ErrorCode.MALFORMED_FRAME)
    assert "RegisteredPushTarget.token" in reason


def test_building_a_bad_target_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError) as refused:
        PushSet(provider="webpush", token=WEBPUSH_ENDPOINT)
    assert refused.value.code is ErrorCode.MALFORMED_FRAME


def test_send_carries_the_urgent_flag_and_an_old_send_without_it_is_not_urgent() -> None:
    urgent = Send(recipient_user_id="u", client_message_id=1, payloads={1: b"c"}, urgent=True)
    assert decode_every_way(encode_frame(urgent)) == [urgent]
    old = raw_frame(FrameType.SEND, {"recipient_user_id": "u", "client_message_id": 1,
                                     "payloads": {1: b"c"}})
    (decoded,) = decode_every_way(old)
    assert isinstance(decoded, Send) and decoded.urgent is False
    reason = assert_rejected_every_way(
        raw_frame(FrameType.SEND, {"recipient_user_id": "u", "client_message_id": 1,
                                   "payloads": {1: b"c"}, "urgent": 1}),
        ErrorCode.MALFORMED_FRAME)
    assert "Send.urgent" in reason
