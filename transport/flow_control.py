"""What a peer may make a server QUIC connection hold: streams at once, and bytes received out
of order.

aioquic's receive side needs two corrections for a server that must not grow without bound:

* **Streams.** A peer may keep 128 streams of each kind open at once (aioquic's fixed
  default), each with its own buffers. ``limit_peer_streams`` lowers that in the transport
  parameters, before the handshake: QUIC's MAX_STREAMS (RFC 9000 §4.6) then refuses more; a
  peer opens a new stream as an old one finishes, and a well-behaved peer simply waits.
* **Reassembly.** Data that arrives ahead of a gap waits in the stream's receive buffer, which
  aioquic allocates up to the highest offset received, gap included. Its flow-control windows
  double whenever the peer has used half of them, whether or not anything was delivered: a peer
  that keeps leaving the first byte out makes the buffer grow without bound. A
  ``SlidingReceiveLimit`` replaces the connection's MAX_DATA limit (RFC 9000 §4.1) so that it
  only ever stands ``window`` bytes past what was taken out of the receive buffers: what a peer
  can make the connection hold out of order is at most ``window``, whatever it sends.
* **Bytes the application still holds.** Bytes delivered to the application leave aioquic's
  buffers at once, but an application that streams them elsewhere (a blob's upload, appended to
  the store in pieces) holds them until written. It says so (``QuicLink.hold_received`` and
  ``release_received``), and ``slide_receive_window`` counts them as not yet consumed: a peer
  cannot send faster than the application writes, so its memory stays within ``window``.

This module reaches into aioquic's private attributes (checked against aioquic 1.7.2, as
transport/connection_memory.py; pyproject.toml keeps aioquic within 1.7.x).
"""

from __future__ import annotations

from aioquic.quic.connection import Limit, QuicConnection

__all__ = [
    "SlidingReceiveLimit",
    "drop_reset_stream_data",
    "install_receive_window",
    "limit_peer_streams",
    "reassembly_bytes",
    "slide_receive_window",
]


class SlidingReceiveLimit(Limit):
    """A connection's MAX_DATA limit that only ``slide_to`` raises.

    aioquic doubles ``value`` as the peer uses it; that assignment is ignored here, so the
    limit moves only when the shell says how much has left the receive buffers.
    """

    def __init__(self, limit: Limit) -> None:
        self._value = limit.value
        self.frame_type = limit.frame_type
        self.name = limit.name
        self.sent = limit.sent
        self.used = limit.used

    @property
    def value(self) -> int:
        """The highest connection-level offset the peer may send up to."""
        return self._value

    @value.setter
    def value(self, value: int) -> None:
        """aioquic's doubling: ignored (the shell slides the limit instead)."""

    def slide_to(self, value: int) -> bool:
        """Raise the limit to ``value`` (never lower it); whether it moved."""
        if value <= self._value:
            return False
        self._value = value
        return True


def limit_peer_streams(quic: QuicConnection, streams: int) -> None:
    """Let the peer keep at most ``streams`` streams of each kind open at once.

    Call before the connection receives its first datagram: the value goes into the transport
    parameters. aioquic grants one more stream each time one of the peer's finishes.
    """
    for limit in (quic._local_max_streams_bidi, quic._local_max_streams_uni):
        limit.value = limit.sent = streams


def install_receive_window(quic: QuicConnection, window: int) -> None:
    """Make the connection's MAX_DATA a window of ``window`` bytes that ``slide_receive_window``
    moves. Call before the first datagram: ``window`` is the initial MAX_DATA the peer is told
    (it replaces the configuration's ``max_data``)."""
    limit = quic._local_max_data
    limit.value = limit.sent = window
    quic._local_max_data = SlidingReceiveLimit(limit)


def drop_reset_stream_data(quic: QuicConnection, stream_id: int) -> None:
    """The peer reset a stream: free what it left waiting for a gap. aioquic keeps the
    receive buffer until both directions of the stream are finished, and ignores data
    received after the reset (RFC 9000 §3.2), so nothing reads it again."""
    stream = quic._streams.get(stream_id)
    if stream is not None and stream.receiver.is_finished:
        stream.receiver._buffer = bytearray()


def reassembly_bytes(quic: QuicConnection) -> int:
    """Bytes the connection's streams hold waiting for earlier bytes (gaps included)."""
    return sum(len(stream.receiver._buffer) for stream in quic._streams.values())


def slide_receive_window(quic: QuicConnection, window: int, held: int = 0) -> bool:
    """Move a ``install_receive_window`` limit to ``window`` bytes past what has left the
    receive buffers and the application (``held``: bytes delivered but not yet consumed by
    it), once less than half of it remains (so MAX_DATA frames stay rare).

    Returns:
        whether the limit moved (a MAX_DATA frame is due).
    """
    limit = quic._local_max_data
    if not isinstance(limit, SlidingReceiveLimit):
        return False
    if limit.value - limit.used >= window // 2:
        return False  # at least half the window is still open, whatever is buffered
    consumed = limit.used - reassembly_bytes(quic) - held
    if limit.value - consumed >= window // 2:
        return False  # held up by data waiting for a gap or for the application
    return limit.slide_to(consumed + window)
