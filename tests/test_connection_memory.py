"""Server connections released after the handshake still do everything a connection does.

Real QUIC on loopback between two QuicEndpoints: the server echoes every
stream, and the tests check that once transport/connection_memory.py has released
the handshake's state (which the shell does on HandshakeCompleted), data flows
both ways, keys update, the client migrates, the idle timeout fires and closes
carry their reason; and that the released objects are really gone.

These tests read aioquic's private attributes on purpose: what transport/connection_memory.py
releases is aioquic's private state (pinned by the aioquic version range in pyproject.toml).
"""

from __future__ import annotations

import datetime
import gc
import socket
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from aioquic import tls
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

from client.connection import client_configuration
from relay.tls import ensure_development_certificate
from transport.connection_memory import MAX_ISSUED_CONNECTION_IDS, release_after_handshake
from transport.quic import QuicEndpoint, QuicLink, open_udp_socket
from wire.frames import ALPN

WAIT_SECONDS = 10
"""Bound on every wait: loopback answers in milliseconds, a hang fails the test."""

UNEXPECTED_MESSAGE_ALERT = 0x100 + 10
"""QUIC CRYPTO_ERROR for TLS alert unexpected_message (RFC 9001 §4.8)."""


class Echo:
    """Server handler: echoes each stream; records what the handshake left behind."""

    def __init__(self, link: QuicLink) -> None:
        self.link = link
        self.released: list[weakref.ref[Any]] = []
        self.terminated = trio.Event()

    def quic_events(self, link: QuicLink, batch: list[events.QuicEvent]) -> None:
        for event in batch:
            if isinstance(event, events.ProtocolNegotiated):
                # Mid-handshake: the objects the release must let go of afterwards.
                quic = link.quic
                self.released = [weakref.ref(quic.tls), weakref.ref(quic._spaces[tls.Epoch.INITIAL]),
                                 weakref.ref(quic._spaces[tls.Epoch.HANDSHAKE]),
                                 weakref.ref(quic._cryptos[tls.Epoch.HANDSHAKE]),
                                 weakref.ref(quic._crypto_streams[tls.Epoch.HANDSHAKE]),
                                 weakref.ref(quic._crypto_streams[tls.Epoch.ONE_RTT])]
            elif isinstance(event, events.StreamDataReceived):
                if event.data == b"push":
                    stream_id = link.new_stream(unidirectional=True)
                    link.send_stream_data(stream_id, b"pushed", end_stream=True)
                else:
                    link.send_stream_data(event.stream_id, event.data, event.end_stream)
            elif isinstance(event, events.ConnectionTerminated):
                self.terminated.set()


@dataclass
class Client:
    """Client handler: gathers stream data and the end of the connection."""

    received: dict[int, bytes] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)
    changed: trio.Event = field(default_factory=trio.Event)
    connected: trio.Event = field(default_factory=trio.Event)
    terminated: events.ConnectionTerminated | None = None

    def quic_events(self, link: QuicLink, batch: list[events.QuicEvent]) -> None:
        for event in batch:
            if isinstance(event, events.HandshakeCompleted):
                self.connected.set()
            elif isinstance(event, events.StreamDataReceived):
                self.received[event.stream_id] = self.received.get(event.stream_id, b"") + event.data
                if event.end_stream:
                    self.ended.add(event.stream_id)
            elif isinstance(event, events.ConnectionTerminated):
                self.terminated = event
        self.changed.set()

    async def wait_for(self, condition: Any) -> None:
        with trio.fail_after(WAIT_SECONDS):
            while not condition():
                self.changed = trio.Event()
                await self.changed.wait()


@dataclass
class Pair:
    server: QuicEndpoint
    client: QuicEndpoint
    link: QuicLink
    handler: Client
    proxy: Proxy

    @property
    def server_link(self) -> QuicLink:
        [link] = self.server.links
        return link

    async def echo(self, data: bytes) -> bytes:
        stream_id = self.link.new_stream()
        self.link.send_stream_data(stream_id, data, end_stream=True)
        await self.handler.wait_for(lambda: stream_id in self.handler.ended)
        return self.handler.received[stream_id]


class Proxy:
    """A UDP relay between client and server whose server-side port can change,
    as a NAT rebinding does to a phone's address."""

    def __init__(self, server_address: tuple[str, int], nursery: trio.Nursery) -> None:
        self._server_address = server_address
        self._nursery = nursery
        self._facing_client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._client_address: Any = None
        self._facing_server: trio.socket.SocketType | None = None

    async def start(self) -> tuple[str, int]:
        await self._facing_client.bind(("127.0.0.1", 0))
        await self.rebind()
        self._nursery.start_soon(self._from_client)
        address: tuple[str, int] = self._facing_client.getsockname()
        return address

    async def rebind(self) -> tuple[str, int]:
        """Forward from a new port from now on; return that port's address."""
        facing_server = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await facing_server.bind(("127.0.0.1", 0))
        self._facing_server = facing_server
        self._nursery.start_soon(self._from_server, facing_server)
        address: tuple[str, int] = facing_server.getsockname()
        return address

    async def _from_client(self) -> None:
        while True:
            data, self._client_address = await self._facing_client.recvfrom(65_535)
            assert self._facing_server is not None
            await self._facing_server.sendto(data, self._server_address)

    async def _from_server(self, facing_server: trio.socket.SocketType) -> None:
        while True:
            data = await facing_server.recv(65_535)
            await self._facing_client.sendto(data, self._client_address)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key, _ = ensure_development_certificate(
        tmp_path / "tls", now=datetime.datetime.now(datetime.UTC))
    return cert, key


@asynccontextmanager
async def connected_pair(certificate: tuple[Path, Path], *,
                         idle_timeout: float = 60.0) -> AsyncIterator[Pair]:
    cert, key = certificate
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN],
                                      idle_timeout=idle_timeout)
    configuration.load_cert_chain(str(cert), str(key))
    async with trio.open_nursery() as nursery:
        server = QuicEndpoint(open_udp_socket("127.0.0.1", 0), configuration=configuration,
                              on_connection=Echo)
        client = QuicEndpoint(open_udp_socket("127.0.0.1", 0), retry=False)
        await nursery.start(server.run)
        await nursery.start(client.run)
        proxy = Proxy(server.local_address[:2], nursery)
        handler = Client()
        link = client.connect(await proxy.start(),
                              client_configuration(ca=cert, server_name="localhost"), handler)
        with trio.fail_after(WAIT_SECONDS):
            await handler.connected.wait()
        pair = Pair(server=server, client=client, link=link, handler=handler, proxy=proxy)
        assert await pair.echo(b"first") == b"first"  # the client has confirmed too
        yield pair
        nursery.cancel_scope.cancel()


async def test_released_objects_are_gone(certificate: tuple[Path, Path]) -> None:
    async with connected_pair(certificate) as pair:
        quic = pair.server_link.quic
        echo = pair.server_link.handler
        assert isinstance(echo, Echo) and len(echo.released) == 6
        gc.collect()
        assert [reference() for reference in echo.released] == [None] * 6
        assert not isinstance(quic.tls, tls.Context)
        assert list(quic._crypto_streams) == [tls.Epoch.ONE_RTT]
        assert quic._loss.spaces == [quic._spaces[tls.Epoch.ONE_RTT]]
        assert not isinstance(quic._QuicConnection__frame_handlers, dict)  # type: ignore[attr-defined]
        # Only the ids it issued (and the client's first destination id) route to it.
        assert len(quic._host_cids) == MAX_ISSUED_CONNECTION_IDS
        assert len(pair.server_link.routed_connection_ids) <= MAX_ISSUED_CONNECTION_IDS + 1
        # A second call finds nothing to release and changes nothing.
        assert not release_after_handshake(quic, crypto_buffer_bytes=256)


async def test_stream_data_both_ways(certificate: tuple[Path, Path]) -> None:
    async with connected_pair(certificate) as pair:
        large = bytes(range(256)) * 1_000  # many packets, flow control, ACKs
        assert await pair.echo(large) == large
        stream_id = pair.link.new_stream()
        pair.link.send_stream_data(stream_id, b"push", end_stream=True)
        await pair.handler.wait_for(lambda: b"pushed" in pair.handler.received.values())


async def test_key_updates_from_either_side(certificate: tuple[Path, Path]) -> None:
    async with connected_pair(certificate) as pair:
        server_quic = pair.server_link.quic
        pair.link.quic.request_key_update()
        assert await pair.echo(b"after client update") == b"after client update"
        assert server_quic._cryptos[tls.Epoch.ONE_RTT].recv.key_phase == 1
        server_quic.request_key_update()
        pair.server.mark_dirty(pair.server_link)
        assert await pair.echo(b"after server update") == b"after server update"
        assert server_quic._cryptos[tls.Epoch.ONE_RTT].send.key_phase == 0
        assert pair.link.quic._cryptos[tls.Epoch.ONE_RTT].recv.key_phase == 0


async def test_client_changes_address_and_connection_id(certificate: tuple[Path, Path]) -> None:
    async with connected_pair(certificate) as pair:
        server_link = pair.server_link
        new_address = await pair.proxy.rebind()
        assert await pair.echo(b"from a new port") == b"from a new port"
        assert server_link.quic.get_peer_address() == new_address
        # Now to the spare connection id: the server routes the one it issues next.
        pair.link.quic.change_connection_id()
        assert await pair.echo(b"on a new id") == b"on a new id"
        assert await pair.echo(b"still there") == b"still there"
        assert pair.link.quic._peer_cid.cid in server_link.routed_connection_ids
        assert len(server_link.quic._host_cids) <= MAX_ISSUED_CONNECTION_IDS


async def test_close_with_reason(certificate: tuple[Path, Path]) -> None:
    async with connected_pair(certificate) as pair:
        pair.server_link.close(error_code=42, reason="going for lunch")
        await pair.handler.wait_for(lambda: pair.handler.terminated is not None)
        assert pair.handler.terminated is not None
        assert (pair.handler.terminated.error_code, pair.handler.terminated.reason_phrase) == (
            42, "going for lunch")


async def test_client_close_reaches_the_server(certificate: tuple[Path, Path]) -> None:
    async with connected_pair(certificate) as pair:
        server_link = pair.server_link
        pair.link.close(error_code=7, reason="bye")
        with trio.fail_after(WAIT_SECONDS):
            await server_link.closed.wait()
        assert server_link.terminated_by is not None
        assert (server_link.terminated_by.error_code,
                server_link.terminated_by.reason_phrase) == (7, "bye")


async def test_idle_timeout(certificate: tuple[Path, Path]) -> None:
    async with connected_pair(certificate, idle_timeout=0.5) as pair:
        server_link = pair.server_link
        with trio.fail_after(WAIT_SECONDS):
            await server_link.closed.wait()
        assert server_link.terminated_by is not None
        assert server_link.terminated_by.reason_phrase == "Idle timeout"


async def test_tls_message_after_handshake_is_refused(certificate: tuple[Path, Path]) -> None:
    async with connected_pair(certificate) as pair:
        # A KeyUpdate handshake message in a 1-RTT CRYPTO frame (forbidden by RFC 9001 §6).
        pair.link.quic._crypto_streams[tls.Epoch.ONE_RTT].sender.write(b"\x18\x00\x00\x01\x00")
        pair.client.mark_dirty(pair.link)
        await pair.handler.wait_for(lambda: pair.handler.terminated is not None)
        assert pair.handler.terminated is not None
        assert pair.handler.terminated.error_code == UNEXPECTED_MESSAGE_ALERT
