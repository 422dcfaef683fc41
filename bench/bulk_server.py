"""The bulk-transfer ceiling of the ``files`` scenario: bare aioquic streams, no relay.

A client opens a stream, sends N bytes and ends it; the server counts them and, once the
stream ends, sends N bytes back on it and ends it: the same shape as a blob upload then a
download, on the same trio QUIC shell and flow control as the relay (``transport.quic``),
with nothing stored, framed or encrypted. Both ends write at most ``SEND_WINDOW`` bytes
ahead of what the peer acknowledged.

Prints one JSON line ``{"event": "relay_listening", "port": N, "cert": PATH}`` on standard
error once listening; stops on SIGTERM. Started by bench/files.py as
``cryptopass-bench internal bulk-server TLS_DIR`` (bench/internal.py).
"""

from __future__ import annotations

import datetime
import json
import signal
import sys
from pathlib import Path

import trio
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

from relay.tls import ensure_development_certificate
from transport.quic import QuicEndpoint, QuicLink, open_udp_socket
from wire.frames import ALPN

__all__ = ["PIECE_SIZE", "SEND_WINDOW", "BulkHandler", "send_bulk", "serve"]

PIECE_SIZE = 64 * 1024
"""Bytes written per call: the size of a sealed file chunk, as the relay writes them."""
SEND_WINDOW = 4 * 1024 * 1024
"""Unacknowledged bytes a writer lets a stream hold before it waits: the peer's stream
window (max_stream_data), so the writer is never what holds the ceiling back (1 MiB
measured 10 MB/s where 4 MiB gave 18)."""


async def send_bulk(link: QuicLink, stream_id: int, size: int) -> None:
    """Write ``size`` zero bytes on the stream, then end it, never more than SEND_WINDOW
    ahead of the peer's acknowledgements."""
    piece = bytes(PIECE_SIZE)
    left = size
    while left > 0:
        await link.wait_send_room(stream_id, SEND_WINDOW)
        if link.closed.is_set():
            return
        step = min(left, PIECE_SIZE)
        left -= step
        link.send_stream_data(stream_id, piece[:step], end_stream=left == 0)
    if size == 0:
        link.send_stream_data(stream_id, b"", end_stream=True)


class BulkHandler:
    """Counts each stream's bytes; when it ends, sends as many back."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._received: dict[tuple[int, int], int] = {}

    def quic_events(self, link: QuicLink, batch: list[events.QuicEvent]) -> None:
        for event in batch:
            if isinstance(event, events.StreamDataReceived):
                key = (id(link), event.stream_id)
                self._received[key] = self._received.get(key, 0) + len(event.data)
                if event.end_stream:
                    self._nursery.start_soon(send_bulk, link, event.stream_id,
                                             self._received.pop(key))


async def serve(tls_dir: Path, port: int = 0) -> None:
    """Serve on 127.0.0.1:``port`` (0: any) with a development certificate made in
    ``tls_dir``, until SIGTERM or SIGINT."""
    cert, key, _ = ensure_development_certificate(tls_dir,
                                                  now=datetime.datetime.now(datetime.UTC))
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN],
                                      max_stream_data=4 * 1024 * 1024, max_data=16 * 1024 * 1024)
    configuration.load_cert_chain(str(cert), str(key))
    sock = open_udp_socket("127.0.0.1", port)
    with sock, trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            handler = BulkHandler(nursery)
            endpoint = QuicEndpoint(sock, configuration=configuration,
                                    on_connection=lambda link: handler)
            await nursery.start(endpoint.run)
            print(json.dumps({"event": "relay_listening",
                              "port": endpoint.local_address[1], "cert": str(cert)}),
                  file=sys.stderr, flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
