"""Release what a server QUIC connection no longer needs once its handshake is confirmed.

An idle device holds its connection for hours; aioquic keeps, for the
connection's whole life, state that only the handshake needed. Measured with
``cryptopass-bench memory`` (docs/BENCHMARKS.md, "Memory per idle connection"), the
largest parts were:

* the TLS context (key schedule and its transcript hash, the ephemeral key
  exchange private key, the client's extensions, callbacks);
* the INITIAL, 0-RTT and HANDSHAKE crypto pairs, packet spaces, crypto
  streams and TLS output buffers, all torn down or empty once the handshake is
  confirmed (RFC 9001 §4.9) yet each still allocated per connection;
* a table of ~30 frame handlers, each a bound method with its set of epochs;
* seven spare connection ids issued to the client, each also a route in the
  endpoint;
* deques (event queue, DATAGRAM queue, path challenges), each of which
  allocates a block of 64 slots even when empty.

Everything here runs once, when the shell sees ``HandshakeCompleted`` on a
server connection, and only if the connection is in the expected state;
otherwise it is left untouched. Key updates, migration, idle timeout, closing
and stream data keep working (tests/test_connection_memory.py).

This module reaches into aioquic's private attributes (checked against
aioquic 1.7.2; pyproject.toml keeps aioquic within 1.7.x); it is the only one
that does so for memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, SupportsIndex, cast

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic.connection import QuicConnection, QuicConnectionError
from aioquic.quic.crypto import CryptoPair, NoCallback
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicStreamFrame
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream

__all__ = ["MAX_ISSUED_CONNECTION_IDS", "CompactQueue", "CompactSet", "release_after_handshake"]

MAX_ISSUED_CONNECTION_IDS = 2
"""Connection ids of ours a client holds at once: the one in use and one to migrate
to. aioquic issues as many as the client accepts (8 for most clients); RFC 9000
§5.1.1 lets an endpoint supply fewer. Each costs an id object and an endpoint route."""

UNEXPECTED_MESSAGE = int(tls.AlertDescription.unexpected_message)
"""TLS alert carried in the QUIC error code (RFC 9001 §4.8) for post-handshake TLS data."""

_HANDSHAKE_EPOCHS = (tls.Epoch.INITIAL, tls.Epoch.ZERO_RTT, tls.Epoch.HANDSHAKE)

_DISCARDED_CRYPTO = CryptoPair()
"""Keys that are never set up: every packet of a discarded epoch fails to decrypt
with KeyUnavailableError and is dropped, as with a connection's own torn-down pair."""

_DISCARDED_SPACE = QuicPacketSpace()
"""The packet space of a discarded epoch: only ever read (a packet of that epoch is
dropped before its space is touched), and listed in no connection's loss recovery."""
_DISCARDED_SPACE.discarded = True

_SHARED_CRYPTO_BUFFERS: dict[int, Buffer] = {}
"""TLS output buffers of released connections, by capacity: never written to."""

_SHARED_INITIAL_CRYPTOS: dict[tuple[int, ...], dict[int, CryptoPair]] = {}
"""Per tuple of supported versions, their INITIAL crypto pairs once discarded."""

_SHARED_FRAME_HANDLERS: dict[type[QuicConnection],
                             dict[int, tuple[Callable[..., None], frozenset[tls.Epoch]]]] = {}
"""Per connection class, aioquic's frame-handler table with unbound functions."""


class CompactQueue(list[Any]):
    """A list that answers the part of ``collections.deque``'s API aioquic uses.

    An empty deque holds a 64-slot block (about 600 bytes); an empty list holds
    nothing. aioquic's queues are short (a batch of events, a few datagrams or
    path challenges), so ``popleft``'s cost in the length does not matter.
    """

    __slots__ = ("maxlen",)

    def __init__(self, items: Any = (), maxlen: int | None = None) -> None:
        super().__init__(items)
        self.maxlen = maxlen

    def popleft(self) -> Any:
        return self.pop(0)  # IndexError when empty, like deque.popleft

    def append(self, item: Any) -> None:
        super().append(item)
        if self.maxlen is not None and len(self) > self.maxlen:
            del self[0]  # a bounded deque forgets its oldest item

    def pop(self, index: SupportsIndex = -1) -> Any:
        return super().pop(index)


class CompactSet(list[Any]):
    """A list that answers the part of ``set``'s API aioquic uses on a few small
    integers (``add``, ``in``, iteration): a set of 8 items takes 728 bytes."""

    __slots__ = ()

    def add(self, item: Any) -> None:
        if item not in self:
            self.append(item)


class _CompletedTls:
    """What aioquic reads of a server's TLS context after the handshake.

    A TLS 1.3 server over QUIC receives no handshake message once it is
    complete (KeyUpdate is forbidden by RFC 9001 §6, we request no client
    certificate and issue no session ticket), so any CRYPTO data is answered
    with the alert the full context would raise.
    """

    __slots__ = ("alpn_negotiated", "early_data_accepted", "session_resumed")
    state = tls.State.SERVER_POST_HANDSHAKE

    def __init__(self, context: tls.Context) -> None:
        self.alpn_negotiated = context.alpn_negotiated
        self.early_data_accepted = context.early_data_accepted
        self.session_resumed = context.session_resumed

    def handle_message(self, input_data: bytes, output_buf: dict[tls.Epoch, Buffer]) -> None:
        if input_data:
            raise tls.AlertUnexpectedMessage("no TLS message is expected after the handshake")


class _RefusingCryptoReceiver:
    """Receives the 1-RTT CRYPTO stream of a completed server handshake: any byte
    is a TLS message, refused with the alert the full TLS context would send."""

    __slots__ = ()

    def starting_offset(self) -> int:
        return 0

    def handle_frame(self, frame: QuicStreamFrame) -> None:
        if frame.data:
            raise QuicConnectionError(
                error_code=QuicErrorCode.CRYPTO_ERROR + UNEXPECTED_MESSAGE,
                frame_type=QuicFrameType.CRYPTO,
                reason_phrase="no TLS message is expected after the handshake")


class _EmptyCryptoSender:
    """Sends nothing: a server without session tickets writes no TLS after the handshake."""

    __slots__ = ()
    buffer_is_empty = True

    def write(self, data: bytes, end_stream: bool = False) -> None:
        if data:
            raise RuntimeError("TLS output after a released handshake")


class _CompletedCryptoStream:
    """Stands for every released server connection's 1-RTT CRYPTO stream (stateless)."""

    __slots__ = ()
    receiver = _RefusingCryptoReceiver()
    sender = _EmptyCryptoSender()


_COMPLETED_CRYPTO_STREAM = _CompletedCryptoStream()


class _FrameHandlers:
    """A connection's frame-handler table, binding shared functions on lookup."""

    __slots__ = ("_connection", "_table")

    def __init__(self, connection: QuicConnection,
                 table: dict[int, tuple[Callable[..., None], frozenset[tls.Epoch]]]) -> None:
        self._connection = connection
        self._table = table

    def __getitem__(self, frame_type: int) -> tuple[Callable[..., None], frozenset[tls.Epoch]]:
        function, epochs = self._table[frame_type]  # KeyError for an unknown type, as a dict
        return function.__get__(self._connection), epochs


def release_after_handshake(quic: QuicConnection, *, crypto_buffer_bytes: int) -> bool:
    """Release the handshake's state of a server connection whose handshake is confirmed.

    Args:
        quic: a server connection that has just completed its handshake.
        crypto_buffer_bytes: capacity of the TLS output buffer kept for 1-RTT.

    Returns:
        whether anything was released (False: not in the expected state, untouched).
    """
    if not _releasable(quic):
        return False
    quic.tls = cast(tls.Context, _CompletedTls(quic.tls))
    _share_discarded_epochs(quic, crypto_buffer_bytes)
    _share_frame_handlers(quic)
    _limit_issued_connection_ids(quic)
    _compact_queues(quic)
    return True


def _releasable(quic: QuicConnection) -> bool:
    spaces = quic._spaces
    return (not quic._is_client
            and quic._handshake_confirmed
            and quic._quic_logger is None  # its callbacks log key changes
            and isinstance(quic.tls, tls.Context)
            and quic.tls.state == tls.State.SERVER_POST_HANDSHAKE
            and spaces[tls.Epoch.INITIAL].discarded
            and spaces[tls.Epoch.HANDSHAKE].discarded
            and not any(quic._cryptos[epoch].recv.is_valid() or quic._cryptos[epoch].send.is_valid()
                        for epoch in _HANDSHAKE_EPOCHS)
            and not any(pair.recv.is_valid() or pair.send.is_valid()
                        for pair in quic._cryptos_initial.values())
            and _crypto_stream_unused(quic._crypto_streams[tls.Epoch.ONE_RTT]))


def _crypto_stream_unused(stream: QuicStream) -> bool:
    return stream.sender.buffer_is_empty and stream.receiver.starting_offset() == 0


def _share_discarded_epochs(quic: QuicConnection, crypto_buffer_bytes: int) -> None:
    """Point the discarded epochs at shared empty state; keep only 1-RTT's own."""
    for epoch in _HANDSHAKE_EPOCHS:
        quic._cryptos[epoch] = _DISCARDED_CRYPTO
    versions = tuple(quic._cryptos_initial)
    shared_initial = _SHARED_INITIAL_CRYPTOS.setdefault(
        versions, dict.fromkeys(versions, _DISCARDED_CRYPTO))
    quic._cryptos_initial = shared_initial  # only read once INITIAL is discarded
    one_rtt = quic._cryptos[tls.Epoch.ONE_RTT]
    for context in (one_rtt.recv, one_rtt.send):
        # They only feed the QUIC logger, absent here (checked in _releasable).
        context._setup_cb = context._teardown_cb = NoCallback
    application_space = quic._spaces[tls.Epoch.ONE_RTT]
    quic._spaces = {tls.Epoch.INITIAL: _DISCARDED_SPACE, tls.Epoch.HANDSHAKE: _DISCARDED_SPACE,
                    tls.Epoch.ONE_RTT: application_space}
    quic._loss.spaces = [application_space]
    # CRYPTO frames are only accepted in epochs whose keys still exist: 1-RTT,
    # where the shared stand-in refuses them; so nothing is ever written to the
    # TLS output buffer either (kept for the shell's own check of its size).
    quic._crypto_streams = {tls.Epoch.ONE_RTT: cast(QuicStream, _COMPLETED_CRYPTO_STREAM)}
    buffer = _SHARED_CRYPTO_BUFFERS.setdefault(crypto_buffer_bytes,
                                               Buffer(capacity=crypto_buffer_bytes))
    quic._crypto_buffers = {tls.Epoch.ONE_RTT: buffer}


def _share_frame_handlers(quic: QuicConnection) -> None:
    attribute = "_QuicConnection__frame_handlers"  # name-mangled private attribute
    handlers: dict[int, tuple[Any, frozenset[tls.Epoch]]] = getattr(quic, attribute)
    table = _SHARED_FRAME_HANDLERS.get(type(quic))
    if table is None:
        table = {frame_type: (handler.__func__, epochs)
                 for frame_type, (handler, epochs) in handlers.items()}
        _SHARED_FRAME_HANDLERS[type(quic)] = table
    setattr(quic, attribute, _FrameHandlers(quic, table))


def _limit_issued_connection_ids(quic: QuicConnection) -> None:
    """Withdraw the ids aioquic drew but has not announced yet, beyond the limit.

    aioquic draws them when the handshake completes and announces them in the
    next packets it builds; none has left yet when the shell handles
    HandshakeCompleted. Sequence numbers must grow by one (RFC 9000 §5.1.1), so
    the withdrawn ones are given again to the next ids drawn.
    """
    kept = [connection_id for connection_id in quic._host_cids
            if connection_id.was_sent or connection_id.cid == quic.host_cid]
    for connection_id in quic._host_cids:
        if len(kept) >= MAX_ISSUED_CONNECTION_IDS:
            break
        if connection_id not in kept:
            kept.append(connection_id)
    kept.sort(key=lambda connection_id: connection_id.sequence_number)
    withdrawn = [connection_id for connection_id in quic._host_cids if connection_id not in kept]
    if any(connection_id.sequence_number < kept[-1].sequence_number
           for connection_id in withdrawn):
        return  # would leave a gap in sequence numbers: keep everything
    quic._host_cids = kept
    quic._host_cid_seq = kept[-1].sequence_number + 1
    quic._remote_active_connection_id_limit = min(quic._remote_active_connection_id_limit,
                                                  MAX_ISSUED_CONNECTION_IDS)


def _compact_queues(quic: QuicConnection) -> None:
    # Sequence numbers of the client's connection ids, to spot repeated ones.
    quic._peer_cid_sequence_numbers = cast(Any, CompactSet(quic._peer_cid_sequence_numbers))
    quic._remote_version_information = None  # read while negotiating the version only
    quic._events = cast(Any, CompactQueue(quic._events))
    quic._datagrams_pending = cast(Any, CompactQueue(quic._datagrams_pending))
    for path in quic._network_paths:
        path.local_challenges = cast(Any, CompactQueue(path.local_challenges,
                                                       maxlen=path.local_challenges.maxlen))
        path.remote_challenges = cast(Any, CompactQueue(path.remote_challenges))
