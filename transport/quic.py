"""The trio shell around aioquic's sans-IO ``QuicConnection``.

One UDP socket per endpoint, many connections, each found by the destination
connection id of the packets that reach it (never by address, so a client that
changes address keeps its connection). The shell is thin (docs/ARCHITECTURE.md,
"Rules of the code"):

* the receive task wakes when the socket is readable, reads every datagram
  queued there (up to ``MAX_RECEIVE_BATCH``) and feeds them all before it
  drains events and flushes, so one flush answers a whole batch;
* application code writes on a connection and marks it dirty; one flush per
  scheduling round coalesces everything written meanwhile into as few
  packets as aioquic can build;
* one timer task serves every connection from a heap of deadlines, instead of
  a task or a timer per packet;
* a server validates client addresses with QUIC Retry (RFC 9000 §8.1.2), then
  turns away, with CONNECTION_REFUSED and a reason, a client address (an IPv4
  address, an IPv6 /64) that already holds ``connections_per_address``
  connections;
* a server bounds what each client may make it hold: streams open at once and
  bytes received out of order (transport/flow_control.py); a closed connection
  leaves no reference behind (its route, its timers, its handler).

aioquic's asyncio layer is never used.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
from collections.abc import Callable
from typing import Any, Protocol

import structlog
import trio
from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.retry import QuicRetryTokenHandler

from transport.addresses import address_scope
from transport.connection_memory import release_after_handshake
from transport.flow_control import (
    drop_reset_stream_data,
    install_receive_window,
    limit_peer_streams,
    slide_receive_window,
)

__all__ = [
    "DATAGRAM_FRAME_SIZE",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "MAX_PENDING_DATAGRAMS",
    "MAX_SENDABLE_DATAGRAM",
    "ConnectionHandler",
    "ConnectionIdRouting",
    "QuicEndpoint",
    "QuicLink",
    "address_key",
    "encode_connection_refused",
    "open_udp_socket",
]

log = structlog.get_logger("transport.quic")

NetworkAddress = tuple[Any, ...]

MAX_RECEIVE_BATCH = 256
"""Datagrams read per wake-up before flushing: bounds the latency one batch adds."""

MAX_DATAGRAM_BYTES = 65_535
"""Largest UDP payload we read."""

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
"""Kernel socket buffers: bursts of thousands of datagrams must not be dropped."""

INTERNAL_ERROR_CODE = 50
"""Application close code used when a handler fails (wire.frames.ErrorCode.INTERNAL_ERROR;
not imported, to keep this transport module free of the application protocol)."""

ACK_DELAY_SECONDS = 0.015
"""How long a receiver may hold back a QUIC ACK (RFC 9000 §13.2.1) so that it rides
on a data packet instead of leaving alone; aioquic's 1 ms default sends an
ACK-only packet for nearly every packet under load. It stays below the 25 ms
max_ack_delay aioquic advertises, which the peer's loss recovery allows for."""

POST_HANDSHAKE_CRYPTO_BUFFER_BYTES = 256
"""Room for TLS output after the handshake (an alert at most, see trim_after_handshake)."""

FLUSH_COALESCE_SECONDS = 0.001
"""How long a busy endpoint waits for more writes before flushing. Measured with
cryptopass-bench live (50 devices, 8 sends in flight each): relay CPU per delivered
message ~950 us flushing at once, ~790 us waiting 1 ms (docs/BENCHMARKS.md)."""

BUSY_FLUSH_INTERVAL_SECONDS = 0.002
"""An endpoint whose last flush is more recent than this counts as busy."""

LONG_HEADER_BIT = 0x80
"""First-byte bit set on long-header packets (RFC 9000 §17.2), clear on short ones."""

RETRY_CID_BYTES = 8
"""Length of the connection id chosen in a Retry packet."""

MAX_CONNECTIONS_PER_ADDRESS = 64
"""Connections one client address (an IPv4 address, an IPv6 /64: what one host or one
household controls) may hold at once on one endpoint; more are refused at the handshake.
A device holds one; a household or an office behind one NAT address holds dozens."""


REFUSAL_REASON_BYTES = 256
"""Longest reason phrase of a refusal at the handshake (it rides in one small packet)."""

DATAGRAM_FRAME_SIZE = 1200
"""The ``max_datagram_frame_size`` transport parameter (RFC 9221 §3) both ends advertise:
the largest DATAGRAM frame each accepts. Call media (a 4-byte tag and at most 1,000 bytes of
payload) fits with room to spare."""

MAX_SENDABLE_DATAGRAM = 1100
"""The largest datagram payload ``QuicLink.send_datagram`` hands to aioquic: one that does not
fit in a packet is never sent and blocks every datagram queued behind it, so a larger one is
dropped here instead (a packet of the 1,200-byte minimum path MTU holds ~1,150)."""

DATAGRAM_FRAME_OVERHEAD = 3
"""A DATAGRAM frame's type byte and length varint (two bytes below 16,384) around its data."""

MAX_PENDING_DATAGRAMS = 64
"""Datagrams a connection may have waiting in aioquic for congestion window: a quarter of a
second of audio at 50 packets/s in each of 4 calls. More are dropped, never queued without
bound (media is useless late, and a slow receiver must not make the relay hold memory)."""

TIMER_HEAP_SLACK = 64
"""Superseded timer entries tolerated beyond two per connection before the heap is rebuilt."""


class ConnectionHandler(Protocol):
    """What the application attaches to each connection."""

    def quic_events(self, link: QuicLink, batch: list[events.QuicEvent]) -> None:
        """Handle the events of one batch, synchronously (spawn tasks for slow work)."""
        ...


class ConnectionIdRouting(Protocol):
    """How an endpoint sharing its UDP port with other processes issues connection ids
    and hands on datagrams of connections that live elsewhere (relay/forwarding.py)."""

    def new_connection(self, *, configuration: QuicConfiguration,
                       original_destination_connection_id: bytes,
                       retry_source_connection_id: bytes | None) -> QuicConnection:
        """A server connection whose every connection id names this endpoint."""
        ...

    def new_retry_connection_id(self) -> bytes:
        """The source connection id of a Retry packet (it names this endpoint too)."""
        ...

    def take_unrouted(self, header: Any, data: bytes, address: NetworkAddress) -> bool:
        """True if it forwarded or dropped a datagram no local connection claims."""
        ...


class _TimerEntry:
    """What the endpoint's timer heap holds of a link: cut loose when the link is forgotten,
    so that deadlines still in the heap keep no closed connection alive."""

    __slots__ = ("link",)

    def __init__(self, link: QuicLink) -> None:
        self.link: QuicLink | None = link


class QuicLink:
    """One QUIC connection as the application sees it."""

    __slots__ = ("_address_key", "_cids", "_endpoint", "_held_received", "_progress",
                 "_receive_window", "_sending", "_stopped", "_timer", "_timer_at", "closed",
                 "handler", "peer_address", "quic", "terminated_by")

    def __init__(self, endpoint: QuicEndpoint, quic: QuicConnection,
                 handler: ConnectionHandler | None, peer_address: NetworkAddress) -> None:
        self._endpoint = endpoint
        self.quic = quic
        self.handler = handler
        self.peer_address = peer_address
        self.closed = trio.Event()
        self.terminated_by: events.ConnectionTerminated | None = None
        self._timer_at: float | None = None
        self._cids: set[bytes] = set()  # every connection id routed to this link
        self._sending = False  # stream data queued since the last flush
        self._stopped: set[int] | None = None  # streams the peer stopped (STOP_SENDING)
        self._timer = _TimerEntry(self)  # what the endpoint's timer heap holds of this link
        self._address_key: str | None = None  # counted in the endpoint's per-address budget
        self._receive_window: int | None = None  # a SlidingReceiveLimit's window, if installed
        self._held_received = 0  # bytes delivered that the application has not consumed yet
        self._progress: trio.Event | None = None  # set by the next service, for waiters

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue bytes on a stream; they leave at the next flush.

        Bytes for a stream the peer stopped (STOP_SENDING, RFC 9000 §3.5) are
        dropped: it said it will not read them, and aioquic refuses the write.
        """
        if self.closed.is_set() or (self._stopped is not None and stream_id in self._stopped):
            return
        self.quic.send_stream_data(stream_id, data, end_stream)
        self._sending = True
        self._endpoint.mark_dirty(self)

    def hold_received(self, size: int) -> None:
        """The application keeps ``size`` bytes it received (e.g. a blob's bytes on their way
        to the store): they count as not yet consumed, so the peer may not send beyond the
        receive window on top of them (transport/flow_control.py)."""
        self._held_received += size

    def release_received(self, size: int) -> None:
        """``size`` bytes counted by ``hold_received`` are consumed: the window may slide."""
        self._held_received -= size
        if not self.closed.is_set():
            self._endpoint.mark_dirty(self)

    @property
    def held_received(self) -> int:
        """Bytes the application holds (``hold_received`` minus ``release_received``)."""
        return self._held_received

    def send_buffered(self, stream_id: int) -> int:
        """Bytes written on a stream of ours that the peer has not acknowledged yet: what
        aioquic holds for it (0 for a stream that is gone)."""
        stream = self.quic._streams.get(stream_id)
        return 0 if stream is None else len(stream.sender._buffer)

    async def wait_send_room(self, stream_id: int, at_most: int) -> None:
        """Return once the stream holds at most ``at_most`` unacknowledged bytes, the stream
        is gone, or the connection closed: how a writer streams a large body without letting
        the send buffer grow with it. Acknowledgements are seen as the link is serviced."""
        while (self.send_buffered(stream_id) > at_most and not self.closed.is_set()
               and not (self._stopped is not None and stream_id in self._stopped)):
            if self._progress is None:
                self._progress = trio.Event()
            await self._progress.wait()
    def send_datagram(self, data: bytes) -> bool:
        """Queue one QUIC DATAGRAM (RFC 9221); it leaves at the next flush, or never.

        Unreliable by design: the datagram is dropped (False) when the connection is closed,
        the peer did not offer DATAGRAM support or a frame this large, ``data`` is over
        MAX_SENDABLE_DATAGRAM, or MAX_PENDING_DATAGRAMS already wait for congestion window.
        """
        quic = self.quic
        peer_limit = quic._remote_max_datagram_frame_size
        if (self.closed.is_set() or peer_limit is None or len(data) > MAX_SENDABLE_DATAGRAM
                or len(data) + DATAGRAM_FRAME_OVERHEAD > peer_limit
                or len(quic._datagrams_pending) >= MAX_PENDING_DATAGRAMS):
            return False
        quic.send_datagram_frame(data)
        self._endpoint.mark_dirty(self)
        return True

    def new_stream(self, *, unidirectional: bool = False) -> int:
        """Open a stream of ours and return its id."""
        return self.quic.get_next_available_stream_id(is_unidirectional=unidirectional)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Abandon our side of a stream (RESET_STREAM); nothing for a stream already gone."""
        if self.closed.is_set() or self.quic._stream_is_discarded(stream_id):
            return
        self.quic.reset_stream(stream_id, error_code)
        self._endpoint.mark_dirty(self)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        """Ask the peer to stop sending on one of its streams (STOP_SENDING, RFC 9000 §3.5):
        how an endpoint refuses a stream it cannot answer on, such as a peer's unidirectional
        one. Nothing for a stream already gone (both sides finished)."""
        if self.closed.is_set() or stream_id not in self.quic._streams:
            return
        self.quic.stop_stream(stream_id, error_code)
        self._endpoint.mark_dirty(self)

    def close(self, error_code: int, reason: str = "") -> None:
        """Close with an application error code and a readable reason."""
        if self.closed.is_set():
            return
        self.quic.close(error_code=error_code, reason_phrase=reason)
        self._endpoint.mark_dirty(self)

    def ping(self) -> None:
        """Send a PING (keeps an idle connection alive)."""
        if not self.closed.is_set():
            self.quic.send_ping(0)
            self._endpoint.mark_dirty(self)

    @property
    def routed_connection_ids(self) -> frozenset[bytes]:
        """Every connection id the endpoint routes to this link (what it issued and still
        honours): the ones a peer may put in a datagram's destination."""
        return frozenset(self._cids)

    @property
    def connection_id(self) -> str:
        """The connection's own id in hex, for logs (it identifies no user)."""
        return self.quic.host_cid.hex()


class QuicEndpoint:
    """A UDP socket and the QUIC connections that live on it (server or client).

    Args:
        sock: a bound, non-blocking UDP socket (see ``open_udp_socket``).
        configuration: server configuration (None for a client-only endpoint).
        on_connection: server only; called with each new link, returns its handler.
        retry: validate client addresses with a Retry round trip before
            creating any connection state.
        clock: time source in seconds (aioquic's ``now``); trio's by default.
        routing: when several processes share the UDP port, issues connection ids
            naming this one and forwards datagrams of the others' connections.
        peer_streams: server only; streams of each kind a client may keep open at once
            (None: aioquic's 128).
        receive_window: server only; bytes a client may send beyond what has left the
            receive buffers, so at most what a connection holds out of order (None:
            aioquic's doubling windows, from the configuration's ``max_data``).
        connections_per_address: server only; connections one client address (see
            ``address_key``) may hold at once; more are refused at the handshake.
    """

    def __init__(self, sock: socket.socket, *, configuration: QuicConfiguration | None = None,
                 on_connection: Callable[[QuicLink], ConnectionHandler] | None = None,
                 retry: bool = True, clock: Callable[[], float] = trio.current_time,
                 routing: ConnectionIdRouting | None = None, peer_streams: int | None = None,
                 receive_window: int | None = None,
                 connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS) -> None:
        self._sock = sock
        self._configuration = configuration
        self._on_connection = on_connection
        self._retry = QuicRetryTokenHandler() if retry and configuration is not None else None
        self._clock = clock
        self._routing = routing
        self._peer_streams = peer_streams
        self._receive_window = receive_window
        self._connections_per_address = connections_per_address
        self._per_address: dict[str, int] = {}
        """Live server connections per client address key; a key at 0 is removed."""
        self._live_links = 0
        self._links: dict[bytes, QuicLink] = {}
        self._dirty: set[QuicLink] = set()
        self._flushed: trio.Event | None = None
        """Set by the next flush, for ``drain`` waiters; None while nobody waits."""
        self._timers: list[tuple[float, int, _TimerEntry]] = []
        self._timer_sequence = itertools.count()
        self._wakeup = trio.Event()
        self._armed_deadline = float("inf")
        self._last_flush = -float("inf")
        self._accepting = configuration is not None
        self.datagrams_received = 0
        self.datagrams_sent = 0
        self.datagrams_dropped = 0
        self.connections_refused = 0
        """Connection attempts turned away at the handshake (too many from their address),
        counted per Initial answered: a client that resends its Initial is counted again."""

    @property
    def local_address(self) -> NetworkAddress:
        return tuple(self._sock.getsockname())

    @property
    def links(self) -> set[QuicLink]:
        """Every live connection."""
        return set(self._links.values())

    @property
    def connections_by_address(self) -> dict[str, int]:
        """Live client connections per address key (``address_key``): what the per-address
        budget counts. A key whose connections have all closed is not listed."""
        return dict(self._per_address)

    @property
    def timer_entries(self) -> int:
        """Deadlines in the timer heap, superseded ones included (bounded: see _push_timer)."""
        return len(self._timers)

    @property
    def configuration(self) -> QuicConfiguration | None:
        """The configuration given to connections accepted from now on."""
        return self._configuration

    def replace_configuration(self, configuration: QuicConfiguration) -> None:
        """Use ``configuration`` for new connections (e.g. a renewed certificate).

        Each connection keeps the configuration object it was created with, so
        the ones already open are not disturbed.
        """
        self._configuration = configuration

    @property
    def accepting(self) -> bool:
        """Whether new connections are accepted (False once stopping)."""
        return self._accepting

    def stop_accepting(self) -> None:
        """Refuse new connections (graceful shutdown); existing ones go on."""
        self._accepting = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive, dispatch, flush and fire timers until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._timer_loop)
            task_status.started()
            await self._receive_loop()

    def connect(self, address: NetworkAddress, configuration: QuicConfiguration,
                handler: ConnectionHandler, *, receive_window: int | None = None) -> QuicLink:
        """Start a client connection; its handler sees HandshakeCompleted when it is up.

        ``receive_window``: as the server's (bytes the relay may send beyond what has left the
        receive buffers and the application); None keeps aioquic's doubling windows.
        """
        quic = QuicConnection(configuration=configuration)
        quic._ack_delay = ACK_DELAY_SECONDS  # no public knob (see ACK_DELAY_SECONDS)
        link = QuicLink(self, quic, handler, address)
        if receive_window is not None:
            install_receive_window(quic, receive_window)
            link._receive_window = receive_window
        self._live_links += 1
        self._route(quic.host_cid, link)
        quic.connect(address, now=self._clock())
        self.mark_dirty(link)
        return link

    async def drain(self) -> None:
        """Return once everything written so far has been handed to the socket."""
        if not self._dirty:
            await trio.lowlevel.checkpoint()
            return
        if self._flushed is None:
            self._flushed = trio.Event()
        await self._flushed.wait()  # a flush empties the dirty set before it returns

    def receive_forwarded(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> None:
        """Handle datagrams that reached another process on this port but belong to
        our connections, as if our socket had received them (answers leave from it)."""
        now = self._clock()
        for data, address in datagrams:
            self._datagram_received(data, address, now)
        self._flush(now)

    def _route(self, cid: bytes, link: QuicLink) -> None:
        self._links[cid] = link
        link._cids.add(cid)

    def mark_dirty(self, link: QuicLink) -> None:
        """Ask for a flush of ``link`` at the end of this scheduling round."""
        if not self._dirty:
            self._wakeup.set()
        self._dirty.add(link)

    # -- receiving -------------------------------------------------------------

    async def _receive_loop(self) -> None:
        sock = self._sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = self._clock()
            for _ in range(MAX_RECEIVE_BATCH):
                try:
                    data, address = sock.recvfrom(MAX_DATAGRAM_BYTES)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # e.g. ICMP port unreachable reported on the socket
                    continue
                self.datagrams_received += 1
                self._datagram_received(data, address, now)
            self._flush(now)

    def _datagram_received(self, data: bytes, address: NetworkAddress, now: float) -> None:
        cid_length = (self._configuration.connection_id_length
                      if self._configuration is not None else 8)
        if data and not data[0] & LONG_HEADER_BIT:
            # Nearly every datagram of an established connection has a short header,
            # whose destination id simply follows the first byte (RFC 9000 §17.3):
            # find its connection without parsing the header twice (aioquic parses it).
            known = self._links.get(data[1:1 + cid_length])
            if known is not None:
                known.quic.receive_datagram(data, address, now)
                self._dirty.add(known)
                return
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=cid_length)
        except ValueError:
            return  # not QUIC: ignore, never answer garbage
        link = self._links.get(header.destination_cid)
        if link is None:
            if self._routing is not None and self._routing.take_unrouted(header, data, address):
                return  # another process's connection: forwarded there (or garbage)
            link = self._accept(header, data, address, now)
            if link is None:
                return
        link.quic.receive_datagram(data, address, now)
        self._dirty.add(link)

    def _accept(self, header: Any, data: bytes, address: NetworkAddress,
                now: float) -> QuicLink | None:
        configuration = self._configuration
        if configuration is None or self._on_connection is None or not self._accepting:
            return None
        if (header.packet_type != QuicPacketType.VERSION_NEGOTIATION
                and header.version is not None
                and header.version not in configuration.supported_versions):
            self._send(encode_quic_version_negotiation(
                source_cid=header.destination_cid, destination_cid=header.source_cid,
                supported_versions=configuration.supported_versions), address)
            return None
        # A client Initial is padded to 1200 bytes (RFC 9000 §14.1); anything
        # smaller could be used to amplify traffic towards a spoofed address.
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            return None
        original_cid = header.destination_cid
        retry_cid: bytes | None = None
        if self._retry is not None:
            if not header.token:
                retry_cid = (os.urandom(RETRY_CID_BYTES) if self._routing is None
                             else self._routing.new_retry_connection_id())
                token = self._retry.create_token(
                    address=address, original_destination_connection_id=header.destination_cid,
                    retry_source_connection_id=retry_cid, now=now)
                self._send(encode_quic_retry(
                    version=header.version, source_cid=retry_cid,
                    destination_cid=header.source_cid,
                    original_destination_cid=header.destination_cid, retry_token=token), address)
                return None
            try:
                original_cid = self._retry.validate_token(
                    address=address, destination_cid=header.destination_cid,
                    token=header.token, now=now)
            except ValueError:
                return None  # forged, expired or for another address: drop silently
            retry_cid = header.destination_cid
        key = address_key(address)
        held = self._per_address.get(key, 0)
        if held >= self._connections_per_address:
            # Counted once the address is proven (after Retry), so that nobody can spend
            # another's budget with spoofed packets.
            self._refuse(header, address, f"too many connections from this address (at most "
                                          f"{self._connections_per_address} at once); close "
                                          f"one, then retry")
            return None
        new_connection = QuicConnection if self._routing is None else self._routing.new_connection
        quic = new_connection(configuration=configuration,
                              original_destination_connection_id=original_cid,
                              retry_source_connection_id=retry_cid)
        quic._ack_delay = ACK_DELAY_SECONDS  # no public knob (see ACK_DELAY_SECONDS)
        # Both go into the transport parameters, which the first datagram's handshake sends.
        if self._peer_streams is not None:
            limit_peer_streams(quic, self._peer_streams)
        if self._receive_window is not None:
            install_receive_window(quic, self._receive_window)
        link = QuicLink(self, quic, None, address)
        link._receive_window = self._receive_window
        link._address_key = key
        self._per_address[key] = held + 1
        self._live_links += 1
        link.handler = self._on_connection(link)
        self._route(header.destination_cid, link)
        self._route(quic.host_cid, link)
        return link

    def _refuse(self, header: Any, address: NetworkAddress, reason: str) -> None:
        """Close a connection attempt statelessly: one Initial packet carrying CONNECTION_CLOSE
        with CONNECTION_REFUSED and ``reason`` (RFC 9000 §10.2.3: an application code may
        not close a connection before its handshake, a transport one with a reason may)."""
        source_cid = (os.urandom(RETRY_CID_BYTES) if self._routing is None
                      else self._routing.new_retry_connection_id())
        self._send(encode_connection_refused(
            version=header.version, initial_destination_cid=header.destination_cid,
            destination_cid=header.source_cid, source_cid=source_cid, reason=reason), address)
        self.connections_refused += 1

    # -- flushing and timers ---------------------------------------------------

    def _flush(self, now: float) -> None:
        """Drain events and send datagrams for every dirty link (handlers may dirty more)."""
        if self._dirty:
            self._last_flush = now
        while self._dirty:
            dirty, self._dirty = self._dirty, set()
            for link in dirty:
                self._service(link, now)
        if self._flushed is not None:  # a fresh Event per flush that someone waits for
            self._flushed.set()
            self._flushed = None

    def _service(self, link: QuicLink, now: float) -> None:
        quic = link.quic
        batch: list[events.QuicEvent] = []
        event = quic.next_event()
        while event is not None:
            if isinstance(event, events.ConnectionIdIssued):
                self._route(event.connection_id, link)
            elif isinstance(event, events.ConnectionIdRetired):
                self._links.pop(event.connection_id, None)
                link._cids.discard(event.connection_id)
            elif isinstance(event, events.ConnectionTerminated):
                link.terminated_by = event
            elif isinstance(event, events.StopSendingReceived):
                if link._stopped is None:
                    link._stopped = set()
                link._stopped.add(event.stream_id)
            elif isinstance(event, events.StreamReset):
                drop_reset_stream_data(quic, event.stream_id)
            elif isinstance(event, events.HandshakeCompleted) and not quic._is_client:
                trim_after_handshake(quic)
            batch.append(event)
            event = quic.next_event()
        if batch and link.handler is not None:
            try:
                link.handler.quic_events(link, batch)
            except Exception:
                # One connection's bug must not stop the endpoint serving the others.
                log.exception("connection_handler_failed", connection_id=link.connection_id)
                quic.close(error_code=INTERNAL_ERROR_CODE, reason_phrase="internal error")
        if link._receive_window is not None:  # a MAX_DATA in this flush
            slide_receive_window(quic, link._receive_window, link._held_received)
        if link._sending:
            link._sending = False
            _piggyback_ack(quic, now)
        for data, address in quic.datagrams_to_send(now=now):
            self._send(data, address)
        progress, link._progress = link._progress, None
        if progress is not None:  # acknowledgements may have made room (wait_send_room)
            progress.set()
        if link.terminated_by is not None:
            self._forget(link)
            return
        timer_at = quic.get_timer()
        if timer_at != link._timer_at:
            link._timer_at = timer_at
            if timer_at is not None:
                self._push_timer(timer_at, link)
                if timer_at < self._armed_deadline:
                    self._wakeup.set()  # the timer task sleeps past this deadline

    def _push_timer(self, timer_at: float, link: QuicLink) -> None:
        """Add a deadline; the one it supersedes stays in the heap until it comes up, unless
        superseded entries outnumber the live ones, when the heap is rebuilt without them
        (in place: the timer task holds the list)."""
        timers = self._timers
        heapq.heappush(timers, (timer_at, next(self._timer_sequence), link._timer))
        if len(timers) > 2 * self._live_links + TIMER_HEAP_SLACK:
            timers[:] = [entry for entry in timers
                         if entry[2].link is not None and entry[2].link._timer_at == entry[0]]
            heapq.heapify(timers)

    def _forget(self, link: QuicLink) -> None:
        """The connection is over: drop everything the endpoint holds of it."""
        if link._timer.link is None:
            return  # already forgotten
        for cid in link._cids:
            if self._links.get(cid) is link:
                del self._links[cid]
        link._cids.clear()
        link._timer_at = None
        link._timer.link = None
        self._live_links -= 1
        key = link._address_key
        if key is not None:
            link._address_key = None
            remaining = self._per_address[key] - 1
            if remaining:
                self._per_address[key] = remaining
            else:
                del self._per_address[key]
        link.handler = None  # the handler saw ConnectionTerminated; nothing calls it again
        link.closed.set()
        if link._progress is not None:
            link._progress.set()

    async def _timer_loop(self) -> None:
        timers = self._timers
        while True:
            self._armed_deadline = timers[0][0] if timers else float("inf")
            if not self._dirty:
                with trio.move_on_at(self._armed_deadline):
                    await self._wakeup.wait()
            else:
                await trio.lowlevel.checkpoint()
            if self._dirty and self._clock() - self._last_flush < BUSY_FLUSH_INTERVAL_SECONDS:
                # Busy: let more writes join this flush, for fewer, fuller packets.
                # An idle relay flushes at once, so quiet traffic keeps its latency.
                await trio.sleep(FLUSH_COALESCE_SECONDS)
            self._wakeup = trio.Event()
            self._armed_deadline = -float("inf")  # awake: _service need not wake us
            now = self._clock()
            self._fire_due_timers(now)
            self._flush(now)

    def _fire_due_timers(self, now: float) -> None:
        """Let every connection whose deadline has come handle it (a method of its own, so
        that no local of this long-lived task keeps the last connection alive)."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            timer_at, _, entry = heapq.heappop(timers)
            link = entry.link
            if link is None or link._timer_at != timer_at or link.closed.is_set():
                continue  # superseded by a later deadline, or its connection is gone
            link._timer_at = None
            link.quic.handle_timer(now=now)
            self._dirty.add(link)

    def _send(self, data: bytes, address: NetworkAddress) -> None:
        try:
            self._sock.sendto(data, address)
            self.datagrams_sent += 1
        except (BlockingIOError, InterruptedError):
            # The kernel buffer is full: QUIC's loss recovery resends, as after
            # a drop on the network; waiting here would stall every connection.
            self.datagrams_dropped += 1
        except OSError as error:
            self.datagrams_dropped += 1
            log.debug("udp_send_failed", error=type(error).__name__)


def _piggyback_ack(quic: QuicConnection, now: float) -> None:
    """Let a pending ACK leave in the data packet about to be built.

    aioquic writes an ACK frame only once the ACK delay has run out, so data
    sent before then leaves without it and the ACK follows alone: measured on
    the relay, ACK-only packets were 40 % of all packets. A data packet costs
    the same with or without the ACK in it.
    """
    space = quic._spaces.get(tls.Epoch.ONE_RTT)
    if space is not None and space.ack_at is not None and space.ack_at > now:
        space.ack_at = now


def address_key(address: NetworkAddress) -> str:
    """What the per-address connection budget counts an address as: an IPv4 address (an
    IPv4-mapped IPv6 one too), or an IPv6 address's /64 network (`address_scope`)."""
    return address_scope(str(address[0]))


def encode_connection_refused(*, version: int, initial_destination_cid: bytes,
                              destination_cid: bytes, source_cid: bytes, reason: str) -> bytes:
    """A server Initial packet closing the connection a client's Initial opened, with the
    transport error CONNECTION_REFUSED and ``reason``, built without connection state.

    Args:
        version: the client Initial's QUIC version.
        initial_destination_cid: that Initial's destination connection id, from which both
            ends derive the Initial keys (RFC 9001 §5.2).
        destination_cid: the client's source connection id.
        source_cid: a fresh connection id of ours.
        reason: why, for the client's user (UTF-8, kept short).
    """
    crypto = CryptoPair()
    crypto.setup_initial(cid=initial_destination_cid, is_client=False, version=version)
    builder = QuicPacketBuilder(host_cid=source_cid, peer_cid=destination_cid, version=version,
                                is_client=False, max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE)
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    reason_bytes = reason.encode()[:REFUSAL_REASON_BYTES]
    buf = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE,
                              capacity=REFUSAL_REASON_BYTES + 3 * 8)
    buf.push_uint_var(QuicErrorCode.CONNECTION_REFUSED)
    buf.push_uint_var(QuicFrameType.PADDING)  # no frame caused it
    buf.push_uint_var(len(reason_bytes))
    buf.push_bytes(reason_bytes)
    datagrams, _ = builder.flush()
    return b"".join(datagrams)


def trim_after_handshake(quic: QuicConnection) -> None:
    """Release what a server connection no longer needs once its handshake is
    confirmed: TLS context, handshake epochs' keys, spaces, streams and buffers,
    spare connection ids (transport/connection_memory.py, docs/BENCHMARKS.md)."""
    release_after_handshake(quic, crypto_buffer_bytes=POST_HANDSHAKE_CRYPTO_BUFFER_BYTES)


def open_udp_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound to (host, port), with large buffers.

    ``reuse_port``: let other sockets (worker processes) bind the same port; the
    kernel spreads datagrams over them by client address (SO_REUSEPORT).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
