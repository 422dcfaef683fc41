"""The ``live`` load: connected devices sending to random others, latency end to end.

One process drives a slice of the devices over ONE client endpoint (one UDP
socket for all its connections). The send plan is drawn from a seed, so every
process of a multi-process run knows how many messages its own devices must
receive. Timestamps are wall-clock nanoseconds so that a message sent by one
process and received by another still has a latency.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bench.provision import BenchDevice
from relay.client import (
    ConnectionClosed,
    RelayClient,
    RelayError,
    connect_relay,
    open_client_endpoint,
)
from relay.frames import Deliver, QueueEmpty
from relay.quic import QuicEndpoint

__all__ = ["HEADER", "LiveConfig", "LiveResult", "make_plan", "run_live"]

HEADER = struct.Struct(">QII")
"""Payload prefix: wall-clock send time (ns), sender index, sequence number."""

CONNECT_CONCURRENCY = 32
"""Handshakes in flight while connecting the devices (bounds the setup burst)."""

MAX_ERROR_SAMPLES = 5


@dataclass(frozen=True)
class LiveConfig:
    host: str
    port: int
    ca: Path | None
    devices: tuple[BenchDevice, ...]
    """Every device of the run, in plan order."""
    local: tuple[int, ...]
    """Indices (into ``devices``) driven by this process."""
    messages: int
    """Messages each device sends."""
    size: int
    """Payload bytes per message (at least HEADER.size)."""
    rate: float
    """Messages per second this process sends in total; 0 = as fast as the window allows."""
    window: int
    """Sends in flight per device when sending flat out."""
    seed: int
    start_at_ns: int = 0
    """Wall-clock time at which sending starts (processes start together); 0 = now."""
    timeout: float = 120.0


@dataclass
class LiveResult:
    sent: int = 0
    delivered: int = 0
    expected: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    duplicates: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    first_send_ns: int = 0
    last_receipt_ns: int = 0

    def error(self, description: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(description)


def make_plan(device_count: int, messages: int, seed: int) -> list[list[int]]:
    """For each sender, the recipients of its messages (never itself), in send order."""
    if device_count < 2:
        raise ValueError("the live load needs at least 2 devices")
    chooser = random.Random(seed)  # noqa: S311 - a reproducible load, not a secret
    plan = []
    for sender in range(device_count):
        recipients = []
        for _ in range(messages):
            recipient = chooser.randrange(device_count - 1)
            recipients.append(recipient + (recipient >= sender))
        plan.append(recipients)
    return plan


class _Receiver:
    def __init__(self, client: RelayClient, result: LiveResult, expected: int) -> None:
        self.client = client
        self.result = result
        self.expected = expected
        self.received = 0
        self.seen: set[tuple[int, int]] = set()
        self.drained = trio.Event()
        self.complete = trio.Event()
        if expected == 0:
            self.complete.set()

    async def run(self) -> None:
        try:
            async for delivery in self.client.deliveries():
                if isinstance(delivery, QueueEmpty):
                    self.drained.set()
                elif isinstance(delivery, Deliver):
                    self._receive(delivery)
        except ConnectionClosed as error:
            self.result.error(f"receiver closed: {error}")
            self.drained.set()
            self.complete.set()

    def _receive(self, delivery: Deliver) -> None:
        now = time.time_ns()
        self.client.acknowledge(delivery.envelope_id)
        if not self.drained.is_set():
            return  # left over from an earlier run on the same relay
        sent_ns, sender, sequence = HEADER.unpack_from(delivery.ciphertext)
        if (sender, sequence) in self.seen:
            self.result.duplicates += 1
            return
        self.seen.add((sender, sequence))
        self.result.delivered += 1
        self.result.latencies_ms.append((now - sent_ns) / 1e6)
        self.result.last_receipt_ns = max(self.result.last_receipt_ns, now)
        self.received += 1
        if self.received >= self.expected:
            self.complete.set()


async def connect_devices(stack: AsyncExitStack, endpoint: QuicEndpoint, host: str, port: int,
                          ca: Path | None, devices: Sequence[BenchDevice], *,
                          failures: list[str] | None = None) -> list[RelayClient]:
    """Connect and authenticate ``devices`` over ``endpoint``; ``stack`` closes them.

    Handshakes run CONNECT_CONCURRENCY at a time, each in its own connection
    context entered into ``stack``. With ``failures``, a device that cannot
    connect is recorded there and left out (a scenario counting connections);
    without it, the first failure ends the run.
    """
    clients: list[RelayClient | None] = [None] * len(devices)
    limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)

    async def connect(position: int, device: BenchDevice,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with AsyncExitStack() as connection:
            async with limiter:  # only the handshake counts against the limit
                try:
                    client = await connection.enter_async_context(connect_relay(
                        host, port, ca=ca, server_name="localhost", endpoint=endpoint))
                    await client.authenticate(device.user_id, device.device_id, device.key)
                except (trio.TooSlowError, ConnectionClosed, RelayError) as error:
                    if failures is None:
                        raise
                    failures.append(f"{type(error).__name__}: {error}")
                    task_status.started()
                    return
            clients[position] = client
            task_status.started()
            await trio.sleep_forever()

    holder = await stack.enter_async_context(trio.open_nursery())
    stack.callback(holder.cancel_scope.cancel)
    async with trio.open_nursery() as starting:
        for position, device in enumerate(devices):
            starting.start_soon(holder.start, connect, position, device)
    return [client for client in clients if client is not None]


def _payload(sender: int, sequence: int, size: int) -> bytes:
    return HEADER.pack(time.time_ns(), sender, sequence) + bytes(size - HEADER.size)


async def run_live(config: LiveConfig, result: LiveResult | None = None,
                   on_start: Callable[[], None] | None = None) -> LiveResult:
    """Connect the local devices, run the plan, and return what they saw.

    Args:
        result: where to count (a caller may read it while the run goes on).
        on_start: called once every device is connected, just before sending
            (where a caller starts measuring the relay's CPU).
    """
    if config.size < HEADER.size:
        raise ValueError(f"the payload size must be at least {HEADER.size} bytes")
    plan = make_plan(len(config.devices), config.messages, config.seed)
    local = set(config.local)
    result = result if result is not None else LiveResult()
    expected = {index: 0 for index in config.local}
    for recipients in plan:
        for recipient in recipients:
            if recipient in local:
                expected[recipient] += 1
    result.expected = sum(expected.values())
    async with open_client_endpoint(config.host) as endpoint, AsyncExitStack() as stack:
        connected = await connect_devices(stack, endpoint, config.host, config.port, config.ca,
                                          [config.devices[index] for index in config.local])
        clients = dict(zip(config.local, connected, strict=True))
        async with trio.open_nursery() as nursery:
            receivers = {index: _Receiver(clients[index], result, expected[index])
                         for index in config.local}
            for receiver in receivers.values():
                nursery.start_soon(receiver.run)
            with trio.fail_after(config.timeout):
                for receiver in receivers.values():
                    await receiver.drained.wait()
            if config.start_at_ns:
                await trio.sleep(max(0.0, (config.start_at_ns - time.time_ns()) / 1e9))
            if on_start is not None:
                on_start()
            result.first_send_ns = time.time_ns()
            with trio.move_on_after(config.timeout) as deadline:
                await _send_all(config, plan, clients, result)
                for receiver in receivers.values():
                    await receiver.complete.wait()
            if deadline.cancelled_caught:
                result.error(f"timed out after {config.timeout} s with "
                             f"{result.delivered}/{result.expected} delivered")
            nursery.cancel_scope.cancel()
    return result


async def _send_one(client: RelayClient, recipient: BenchDevice, sender: int, sequence: int,
                    size: int, result: LiveResult) -> None:
    try:
        await client.send(recipient.user_id, {recipient.device_id: _payload(sender, sequence,
                                                                            size)},
                          client_message_id=sequence)
        result.sent += 1
    except (RelayError, ConnectionClosed) as error:
        result.error(f"send {sender}/{sequence}: {error}")


async def _send_all(config: LiveConfig, plan: Sequence[Sequence[int]],
                    clients: dict[int, RelayClient], result: LiveResult) -> None:
    devices, size = config.devices, config.size
    async with trio.open_nursery() as nursery:
        if config.rate > 0:
            # Paced: interleave the local senders' plans and send each message at its time.
            order = [(sender, sequence) for sequence in range(config.messages)
                     for sender in config.local]
            started = trio.current_time()
            for number, (sender, sequence) in enumerate(order):
                due = started + number / config.rate
                if due > trio.current_time():
                    await trio.sleep_until(due)
                nursery.start_soon(_send_one, clients[sender], devices[plan[sender][sequence]],
                                   sender, sequence, size, result)
            return
        for sender in config.local:
            sequences = iter(range(config.messages))
            for _ in range(min(config.window, config.messages)):
                nursery.start_soon(_send_window, clients[sender], sender, sequences, plan,
                                   devices, size, result)


async def _send_window(client: RelayClient, sender: int, sequences: Iterator[int],
                       plan: Sequence[Sequence[int]], devices: Sequence[BenchDevice],
                       size: int, result: LiveResult) -> None:
    # The window's tasks share one iterator: each takes the next message when free.
    for sequence in sequences:
        await _send_one(client, devices[plan[sender][sequence]], sender, sequence, size, result)
