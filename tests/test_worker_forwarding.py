"""Worker processes sharing one UDP port: connection ids naming a worker, routing
decisions, and a datagram that reaches the wrong worker being answered by the right one.

The QUIC tests run two endpoints in this process on one port (SO_REUSEPORT), as two
workers would. Which socket of the group receives a datagram is normally the kernel's
hash of the client address; here a classic BPF program attached to the group chooses
it (``steer``), so "the connection lives on B while its packets reach A" is built
deterministically.
"""

from __future__ import annotations

import ctypes
import datetime
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicHeader, QuicPacketType, QuicProtocolVersion, pull_quic_header
from prometheus_client import CollectorRegistry, generate_latest

from client.connection import client_configuration
from relay.forwarding import CONNECTION_ID_BYTES, WorkerQuicConnection, WorkerRouting
from relay.tls import ensure_development_certificate
from relay.worker_ids import (
    MAX_WORKERS,
    ForwardingError,
    Route,
    RouteDecision,
    WorkerConnectionIds,
    decode_forwarded,
    encode_forwarded,
    route_unrouted,
    worker_of,
)
from transport.quic import QuicEndpoint, QuicLink, open_udp_socket
from wire.frames import ALPN

WAIT_S = 10
"""Bound on anything that could hang (a lost datagram), not a timing assertion."""

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>; not exported by Python's socket
BPF_RET_K = 0x06  # BPF_RET | BPF_K: "return the constant k"


# --- Connection ids --------------------------------------------------------------------------


def counting_random(length: int) -> bytes:
    return bytes(range(1, length + 1))


def test_connection_ids_start_with_the_worker_index() -> None:
    ids = WorkerConnectionIds(5, random_bytes=counting_random)
    assert ids.new(8) == bytes([5, 1, 2, 3, 4, 5, 6, 7])
    assert worker_of(ids.new(8)) == 5
    assert worker_of(b"") is None
    assert worker_of(WorkerConnectionIds(MAX_WORKERS - 1).new(20)) == MAX_WORKERS - 1


@pytest.mark.parametrize("index", [-1, MAX_WORKERS])
def test_a_worker_index_out_of_range_is_refused(index: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        WorkerConnectionIds(index)


def test_a_connection_id_too_short_to_name_a_worker_is_refused() -> None:
    with pytest.raises(ValueError, match="2 bytes"):
        WorkerConnectionIds(0).new(1)


def server_configuration(tmp_path: Path) -> QuicConfiguration:
    cert, key, _ = ensure_development_certificate(
        tmp_path / "tls", now=datetime.datetime.now(datetime.UTC))
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    configuration.load_cert_chain(str(cert), str(key))
    return configuration


def test_every_connection_id_aioquic_issues_names_the_worker(tmp_path: Path) -> None:
    connection = WorkerQuicConnection(
        connection_ids=WorkerConnectionIds(3), configuration=server_configuration(tmp_path),
        original_destination_connection_id=b"\xaa" * 8, retry_source_connection_id=None)
    assert worker_of(connection.host_cid) == 3
    assert connection._local_initial_source_connection_id == connection.host_cid
    connection._remote_active_connection_id_limit = 8  # as a peer's transport parameters set it
    connection._replenish_connection_ids()
    issued = [entry.cid for entry in connection._host_cids]
    assert len(issued) == 8 and len(set(issued)) == 8
    assert {worker_of(cid) for cid in issued} == {3}
    assert {len(cid) for cid in issued} == {CONNECTION_ID_BYTES}


# --- The routing decision --------------------------------------------------------------------


def header(packet_type: QuicPacketType, destination_cid: bytes, *, token: bytes = b"",
           version: int | None = QuicProtocolVersion.VERSION_1) -> QuicHeader:
    if packet_type == QuicPacketType.ONE_RTT:
        version = None  # short headers carry no version
    return QuicHeader(version=version, packet_type=packet_type, packet_length=1200,
                      destination_cid=destination_cid, source_cid=b"", token=token,
                      integrity_tag=b"", supported_versions=[])


def decide(packet: QuicHeader, *, own_index: int = 0, worker_count: int = 2) -> RouteDecision:
    return route_unrouted(packet, own_index=own_index, worker_count=worker_count,
                          connection_id_length=8,
                          supported_versions=(QuicProtocolVersion.VERSION_1,))


OF_WORKER_1 = bytes([1]) + b"\x00" * 7
OF_WORKER_0 = bytes(8)
OF_NO_WORKER = bytes([2]) + b"\x00" * 7  # index 2 of a 2-worker relay


@pytest.mark.parametrize(("packet", "expected"), [
    # A new client chose its destination id at random: whoever got it answers.
    (header(QuicPacketType.INITIAL, OF_WORKER_1), RouteDecision(route=Route.LOCAL)),
    (header(QuicPacketType.INITIAL, OF_NO_WORKER), RouteDecision(route=Route.LOCAL)),
    # Any other version is answered with Version Negotiation where it arrived.
    (header(QuicPacketType.INITIAL, OF_NO_WORKER, token=b"t", version=0x0A0A0A0A),
     RouteDecision(route=Route.LOCAL)),
    # A token proves a Retry by the worker its destination id (our Retry id) names.
    (header(QuicPacketType.INITIAL, OF_WORKER_1, token=b"t"),
     RouteDecision(route=Route.FORWARD, worker_index=1)),
    (header(QuicPacketType.HANDSHAKE, OF_WORKER_1),
     RouteDecision(route=Route.FORWARD, worker_index=1)),
    (header(QuicPacketType.ONE_RTT, OF_WORKER_1),
     RouteDecision(route=Route.FORWARD, worker_index=1)),
    # Ours but unknown (closed, or a Retry token to check): the endpoint decides.
    (header(QuicPacketType.ONE_RTT, OF_WORKER_0), RouteDecision(route=Route.LOCAL)),
    (header(QuicPacketType.INITIAL, OF_WORKER_0, token=b"t"), RouteDecision(route=Route.LOCAL)),
    # Names no worker, or not an id we issue: dropped, never answered.
    (header(QuicPacketType.ONE_RTT, OF_NO_WORKER), RouteDecision(route=Route.DROP)),
    (header(QuicPacketType.HANDSHAKE, OF_WORKER_1[:5]), RouteDecision(route=Route.DROP)),
    (header(QuicPacketType.HANDSHAKE, b""), RouteDecision(route=Route.DROP)),
])
def test_route_of_a_datagram_no_local_connection_claims(packet: QuicHeader,
                                                        expected: RouteDecision) -> None:
    assert decide(packet) == expected


def test_a_worker_never_forwards_to_itself() -> None:
    for own_index in range(4):
        for owner in range(4):
            packet = header(QuicPacketType.ONE_RTT, bytes([owner]) + bytes(7))
            decision = decide(packet, own_index=own_index, worker_count=4)
            assert (decision.route is Route.FORWARD) == (owner != own_index)
            assert decision.worker_index in (None, owner)


# --- The envelope between workers ------------------------------------------------------------


@pytest.mark.parametrize("address", [("192.0.2.7", 50_000),
                                     ("2001:db8::1", 443, 0, 0),
                                     ("fe80::1", 4433, 7, 2)])
def test_a_forwarded_datagram_keeps_its_client_address(address: tuple[object, ...]) -> None:
    message = encode_forwarded(b"quic bytes", address)
    assert decode_forwarded(message) == (b"quic bytes", address)


def test_every_truncation_of_a_forwarded_datagram_is_refused() -> None:
    for address in (("192.0.2.7", 1), ("2001:db8::1", 1, 0, 0)):
        message = encode_forwarded(b"x", address)
        for end in range(len(message) - 1):  # one byte at a time
            with pytest.raises(ForwardingError):
                decode_forwarded(message[:end])


@pytest.mark.parametrize(("message", "problem"), [
    (b"\x02\x04" + bytes(10), "format"), (b"\x01\x05" + bytes(30), "family")])
def test_an_unknown_forwarded_format_is_refused(message: bytes, problem: str) -> None:
    with pytest.raises(ForwardingError, match=problem):
        decode_forwarded(message)


# --- Two endpoints sharing a port ------------------------------------------------------------


def steer(sock: socket.socket, group_index: int) -> None:
    """Send every datagram of ``sock``'s SO_REUSEPORT group to its ``group_index``-th
    socket (sockets join the group in the order they bind)."""
    instruction = ctypes.create_string_buffer(struct.pack("HBBI", BPF_RET_K, 0, 0, group_index))
    program = struct.pack("HxxxxxxP", 1, ctypes.addressof(instruction))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, program)


class Echo:
    """Server side: answers each request stream with ``echo:`` and the request."""

    def __init__(self) -> None:
        self.received: dict[int, bytes] = {}

    def quic_events(self, link: QuicLink, batch: list[events.QuicEvent]) -> None:
        for event in batch:
            if isinstance(event, events.StreamDataReceived):
                data = self.received.pop(event.stream_id, b"") + event.data
                if event.end_stream:
                    link.send_stream_data(event.stream_id, b"echo:" + data, end_stream=True)
                else:
                    self.received[event.stream_id] = data


@dataclass
class Client:
    """Client side: the handshake and the answers, as trio events."""

    connected: trio.Event = field(default_factory=trio.Event)
    answers: dict[int, bytes] = field(default_factory=dict)
    changed: trio.Event = field(default_factory=trio.Event)
    parts: dict[int, bytes] = field(default_factory=dict)

    def quic_events(self, link: QuicLink, batch: list[events.QuicEvent]) -> None:
        for event in batch:
            if isinstance(event, events.HandshakeCompleted):
                self.connected.set()
            elif isinstance(event, events.StreamDataReceived):
                self.parts[event.stream_id] = self.parts.get(event.stream_id, b"") + event.data
                if event.end_stream:
                    self.answers[event.stream_id] = self.parts.pop(event.stream_id)
        self.changed.set()
        self.changed = trio.Event()

    async def ask(self, link: QuicLink, request: bytes) -> bytes:
        stream_id = link.new_stream()
        link.send_stream_data(stream_id, request, end_stream=True)
        with trio.fail_after(WAIT_S):
            while stream_id not in self.answers:
                await self.changed.wait()
        return self.answers[stream_id]


@dataclass
class SharedPort:
    port: int
    sockets: list[socket.socket]
    endpoints: list[QuicEndpoint]
    routings: list[WorkerRouting]

    def steer_to(self, worker_index: int) -> None:
        steer(self.sockets[0], worker_index)


@contextmanager
def socket_pairs(count: int) -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for pair in pairs:
            for end in pair:
                end.setblocking(False)
        yield pairs
    finally:
        for pair in pairs:
            for end in pair:
                end.close()


@asynccontextmanager
async def two_workers(configuration: QuicConfiguration) -> AsyncIterator[SharedPort]:
    first = open_udp_socket("127.0.0.1", 0, reuse_port=True)
    port = first.getsockname()[1]
    second = open_udp_socket("127.0.0.1", port, reuse_port=True)
    with first, second, socket_pairs(2) as pairs:
        routings = [WorkerRouting(worker_index=index, worker_count=2,
                                  receive_socket=pairs[index][0],
                                  peer_sockets={1 - index: pairs[1 - index][1]})
                    for index in range(2)]
        endpoints = [QuicEndpoint(sock, configuration=configuration,
                                  on_connection=lambda link: Echo(), routing=routing)
                     for sock, routing in zip((first, second), routings, strict=True)]
        async with trio.open_nursery() as nursery:
            for endpoint, routing in zip(endpoints, routings, strict=True):
                await nursery.start(endpoint.run)
                await nursery.start(routing.run, endpoint)
            yield SharedPort(port=port, sockets=[first, second], endpoints=endpoints,
                             routings=routings)
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def client_endpoint() -> AsyncIterator[QuicEndpoint]:
    with open_udp_socket("127.0.0.1", 0) as sock:
        endpoint = QuicEndpoint(sock)
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.run)
            yield endpoint
            nursery.cancel_scope.cancel()


def registry_of(routing: WorkerRouting) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(routing.collector())
    return registry


def server_ids_known_to(link: QuicLink) -> list[bytes]:
    quic = link.quic
    return [quic._peer_cid.cid, *(entry.cid for entry in quic._peer_cid_available)]


async def test_a_datagram_reaching_the_wrong_worker_is_answered_by_its_owner(
        tmp_path: Path) -> None:
    configuration = server_configuration(tmp_path)
    cert = tmp_path / "tls" / "cert.pem"
    async with two_workers(configuration) as shared, client_endpoint() as client_side:
        worker_a, worker_b = shared.endpoints
        shared.steer_to(1)  # Retry, handshake and the connection: all on B
        client = Client()
        link = client_side.connect(("127.0.0.1", shared.port),
                                   client_configuration(ca=cert, server_name="localhost"),
                                   client)
        with trio.fail_after(WAIT_S):
            await client.connected.wait()
        assert await client.ask(link, b"one") == b"echo:one"
        assert len(worker_b.links) == 1 and not worker_a.links
        known = server_ids_known_to(link)
        assert len(known) > 1 and {worker_of(cid) for cid in known} == {1}

        # The client's packets now reach A (as after a NAT rebinding): A forwards
        # them to B, which answers from its own socket on the same port.
        shared.steer_to(0)
        assert await client.ask(link, b"two") == b"echo:two"
        assert await client.ask(link, b"three") == b"echo:three"
        routing_a, routing_b = shared.routings
        assert routing_a.forwarded >= 2  # at least each request
        assert routing_b.received_forwarded == routing_a.forwarded
        assert routing_b.forwarded == 0
        assert not worker_a.links and len(worker_b.links) == 1
        exported = generate_latest(registry_of(routing_a)).decode()
        assert f"cryptopass_worker_datagrams_forwarded_total {routing_a.forwarded:.1f}" in exported

        # A new client reaching A is answered by A: its connection lives there.
        newcomer = Client()
        other = client_side.connect(("127.0.0.1", shared.port),
                                    client_configuration(ca=cert, server_name="localhost"),
                                    newcomer)
        assert await newcomer.ask(other, b"hello") == b"echo:hello"
        assert len(worker_a.links) == 1
        assert {worker_of(cid) for cid in server_ids_known_to(other)} == {0}


async def test_a_retry_token_is_checked_by_the_worker_that_issued_it(tmp_path: Path) -> None:
    configuration = server_configuration(tmp_path)
    cert = tmp_path / "tls" / "cert.pem"
    async with two_workers(configuration) as shared:
        worker_a, worker_b = shared.endpoints
        client = QuicConnection(configuration=client_configuration(
            ca=cert, server_name="localhost"))
        server_address = ("127.0.0.1", shared.port)
        client.connect(server_address, now=trio.current_time())
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock, trio.fail_after(WAIT_S):
            await sock.bind(("127.0.0.1", 0))

            async def exchange() -> QuicHeader:
                for data, _ in client.datagrams_to_send(now=trio.current_time()):
                    await sock.sendto(data, server_address)
                answer, _ = await sock.recvfrom(65_535)
                client.receive_datagram(answer, server_address, now=trio.current_time())
                return pull_quic_header(Buffer(data=answer), host_cid_length=8)

            shared.steer_to(1)
            retry = await exchange()
            assert retry.packet_type == QuicPacketType.RETRY
            assert worker_of(retry.source_cid) == 1
            # The Initial carrying B's token reaches A, whose token key could not
            # check it: A forwards it to B (its destination id is B's Retry id).
            shared.steer_to(0)
            answer = await exchange()
        assert answer.packet_type == QuicPacketType.INITIAL
        assert worker_of(answer.source_cid) == 1
        assert len(worker_b.links) == 1 and not worker_a.links
        assert shared.routings[0].forwarded >= 1


def test_a_forwarded_datagram_naming_a_third_worker_is_not_passed_on() -> None:
    with socket_pairs(3) as pairs:
        routing = WorkerRouting(worker_index=1, worker_count=3, receive_socket=pairs[1][0],
                                peer_sockets={0: pairs[0][1], 2: pairs[2][1]})
        packet = header(QuicPacketType.ONE_RTT, bytes([2]) + bytes(7))
        with routing.feeding_forwarded():  # as while feeding what worker 0 forwarded
            assert routing.take_unrouted(packet, b"datagram", ("192.0.2.1", 1))
        assert routing.dropped["loop"] == 1 and routing.forwarded == 0
        assert routing.take_unrouted(packet, b"datagram", ("192.0.2.1", 1))
        assert routing.forwarded == 1
        assert decode_forwarded(pairs[2][0].recv(100)) == (b"datagram", ("192.0.2.1", 1))
