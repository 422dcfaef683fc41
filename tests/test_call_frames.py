"""Call frames and the media datagram layout: limits, each decoded byte by byte.

Round trips of one sample per type run in test_frames.py (CALL_SAMPLE_FRAMES joins its
catalogue); here are the limits specific to calls.
"""

from __future__ import annotations

import pytest

from tests.call_samples import CALL_ID
from tests.test_frames import assert_rejected_every_way, decode_every_way, raw_frame
from wire.call_frames import (
    CALL_ID_SIZE,
    MAX_CALL_INVITEES,
    MAX_CALL_PARTICIPANTS,
    MAX_CALL_TAG,
    CallEnded,
    CallJoin,
    CallMembers,
    CallOpen,
    CallOpened,
    pack_media,
    unpack_media,
)
from wire.codec import encode_frame
from wire.frames import ErrorCode, FrameType, LocalProtocolError
from wire.limits import MAX_USER_ID_LENGTH
from wire.protocol import PUSH_FRAME_TYPES, ClientProtocol, PushReceived


def test_the_largest_call_open_round_trips() -> None:
    invitees = tuple(f"u-{index}".ljust(MAX_USER_ID_LENGTH, "x") for index in range(
        MAX_CALL_INVITEES))
    frame = CallOpen(invitees=invitees)
    assert decode_every_way(encode_frame(frame)) == [frame]


@pytest.mark.parametrize("invitees", [
    [], [f"u-{index}" for index in range(MAX_CALL_INVITEES + 1)], ["u-a", "u-a"], [""],
    ["x" * (MAX_USER_ID_LENGTH + 1)], [7],
], ids=["none", "too_many", "repeated", "empty", "too_long", "not_a_str"])
def test_bad_invitees_are_refused_by_name(invitees: list[object]) -> None:
    reason = assert_rejected_every_way(raw_frame(FrameType.CALL_OPEN, {"invitees": invitees}),
                                       ErrorCode.MALFORMED_FRAME)
    assert "CallOpen.invitees" in reason


@pytest.mark.parametrize("call_id", [b"", CALL_ID[:-1], CALL_ID + b"\x00", "not bytes"])
def test_a_call_id_of_the_wrong_size_is_refused(call_id: object) -> None:
    reason = assert_rejected_every_way(raw_frame(FrameType.CALL_JOIN, {"call_id": call_id}),
                                       ErrorCode.MALFORMED_FRAME)
    assert "CallJoin.call_id" in reason


def test_tags_and_participant_counts_are_bounded() -> None:
    with pytest.raises(LocalProtocolError):
        CallOpened(call_id=CALL_ID, tag=MAX_CALL_TAG + 1)
    with pytest.raises(LocalProtocolError):
        CallMembers(call_id=CALL_ID, participants=MAX_CALL_PARTICIPANTS + 1)
    with pytest.raises(LocalProtocolError):
        CallEnded(call_id=CALL_ID, reason="")
    assert CallJoin(call_id=bytes(CALL_ID_SIZE)).call_id == bytes(CALL_ID_SIZE)


def test_media_datagrams_carry_a_four_byte_tag_then_the_opaque_payload() -> None:
    datagram = pack_media(0x01020304, b"opus")
    assert datagram == b"\x01\x02\x03\x04opus"
    assert unpack_media(datagram) == (0x01020304, b"opus")
    assert unpack_media(pack_media(MAX_CALL_TAG, b"")) == (MAX_CALL_TAG, b"")
    assert unpack_media(b"\x00\x00\x01") is None


def test_call_pushes_reach_a_client_only_on_the_push_stream() -> None:
    members = CallMembers(call_id=CALL_ID, participants=3)
    ended = CallEnded(call_id=CALL_ID, reason="idle")
    assert {FrameType.CALL_MEMBERS, FrameType.CALL_ENDED} <= PUSH_FRAME_TYPES
    client = ClientProtocol()
    events = client.receive_stream_data(3, encode_frame(members) + encode_frame(ended), False)
    assert events == [PushReceived(members), PushReceived(ended)]
    # On a request stream a push is a protocol error, not a push.
    assert not any(isinstance(event, PushReceived) for event in
                   ClientProtocol().receive_stream_data(0, encode_frame(ended), False))
