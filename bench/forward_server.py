"""The forward ceiling's server: the relay's traffic shape with none of the relay's work.

A device's SEND is forwarded at once, as a DELIVER on the recipient device's push stream, and
answered with SEND_ACCEPTED; an ACK is taken and forgotten. Nothing is stored, checked against
a directory, rate limited or authenticated: **any signature is accepted**, which is acceptable
only because this is a bench ceiling on loopback, never a relay. It speaks just enough of the
protocol (docs/PROTOCOL.md) for the reference client (``client.connection.RelayClient``) to
connect, authenticate, send, receive and acknowledge, over the relay's own QUIC shell
(``transport.quic``) configured as the relay configures it (relay/server.py), so that the
relay's CPU above this server's, in the same traffic, is the relay's own work.

Devices are known only while connected: a SEND to a user with no connected device is refused
with UNKNOWN_RECIPIENT, one whose payloads do not address exactly that user's connected devices
with MISMATCHED_DEVICES, as the relay refuses them.

Prints one JSON line ``{"event": "relay_listening", "port": N, "cert": PATH}`` on standard
error once listening; stops on SIGTERM. Internal: ``cryptopass-bench transport --forward``
(bench/forward.py) starts it in a process of its own as ``cryptopass-bench internal
forward-server TLS_DIR`` (bench/internal.py).
"""

from __future__ import annotations

import datetime
import itertools
import json
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import trio
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

from bench.echo_server import BENCH_CONNECTIONS
from relay.server import RECEIVE_WINDOW_BYTES
from relay.settings import RelaySettings
from relay.tls import ensure_development_certificate
from transport.quic import DATAGRAM_FRAME_SIZE, QuicEndpoint, QuicLink, open_udp_socket
from wire.codec import FrameDecoder, encode_frame
from wire.frames import (
    ALPN,
    NONCE_SIZE,
    Ack,
    Acked,
    Authenticate,
    Authenticated,
    Challenge,
    Deliver,
    Error,
    ErrorCode,
    Frame,
    Hello,
    QueueEmpty,
    RemoteProtocolError,
    Send,
    SendAccepted,
)
from wire.limits import MAX_CONCURRENT_STREAMS
from wire.protocol import is_client_bidirectional

__all__ = ["ForwardServer", "ForwardSession", "Forwarder", "forward_configuration",
           "run_forward_server", "serve"]

DeviceKey = tuple[str, int]
"""(user id, device id), as HELLO names a device."""

IDLE_TIMEOUT_SECONDS = RelaySettings().idle_timeout_s
"""The relay's default idle timeout: keep-alives and closes behave as against a relay."""


class Forwarder:
    """What every connection of the server shares: the connected devices and envelope ids."""

    def __init__(self) -> None:
        self.devices: dict[str, dict[int, ForwardSession]] = {}
        """Connected devices, by user id then device id."""
        self._envelope_ids = itertools.count(1)

    def attach(self, device: DeviceKey, session: ForwardSession) -> None:
        """``session`` now receives ``device``'s deliveries (a newer connection wins)."""
        user_id, device_id = device
        self.devices.setdefault(user_id, {})[device_id] = session

    def detach(self, device: DeviceKey, session: ForwardSession) -> None:
        user_id, device_id = device
        sessions = self.devices.get(user_id)
        if sessions is not None and sessions.get(device_id) is session:
            del sessions[device_id]
            if not sessions:
                del self.devices[user_id]

    def forward(self, sender: DeviceKey, frame: Send) -> Frame:
        """Push one DELIVER per payload to its connected device; the SEND's answer."""
        sessions = self.devices.get(frame.recipient_user_id)
        if sessions is None:
            return Error(code=ErrorCode.UNKNOWN_RECIPIENT, reason="no such recipient")
        sender_user_id, sender_device_id = sender
        current = set(sessions)
        if frame.recipient_user_id == sender_user_id:
            current.discard(sender_device_id)  # as the relay: never to the sending device
        addressed = set(frame.payloads)
        if addressed != current:
            return Error(code=ErrorCode.MISMATCHED_DEVICES,
                         reason="the payloads do not address the recipient's devices",
                         missing_devices=tuple(sorted(current - addressed)),
                         extra_devices=tuple(sorted(addressed - current)))
        accepted_at = time.time_ns() // 1_000_000
        for device_id, ciphertext in frame.payloads.items():
            sessions[device_id].deliver(Deliver(
                envelope_id=next(self._envelope_ids), client_message_id=frame.client_message_id,
                accepted_at=accepted_at, ciphertext=ciphertext, sender_user_id=sender_user_id,
                sender_device_id=sender_device_id))
        return SendAccepted(duplicate=False)


class ForwardSession:
    """One connection: requests answered in the event's turn, deliveries on its push stream.

    Every answer is made synchronously, so the answers of a stream leave in request order
    without the relay's answer slots.
    """

    def __init__(self, forwarder: Forwarder, link: QuicLink) -> None:
        self._forwarder = forwarder
        self._link = link
        self._decoders: dict[int, FrameDecoder] = {}
        self._failed: set[int] = set()
        """Streams that carried garbage: answered with an ERROR, their later bytes dropped."""
        self._claimed: DeviceKey | None = None
        self._device: DeviceKey | None = None
        self._push_stream: int | None = None
        self._unacknowledged: set[int] = set()
        """Envelope ids pushed here and not yet acknowledged (ACKED counts them)."""

    def quic_events(self, link: QuicLink, batch: list[events.QuicEvent]) -> None:
        for event in batch:
            if isinstance(event, events.StreamDataReceived):
                self._stream_data(event.stream_id, event.data, event.end_stream)
            elif isinstance(event, events.StreamReset):
                self._decoders.pop(event.stream_id, None)
                self._failed.discard(event.stream_id)
            elif isinstance(event, events.ConnectionTerminated) and self._device is not None:
                self._forwarder.detach(self._device, self)

    def deliver(self, frame: Deliver) -> None:
        """Push one envelope on this connection's push stream."""
        if self._push_stream is None:
            return
        self._unacknowledged.add(frame.envelope_id)
        self._link.send_stream_data(self._push_stream, encode_frame(frame))

    def _stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if not is_client_bidirectional(stream_id) or stream_id in self._failed:
            if end_stream:
                self._failed.discard(stream_id)
            return  # nothing is served on other streams (the relay stops them)
        decoder = self._decoders.get(stream_id)
        if decoder is None:
            decoder = self._decoders[stream_id] = FrameDecoder()
        answers = []
        try:
            for frame in decoder.feed(data):
                answers.append(self._answer(frame))
            if end_stream:
                decoder.end_of_stream()
        except RemoteProtocolError as error:
            # The peer's garbage fails its stream, as the relay's does; the connection lives on.
            answers.append(encode_frame(Error(code=error.code, reason=error.reason)))
            self._decoders.pop(stream_id, None)
            if not end_stream:
                self._failed.add(stream_id)
            end_stream = True
        if end_stream:
            self._decoders.pop(stream_id, None)
        if answers or end_stream:
            self._link.send_stream_data(stream_id, b"".join(answers), end_stream)

    def _answer(self, frame: Frame) -> bytes:
        """The encoded answer to one request (empty for a quiet ACK)."""
        match frame:
            case Hello() if self._device is None:
                self._claimed = (frame.user_id, frame.device_id)
                return encode_frame(Challenge(nonce=secrets.token_bytes(NONCE_SIZE)))
            case Authenticate() if self._claimed is not None and self._device is None:
                self._authenticated(self._claimed)
                return encode_frame(Authenticated())
            case Send() if self._device is not None:
                return encode_frame(self._forwarder.forward(self._device, frame))
            case Ack() if self._device is not None:
                count = len(self._unacknowledged.intersection(frame.envelope_ids))
                self._unacknowledged.difference_update(frame.envelope_ids)
                return encode_frame(Acked(count=count)) if frame.answer else b""
            case _:
                return encode_frame(Error(
                    code=ErrorCode.UNEXPECTED_FRAME,
                    reason=f"{type(frame).__name__} is not served here (the forward ceiling "
                           "serves HELLO, AUTHENTICATE, then SEND and ACK)"))

    def _authenticated(self, device: DeviceKey) -> None:
        """Accept the device unchecked; open its push stream, with nothing queued."""
        self._device = device
        self._forwarder.attach(device, self)
        self._push_stream = self._link.new_stream(unidirectional=True)
        self._link.send_stream_data(self._push_stream, encode_frame(QueueEmpty()))


def forward_configuration(tls_dir: Path) -> tuple[QuicConfiguration, Path]:
    """The relay's server configuration (relay/server.py) with a development certificate
    made in ``tls_dir``; and that certificate's path."""
    cert, key, _ = ensure_development_certificate(tls_dir,
                                                  now=datetime.datetime.now(datetime.UTC))
    configuration = QuicConfiguration(
        is_client=False, alpn_protocols=[ALPN], idle_timeout=IDLE_TIMEOUT_SECONDS,
        max_datagram_frame_size=DATAGRAM_FRAME_SIZE,
        max_stream_data=4 * 1024 * 1024, max_data=RECEIVE_WINDOW_BYTES)
    configuration.load_cert_chain(str(cert), str(key))
    return configuration, cert


@dataclass(frozen=True)
class ForwardServer:
    """Handed to ``run_forward_server``'s caller once it listens."""

    port: int
    cert: Path
    forwarder: Forwarder


async def run_forward_server(tls_dir: Path, port: int = 0, *,
                             task_status: trio.TaskStatus[ForwardServer] = (
                                 trio.TASK_STATUS_IGNORED)) -> None:
    """Forward on 127.0.0.1:``port`` (0: any) until cancelled; reports a ``ForwardServer``."""
    configuration, cert = forward_configuration(tls_dir)
    forwarder = Forwarder()
    with open_udp_socket("127.0.0.1", port) as sock:
        # The relay's stream and receive budgets; every bench client comes from loopback, so
        # the per-address budget meant for floods is lifted, as for the relays the bench starts.
        endpoint = QuicEndpoint(sock, configuration=configuration,
                                on_connection=lambda link: ForwardSession(forwarder, link),
                                peer_streams=MAX_CONCURRENT_STREAMS,
                                receive_window=RECEIVE_WINDOW_BYTES,
                                connections_per_address=BENCH_CONNECTIONS)
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.run)
            task_status.started(ForwardServer(port=endpoint.local_address[1], cert=cert,
                                              forwarder=forwarder))
            await trio.sleep_forever()


async def serve(tls_dir: Path, port: int = 0) -> None:
    """``run_forward_server`` until SIGTERM or SIGINT, announcing ``relay_listening``."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            server: ForwardServer = await nursery.start(run_forward_server, tls_dir, port)
            print(json.dumps({"event": "relay_listening", "port": server.port,
                              "cert": str(server.cert)}), file=sys.stderr, flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
