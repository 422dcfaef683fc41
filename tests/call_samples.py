"""Sample frames of calls, one per type, shared by the codec and state-table tests."""

from __future__ import annotations

from wire.call_frames import (
    CALL_ID_SIZE,
    CallElsewhere,
    CallEnded,
    CallJoin,
    CallJoined,
    CallLeave,
    CallLeft,
    CallMembers,
    CallOpen,
    CallOpened,
)
from wire.frames import Frame, FrameType

CALL_ID = bytes(range(CALL_ID_SIZE))

CALL_SAMPLE_FRAMES: dict[FrameType, Frame] = {
    FrameType.CALL_OPEN: CallOpen(invitees=("u-callee", "u-third")),
    FrameType.CALL_JOIN: CallJoin(call_id=CALL_ID),
    FrameType.CALL_LEAVE: CallLeave(call_id=CALL_ID),
    FrameType.CALL_OPENED: CallOpened(call_id=CALL_ID, tag=7),
    FrameType.CALL_JOINED: CallJoined(tag=8, participants=2),
    FrameType.CALL_LEFT: CallLeft(),
    FrameType.CALL_ELSEWHERE: CallElsewhere(call_id=CALL_ID, address="relay-b.example:4433"),
    FrameType.CALL_MEMBERS: CallMembers(call_id=CALL_ID, participants=2),
    FrameType.CALL_ENDED: CallEnded(call_id=CALL_ID, reason="alone"),
}
