"""Sample frames of wake-up pushes, one per type, shared by the codec and state-table tests."""

from __future__ import annotations

from wire.frames import Frame, FrameType
from wire.push_frames import (
    PushClear,
    PushCleared,
    PushGet,
    PushSet,
    PushTargetSet,
    RegisteredPushTarget,
)

WEBPUSH_ENDPOINT = "https://push.example.test/wake/abc-123"
P256DH = b"\x04" + bytes(range(64))
AUTH_SECRET = bytes(range(16))

PUSH_SAMPLE_FRAMES: dict[FrameType, Frame] = {
    FrameType.PUSH_SET: PushSet(provider="webpush", token=WEBPUSH_ENDPOINT, p256dh=P256DH,
                                auth=AUTH_SECRET),
    FrameType.PUSH_CLEAR: PushClear(),
    FrameType.PUSH_GET: PushGet(),
    FrameType.PUSH_TARGET_SET: PushTargetSet(),
    FrameType.PUSH_CLEARED: PushCleared(),
    FrameType.PUSH_TARGET: RegisteredPushTarget(provider="webpush", token=WEBPUSH_ENDPOINT),
}
