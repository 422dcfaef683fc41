"""The ``transport`` scenario: the ceiling that QUIC in Python sets.

The same traffic shape as ``live`` (each client keeps ``window`` frames of the
same size in flight on one stream), sent over bare aioquic streams to the echo
server (bench/echo_server.py, in a process of its own), which runs the relay's own
QUIC shell and echoes every byte. Its CPU per echoed frame is what the relay's CPU per
delivered message is compared with, in the same run. ``transport --forward``
(bench/forward.py) is the other ceiling: the relay's traffic shape without its work.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from aioquic.quic import events

from bench.live import HEADER
from bench.spawn import BIN, SpawnedServer, cpu_seconds, peak_rss_mib, spawn_server
from bench.stats import latency_summary
from bench.stats import rate as rate_of
from client.connection import client_configuration, open_client_endpoint
from transport.quic import QuicLink
from wire.codec import FrameDecoder, encode_frame
from wire.frames import (
    Send,
)

__all__ = ["EchoClient", "run_transport", "with_relay"]


class EchoClient:
    """Keeps ``window`` frames in flight on one stream; measures each echo."""

    def __init__(self, index: int, *, messages: int, size: int, window: int,
                 latencies_ms: list[float], finished: trio.Event) -> None:
        self.index = index
        self.messages = messages
        self.size = size
        self.window = window
        self.latencies_ms = latencies_ms
        self.finished = finished
        self.connected = trio.Event()
        self.decoder = FrameDecoder()
        self.sent = 0
        self.echoed = 0
        self.stream_id: int | None = None
        self.link: QuicLink | None = None
        self.error: str | None = None

    def start(self) -> None:
        assert self.link is not None
        self.stream_id = self.link.new_stream()
        for _ in range(min(self.window, self.messages)):
            self._send_next()

    def _send_next(self) -> None:
        assert self.link is not None and self.stream_id is not None
        payload = HEADER.pack(time.time_ns(), self.index, self.sent) + bytes(
            self.size - HEADER.size)
        frame = Send(recipient_user_id="0" * 32, client_message_id=self.sent,
                     payloads={1: payload})
        self.link.send_stream_data(self.stream_id, encode_frame(frame))
        self.sent += 1

    def quic_events(self, link: QuicLink, batch: list[events.QuicEvent]) -> None:
        for event in batch:
            if isinstance(event, events.HandshakeCompleted):
                self.connected.set()
            elif isinstance(event, events.StreamDataReceived):
                now = time.time_ns()
                for frame in self.decoder.feed(event.data):
                    assert isinstance(frame, Send)
                    sent_ns, _, _ = HEADER.unpack_from(frame.payloads[1])
                    self.latencies_ms.append((now - sent_ns) / 1e6)
                    self.echoed += 1
                    if self.sent < self.messages:
                        self._send_next()
                if self.echoed >= self.messages:
                    self.finished.set()
            elif isinstance(event, events.ConnectionTerminated):
                self.error = f"closed: {event.reason_phrase}"
                self.connected.set()
                self.finished.set()


async def _echo_run(*, devices: int, messages: int, size: int, window: int,
                    time_limit: float, relay_cpu: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cryptopass-echo-") as temporary:
        command = [str(BIN / "cryptopass-bench"), "internal", "echo-server", temporary]
        async with spawn_server(command, cpu=relay_cpu, make=_spawned) as server:
            listening = await server.wait_for("relay_listening")
            cert = Path(str(listening["cert"]))
            latencies: list[float] = []
            clients = []
            async with open_client_endpoint() as endpoint:
                for index in range(devices):
                    client = EchoClient(index, messages=messages, size=size, window=window,
                                        latencies_ms=latencies, finished=trio.Event())
                    client.link = endpoint.connect(
                        ("127.0.0.1", server.port),
                        client_configuration(ca=cert, server_name="localhost"), client)
                    clients.append(client)
                with trio.fail_after(time_limit):
                    for client in clients:
                        await client.connected.wait()
                cpu_before = cpu_seconds(server.pid)
                datagrams_before = endpoint.datagrams_sent + endpoint.datagrams_received
                started = time.perf_counter()
                for client in clients:
                    client.start()
                with trio.move_on_after(time_limit):
                    for client in clients:
                        await client.finished.wait()
                seconds = time.perf_counter() - started
                used = cpu_seconds(server.pid) - cpu_before
                datagrams = (endpoint.datagrams_sent + endpoint.datagrams_received
                             - datagrams_before)
                for client in clients:
                    assert client.link is not None
                    client.link.close(0)
            echoed = sum(client.echoed for client in clients)
            errors = [client.error for client in clients if client.error]
            return {"scenario": "transport", "devices": devices,
                    "messages_per_device": messages, "size": size, "window": window,
                    "echoed": echoed, "seconds": round(seconds, 3),
                    "messages_per_second": rate_of(echoed, seconds),
                    "latency_ms": latency_summary(latencies),
                    "errors": len(errors) + (devices * messages - echoed),
                    "error_samples": errors[:5],
                    "server_cpu_us_per_message": round(used / max(echoed, 1) * 1e6, 1),
                    "server_datagrams_per_message": round(datagrams / max(echoed, 1), 2),
                    "server_peak_rss_mib": round(peak_rss_mib(server.pid), 1)}


async def run_transport(*, devices: int, messages: int, size: int, window: int,
                        time_limit: float, compare: bool,
                        relay_cpu: int | None) -> dict[str, Any]:
    """The echo ceiling, and (``compare``) the relay under the same load with the ratios."""
    ceiling = await _echo_run(devices=devices, messages=messages, size=size, window=window,
                              time_limit=time_limit, relay_cpu=relay_cpu)
    if not compare:
        return ceiling
    from bench import scenarios  # noqa: PLC0415 - loaded only to compare
    from bench.target import TargetOptions, open_target  # noqa: PLC0415

    async with open_target(TargetOptions(relay_cpu=relay_cpu)) as target:
        relay = await scenarios.live(target, devices=devices, messages=messages, size=size,
                                     rate=0, window=window, processes=1,
                                     time_limit=time_limit)
    return with_relay(ceiling, relay)


def with_relay(ceiling: dict[str, Any], relay: dict[str, Any]) -> dict[str, Any]:
    """A ceiling's result with the relay's run of the same load beside it (``relay``), their
    ratios (``relay_over_ceiling``) and the errors of both."""
    ratios: dict[str, float | None] = {
        field: _ratio(relay.get(field), ceiling.get(field))
        for field in ("server_cpu_us_per_message", "server_datagrams_per_message",
                      "messages_per_second")}
    for name in ("p50", "p99"):
        ratios[f"latency_{name}"] = _ratio((relay.get("latency_ms") or {}).get(name),
                                           (ceiling.get("latency_ms") or {}).get(name))
    return {**ceiling, "errors": ceiling["errors"] + relay["errors"], "relay": relay,
            "relay_over_ceiling": ratios}


def _ratio(relay: float | None, ceiling: float | None) -> float | None:
    """relay / ceiling, or None when either is unknown or the ceiling is 0 (a run too
    short for the 10 ms resolution of process CPU time)."""
    if relay is None or not ceiling:
        return None
    return round(relay / ceiling, 2)


def _spawned(process: trio.Process) -> SpawnedServer:
    return SpawnedServer(process=process)
