"""Connection budgets over real QUIC on loopback (issue 14, finding 4).

One unauthenticated connection used to open 100 streams, each holding an incomplete 2 MiB frame,
and grow the relay by 236 MiB that a closed connection did not give back. Now a connection keeps
at most MAX_CONCURRENT_STREAMS request streams open, frames before AUTHENTICATE are small,
incomplete frames are counted against the connection's budget and the relay's pool (refused with
RATE_LIMITED and a retry-after past them), an address holds at most ``connections_per_address``
connections, and a closed connection leaves nothing behind. The core's side of the same rules
is tested without a network in tests/test_frame_budgets.py.

Memory is asserted as the relay's own counters against their budgets, and as counters and
structures (connection maps, timers, references) that are back where they were after each round
of an attack: never as RSS.
"""

from __future__ import annotations

import gc
import socket
import struct
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from aioquic.buffer import Buffer
from aioquic.quic import events as quic_events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, QuicPacketType, pull_quic_header

from client.connection import (
    HandshakeFailed,
    RelayClient,
    RelayError,
    client_configuration,
    connect_relay,
)
from tests.conftest import EnrolledDevice, RelayUnderTest, enrol
from transport.quic import (
    TIMER_HEAP_SLACK,
    ConnectionHandler,
    QuicEndpoint,
    QuicLink,
    open_udp_socket,
)
from wire.codec import encode_frame
from wire.frames import (
    Authenticate,
    Authenticated,
    Challenge,
    Deliver,
    Error,
    ErrorCode,
    Frame,
    Hello,
    Lookup,
    Send,
    auth_transcript,
)
from wire.limits import (
    MAX_BUFFERED_BYTES_BEFORE_AUTHENTICATION,
    MAX_BUFFERED_BYTES_PER_CONNECTION,
    MAX_CIPHERTEXT_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_FRAME_SIZE_BEFORE_AUTHENTICATION,
    RETRY_AFTER_BUFFERS_MS,
)
from wire.protocol import ClientProtocol, ResponseReceived

ALICE, BOB = "+33612345678", "+33698765432"
WAIT_S = 20
"""Bound on every wait: loopback answers in milliseconds; a hang fails the test."""
ROUNDS = 3
"""Rounds of each attack: the finding grew the relay a little more with each."""
STREAMS = 100
"""Streams the finding's attacker opened on one connection."""
FRAME_PART = 64 * 1024
"""Bytes of each incomplete frame actually sent (what counts is the size its prefix declares)."""


def prefix(length: int) -> bytes:
    return struct.pack(">I", length)


# --- a client that writes what it likes, and a window on the relay's side of it ------------------
@dataclass
class RawClient:
    """A client handler that writes whatever bytes it likes on its streams; records answers."""

    core: ClientProtocol = field(default_factory=ClientProtocol)
    answers: dict[int, list[Frame]] = field(default_factory=dict)
    connected: trio.Event = field(default_factory=trio.Event)
    changed: trio.Event = field(default_factory=trio.Event)
    link: QuicLink | None = None

    def quic_events(self, link: QuicLink, batch: list[quic_events.QuicEvent]) -> None:
        for event in batch:
            if isinstance(event, quic_events.HandshakeCompleted | quic_events.ConnectionTerminated):
                self.connected.set()
            elif isinstance(event, quic_events.StreamDataReceived):
                for answer in self.core.receive_stream_data(event.stream_id, event.data,
                                                            event.end_stream):
                    if isinstance(answer, ResponseReceived):
                        self.answers.setdefault(answer.stream_id, []).append(answer.frame)
        self.changed.set()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        with trio.fail_after(WAIT_S):
            while not condition():
                self.changed = trio.Event()
                await self.changed.wait()

    @property
    def quic_link(self) -> QuicLink:
        if self.link is None:
            raise RuntimeError("not connected")
        return self.link

    def write(self, data: bytes, *, end_stream: bool = False) -> int:
        """Open a stream and write ``data`` on it; return its id."""
        stream_id = self.quic_link.new_stream()
        self.quic_link.send_stream_data(stream_id, data, end_stream)
        return stream_id

    async def ask(self, frame: Frame) -> Frame:
        stream_id = self.write(encode_frame(frame), end_stream=True)
        await self.wait_for(lambda: stream_id in self.answers)
        return self.answers[stream_id][0]

    async def authenticate(self, device: EnrolledDevice) -> None:
        challenge = await self.ask(Hello(user_id=device.user_id, device_id=device.device_id))
        assert isinstance(challenge, Challenge)
        signature = device.key.sign(auth_transcript(
            nonce=challenge.nonce, user_id=device.user_id, device_id=device.device_id)).signature
        assert await self.ask(Authenticate(signature=signature)) == Authenticated()


class Watch:
    """Stands between the relay's endpoint and one connection's session: wakes the test after
    each batch the relay handled for it, so that a test waits on the relay's own progress."""

    def __init__(self, link: QuicLink) -> None:
        assert link.handler is not None
        self.link: QuicLink | None = link
        self._session: ConnectionHandler | None = link.handler
        self._changed = trio.Event()
        link.handler = self

    def quic_events(self, link: QuicLink, batch: list[quic_events.QuicEvent]) -> None:
        try:
            if self._session is not None:
                self._session.quic_events(link, batch)
        finally:
            self._changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        with trio.fail_after(WAIT_S):
            while not condition():
                self._changed = trio.Event()
                await self._changed.wait()

    def release(self) -> tuple[weakref.ref[Any], weakref.ref[Any]]:
        """Let go of the connection; weak references to its QUIC state and its session."""
        assert self.link is not None and self._session is not None
        references = (weakref.ref(self.link.quic), weakref.ref(self._session))
        if self.link.handler is self:
            self.link.handler = self._session
        self.link = self._session = None
        return references


@asynccontextmanager
async def raw_client(relay: RelayUnderTest) -> AsyncIterator[tuple[RawClient, Watch]]:
    """A RawClient connected to ``relay``, and the Watch on the relay's side of it. The
    connection is closed on exit and the relay has forgotten it when this returns."""
    async with trio.open_nursery() as nursery:
        endpoint = QuicEndpoint(open_udp_socket("127.0.0.1", 0), retry=False)
        await nursery.start(endpoint.run)
        before = relay.running.endpoint.links
        client = RawClient()
        client.link = endpoint.connect(
            ("127.0.0.1", relay.port),
            client_configuration(ca=relay.running.cert_path, server_name="localhost"), client)
        with trio.fail_after(WAIT_S):
            await client.connected.wait()
        [relay_side] = relay.running.endpoint.links - before
        try:
            yield client, Watch(relay_side)
        finally:
            client.quic_link.close(0, "done")
            with trio.fail_after(WAIT_S):
                await relay_side.closed.wait()
            nursery.cancel_scope.cancel()


async def settled(relay: RelayUnderTest) -> None:
    """Wait until the relay has forgotten every connection (a closing one takes a few PTOs)."""
    with trio.fail_after(WAIT_S):
        for link in relay.running.endpoint.links:
            await link.closed.wait()


def assert_nothing_left(relay: RelayUnderTest, references: tuple[weakref.ref[Any], ...]) -> None:
    """The closed connection's counters, routes and objects are all gone."""
    context, endpoint = relay.running.context, relay.running.endpoint
    assert (context.buffers.used, context.buffers.used_unauthenticated) == (0, 0)
    assert endpoint.links == set()
    assert endpoint.connections_by_address == {}
    assert context.sessions == {}
    gc.collect()
    assert [reference() for reference in references] == [None] * len(references)


def peak_streams(link: QuicLink) -> int:
    """Client request streams the relay's QUIC has let the client open so far."""
    return int(link.quic._local_max_streams_bidi.used)


# --- the finding's attack, unauthenticated and authenticated -----------------------------------------
async def attack_before_authentication(relay: RelayUnderTest) -> tuple[weakref.ref[Any], ...]:
    """One round of the finding's attack: 100 streams, each an incomplete 2 MiB frame."""
    async with raw_client(relay) as (attacker, watch):
        streams = [attacker.write(prefix(MAX_FRAME_SIZE) + bytes(FRAME_PART))
                   for _ in range(STREAMS)]
        # The relay lets MAX_CONCURRENT_STREAMS of them open (QUIC holds the others back in the
        # client) and refuses each frame from its prefix, before holding any of it.
        seen = streams[:MAX_CONCURRENT_STREAMS]
        await attacker.wait_for(lambda: all(stream in attacker.answers for stream in seen))
        for stream in seen:
            [answer] = attacker.answers[stream]
            assert isinstance(answer, Error) and answer.code is ErrorCode.FRAME_TOO_LARGE
        assert not attacker.answers.keys() - set(seen)
        assert peak_streams(watch.link) == MAX_CONCURRENT_STREAMS  # type: ignore[arg-type]
        return watch.release()


async def test_the_100_stream_attack_before_authentication_is_refused_within_budget(
        relay: RelayUnderTest) -> None:
    pool, endpoint = relay.running.context.buffers, relay.running.endpoint
    structures = []
    for _round in range(ROUNDS):
        references = await attack_before_authentication(relay)
        assert pool.peak == 0  # nothing was ever held
        assert_nothing_left(relay, references)
        structures.append(len(endpoint.connections_by_address))
        assert endpoint.timer_entries <= TIMER_HEAP_SLACK  # no connection: only stale ones
    assert structures == [0] * ROUNDS


async def test_incomplete_frames_before_authentication_are_held_within_budget(
        relay: RelayUnderTest) -> None:
    pool = relay.running.context.buffers
    frame = MAX_FRAME_SIZE_BEFORE_AUTHENTICATION  # the largest allowed: taken, and counted
    held = MAX_CONCURRENT_STREAMS * (4 + frame)
    for _round in range(ROUNDS):
        async with raw_client(relay) as (attacker, watch):
            for _ in range(STREAMS):
                attacker.write(prefix(frame) + bytes(frame // 2))
            await watch.until(lambda: pool.used == held)
            assert pool.used_unauthenticated == held <= MAX_BUFFERED_BYTES_BEFORE_AUTHENTICATION
            assert not attacker.answers  # nothing refused: only bounded
            references = watch.release()
        assert_nothing_left(relay, references)
    assert pool.peak == held


async def attack_of_a_device(relay: RelayUnderTest,
                             device: EnrolledDevice) -> tuple[weakref.ref[Any], ...]:
    """One round of the attack from an authenticated connection, where frames are full size."""
    pool = relay.running.context.buffers
    fitting = MAX_BUFFERED_BYTES_PER_CONNECTION // (4 + MAX_FRAME_SIZE)
    async with raw_client(relay) as (attacker, watch):
        await attacker.authenticate(device)
        streams = [attacker.write(prefix(MAX_FRAME_SIZE) + bytes(FRAME_PART))
                   for _ in range(STREAMS)]
        seen = streams[:MAX_CONCURRENT_STREAMS]  # authentication's streams are finished
        refused_count = len(seen) - fitting
        await attacker.wait_for(lambda: len(attacker.answers) >= 2 + refused_count)
        refused = [attacker.answers[stream] for stream in seen if stream in attacker.answers]
        assert len(refused) == refused_count
        for [answer] in refused:
            assert isinstance(answer, Error) and answer.code is ErrorCode.RATE_LIMITED
            assert answer.retry_after_ms == RETRY_AFTER_BUFFERS_MS
        assert pool.used == fitting * (4 + MAX_FRAME_SIZE) <= MAX_BUFFERED_BYTES_PER_CONNECTION
        assert pool.used_unauthenticated == 0
        return watch.release()


async def test_the_100_stream_attack_of_a_device_is_refused_past_its_budget(
        relay: RelayUnderTest) -> None:
    device = await enrol(relay, ALICE)
    await settled(relay)
    for _round in range(ROUNDS):
        assert_nothing_left(relay, await attack_of_a_device(relay, device))
    assert relay.running.context.buffers.peak <= MAX_BUFFERED_BYTES_PER_CONNECTION


# --- streams per connection; a refusal's retry-after -------------------------------------------------
async def test_a_stream_past_the_limit_waits_until_one_finishes(relay: RelayUnderTest) -> None:
    async with raw_client(relay) as (client, watch):
        held = [client.write(prefix(100) + b"\x93") for _ in range(MAX_CONCURRENT_STREAMS)]
        # One stream more: QUIC does not let it open while the others are...
        waiting = client.write(encode_frame(Lookup(phones=(ALICE,))), end_stream=True)
        await watch.until(lambda: peak_streams(watch.link) == MAX_CONCURRENT_STREAMS)  # type: ignore[arg-type]
        assert client.quic_link.quic._streams[waiting].is_blocked
        # ...and it opens once one of them finishes (here: the client ends it inside its frame).
        client.quic_link.send_stream_data(held[0], b"", end_stream=True)
        await client.wait_for(lambda: waiting in client.answers)
        [answer] = client.answers[waiting]
        assert isinstance(answer, Error) and answer.code is ErrorCode.UNEXPECTED_FRAME
        [truncated] = client.answers[held[0]]
        assert isinstance(truncated, Error) and truncated.code is ErrorCode.TRUNCATED_FRAME
        watch.release()


async def test_a_send_refused_for_room_says_when_to_retry_and_then_succeeds(
        relay: RelayUnderTest) -> None:
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    await settled(relay)
    payloads = {bob.device_id: b"c" * MAX_CIPHERTEXT_SIZE}
    send_frame = encode_frame(Send(recipient_user_id=bob.user_id, client_message_id=1,
                                   payloads=payloads))
    pool = relay.running.context.buffers
    async with relay.connect() as client:
        await client.authenticate(alice.user_id, alice.device_id, alice.key)
        [relay_side] = relay.running.endpoint.links
        watch = Watch(relay_side)
        # Frames that never complete fill the connection's budget, all but less than the SEND.
        room = len(send_frame) - 1
        sizes = [MAX_FRAME_SIZE] * (MAX_BUFFERED_BYTES_PER_CONNECTION // (4 + MAX_FRAME_SIZE))
        sizes.append(MAX_BUFFERED_BYTES_PER_CONNECTION - sum(4 + size for size in sizes)
                     - room - 4)
        hogs = [open_incomplete_frame(client, size) for size in sizes]
        await watch.until(lambda: pool.used == MAX_BUFFERED_BYTES_PER_CONNECTION - room)
        try:
            await client.send(bob.user_id, payloads, client_message_id=1)
        except RelayError as error:
            assert error.code is ErrorCode.RATE_LIMITED
            assert error.retry_after_ms == RETRY_AFTER_BUFFERS_MS
        else:
            raise AssertionError("the SEND was taken past the connection's budget")
        # The relay ended the refused stream; the client ends its side too, so the stream
        # does not keep one of the connection's 32 for ever.
        refused_stream = max(relay_side.quic._streams)
        await watch.until(lambda: refused_stream not in relay_side.quic._streams)
        client.link.reset_stream(hogs[0], 0)  # one incomplete frame given up: room again
        await watch.until(lambda: pool.used < MAX_BUFFERED_BYTES_PER_CONNECTION - room)
        assert await client.send(bob.user_id, payloads, client_message_id=1) is False
        watch.release()


def open_incomplete_frame(client: RelayClient, size: int) -> int:
    """Open a stream and begin a frame of ``size`` bytes on it that never completes."""
    stream_id = client.link.new_stream()
    client.link.send_stream_data(stream_id, prefix(size))
    return stream_id


# --- connections per address, and a flood -------------------------------------------------------------
async def handshake_refusal(connecting: AbstractAsyncContextManager[RelayClient]) -> HandshakeFailed:
    """The HandshakeFailed that entering ``connecting`` raises (the client's nursery wraps it)."""
    refusals: list[HandshakeFailed] = []
    try:
        async with connecting:
            pass
    except* HandshakeFailed as group:
        refusals += handshake_failures(group)
    [refusal] = refusals
    return refusal


def handshake_failures(group: BaseExceptionGroup[HandshakeFailed]) -> list[HandshakeFailed]:
    """The HandshakeFailed errors in ``group``, however deeply nurseries nested them."""
    return [error for error in group.exceptions if isinstance(error, HandshakeFailed)] + [
        failure for error in group.exceptions if isinstance(error, BaseExceptionGroup)
        for failure in handshake_failures(error)]


def relay_side_of(relay: RelayUnderTest, client: RelayClient) -> QuicLink:
    """The relay's link of ``client``'s connection (found by connection id, as the relay does)."""
    [link] = [link for link in relay.running.endpoint.links
              if client.link.quic._peer_cid.cid in link.routed_connection_ids]
    return link


async def test_connections_per_address_are_refused_at_the_handshake_and_recover(
        relay: RelayUnderTest) -> None:
    endpoint = relay.running.endpoint
    endpoint._connections_per_address = 3  # the setting connections_per_address, small here
    async with trio.open_nursery() as nursery:
        shared = QuicEndpoint(open_udp_socket("127.0.0.3", 0), retry=False)
        await nursery.start(shared.run)

        def connect() -> AbstractAsyncContextManager[RelayClient]:
            return connect_relay("127.0.0.1", relay.port, ca=relay.running.cert_path,
                                 server_name="localhost", endpoint=shared)

        async with connect(), connect(), connect() as third:
            assert endpoint.connections_by_address == {"127.0.0.3": 3}
            refused = await handshake_refusal(connect())
            assert refused.connection_refused
            assert refused.code == QuicErrorCode.CONNECTION_REFUSED
            assert "too many connections from this address (at most 3" in refused.reason
            assert "CONNECTION_REFUSED" in str(refused)
            assert endpoint.connections_refused >= 1  # one per Initial answered
            assert endpoint.connections_by_address == {"127.0.0.3": 3}
            async with relay.connect() as elsewhere:  # another address is not affected
                await elsewhere.enrol_start(ALICE)
            third_side = relay_side_of(relay, third)
            third.close()
            with trio.fail_after(WAIT_S):
                await third_side.closed.wait()
            async with connect() as again:  # recovered: room for one more
                await again.enrol_start(ALICE)
        await shared.drain()  # the closes leave before the endpoint stops
        nursery.cancel_scope.cancel()
    await settled(relay)
    assert endpoint.connections_by_address == {}


def first_initial(relay: RelayUnderTest) -> bytes:
    """A new client's first Initial packet (no token: the relay answers it with a Retry)."""
    client = QuicConnection(configuration=client_configuration(
        ca=relay.running.cert_path, server_name="localhost"))
    client.connect(("127.0.0.1", relay.port), now=0.0)
    [(data, _)] = client.datagrams_to_send(now=0.0)
    return data


@dataclass
class Flood:
    """Connection attempts from one address: held open, or refused at the handshake."""

    endpoint: QuicEndpoint
    relay: RelayUnderTest
    held: list[RelayClient] = field(default_factory=list)
    refused: list[HandshakeFailed] = field(default_factory=list)
    settled: int = 0
    all_settled: trio.Event = field(default_factory=trio.Event)
    attempts: int = 0

    async def attempt(self) -> None:
        try:
            async with connect_relay("127.0.0.1", self.relay.port,
                                     ca=self.relay.running.cert_path, server_name="localhost",
                                     endpoint=self.endpoint) as client:
                self.held.append(client)
                self._settle()
                await trio.sleep_forever()
        except* HandshakeFailed as group:
            self.refused += handshake_failures(group)
            self._settle()

    def _settle(self) -> None:
        self.settled += 1
        if self.settled == self.attempts:
            self.all_settled.set()


async def test_a_connection_flood_from_one_address_leaves_devices_served(
        relay: RelayUnderTest) -> None:
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    await settled(relay)
    endpoint = relay.running.endpoint
    limit = endpoint._connections_per_address
    flooder = "127.0.0.2"
    initials = [first_initial(relay) for _ in range(300)]
    async with trio.open_nursery() as nursery:
        # 300 Initials, as a spoofing flood sends them: each is answered with a stateless Retry.
        raw = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await raw.bind((flooder, 0))
        retries, all_retried = [0], trio.Event()

        async def count_retries() -> None:
            while True:
                header = pull_quic_header(Buffer(data=await raw.recv(65_535)), host_cid_length=8)
                retries[0] += header.packet_type == QuicPacketType.RETRY
                if retries[0] == len(initials):
                    all_retried.set()

        nursery.start_soon(count_retries)
        for data in initials:
            await raw.sendto(data, ("127.0.0.1", relay.port))
        # Full handshakes from the same address, 16 past its budget.
        flood = Flood(endpoint=QuicEndpoint(open_udp_socket(flooder, 0), retry=False),
                      relay=relay, attempts=limit + 16)
        await nursery.start(flood.endpoint.run)
        for _ in range(flood.attempts):
            nursery.start_soon(flood.attempt)
        with trio.fail_after(WAIT_S * 3):
            # Meanwhile a device elsewhere connects and sends, and its contact receives.
            async with relay.connect() as sender, relay.connect() as receiver:
                await sender.authenticate(alice.user_id, alice.device_id, alice.key)
                await receiver.authenticate(bob.user_id, bob.device_id, bob.key)
                await sender.send(bob.user_id, {bob.device_id: b"still served"},
                                  client_message_id=1)
                async for delivery in receiver.deliveries():
                    if isinstance(delivery, Deliver):
                        assert delivery.ciphertext == b"still served"
                        break
            await flood.all_settled.wait()
            await all_retried.wait()
        assert (len(flood.held), len(flood.refused)) == (limit, 16)
        assert all(error.connection_refused for error in flood.refused)
        assert endpoint.connections_refused >= 16  # one per Initial: a client may resend it
        assert endpoint.connections_by_address[flooder] == limit
        # Only handshakes that proved their address hold state: none for the 300 Initials.
        assert sum(link.peer_address[0] == flooder for link in endpoint.links) == limit
        for client in flood.held:
            client.close()
        await flood.endpoint.drain()
        nursery.cancel_scope.cancel()
    await settled(relay)
    assert endpoint.connections_by_address == {}


async def test_a_refused_connection_costs_the_relay_nothing(relay: RelayUnderTest) -> None:
    """Refusing at the handshake keeps no state: no link, no route, no count."""
    endpoint = relay.running.endpoint
    endpoint._connections_per_address = 0
    refused = await handshake_refusal(relay.connect())
    assert refused.connection_refused
    assert (endpoint.links, endpoint.connections_by_address) == (set(), {})
    assert endpoint._links == {}

