"""Sample frames of sealed sender, one per type, shared by the codec and state-table tests."""

from __future__ import annotations

from wire.frames import Frame, FrameType
from wire.sealed_frames import (
    DeliveryTokenSet,
    GetSenderCertificate,
    GetSenderKeys,
    SealedSend,
    SealedSendAccepted,
    SenderCertificateIssued,
    SenderKey,
    SenderKeys,
    SetDeliveryToken,
)

TOKEN = bytes(range(16))
TOKEN_HASH = bytes(range(32))
MESSAGE_ID = bytes(range(100, 116))

SEALED_SAMPLE_FRAMES: dict[FrameType, Frame] = {
    FrameType.GET_SENDER_KEYS: GetSenderKeys(),
    FrameType.GET_SENDER_CERTIFICATE: GetSenderCertificate(),
    FrameType.SET_DELIVERY_TOKEN: SetDeliveryToken(mode="token", token_hash=TOKEN_HASH),
    FrameType.SEALED_SEND: SealedSend(recipient_user_id="u-bob", client_message_id=MESSAGE_ID,
                                      payloads={1: b"sealed one", 2: b"sealed two"},
                                      delivery_token=TOKEN, urgent=False),
    FrameType.SENDER_KEYS: SenderKeys(keys=(
        SenderKey(key_id=2, public_key=b"n" * 32),
        SenderKey(key_id=1, public_key=b"o" * 32, not_after_ms=1_800_000_000_000))),
    FrameType.SENDER_CERTIFICATE: SenderCertificateIssued(certificate=b"c" * 200,
                                                          expires_ms=1_800_000_000_000),
    FrameType.DELIVERY_TOKEN_SET: DeliveryTokenSet(),
    FrameType.SEALED_SEND_ACCEPTED: SealedSendAccepted(),
}
