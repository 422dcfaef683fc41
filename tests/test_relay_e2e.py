"""End to end over real QUIC on loopback: enrol, authenticate, deliver."""

from __future__ import annotations

import pytest
import trio
from nacl.signing import SigningKey

from client.connection import ConnectionClosed, RelayClient, RelayError
from relay.server import serve
from relay.settings import RelaySettings
from tests.conftest import EnrolledDevice, RelayUnderTest, SmsInbox, enrol, new_account
from wire.codec import encode_frame
from wire.frames import Deliver, ErrorCode, Lookup, QueueEmpty

ALICE, BOB, CAROL = "+33612345678", "+33698765432", "+33611111111"


async def authenticated(client: RelayClient, device: EnrolledDevice) -> None:
    await client.authenticate(device.user_id, device.device_id, device.key)


async def collect(client: RelayClient, count: int) -> list[Deliver]:
    """The next ``count`` deliveries (acknowledged), skipping QUEUE_EMPTY."""
    received: list[Deliver] = []
    with trio.fail_after(10):
        async for delivery in client.deliveries():
            if isinstance(delivery, Deliver):
                received.append(delivery)
                client.acknowledge(delivery.envelope_id)
                if len(received) == count:
                    break
    return received


async def drain_backlog(client: RelayClient) -> list[Deliver]:
    """Everything stored for the device, up to QUEUE_EMPTY (acknowledged)."""
    received: list[Deliver] = []
    with trio.fail_after(10):
        async for delivery in client.deliveries():
            if isinstance(delivery, QueueEmpty):
                return received
            received.append(delivery)
            client.acknowledge(delivery.envelope_id)
    raise AssertionError("unreachable")


async def test_offline_then_live_delivery(relay: RelayUnderTest) -> None:
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    async with relay.connect() as sender:
        await authenticated(sender, alice)
        [entry] = await sender.lookup([BOB])
        assert (entry.user_id, entry.device_ids) == (bob.user_id, (bob.device_id,))
        assert await sender.send(bob.user_id, {bob.device_id: b"stored"},
                                 client_message_id=1) is False
    async with relay.connect() as receiver:
        await authenticated(receiver, bob)
        [stored] = await drain_backlog(receiver)
        assert (stored.ciphertext, stored.sender_user_id, stored.sender_device_id) == (
            b"stored", alice.user_id, alice.device_id)
        async with relay.connect() as sender:
            await authenticated(sender, alice)
            await sender.send(bob.user_id, {bob.device_id: b"live"}, client_message_id=2)
            [live] = await collect(receiver, 1)
            assert live.ciphertext == b"live"


async def test_acknowledged_envelopes_are_not_delivered_again(relay: RelayUnderTest) -> None:
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    async with relay.connect() as sender:
        await authenticated(sender, alice)
        for number in range(3):
            await sender.send(bob.user_id, {bob.device_id: b"m%d" % number},
                              client_message_id=number)
    async with relay.connect() as receiver:
        await authenticated(receiver, bob)
        first = await receiver.deliveries().__anext__()
        assert isinstance(first, Deliver)
        # Disconnect without acknowledging: it must come again, with the same id.
    async with relay.connect() as receiver:
        await authenticated(receiver, bob)
        again = await drain_backlog(receiver)
        assert [d.ciphertext for d in again] == [b"m0", b"m1", b"m2"]
        assert again[0].envelope_id == first.envelope_id
    async with relay.connect() as receiver:
        await authenticated(receiver, bob)
        assert await drain_backlog(receiver) == []
    assert await relay.running.context.store.queue_depth(
        user_id=bob.user_id, device_id=bob.device_id) == 0


async def test_exact_resend_is_ignored(relay: RelayUnderTest) -> None:
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    async with relay.connect() as sender:
        await authenticated(sender, alice)
        assert await sender.send(bob.user_id, {bob.device_id: b"x"}, client_message_id=42) is False
    async with relay.connect() as sender:  # a reconnecting client re-sends
        await authenticated(sender, alice)
        assert await sender.send(bob.user_id, {bob.device_id: b"x"}, client_message_id=42) is True
    async with relay.connect() as receiver:
        await authenticated(receiver, bob)
        assert [d.ciphertext for d in await drain_backlog(receiver)] == [b"x"]


async def test_order_per_sender_under_concurrent_pipelined_sends(relay: RelayUnderTest) -> None:
    alice, bob, carol = (await enrol(relay, ALICE), await enrol(relay, BOB),
                         await enrol(relay, CAROL))
    per_sender = 60
    async with relay.connect() as receiver, relay.connect() as first, relay.connect() as second:
        await authenticated(receiver, carol)
        await authenticated(first, alice)
        await authenticated(second, bob)

        async def send_all(client: RelayClient, tag: bytes) -> None:
            async with trio.open_nursery() as nursery:  # all in flight at once
                for number in range(per_sender):
                    nursery.start_soon(lambda n=number: client.send(
                        carol.user_id, {carol.device_id: tag + b"%03d" % n},
                        client_message_id=n))
                    await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all, first, b"a")
            nursery.start_soon(send_all, second, b"b")
        received = await collect(receiver, 2 * per_sender)
    for tag in (b"a", b"b"):
        mine = [d.ciphertext for d in received if d.ciphertext.startswith(tag)]
        assert len(mine) == per_sender
        # Pipelined sends are submitted in the order the client made them.
        assert mine == sorted(mine)


async def test_full_queue_refuses_explicitly(tmp_path, nursery: trio.Nursery) -> None:
    from tests.conftest import declare

    settings = RelaySettings(data_dir=tmp_path / "relay", listen_port=0, max_queue_depth=3)
    settings.data_dir.mkdir()
    await declare(settings.data_dir, "acme", ALICE, BOB)
    sms = SmsInbox()
    running = await nursery.start(lambda task_status: serve(
        settings, task_status=task_status, on_sms_sent=sms))
    relay = RelayUnderTest(data_dir=settings.data_dir, running=running, sms=sms)
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    async with relay.connect() as sender:
        await authenticated(sender, alice)
        for number in range(3):
            await sender.send(bob.user_id, {bob.device_id: b"m"}, client_message_id=number)
        with pytest.raises(RelayError) as refused:
            await sender.send(bob.user_id, {bob.device_id: b"m"}, client_message_id=99)
        assert refused.value.code is ErrorCode.QUEUE_FULL
        assert refused.value.error.full_devices == (bob.device_id,)
    async with relay.connect() as receiver:  # nothing was dropped
        await authenticated(receiver, bob)
        assert len(await drain_backlog(receiver)) == 3
    running.stop()


async def test_send_must_address_every_device(relay: RelayUnderTest) -> None:
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    async with relay.connect() as sender:
        await authenticated(sender, alice)
        with pytest.raises(RelayError) as refused:
            await sender.send(bob.user_id, {bob.device_id + 7: b"m"}, client_message_id=1)
        assert refused.value.code is ErrorCode.MISMATCHED_DEVICES
        assert refused.value.error.missing_devices == (bob.device_id,)
        assert refused.value.error.extra_devices == (bob.device_id + 7,)
        with pytest.raises(RelayError) as unknown:
            await sender.send("0" * 32, {1: b"m"}, client_message_id=2)
        assert unknown.value.code is ErrorCode.UNKNOWN_RECIPIENT


async def test_wrong_key_is_refused_and_closed(relay: RelayUnderTest) -> None:
    bob = await enrol(relay, BOB)
    async with relay.connect() as client:
        with pytest.raises(RelayError) as refused:
            await client.authenticate(bob.user_id, bob.device_id, SigningKey.generate())
        assert refused.value.code is ErrorCode.AUTHENTICATION_FAILED
        with pytest.raises(ConnectionClosed) as closed:
            await client.lookup([ALICE])
        assert closed.value.code == ErrorCode.AUTHENTICATION_FAILED


async def test_replayed_answer_from_another_connection_is_refused(
        relay: RelayUnderTest) -> None:
    from wire.frames import Authenticate, Challenge, Hello, auth_transcript

    bob = await enrol(relay, BOB)
    async with relay.connect() as eavesdropped:
        challenge = await eavesdropped.request(Hello(user_id=bob.user_id,
                                                     device_id=bob.device_id))
        assert isinstance(challenge, Challenge)
        signature = bob.key.sign(auth_transcript(
            nonce=challenge.nonce, user_id=bob.user_id, device_id=bob.device_id)).signature
        await eavesdropped.request(Authenticate(signature=signature))
    async with relay.connect() as attacker:
        await attacker.request(Hello(user_id=bob.user_id, device_id=bob.device_id))
        with pytest.raises(RelayError) as refused:
            await attacker.request(Authenticate(signature=signature))
        assert refused.value.code is ErrorCode.AUTHENTICATION_FAILED


async def test_unauthenticated_connection_cannot_send(relay: RelayUnderTest) -> None:
    bob = await enrol(relay, BOB)
    async with relay.connect() as client:
        with pytest.raises(RelayError) as refused:
            await client.send(bob.user_id, {bob.device_id: b"m"}, client_message_id=1)
        assert refused.value.code is ErrorCode.UNEXPECTED_FRAME


async def test_second_connection_of_a_device_replaces_the_first(
        relay: RelayUnderTest) -> None:
    bob = await enrol(relay, BOB)
    async with relay.connect() as first:
        await authenticated(first, bob)
        async with relay.connect() as second:
            await authenticated(second, bob)
            with pytest.raises(ConnectionClosed) as closed:
                with trio.fail_after(5):
                    async for _ in first.deliveries():
                        pass
            assert closed.value.code == ErrorCode.REPLACED
            await second.lookup([BOB])  # the new one works


async def test_deleted_user_is_closed_at_once_and_refused(relay: RelayUnderTest) -> None:
    from enrolment import admin
    from relay.control import notify_relay

    bob = await enrol(relay, BOB)
    async with relay.connect() as client:
        await authenticated(client, bob)
        await admin.delete_user(relay.running.context.store, "acme", BOB)
        answer = await notify_relay(relay.data_dir, {"op": "revoke-user",
                                                     "user_id": bob.user_id})
        assert answer == {"ok": True, "closed": 1}
        with pytest.raises(ConnectionClosed) as closed:
            with trio.fail_after(5):
                async for _ in client.deliveries():
                    pass
        assert closed.value.code == ErrorCode.DEVICE_REVOKED
    async with relay.connect() as client:
        with pytest.raises(RelayError) as refused:
            await authenticated(client, bob)
        assert refused.value.code is ErrorCode.AUTHENTICATION_FAILED


async def test_lookup_answers_only_enrolled_users(relay: RelayUnderTest) -> None:
    alice = await enrol(relay, ALICE)
    async with relay.connect() as client:
        await authenticated(client, alice)
        # BOB is declared but not enrolled; the other number is unknown.
        assert await client.lookup([BOB, "+33687654321"]) == []
        with pytest.raises(RelayError) as invalid:
            await client.lookup(["not a number"])
        assert invalid.value.code is ErrorCode.INVALID_PHONE_NUMBER


async def test_lookup_is_rate_limited(relay: RelayUnderTest) -> None:
    from relay.limits import LOOKUPS_PER_MINUTE

    alice = await enrol(relay, ALICE)
    async with relay.connect() as client:
        await authenticated(client, alice)
        for _ in range(LOOKUPS_PER_MINUTE):
            await client.lookup([BOB])
        with pytest.raises(RelayError) as limited:
            await client.lookup([BOB])
        assert limited.value.code is ErrorCode.RATE_LIMITED


async def test_enrolment_over_quic_refuses_abuse(relay: RelayUnderTest) -> None:
    async with relay.connect() as client:
        await client.enrol_start(ALICE)
        code = await relay.sms.code_for(ALICE)
        wrong = "000000" if code != "000000" else "111111"
        key = SigningKey.generate().verify_key.encode()
        with pytest.raises(RelayError) as failed:
            await client.enrol_verify(ALICE, wrong, key, new_account())
        assert failed.value.code is ErrorCode.VERIFICATION_FAILED
        # An undeclared number gets the same answer, and no SMS leaves.
        sent_before = len(relay.sms.messages)
        await client.enrol_start("+33687654321")
        assert len(relay.sms.messages) == sent_before
        with pytest.raises(RelayError) as invalid:
            await client.enrol_start("12")
        assert invalid.value.code is ErrorCode.INVALID_PHONE_NUMBER
        enrolled = await client.enrol_verify(ALICE, code, key, new_account())
        assert enrolled.device_id == 1


async def test_restart_keeps_stored_envelopes(relay_settings: RelaySettings,
                                              relay: RelayUnderTest) -> None:
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    async with relay.connect() as sender:
        await authenticated(sender, alice)
        await sender.send(bob.user_id, {bob.device_id: b"survives"}, client_message_id=1)
    relay.running.stop()
    await relay.running.stopped.wait()  # the data directory is one relay's at a time
    async with trio.open_nursery() as nursery:
        running = await nursery.start(lambda task_status: serve(
            relay_settings, task_status=task_status))
        again = RelayUnderTest(data_dir=relay.data_dir, running=running, sms=SmsInbox())
        async with again.connect() as receiver:
            await authenticated(receiver, bob)
            assert [d.ciphertext for d in await drain_backlog(receiver)] == [b"survives"]
        running.stop()


async def test_a_peer_stopping_its_streams_cannot_crash_the_relay(relay: RelayUnderTest) -> None:
    """STOP_SENDING on the delivery stream closes that device's connection (it refuses
    deliveries; they stay stored); on a request stream the relay drops the answers. Before,
    the refused write raised in the relay's commit pipeline and stopped the whole relay."""
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    async with relay.connect() as sender:
        await authenticated(sender, alice)
        async with relay.connect() as receiver:
            await authenticated(receiver, bob)
            assert await drain_backlog(receiver) == []
            link = receiver.link
            push_stream = 3  # the relay's first unidirectional stream (RFC 9000 §2.1)
            link.quic.stop_stream(push_stream, 0)
            # A send committed while the relay may not yet know: its push must not fail.
            await sender.send(bob.user_id, {bob.device_id: b"refused"}, client_message_id=1)
            with trio.fail_after(10):
                await link.closed.wait()
            assert link.terminated_by is not None
            assert link.terminated_by.error_code == ErrorCode.UNEXPECTED_FRAME
        sender_link = sender.link
        request_stream = sender_link.new_stream()
        sender_link.send_stream_data(request_stream, encode_frame(Lookup(phones=(BOB,))))
        sender_link.quic.stop_stream(request_stream, 0)  # its answer is refused
        await sender.send(bob.user_id, {bob.device_id: b"still here"}, client_message_id=2)
    async with relay.connect() as receiver:
        await authenticated(receiver, bob)
        stored = await drain_backlog(receiver)
        assert [delivery.ciphertext for delivery in stored] == [b"refused", b"still here"]


async def test_data_on_a_client_unidirectional_stream_is_refused_and_the_connection_lives(
        relay: RelayUnderTest) -> None:
    """PROTOCOL.md: other stream kinds are refused with UNEXPECTED_FRAME. The relay cannot write
    an ERROR on a stream the client opened one way, so it stops it (STOP_SENDING) with that code;
    it used to try, fail inside the handler and close the whole connection with INTERNAL_ERROR."""
    alice = await enrol(relay, ALICE)
    async with relay.connect() as client:
        stream = client.link.new_stream(unidirectional=True)
        client.link.send_stream_data(stream, encode_frame(Lookup(phones=(BOB,))), end_stream=True)
        with trio.fail_after(10):
            await authenticated(client, alice)  # the same connection still serves requests
            assert await client.lookup([ALICE]) != []
        assert not client.link.closed.is_set()


async def test_an_unknown_device_and_a_bad_signature_are_refused_alike(
        relay: RelayUnderTest) -> None:
    """PROTOCOL.md "Authentication": the two refusals look the same, so a prober cannot tell
    which devices exist."""
    alice = await enrol(relay, ALICE)
    reasons = []
    for user_id, key in ((alice.user_id, SigningKey.generate()),  # a real device, wrong key
                         ("no-such-user", alice.key)):  # no such device
        async with relay.connect() as client:
            with pytest.raises(RelayError) as refused, trio.fail_after(10):
                await client.authenticate(user_id, alice.device_id, key)
        assert refused.value.code is ErrorCode.AUTHENTICATION_FAILED
        reasons.append(refused.value.reason)
    assert reasons[0] == reasons[1]
