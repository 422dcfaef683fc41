"""The transport ceiling's server: bare aioquic streams, every byte echoed back.

It runs the same trio QUIC shell as the relay (``transport.quic``) with a handler
that only echoes, so the relay's cost above it is the relay's own work.
Prints one JSON line ``{"event": "relay_listening", "port": N}`` on standard
error once listening; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import sys
import tempfile
from pathlib import Path

import trio
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

from relay.tls import ensure_development_certificate
from transport.quic import QuicEndpoint, QuicLink, open_udp_socket
from wire.frames import ALPN

__all__ = ["EchoHandler", "main"]


class EchoHandler:
    def quic_events(self, link: QuicLink, batch: list[events.QuicEvent]) -> None:
        for event in batch:
            if isinstance(event, events.StreamDataReceived):
                link.send_stream_data(event.stream_id, event.data, event.end_stream)


async def serve(port: int, tls_dir: Path) -> None:
    cert, key, _ = ensure_development_certificate(tls_dir,
                                                  now=datetime.datetime.now(datetime.UTC))
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN],
                                      max_stream_data=4 * 1024 * 1024, max_data=16 * 1024 * 1024)
    configuration.load_cert_chain(str(cert), str(key))
    sock = open_udp_socket("127.0.0.1", port)
    handler = EchoHandler()
    endpoint = QuicEndpoint(sock, configuration=configuration,
                            on_connection=lambda link: handler)
    with sock, trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.run)
            print(json.dumps({"event": "relay_listening",
                              "port": endpoint.local_address[1], "cert": str(cert)}),
                  file=sys.stderr, flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main() -> None:
    parser = argparse.ArgumentParser(description="QUIC echo server (transport ceiling)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-dir", type=Path, default=None)
    arguments = parser.parse_args()
    if arguments.tls_dir is not None:
        trio.run(serve, arguments.port, arguments.tls_dir)
        return
    with tempfile.TemporaryDirectory(prefix="cryptopass-echo-") as temporary:
        trio.run(serve, arguments.port, Path(temporary))


if __name__ == "__main__":
    main()
