"""Sample frames of multi-recipient sends, one per type, shared by the codec and fuzz tests."""

from __future__ import annotations

from wire.frames import Frame, FrameType
from wire.group_frames import (
    MultiSend,
    MultiSendAccepted,
    MultiSendRecipient,
    SealedMultiSend,
    SealedMultiSendAccepted,
)

GROUP_SAMPLE_FRAMES: dict[FrameType, Frame] = {
    FrameType.MULTI_SEND: MultiSend(
        client_message_id=9, shared=b"shared ciphertext",
        recipients=(MultiSendRecipient(user_id="u-alice", devices={1: b"k1", 2: b"k2"}),
                    MultiSendRecipient(user_id="u-bob", devices={1: b"k3"}))),
    FrameType.MULTI_SEND_ACCEPTED: MultiSendAccepted(duplicate=False),
    FrameType.SEALED_MULTI_SEND: SealedMultiSend(
        client_message_id=bytes(range(16)), shared=b"sealed shared ciphertext",
        recipients=(MultiSendRecipient(user_id="u-alice", devices={1: b"k1"},
                                       delivery_token=b"t" * 16),
                    MultiSendRecipient(user_id="u-bob", devices={2: b"k2"}))),
    FrameType.SEALED_MULTI_SEND_ACCEPTED: SealedMultiSendAccepted(),
}
