"""The transport ceiling's server: bare aioquic streams, every byte echoed back, and every
QUIC DATAGRAM echoed back as a datagram (the ``calls`` scenario's baseline).

It runs the same trio QUIC shell as the relay (``transport.quic``) with a handler
that only echoes, so the relay's cost above it is the relay's own work.
Prints one JSON line ``{"event": "relay_listening", "port": N, "cert": PATH}`` on
standard error once listening; stops on SIGTERM.

Internal: the ``transport`` scenario (bench/transport.py) starts it in a process of its
own as ``cryptopass-bench internal echo-server TLS_DIR`` (bench/internal.py).
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
from transport.quic import DATAGRAM_FRAME_SIZE, QuicEndpoint, QuicLink, open_udp_socket
from wire.frames import ALPN

__all__ = ["BENCH_CONNECTIONS", "EchoHandler", "serve"]

BENCH_CONNECTIONS = 1_000_000
"""Connections the echo server takes from one address (the bench's loopback clients)."""


class EchoHandler:
    def quic_events(self, link: QuicLink, batch: list[events.QuicEvent]) -> None:
        for event in batch:
            if isinstance(event, events.StreamDataReceived):
                link.send_stream_data(event.stream_id, event.data, event.end_stream)
            elif isinstance(event, events.DatagramFrameReceived):
                link.send_datagram(event.data)


async def serve(tls_dir: Path, port: int = 0) -> None:
    """Echo on 127.0.0.1:``port`` (0: any) with a development certificate made in
    ``tls_dir``, until SIGTERM or SIGINT."""
    cert, key, _ = ensure_development_certificate(tls_dir,
                                                  now=datetime.datetime.now(datetime.UTC))
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN],
                                      max_datagram_frame_size=DATAGRAM_FRAME_SIZE,
                                      max_stream_data=4 * 1024 * 1024, max_data=16 * 1024 * 1024)
    configuration.load_cert_chain(str(cert), str(key))
    sock = open_udp_socket("127.0.0.1", port)
    handler = EchoHandler()
    # Every bench client comes from loopback: lift the per-address budget meant for floods,
    # as the relays the bench starts do (bench/spawn.py).
    endpoint = QuicEndpoint(sock, configuration=configuration,
                            on_connection=lambda link: handler,
                            connections_per_address=BENCH_CONNECTIONS)
    with sock, trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.run)
            print(json.dumps({"event": "relay_listening",
                              "port": endpoint.local_address[1], "cert": str(cert)}),
                  file=sys.stderr, flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
