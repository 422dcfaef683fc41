"""The ``live`` load: connected devices sending to random others, latency end to end.

One process drives a slice of the devices over ONE client endpoint (one UDP
socket for all its connections). The send plan is drawn from a seed, so every
process of a multi-process run knows how many messages its own devices must
receive. Timestamps are wall-clock nanoseconds so that a message sent by one
process and received by another still has a latency. Each device sends and receives
through a `bench.live_link.Link`: plaintext frames, or (``encrypted``) texts through the
end-to-end library, whose sessions a warm-up sets up before measuring.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import trio

from bench.encrypted_link import (
    EncryptedLink,
    check_text_size,
    expected_warm_up,
    open_encrypted_links,
    warm_up,
)
from bench.live_link import HEADER, Link, LiveResult, PlaintextLink, Receiver
from bench.provision import BenchDevice
from client.connection import (
    ConnectionClosed,
    RelayClient,
    RelayError,
    connect_relay,
    open_client_endpoint,
)
from transport.quic import QuicEndpoint

__all__ = ["HEADER", "LiveConfig", "LiveResult", "Synchronise", "connect_devices", "make_plan",
           "run_live"]

PACING_TICK_SECONDS = 0.001
"""Paced sends leave in ticks of at least this length (one wake-up per tick)."""

CONNECT_CONCURRENCY = 32
"""Handshakes in flight while connecting the devices (bounds the setup burst)."""

Synchronise = Callable[[str], Awaitable[None]]
"""Waits at a named phase until every load process reached it (``bench.worker_pool``)."""


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
    """Payload bytes per message (at least HEADER.size; encrypted: text bytes)."""
    rate: float
    """Messages per second this process sends in total; 0 = as fast as the window allows."""
    window: int
    """Sends in flight per device when sending flat out."""
    seed: int
    encrypted: bool = False
    """Send end-to-end encrypted texts through `client.messenger` (`bench.encrypted_link`)."""
    timeout: float = 120.0


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


async def run_live(config: LiveConfig, result: LiveResult | None = None,
                   on_start: Callable[[], None] | None = None,
                   synchronise: Synchronise | None = None) -> LiveResult:
    """Connect the local devices, run the plan, and return what they saw.

    Args:
        result: where to count (a caller may read it while the run goes on).
        on_start: called once every device is connected (and, encrypted, every session
            set up), just before sending (where a caller starts measuring the relay's CPU).
        synchronise: with several load processes, waits at the phases ``published``
            (encrypted: every device's prekeys are on the relay) and ``start``.
    """
    if config.encrypted:
        check_text_size(config.size)
    elif config.size < HEADER.size:
        raise ValueError(f"the payload size must be at least {HEADER.size} bytes")
    plan = make_plan(len(config.devices), config.messages, config.seed)
    local = set(config.local)
    result = result if result is not None else LiveResult()
    expected = dict.fromkeys(config.local, 0)
    for recipients in plan:
        for recipient in recipients:
            if recipient in local:
                expected[recipient] += 1
    result.expected = sum(expected.values())
    warm_ups = (expected_warm_up(plan, config.local) if config.encrypted
                else dict.fromkeys(config.local, 0))
    async with open_client_endpoint(config.host) as endpoint, AsyncExitStack() as stack:
        connected = await connect_devices(stack, endpoint, config.host, config.port, config.ca,
                                          [config.devices[index] for index in config.local])
        clients = dict(zip(config.local, connected, strict=True))
        links: dict[int, Link]
        if config.encrypted:
            encrypted = await open_encrypted_links(stack, clients, config.devices,
                                                   f"{config.host}:{config.port}", config.ca)
            links = dict(encrypted)
        else:
            links = {index: PlaintextLink(client) for index, client in clients.items()}
        async with trio.open_nursery() as nursery:
            receivers = {index: Receiver(result, expected[index], warm_ups[index])
                         for index in config.local}
            for index, receiver in receivers.items():
                nursery.start_soon(links[index].receive, receiver)
            with trio.fail_after(config.timeout):
                for receiver in receivers.values():
                    await receiver.drained.wait()
            if config.encrypted:
                if synchronise is not None:
                    await synchronise("published")
                await _warm_up(config, plan, encrypted, receivers, result)
            if synchronise is not None:
                await synchronise("start")
            if on_start is not None:
                on_start()
            result.first_send_ns = time.time_ns()
            cpu_at_start = time.process_time()
            datagrams_at_start = endpoint.datagrams_sent + endpoint.datagrams_received
            with trio.move_on_after(config.timeout) as deadline:
                await _send_all(config, plan, links, result)
                for receiver in receivers.values():
                    await receiver.complete.wait()
            result.load_cpu_seconds = time.process_time() - cpu_at_start
            result.datagrams = (endpoint.datagrams_sent + endpoint.datagrams_received
                                - datagrams_at_start)
            if deadline.cancelled_caught:
                result.error(f"timed out after {config.timeout} s with "
                             f"{result.delivered}/{result.expected} delivered")
            nursery.cancel_scope.cancel()
    return result


async def _warm_up(config: LiveConfig, plan: Sequence[Sequence[int]],
                   links: dict[int, EncryptedLink], receivers: dict[int, Receiver],
                   result: LiveResult) -> None:
    """Set up every session of the plan before measuring (see bench.encrypted_link)."""
    with trio.move_on_after(config.timeout) as deadline:
        await warm_up(links, plan, config.devices, result)
        for receiver in receivers.values():
            await receiver.warmed.wait()
    if deadline.cancelled_caught:
        result.error(f"warm-up timed out after {config.timeout} s")


async def _send_one(link: Link, recipient: BenchDevice, sender: int, sequence: int,
                    size: int, result: LiveResult) -> None:
    try:
        await link.send(recipient, sender, sequence, size)
        result.sent += 1
    except Exception as error:  # counted and reported, never fatal
        result.error(f"send {sender}/{sequence}: {type(error).__name__}: {error}")


async def _send_all(config: LiveConfig, plan: Sequence[Sequence[int]],
                    links: dict[int, Link], result: LiveResult) -> None:
    devices, size = config.devices, config.size
    async with trio.open_nursery() as nursery:
        if config.rate > 0:
            # Paced: interleave the local senders' plans and send each message at its time.
            order = [(sender, sequence) for sequence in range(config.messages)
                     for sender in config.local]
            started = trio.current_time()
            number = 0
            while number < len(order):
                # Every message already due leaves now; then sleep at least a tick, so a
                # high rate costs one wake-up per tick, not one per message. Latency is
                # still timed from each message's own send (its payload's stamp).
                elapsed = trio.current_time() - started
                due_now = min(len(order), int(elapsed * config.rate) + 1)
                for sender, sequence in order[number:due_now]:
                    nursery.start_soon(_send_one, links[sender], devices[plan[sender][sequence]],
                                       sender, sequence, size, result)
                number = max(number, due_now)
                if number < len(order):
                    await trio.sleep_until(max(started + number / config.rate,
                                               trio.current_time() + PACING_TICK_SECONDS))
            return
        for sender in config.local:
            sequences = iter(range(config.messages))
            for _ in range(min(config.window, config.messages)):
                nursery.start_soon(_send_window, links[sender], sender, sequences, plan,
                                   devices, size, result)


async def _send_window(link: Link, sender: int, sequences: Iterator[int],
                       plan: Sequence[Sequence[int]], devices: Sequence[BenchDevice],
                       size: int, result: LiveResult) -> None:
    # The window's tasks share one iterator: each takes the next message when free.
    for sequence in sequences:
        await _send_one(link, devices[plan[sender][sequence]], sender, sequence, size, result)
