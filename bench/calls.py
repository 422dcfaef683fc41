"""The ``calls`` scenario: what one relay process does as a media relay.

Pairs of connected bench devices each hold a 1:1 call (`RelayClient.open_call`, then
`join_call` by the other): both send MEDIA_RATE datagrams a second of MEDIA_PAYLOAD_BYTES, the
size of a 20 ms audio frame under SFrame, stamped with the send time. Both ends live in this
process, so each datagram's latency is one clock's difference: client -> relay -> client.
The same run measures a bare QUIC datagram echo (bench/echo_server.py, the relay's own QUIC
shell with a handler that only echoes) at the same datagram rate: client -> echo -> client
crosses the same two QUIC legs, so the difference is what the relay's forwarding adds.

Then the ramp: the number of concurrent calls doubles (starting at ``--calls``) until more
than LOSS_LIMIT of the datagrams are lost, and one step between the last good and the first
bad count refines the answer. The load generator is one Python process too: each step
reports the send rate it achieved against its target and the relay's share of one CPU, so
a reader can tell which one ran out first (``generator_kept_pace``).
"""

from __future__ import annotations

import struct
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from aioquic.quic import events

from bench.live import connect_devices
from bench.spawn import BIN, SpawnedServer, cpu_seconds, spawn_server
from bench.stats import latency_summary
from client.call_media import CallHandle
from client.connection import RelayClient, client_configuration, open_client_endpoint
from transport.quic import QuicLink

if TYPE_CHECKING:
    from bench.target import Target

__all__ = ["LOSS_LIMIT", "MEDIA_PAYLOAD_BYTES", "MEDIA_RATE", "run_calls"]

MEDIA_RATE = 50
"""Datagrams a second in each direction of a call: 20 ms audio frames."""
MEDIA_PAYLOAD_BYTES = 183
"""A 160-byte audio frame under SFrame: a 7-byte header (4-byte KID, 2-byte counter) and
the 16-byte tag."""
LOSS_LIMIT = 0.01
"""The ramp stops at the first count of calls that loses more than this share."""
PACE_SHARE = 0.95
"""A step counts only if the generator sent at least this share of its target rate (else it
measured the generator, not the relay)."""
GRACE_SECONDS = 0.5
"""How long receivers still wait after the last send: later datagrams count lost."""
_STAMP = struct.Struct(">Q")  # perf_counter_ns at sending


@dataclass
class _Tally:
    sent: int = 0
    received: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self, seconds: float) -> dict[str, Any]:
        lost = max(0, self.sent - self.received)
        return {"datagrams_sent": self.sent, "datagrams_received": self.received,
                "loss": round(lost / self.sent, 4) if self.sent else 0.0,
                "datagrams_per_second": round(self.received / seconds, 1) if seconds else 0.0,
                "latency_ms": latency_summary(self.latencies_ms)}


def _payload() -> bytes:
    return _STAMP.pack(time.perf_counter_ns()) + bytes(MEDIA_PAYLOAD_BYTES - _STAMP.size)


def _arrived(tally: _Tally, payload: bytes) -> None:
    if len(payload) >= _STAMP.size:
        (sent_ns,) = _STAMP.unpack_from(payload)
        tally.received += 1
        tally.latencies_ms.append((time.perf_counter_ns() - sent_ns) / 1e6)


async def _paced(seconds: float, rate: int, send: Any) -> None:
    """Call ``send()`` ``rate`` times a second for ``seconds`` (each tick sends for all)."""
    start = trio.current_time()
    for tick in range(max(1, round(seconds * rate))):
        await trio.sleep_until(start + tick / rate)
        send()


async def _relay_step(clients: list[RelayClient], calls: int, seconds: float,
                      server_pid: int | None) -> dict[str, Any]:
    """``calls`` concurrent calls for ``seconds``; what the receivers saw, how closely the
    generator kept its sending pace, and the relay's share of one CPU meanwhile."""
    handles: list[CallHandle] = []
    for index in range(calls):
        caller, callee = clients[2 * index], clients[2 * index + 1]
        assert callee.user_id is not None
        opened = await caller.open_call([callee.user_id])
        handles += [opened, await callee.join_call(opened.call_id)]
    tally = _Tally()

    async def receive(handle: CallHandle) -> None:
        async for payload in handle:
            _arrived(tally, payload)

    def send() -> None:
        for handle in handles:
            handle.send(_payload())
        tally.sent += len(handles)

    cpu_before = cpu_seconds(server_pid) if server_pid is not None else None
    async with trio.open_nursery() as nursery:
        for handle in handles:
            nursery.start_soon(receive, handle)
        started = time.perf_counter()
        await _paced(seconds, MEDIA_RATE, send)
        sending = time.perf_counter() - started + 1 / MEDIA_RATE  # the last tick's share
        await trio.sleep(GRACE_SECONDS)
        elapsed = time.perf_counter() - started - GRACE_SECONDS
        nursery.cancel_scope.cancel()
    relay_cpu = (cpu_seconds(server_pid) - cpu_before
                 if server_pid is not None and cpu_before is not None else None)
    for handle in handles[::2]:
        await handle.leave()
    target_rate = len(handles) * MEDIA_RATE
    return {"calls": calls, **tally.summary(elapsed),
            "dropped_at_sender": sum(handle.dropped_sent for handle in handles),
            "send_rate_target": target_rate,
            "send_rate_achieved": round(tally.sent / sending, 1) if sending else 0.0,
            "relay_cpu_share": round(relay_cpu / (elapsed + GRACE_SECONDS), 2)
            if relay_cpu is not None else None,
            "relay_cpu_us_per_datagram": round(relay_cpu / max(tally.received, 1) * 1e6, 1)
            if relay_cpu is not None else None}


class _EchoClient:
    """One connection to the echo server; counts datagrams coming back."""

    def __init__(self, tally: _Tally) -> None:
        self.tally = tally
        self.connected = trio.Event()
        self.link: QuicLink | None = None

    def quic_events(self, link: QuicLink, batch: list[events.QuicEvent]) -> None:
        for event in batch:
            if isinstance(event, events.HandshakeCompleted | events.ConnectionTerminated):
                self.connected.set()
            elif isinstance(event, events.DatagramFrameReceived):
                _arrived(self.tally, event.data)


async def _echo_step(connections: int, seconds: float, time_limit: float) -> dict[str, Any]:
    """The baseline: ``connections`` clients each send 2 x MEDIA_RATE datagrams a second
    (a call's two directions) to the echo server."""
    with tempfile.TemporaryDirectory(prefix="cryptopass-echo-") as temporary:
        command = [str(BIN / "cryptopass-bench"), "internal", "echo-server", temporary]
        async with spawn_server(command, make=_spawned) as server, \
                open_client_endpoint() as endpoint:
            listening = await server.wait_for("relay_listening")
            configuration = client_configuration(ca=Path(str(listening["cert"])),
                                                 server_name="localhost")
            tally = _Tally()
            clients = [_EchoClient(tally) for _ in range(connections)]
            for client in clients:
                client.link = endpoint.connect(("127.0.0.1", server.port), configuration,
                                               client)
            with trio.fail_after(time_limit):
                for client in clients:
                    await client.connected.wait()

            def send() -> None:
                for client in clients:
                    assert client.link is not None
                    client.link.send_datagram(_payload())
                tally.sent += len(clients)

            cpu_before = cpu_seconds(server.pid)
            started = time.perf_counter()
            await _paced(seconds, 2 * MEDIA_RATE, send)
            await trio.sleep(GRACE_SECONDS)
            elapsed = time.perf_counter() - started - GRACE_SECONDS
            used = cpu_seconds(server.pid) - cpu_before
            for client in clients:
                assert client.link is not None
                client.link.close(0)
    return {"connections": connections, **tally.summary(elapsed),
            "server_cpu_us_per_datagram": round(used / max(tally.received, 1) * 1e6, 1)}


def _spawned(process: trio.Process) -> SpawnedServer:
    return SpawnedServer(process=process)


def _difference(relay: dict[str, Any], echo: dict[str, Any], name: str) -> float | None:
    relay_ms, echo_ms = relay.get("latency_ms") or {}, echo.get("latency_ms") or {}
    if name not in relay_ms or name not in echo_ms:
        return None
    return round(float(relay_ms[name]) - float(echo_ms[name]), 3)


async def run_calls(target: Target, *, calls: int, seconds: float, ramp: bool,
                    ramp_max: int, ramp_seconds: float, time_limit: float) -> dict[str, Any]:
    """The measured run, the echo baseline, and (``ramp``) the capacity search."""
    most = max(calls, ramp_max if ramp else calls)
    devices = await target.provisioner.provision(2 * most)
    server_pid = target.server.pid if target.server is not None else None
    async with AsyncExitStack() as stack:
        endpoint = await stack.enter_async_context(open_client_endpoint())
        # (connect_devices enters a nursery into the stack: no cancel scope around it)
        clients = await connect_devices(stack, endpoint, target.host, target.port, target.ca,
                                        devices)
        generator_before = time.process_time()
        relay = await _relay_step(clients, calls, seconds, server_pid)
        relay["generator_cpu_seconds"] = round(time.process_time() - generator_before, 2)
        # The baseline right after, before the ramp loads the machine differently.
        echo = await _echo_step(calls, seconds, time_limit)
        steps = await _ramp(clients, calls, ramp_max, ramp_seconds, server_pid) if ramp else []
    carried = [step["calls"] for step in steps if _passed(step)]
    loaded = max((step for step in steps if _passed(step)), key=lambda step: step["calls"],
                 default=relay)  # the relay's cost per datagram under the most load it carried
    cost = loaded.get("relay_cpu_us_per_datagram")
    return {
        "scenario": "calls", "calls": calls, "seconds": seconds,
        "media_rate_per_direction": MEDIA_RATE, "payload_bytes": MEDIA_PAYLOAD_BYTES,
        "forwarded_datagrams_per_second": relay["datagrams_per_second"],
        "loss": relay["loss"],
        "relay_latency_ms": relay["latency_ms"], "echo_latency_ms": echo["latency_ms"],
        "added_latency_ms": {name: _difference(relay, echo, name) for name in ("p50", "p99")},
        "relay": relay, "echo": echo, "ramp": steps,
        "calls_carried_below_1pct_loss": max(carried) if carried else None,
        "ramp_stopped_by": _limit(steps, ramp_max),
        "generator_kept_pace": _kept_pace(relay),
        # One relay CPU's worth of calls at the measured cost (a call forwards 2 x MEDIA_RATE
        # datagrams a second): an estimate for when the generator ran out first.
        "calls_per_relay_cpu_estimate": round(1e6 / (cost * 2 * MEDIA_RATE)) if cost else None,
        "errors": 0,
    }


def _kept_pace(step: dict[str, Any]) -> bool:
    return bool(step["send_rate_achieved"] >= PACE_SHARE * step["send_rate_target"])


def _passed(step: dict[str, Any]) -> bool:
    return _kept_pace(step) and step["loss"] <= LOSS_LIMIT


async def _ramp(clients: list[RelayClient], start: int, ramp_max: int,
                seconds: float, server_pid: int | None) -> list[dict[str, Any]]:
    """Double the concurrent calls until loss passes LOSS_LIMIT, the load generator cannot
    keep its pace, or ``ramp_max``; then try the midpoint between the last good count and
    the first bad one."""
    steps: list[dict[str, Any]] = []
    count = max(1, start)
    good, bad = 0, None
    while count <= ramp_max:
        step = await _relay_step(clients, count, seconds, server_pid)
        steps.append(step)
        if not _passed(step):
            bad = count
            break
        good = count
        count = min(count * 2, ramp_max) if count < ramp_max else ramp_max + 1
    if bad is not None and bad - good > 1:
        steps.append(await _relay_step(clients, (good + bad) // 2, seconds, server_pid))
    return steps


def _limit(steps: list[dict[str, Any]], ramp_max: int) -> str | None:
    """What stopped the ramp: "loss" (the relay's answer), "load_generator" (this process
    could not send fast enough: the figure is a lower bound), or "ramp_max"."""
    failed = [step for step in steps if not _passed(step)]
    if not steps:
        return None
    if not failed:
        return "ramp_max" if any(step["calls"] == ramp_max for step in steps) else None
    return "loss" if _kept_pace(failed[0]) else "load_generator"
