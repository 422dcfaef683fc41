"""Sealed sender's frames: their checks, their encoding, and where the state table allows them."""

from __future__ import annotations

import msgpack
import pytest

from tests.sealed_samples import MESSAGE_ID, SEALED_SAMPLE_FRAMES, TOKEN, TOKEN_HASH
from tests.test_protocol import server_in
from wire.codec import decode_body, encode_frame
from wire.errors import LocalProtocolError, RemoteProtocolError
from wire.frames import Deliver, ErrorCode, FrameType
from wire.limits import LENGTH_PREFIX_SIZE, MAX_CIPHERTEXT_SIZE, PROTOCOL_VERSION
from wire.protocol import ConnectionState, RequestReceived, StreamFailed
from wire.sealed_frames import (
    MAX_SENDER_KEYS,
    SealedSend,
    SenderKey,
    SenderKeys,
    SetDeliveryToken,
)


def body(frame_type: FrameType, fields: dict[str, object]) -> bytes:
    return msgpack.packb((PROTOCOL_VERSION, int(frame_type), fields))


@pytest.mark.parametrize("frame", SEALED_SAMPLE_FRAMES.values(), ids=lambda f: type(f).__name__)
def test_round_trip(frame: object) -> None:
    encoded = encode_frame(frame)  # type: ignore[arg-type]
    assert decode_body(encoded[LENGTH_PREFIX_SIZE:]) == frame


def test_a_sealed_deliver_has_no_sender_and_says_so() -> None:
    sealed = Deliver(envelope_id=7, client_message_id=3, accepted_at=1, ciphertext=b"x")
    assert sealed.sealed and sealed.sender_user_id is None and sealed.sender_device_id is None
    decoded = decode_body(body(FrameType.DELIVER, {
        "envelope_id": 7, "client_message_id": 3, "accepted_at": 1, "ciphertext": b"x"}))
    assert decoded == sealed
    identified = Deliver(envelope_id=7, client_message_id=3, accepted_at=1, ciphertext=b"x",
                         sender_user_id="u-a", sender_device_id=2)
    assert not identified.sealed
    with pytest.raises(LocalProtocolError, match="sender_device_id"):
        Deliver(envelope_id=7, client_message_id=3, accepted_at=1, ciphertext=b"x",
                sender_user_id="u-a")


@pytest.mark.parametrize(("fields", "name"), [
    ({"client_message_id": b"short"}, "client_message_id"),
    ({"client_message_id": 5}, "client_message_id"),
    ({"delivery_token": b"t" * 15}, "delivery_token"),
    ({"delivery_token": "t" * 16}, "delivery_token"),
    ({"payloads": {}}, "payloads"),
    ({"payloads": {0: b"x"}}, "payloads"),
    ({"payloads": {1: b""}}, "payloads"),
    ({"urgent": 1}, "urgent"),
    ({"recipient_user_id": ""}, "recipient_user_id"),
])
def test_a_malformed_sealed_send_names_its_field(fields: dict[str, object], name: str) -> None:
    base: dict[str, object] = {"recipient_user_id": "u-b", "client_message_id": MESSAGE_ID,
                               "payloads": {1: b"x"}, "delivery_token": TOKEN}
    with pytest.raises(RemoteProtocolError, match=f"SealedSend.{name}") as caught:
        decode_body(body(FrameType.SEALED_SEND, base | fields))
    assert caught.value.code is ErrorCode.MALFORMED_FRAME


def test_an_oversized_sealed_ciphertext_is_payload_too_large() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        SealedSend(recipient_user_id="u-b", client_message_id=MESSAGE_ID,
                   payloads={1: b"x" * (MAX_CIPHERTEXT_SIZE + 1)}, delivery_token=TOKEN)
    assert caught.value.code is ErrorCode.PAYLOAD_TOO_LARGE


def test_a_sealed_send_without_a_token_is_well_formed() -> None:
    frame = SealedSend(recipient_user_id="u-b", client_message_id=MESSAGE_ID, payloads={1: b"x"})
    assert frame.delivery_token is None and not frame.urgent


def test_delivery_token_modes() -> None:
    assert SetDeliveryToken(mode="token", token_hash=TOKEN_HASH).token_hash == TOKEN_HASH
    assert SetDeliveryToken(mode="token").token_hash is None  # refuse every sealed send
    assert SetDeliveryToken(mode="organisation").token_hash is None
    with pytest.raises(LocalProtocolError, match="absent in organisation mode"):
        SetDeliveryToken(mode="organisation", token_hash=TOKEN_HASH)
    with pytest.raises(LocalProtocolError, match="mode"):
        SetDeliveryToken(mode="anyone")
    with pytest.raises(LocalProtocolError, match="token_hash"):
        SetDeliveryToken(mode="token", token_hash=TOKEN)  # the token, not its hash


def test_sender_keys_are_bounded_and_distinct() -> None:
    key = SenderKey(key_id=1, public_key=b"k" * 32)
    with pytest.raises(LocalProtocolError, match="distinct"):
        SenderKeys(keys=(key, key))
    with pytest.raises(LocalProtocolError, match="keys"):
        SenderKeys(keys=())
    with pytest.raises(LocalProtocolError, match="keys"):
        SenderKeys(keys=tuple(SenderKey(key_id=n, public_key=b"k" * 32)
                              for n in range(1, MAX_SENDER_KEYS + 2)))
    with pytest.raises(LocalProtocolError, match="public_key"):
        SenderKey(key_id=1, public_key=b"k" * 31)


@pytest.mark.parametrize("state", [ConnectionState.NEW, ConnectionState.CHALLENGED,
                                   ConnectionState.AUTHENTICATED])
@pytest.mark.parametrize("frame_type", [FrameType.SEALED_SEND, FrameType.GET_SENDER_KEYS])
def test_sealed_sends_and_keys_need_no_authentication(state: ConnectionState,
                                                      frame_type: FrameType) -> None:
    server = server_in(state)
    frame = SEALED_SAMPLE_FRAMES[frame_type]
    assert server.receive_stream_data(4, encode_frame(frame), False) == [
        RequestReceived(4, frame)]
    assert server.state is state  # a sealed send authenticates nothing


@pytest.mark.parametrize("frame_type", [FrameType.GET_SENDER_CERTIFICATE,
                                        FrameType.SET_DELIVERY_TOKEN])
def test_certificates_and_tokens_need_a_device(frame_type: FrameType) -> None:
    server = server_in(ConnectionState.NEW)
    (event,) = server.receive_stream_data(4, encode_frame(SEALED_SAMPLE_FRAMES[frame_type]),
                                          False)
    assert isinstance(event, StreamFailed)
    assert event.error.code is ErrorCode.UNEXPECTED_FRAME
    authenticated = server_in(ConnectionState.AUTHENTICATED)
    frame = SEALED_SAMPLE_FRAMES[frame_type]
    assert authenticated.receive_stream_data(4, encode_frame(frame), False) == [
        RequestReceived(4, frame)]
