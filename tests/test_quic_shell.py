"""The trio QUIC shell: Retry, idle timeout, expiry as seen by a device."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio
from aioquic.buffer import Buffer
from aioquic.quic import events as quic_events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from client.connection import ConnectionClosed, client_configuration, open_client_endpoint
from relay.server import serve
from relay.settings import RelaySettings
from tests.conftest import RelayUnderTest, SmsInbox, declare, enrol
from transport.quic import QuicLink
from wire.codec import encode_frame
from wire.frames import ErrorCode, Hello, QueueEmpty

ALICE, BOB = "+33612345678", "+33698765432"


async def start(nursery: trio.Nursery, tmp_path: Path, **overrides: object) -> RelayUnderTest:
    settings = RelaySettings(data_dir=tmp_path / "relay", listen_port=0, **overrides)  # type: ignore[arg-type]
    settings.data_dir.mkdir()
    await declare(settings.data_dir, "acme", ALICE, BOB)
    sms = SmsInbox()
    running = await nursery.start(lambda task_status: serve(
        settings, task_status=task_status, on_sms_sent=sms))
    return RelayUnderTest(data_dir=settings.data_dir, running=running, sms=sms)


async def test_first_initial_is_answered_with_retry(relay: RelayUnderTest) -> None:
    client = QuicConnection(configuration=client_configuration(ca=relay.running.cert_path))
    address = ("127.0.0.1", relay.port)
    client.connect(address, now=trio.current_time())
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock, trio.fail_after(5):
        await sock.bind(("127.0.0.1", 0))
        for data, _ in client.datagrams_to_send(now=trio.current_time()):
            await sock.sendto(data, address)
        answer = await sock.recv(65_535)
    header = pull_quic_header(Buffer(data=answer), host_cid_length=8)
    # No connection state exists until the client proves its address.
    assert header.packet_type == QuicPacketType.RETRY
    assert relay.running.endpoint.links == set()


async def test_idle_connection_is_closed(tmp_path: Path, nursery: trio.Nursery) -> None:
    relay = await start(nursery, tmp_path, idle_timeout_s=0.5)
    async with relay.connect() as client:
        with pytest.raises(ConnectionClosed), trio.fail_after(10):
            async for _ in client.deliveries():
                pass
    relay.running.stop()


async def test_expired_envelopes_are_not_delivered(tmp_path: Path,
                                                   nursery: trio.Nursery) -> None:
    now = [1_800_000_000_000]
    settings = RelaySettings(data_dir=tmp_path / "relay", listen_port=0, envelope_ttl_ms=1_000)
    settings.data_dir.mkdir()
    await declare(settings.data_dir, "acme", ALICE, BOB)
    sms = SmsInbox()
    running = await nursery.start(lambda task_status: serve(
        settings, task_status=task_status, on_sms_sent=sms, now_ms=lambda: now[0]))
    relay = RelayUnderTest(data_dir=settings.data_dir, running=running, sms=sms)
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    async with relay.connect() as sender:
        await sender.authenticate(alice.user_id, alice.device_id, alice.key)
        await sender.send(bob.user_id, {bob.device_id: b"stale"}, client_message_id=1)
    now[0] += 1_001  # past the TTL
    async with relay.connect() as receiver:
        await receiver.authenticate(bob.user_id, bob.device_id, bob.key)
        with trio.fail_after(5):
            first = await receiver.deliveries().__anext__()
        assert isinstance(first, QueueEmpty)
    assert await running.context.store.expire(now=now[0], limit=10) == 1
    running.stop()


async def test_going_away_on_shutdown(relay: RelayUnderTest) -> None:
    async with relay.connect() as client:
        relay.running.stop()
        with pytest.raises(ConnectionClosed) as closed, trio.fail_after(5):
            async for _ in client.deliveries():
                pass
        assert closed.value.code == ErrorCode.GOING_AWAY


async def test_server_connections_drop_their_handshake_buffers(relay: RelayUnderTest) -> None:
    from transport.quic import POST_HANDSHAKE_CRYPTO_BUFFER_BYTES

    async with relay.connect() as client:
        await client.enrol_start(ALICE)  # a request after the handshake still works
        [link] = relay.running.endpoint.links
        capacities = {buffer.capacity for buffer in link.quic._crypto_buffers.values()}
        assert capacities == {POST_HANDSHAKE_CRYPTO_BUFFER_BYTES}


class _Handshake:
    """A connection handler that only notes the end of the handshake."""

    def __init__(self) -> None:
        self.completed = trio.Event()

    def quic_events(self, link: QuicLink, batch: list[quic_events.QuicEvent]) -> None:
        if any(isinstance(event, quic_events.HandshakeCompleted) for event in batch):
            self.completed.set()


async def test_drain_returns_once_what_was_written_has_left(relay: RelayUnderTest) -> None:
    async with open_client_endpoint() as endpoint:
        handshake = _Handshake()
        configuration = client_configuration(ca=relay.running.cert_path, server_name="localhost")
        link = endpoint.connect(("127.0.0.1", relay.port), configuration, handshake)
        with trio.fail_after(10):
            await handshake.completed.wait()
            await endpoint.drain()  # nothing waiting: returns after one scheduling round
            sent = endpoint.datagrams_sent
            link.send_stream_data(link.new_stream(), encode_frame(Hello(user_id="u", device_id=1)))
            await endpoint.drain()
        assert endpoint.datagrams_sent > sent
        link.close(int(ErrorCode.NO_ERROR), "done")
