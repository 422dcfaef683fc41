"""ACK without an answer: the relay deletes and stays silent; an answered ACK
on the same stream confirms every earlier one."""

from __future__ import annotations

import pytest
import trio

from tests.conftest import RelayUnderTest, enrol
from tests.test_relay_e2e import ALICE, BOB, authenticated
from wire.codec import FrameDecoder, decode_body, encode_frame
from wire.frames import (
    Ack,
    Acked,
    LocalProtocolError,
)


def test_answer_defaults_to_true_and_must_be_a_bool() -> None:
    assert Ack(envelope_ids=(1,)).answer is True
    [frame] = FrameDecoder().feed(encode_frame(Ack(envelope_ids=(1, 2), answer=False)))
    assert frame == Ack(envelope_ids=(1, 2), answer=False)
    with pytest.raises(LocalProtocolError, match="answer"):
        Ack(envelope_ids=(1,), answer=1)  # type: ignore[arg-type]
    # A peer that does not know the field gets the old behaviour.
    legacy = encode_frame(Ack(envelope_ids=(5,)))[4:]
    assert decode_body(legacy) == Ack(envelope_ids=(5,), answer=True)


async def test_unanswered_acks_delete_and_are_confirmed_in_order(
        relay: RelayUnderTest) -> None:
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    async with relay.connect() as sender:
        await authenticated(sender, alice)
        for number in range(3):
            await sender.send(bob.user_id, {bob.device_id: b"m"}, client_message_id=number)
    async with relay.connect() as receiver:
        await authenticated(receiver, bob)
        ids = []
        with trio.fail_after(5):
            async for delivery in receiver.deliveries():
                if not hasattr(delivery, "envelope_id"):
                    break
                ids.append(delivery.envelope_id)
        stream = receiver.link.new_stream()
        receiver.link.send_stream_data(stream, encode_frame(Ack(envelope_ids=tuple(ids[:2]),
                                                                 answer=False)))
        # The only answer on the stream is the one to the answered ACK that follows.
        answer = await receiver.request(Ack(envelope_ids=(ids[2],)), stream_id=stream)
        assert answer == Acked(count=1)
    store = relay.running.context.store
    assert await store.queue_depth(user_id=bob.user_id, device_id=bob.device_id) == 0
