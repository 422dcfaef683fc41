"""Connection budgets in the sans-IO core and the transport's flow control (issue 14, finding 4).

The core (``wire.protocol.ServerProtocol``) allows only small frames before AUTHENTICATE, and
counts every incomplete frame at the size its prefix declares against the connection's budget
(raised by authentication) and the relay's ``BufferPool``; a frame past either fails its stream
with RATE_LIMITED and a ``retry_after_ms``, and closing gives everything back. The transport's
receive window slides instead of doubling, so out-of-order data stays within it. The same rules
over real QUIC: tests/test_connection_budgets.py.
"""

from __future__ import annotations

import datetime
import struct
from pathlib import Path

import msgpack
import pytest
from aioquic.buffer import Buffer
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from client.connection import RelayError, client_configuration
from relay.tls import ensure_development_certificate
from transport.flow_control import install_receive_window, reassembly_bytes, slide_receive_window
from transport.quic import TIMER_HEAP_SLACK, QuicEndpoint, QuicLink, address_key, open_udp_socket
from wire.buffers import BufferPool
from wire.codec import decode_body, encode_frame
from wire.frames import (
    ALPN,
    Authenticate,
    Error,
    ErrorCode,
    Hello,
    LocalProtocolError,
    Lookup,
    RemoteProtocolError,
    Send,
    auth_transcript,
)
from wire.limits import (
    MAX_BUFFERED_BYTES_BEFORE_AUTHENTICATION,
    MAX_BUFFERED_BYTES_PER_CONNECTION,
    MAX_CIPHERTEXT_SIZE,
    MAX_FRAME_SIZE,
    MAX_FRAME_SIZE_BEFORE_AUTHENTICATION,
    MAX_RETRY_AFTER_MS,
    RETRY_AFTER_BUFFERS_MS,
)
from wire.protocol import ConnectionState, RequestReceived, ServerProtocol, StreamFailed

NONCE = bytes(range(32))
FULL_FRAME = MAX_FRAME_SIZE
"""The length the finding's frames declared (2 MiB), never completed."""


def prefix(length: int) -> bytes:
    return struct.pack(">I", length)


# --- the core: frame size before authentication, budgets, the pool ----------------------------------
def authenticated_server(pool: BufferPool | None = None, *,
                         key: SigningKey | None = None) -> ServerProtocol:
    key = key or SigningKey(bytes(32))
    server = ServerProtocol(buffers=pool)
    server.receive_stream_data(0, encode_frame(Hello(user_id="u-1", device_id=1)), False)
    server.issue_challenge(NONCE)
    signature = key.sign(auth_transcript(nonce=NONCE, user_id="u-1", device_id=1)).signature
    server.receive_stream_data(0, encode_frame(Authenticate(signature=signature)), True)
    assert server.check_authentication(signature, key.verify_key.encode())
    server.confirm_authentication()
    assert server.state is ConnectionState.AUTHENTICATED
    return server


def big_send(size: int) -> Send:
    """A SEND whose frame is a little over ``size`` bytes."""
    payloads = {}
    device_id = 1
    while size > 0:
        payloads[device_id] = b"c" * min(size, MAX_CIPHERTEXT_SIZE)
        size -= MAX_CIPHERTEXT_SIZE
        device_id += 1
    return Send(recipient_user_id="u-2", client_message_id=1, payloads=payloads)


def test_frames_before_authenticate_are_small() -> None:
    for state_setup in ("new", "challenged"):
        server = ServerProtocol()
        if state_setup == "challenged":
            server.receive_stream_data(0, encode_frame(Hello(user_id="u-1", device_id=1)), False)
        # A frame of exactly the limit is taken (and counted); one byte more is refused at once,
        # from its prefix alone.
        assert server.receive_stream_data(4, prefix(MAX_FRAME_SIZE_BEFORE_AUTHENTICATION), False) == []
        assert server.buffered_bytes == 4 + MAX_FRAME_SIZE_BEFORE_AUTHENTICATION
        (failed,) = server.receive_stream_data(
            8, prefix(MAX_FRAME_SIZE_BEFORE_AUTHENTICATION + 1), False)
        assert isinstance(failed, StreamFailed)
        assert failed.error.code is ErrorCode.FRAME_TOO_LARGE
        assert "before AUTHENTICATE" in failed.error.reason
    # Once authenticated, the full size.
    server = authenticated_server()
    assert server.receive_stream_data(4, prefix(MAX_FRAME_SIZE), False) == []


def test_authenticate_lifts_the_frame_limit_for_the_frames_behind_it() -> None:
    key = SigningKey(bytes(32))
    signature = key.sign(auth_transcript(nonce=NONCE, user_id="u-1", device_id=1)).signature
    send = big_send(3 * MAX_FRAME_SIZE_BEFORE_AUTHENTICATION)
    data = encode_frame(Authenticate(signature=signature)) + encode_frame(send)
    for chunk_size in (len(data), 1000, 7):
        server = ServerProtocol()
        server.receive_stream_data(0, encode_frame(Hello(user_id="u-1", device_id=1)), False)
        server.issue_challenge(NONCE)
        events = []
        for offset in range(0, len(data), chunk_size):
            events += server.receive_stream_data(4, data[offset:offset + chunk_size], False)
        assert events == [RequestReceived(4, Authenticate(signature=signature))]
        assert server.check_authentication(signature, key.verify_key.encode())
        assert server.confirm_authentication() == [RequestReceived(4, send)]


def test_incomplete_frames_are_counted_at_their_declared_size_and_refused_past_the_budget() -> None:
    pool = BufferPool()
    server = authenticated_server(pool)
    frame_size = 4 + FULL_FRAME
    fitting = MAX_BUFFERED_BYTES_PER_CONNECTION // frame_size
    for index in range(fitting):
        # One byte of body is enough: the frame is counted at the size it declares.
        assert server.receive_stream_data(4 + 4 * index, prefix(FULL_FRAME) + b"\x93", False) == []
    assert server.buffered_bytes == pool.used == fitting * frame_size
    (refused,) = server.receive_stream_data(4 + 4 * fitting, prefix(FULL_FRAME), False)
    assert isinstance(refused, StreamFailed)
    assert refused.error.code is ErrorCode.RATE_LIMITED
    assert refused.error.retry_after_ms == RETRY_AFTER_BUFFERS_MS
    assert server.buffered_bytes == pool.used == fitting * frame_size  # nothing counted for it
    assert pool.peak <= MAX_BUFFERED_BYTES_PER_CONNECTION
    # It recovers: one frame given up (its stream reset) makes room for another.
    server.stream_reset(4)
    assert server.receive_stream_data(4 * 100, prefix(FULL_FRAME), False) == []
    assert server.buffered_bytes == pool.used == fitting * frame_size


def test_the_budget_before_authentication_is_smaller() -> None:
    server = ServerProtocol()
    server.receive_stream_data(0, encode_frame(Hello(user_id="u-1", device_id=1)), False)
    server.issue_challenge(NONCE)
    server.receive_stream_data(0, encode_frame(Authenticate(signature=bytes(64))), False)
    assert server.state is ConnectionState.AUTHENTICATING  # full frames, held for later
    fitting = MAX_BUFFERED_BYTES_BEFORE_AUTHENTICATION // (4 + FULL_FRAME)
    for index in range(fitting):
        assert server.receive_stream_data(4 + 4 * index, prefix(FULL_FRAME), False) == []
    assert server.receive_stream_data(4 + 4 * fitting, prefix(FULL_FRAME), False) == []  # held
    assert not server.check_authentication(bytes(64), bytes(32))
    assert server.buffered_bytes == 0  # the refused connection gave everything back


def test_the_pool_bounds_every_connection_together_and_keeps_room_for_devices() -> None:
    pool = BufferPool(limit=3 * (4 + FULL_FRAME), unauthenticated_limit=2 * 1024 * 1024)
    first, second = authenticated_server(pool), authenticated_server(pool)
    assert first.receive_stream_data(4, prefix(FULL_FRAME), False) == []
    assert first.receive_stream_data(8, prefix(FULL_FRAME), False) == []
    assert second.receive_stream_data(4, prefix(FULL_FRAME), False) == []
    (refused,) = second.receive_stream_data(8, prefix(FULL_FRAME), False)
    assert isinstance(refused, StreamFailed) and refused.error.code is ErrorCode.RATE_LIMITED
    assert "relay" in refused.error.reason and refused.error.retry_after_ms == RETRY_AFTER_BUFFERS_MS
    assert pool.used == 3 * (4 + FULL_FRAME) == pool.peak
    # Unauthenticated connections have a share of their own: they cannot take the rest.
    first.close()
    assert pool.used == 4 + FULL_FRAME
    strangers = [ServerProtocol(buffers=pool) for _ in range(200)]
    accepted = sum(not stranger.receive_stream_data(0, prefix(16 * 1024), False)
                   for stranger in strangers)
    assert accepted == 2 * 1024 * 1024 // (4 + 16 * 1024)
    assert pool.used_unauthenticated <= pool.unauthenticated_limit
    # ...while a device still finds room, and the pool recovers as connections close.
    assert second.receive_stream_data(12, prefix(FULL_FRAME), False) == []
    for stranger in strangers:
        stranger.close()
    second.close()
    assert (pool.used, pool.used_unauthenticated) == (0, 0)


def test_authentication_moves_a_connections_bytes_out_of_the_unauthenticated_share() -> None:
    pool = BufferPool()
    key = SigningKey(bytes(32))
    server = ServerProtocol(buffers=pool)
    server.receive_stream_data(0, encode_frame(Hello(user_id="u-1", device_id=1)), False)
    server.issue_challenge(NONCE)
    signature = key.sign(auth_transcript(nonce=NONCE, user_id="u-1", device_id=1)).signature
    server.receive_stream_data(0, encode_frame(Authenticate(signature=signature)), False)
    server.receive_stream_data(4, prefix(1000), False)
    assert pool.used == pool.used_unauthenticated == 1004
    assert server.check_authentication(signature, key.verify_key.encode())
    server.confirm_authentication()
    assert (pool.used, pool.used_unauthenticated) == (1004, 0)
    server.close()
    assert (pool.used, pool.used_unauthenticated) == (0, 0)


# Every way a frame can stop being incomplete, in any order, on any stream.
_OPERATIONS = st.lists(st.tuples(
    st.sampled_from(["begin", "more", "complete", "garbage", "reset", "end", "authenticate"]),
    st.integers(0, 5)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(_OPERATIONS)
def test_the_counters_always_match_what_is_held_and_close_gives_everything_back(
        operations: list[tuple[str, int]]) -> None:
    pool = BufferPool(limit=6 * 1024 * 1024, unauthenticated_limit=1024 * 1024)
    key = SigningKey(bytes(32))
    server = ServerProtocol(buffers=pool)
    ack_like = encode_frame(Lookup(phones=("+33612345678",)))
    for operation, index in operations:
        stream_id = 4 + 4 * index
        match operation:
            case "begin":
                server.receive_stream_data(stream_id, prefix(900_000), False)
            case "more":
                server.receive_stream_data(stream_id, b"\x00" * 1000, False)
            case "complete":
                server.receive_stream_data(stream_id, ack_like, False)
            case "garbage":
                server.receive_stream_data(stream_id, b"\x00\x00\x00\x01\xc1", False)
            case "reset":
                server.stream_reset(stream_id)
            case "end":
                server.receive_stream_data(stream_id, b"", True)
            case "authenticate" if server.state is ConnectionState.NEW:
                server.receive_stream_data(0, encode_frame(Hello(user_id="u-1", device_id=1)),
                                           False)
                server.issue_challenge(NONCE)
                signature = key.sign(auth_transcript(nonce=NONCE, user_id="u-1",
                                                     device_id=1)).signature
                server.receive_stream_data(0, encode_frame(Authenticate(signature=signature)),
                                           True)
                assert server.check_authentication(signature, key.verify_key.encode())
                server.confirm_authentication()
        held = sum(decoder.incomplete_frame_size for decoder in server._decoders.values())
        assert server.buffered_bytes == held == pool.used
        assert pool.used <= pool.limit and pool.used_unauthenticated <= pool.unauthenticated_limit
        budget = (MAX_BUFFERED_BYTES_PER_CONNECTION if server.state is ConnectionState.AUTHENTICATED
                  else MAX_BUFFERED_BYTES_BEFORE_AUTHENTICATION)
        assert server.buffered_bytes <= budget
    server.close()
    assert (server.buffered_bytes, pool.used, pool.used_unauthenticated) == (0, 0, 0)


# --- ERROR retry_after_ms -------------------------------------------------------------------------
def test_error_retry_after_round_trips_and_may_be_absent() -> None:
    limited = Error(code=ErrorCode.RATE_LIMITED, reason="slow down", retry_after_ms=1500)
    assert decode_body(encode_frame(limited)[4:]) == limited
    plain = Error(code=ErrorCode.QUEUE_FULL, reason="full", full_devices=(2,))
    assert decode_body(encode_frame(plain)[4:]) == plain
    # As an older relay writes it: no such key at all.
    older = msgpack.packb((1, 127, {"code": 21, "reason": "slow down"}))
    assert decode_body(older) == Error(code=ErrorCode.RATE_LIMITED, reason="slow down")
    assert decode_body(older).retry_after_ms is None  # type: ignore[union-attr]
    for bad in (-1, MAX_RETRY_AFTER_MS + 1, True, 1.5):
        with pytest.raises(LocalProtocolError):
            Error(code=ErrorCode.RATE_LIMITED, reason="", retry_after_ms=bad)  # type: ignore[arg-type]
        body = msgpack.packb((1, 127, {"code": 21, "reason": "", "retry_after_ms": bad}))
        with pytest.raises(RemoteProtocolError):
            decode_body(body)
    assert RelayError(limited).retry_after_ms == 1500
    assert RelayError(plain).retry_after_ms is None


# --- the transport: addresses, out-of-order data ----------------------------------------------------
def test_an_address_is_counted_as_its_ipv4_address_or_its_ipv6_slash_64() -> None:
    assert address_key(("192.0.2.7", 4433)) == "192.0.2.7"
    assert address_key(("::ffff:192.0.2.7", 4433, 0, 0)) == "192.0.2.7"
    assert address_key(("2001:db8:1:2:aaaa::1", 1, 0, 0)) == "2001:db8:1:2::/64"
    assert address_key(("2001:db8:1:2:bbbb::9", 1, 0, 0)) == "2001:db8:1:2::/64"
    assert address_key(("2001:db8:1:3::1", 1, 0, 0)) == "2001:db8:1:3::/64"
    assert address_key(("fe80::1%lo", 1, 0, 1)) == "fe80::/64"


def _quic_pair(directory: Path, window: int | None) -> tuple[QuicConnection, QuicConnection]:
    """A client and a server QuicConnection wired in memory, handshake done; the server's
    receive window slides (``window``) or is aioquic's own (None)."""
    cert, private_key, _ = ensure_development_certificate(
        directory, now=datetime.datetime.now(datetime.UTC))
    server_configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN],
                                             max_data=window or 1024 * 1024)
    server_configuration.load_cert_chain(str(cert), str(private_key))
    client = QuicConnection(configuration=client_configuration(ca=cert, server_name="localhost"))
    client._local_max_data.value = client._local_max_data.sent = 64 * 1024 * 1024
    client.connect(("127.0.0.1", 1), now=0.0)
    server: QuicConnection | None = None
    for _ in range(10):
        for data, _address in client.datagrams_to_send(now=0.0):
            if server is None:
                header = pull_quic_header(Buffer(data=data), host_cid_length=8)
                server = QuicConnection(configuration=server_configuration,
                                        original_destination_connection_id=header.destination_cid)
                if window is not None:
                    install_receive_window(server, window)
            server.receive_datagram(data, ("127.0.0.1", 2), now=0.0)
        assert server is not None
        for data, _address in server.datagrams_to_send(now=0.0):
            client.receive_datagram(data, ("127.0.0.1", 1), now=0.0)
    assert server is not None and server._handshake_confirmed
    return client, server


@pytest.mark.parametrize("sliding", [True, False], ids=["sliding", "aioquic-doubling"])
def test_data_held_out_of_order_stays_within_the_receive_window(sliding: bool,
                                                               tmp_path: Path) -> None:
    """The peer never sends a stream's first bytes and sends everything after them: the server
    buffers what follows the gap, up to the receive window and no further."""
    window = 256 * 1024
    client, server = _quic_pair(tmp_path, window if sliding else None)
    stream_id = client.get_next_available_stream_id()
    client.send_stream_data(stream_id, b"x" * (32 * window))
    client._streams[stream_id].sender._pending.subtract(0, 100)  # the gap, never sent
    held = []
    for round_trip in range(120):
        now = round_trip * 0.001
        for data, _address in client.datagrams_to_send(now=now):
            server.receive_datagram(data, ("127.0.0.1", 2), now=now)
        while server.next_event() is not None:
            pass
        if sliding:
            slide_receive_window(server, window)
        for data, _address in server.datagrams_to_send(now=now):
            client.receive_datagram(data, ("127.0.0.1", 1), now=now)
        held.append(reassembly_bytes(server))
    if sliding:
        assert max(held) <= window
        assert held[-1] >= window - 2 * 1500  # the peer did fill what it was allowed
    else:
        assert max(held) > 4 * window  # what the sliding window prevents: growth past it




async def test_superseded_deadlines_do_not_pile_up_and_a_closed_link_is_reached_by_none(
        tmp_path: Path) -> None:
    """Every move of a connection's deadline pushes a new heap entry; the heap is rebuilt once
    superseded entries outnumber the live ones, and a forgotten link's entries let go of it."""
    cert, _, _ = ensure_development_certificate(tmp_path, now=datetime.datetime.now(datetime.UTC))
    sock = open_udp_socket("127.0.0.1", 0)
    with sock:
        endpoint = QuicEndpoint(sock, retry=False)
        link = endpoint.connect(("127.0.0.1", 9), client_configuration(ca=cert), _NoHandler())
        for step in range(1000):  # a deadline a minute away, moved by every packet
            link._timer_at = 60.0 + step
            endpoint._push_timer(link._timer_at, link)
            assert endpoint.timer_entries <= 2 * 1 + TIMER_HEAP_SLACK
        entries = list(endpoint._timers)
        endpoint._forget(link)
        assert all(entry.link is None for _, _, entry in entries)
        assert endpoint.links == set()


class _NoHandler:
    def quic_events(self, link: QuicLink, batch: list[quic_events.QuicEvent]) -> None:
        pass
