"""The ``exchange`` load: sender -> receiver pairs, pipelined or one message at a time.

Device A_i sends to B_i (with ``both_ways``, B_i to A_i as well, the pair's share split
in two). Every payload starts with its send time (``time.perf_counter_ns()`` taken just
before ``RelayClient.send``) and its index; each receiver acknowledges every delivery and
records latency = receipt time - send time, valid because every device lives in this
process (one clock). Modes:

* ``pipelined``: each sender keeps up to ``window`` sends in flight;
* ``sequential``: one message at a time, the next send starting once the receiver got the
  previous one (the round latency: send, commit, push, receipt).

Throughput is delivered messages / (last receipt - start of sending); percentiles are
nearest-rank. Relay CPU is utime + stime of the relay processes from just before sending
until the receivers' acknowledgements are confirmed, per delivered message; client CPU
is this process's over the same interval.

``cryptopass-bench exchange`` runs it on the relay under test (`exchange_on`);
``cryptopass-bench cluster`` across relay nodes (bench/cluster.py).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import trio

from bench.provision import BenchDevice
from bench.spawn import cpu_seconds, peak_rss_mib
from bench.stats import latency_summary
from bench.stats import rate as rate_of
from client.connection import ConnectionClosed, RelayClient, RelayError, connect_relay
from wire.frames import Deliver, QueueEmpty

if TYPE_CHECKING:
    from bench.target import Target

__all__ = ["HEADER", "Connect", "ExchangeLoad", "Mode", "exchange_on", "run_exchange"]



class Mode(StrEnum):
    PIPELINED = "pipelined"
    SEQUENTIAL = "sequential"


HEADER = struct.Struct(">QQ")
"""Payload prefix: send time (perf_counter_ns) and message index."""

READY_SECONDS = 30.0
"""Bound on connecting, authenticating and draining what earlier runs left."""
SETTLE_SECONDS = 5.0
"""Bound on waiting for the relay to confirm the last acknowledgements."""
MAX_ERROR_SAMPLES = 5

Connect = Callable[[AsyncExitStack, int], Awaitable[RelayClient]]
"""Opens the connection of the device at a position (A_i at 2i, B_i at 2i + 1), entered
into the stack; the run authenticates it."""


@dataclass(frozen=True)
class ExchangeLoad:
    messages: int = 1000
    """Messages in all, shared out between the flows."""
    size: int = 256
    mode: Mode = Mode.PIPELINED
    window: int = 64
    """Sends in flight per sender (pipelined)."""
    both_ways: bool = False
    pairs: int = 1
    timeout: float = 120.0
    """Seconds before an unfinished run is reported as such."""

    def check(self) -> None:
        """Raise ValueError, naming the option, for a load that cannot run."""
        if self.size < HEADER.size:
            raise ValueError(f"--size must be at least {HEADER.size} bytes")
        if self.messages < len(self.flows()):
            raise ValueError(f"{len(self.flows())} messages at least: one per flow (a flow "
                             "per pair, two with --both-ways)")

    def flows(self) -> list[tuple[int, int, int]]:
        """(sender position, recipient position, messages) for each flow."""
        ends = [(2 * pair, 2 * pair + 1) for pair in range(self.pairs)]
        if self.both_ways:
            ends = [flow for sender, recipient in ends
                    for flow in ((sender, recipient), (recipient, sender))]
        count = len(ends)
        return [(sender, recipient, self.messages // count + int(number < self.messages % count))
                for number, (sender, recipient) in enumerate(ends)]


@dataclass
class Stats:
    """Shared by every sender and receiver of one run."""

    sent: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    duplicates: int = 0
    out_of_order: int = 0
    last_receipt_ns: int = 0

    def error(self, description: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(description)


class Receiver:
    """Consumes one client's deliveries for the whole run; acknowledges each."""

    def __init__(self, client: RelayClient, stats: Stats, expected: int) -> None:
        self.client = client
        self.stats = stats
        self.expected = expected
        self.backlog_drained = trio.Event()
        self.complete = trio.Event()
        self.arrived = trio.Event()
        self.seen: set[int] = set()
        self._last_index = -1
        if expected == 0:
            self.complete.set()

    async def run(self) -> None:
        try:
            async for delivery in self.client.deliveries():
                if isinstance(delivery, QueueEmpty):
                    self.backlog_drained.set()
                else:
                    self._receive(delivery)
        except ConnectionClosed as error:
            self.stats.error(f"receiver connection closed: {error}")
            self.backlog_drained.set()
            self.complete.set()

    def _receive(self, delivery: Deliver) -> None:
        now = time.perf_counter_ns()
        self.client.acknowledge(delivery.envelope_id)
        if not self.backlog_drained.is_set():
            return  # a stale backlog entry, not part of this run
        sent_ns, index = HEADER.unpack_from(delivery.ciphertext)
        if index in self.seen:
            self.stats.duplicates += 1
            return
        if index < self._last_index:
            self.stats.out_of_order += 1
        self._last_index = index
        self.seen.add(index)
        self.stats.latencies_ns.append(now - sent_ns)
        self.stats.last_receipt_ns = max(self.stats.last_receipt_ns, now)
        self.arrived.set()
        self.arrived = trio.Event()
        if len(self.seen) >= self.expected:
            self.complete.set()

    async def wait_for_index(self, index: int) -> None:
        while index not in self.seen and not self.complete.is_set():
            await self.arrived.wait()


def _payload(index: int, size: int) -> bytes:
    return HEADER.pack(time.perf_counter_ns(), index) + bytes(size - HEADER.size)


async def _send_one(client: RelayClient, recipient: BenchDevice, index: int, size: int,
                    stats: Stats) -> bool:
    try:
        await client.send(recipient.user_id, {recipient.device_id: _payload(index, size)},
                          client_message_id=index)
    except (RelayError, ConnectionClosed) as error:
        stats.error(f"send {index}: {error}")
        return False
    stats.sent += 1
    return True


async def _send_pipelined(client: RelayClient, recipient: BenchDevice, count: int, size: int,
                          window: int, stats: Stats) -> None:
    slots = trio.Semaphore(window)

    async def one(index: int) -> None:
        try:
            await _send_one(client, recipient, index, size, stats)
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        for index in range(count):
            await slots.acquire()
            nursery.start_soon(one, index)


async def _send_sequential(client: RelayClient, recipient: BenchDevice, receiver: Receiver,
                           count: int, size: int, stats: Stats) -> None:
    for index in range(count):
        if await _send_one(client, recipient, index, size, stats):
            await receiver.wait_for_index(index)


def _cpu(pids: Collection[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def run_exchange(load: ExchangeLoad, devices: Sequence[BenchDevice], connect: Connect,
                       server_pids: Collection[int]) -> dict[str, Any]:
    """Run ``load`` between ``devices`` (A_0, B_0, A_1, B_1, ...) and return the figures.

    ``server_pids``: the relay processes whose CPU and memory are measured (none for a
    relay the bench did not start).
    """
    load.check()
    flows = load.flows()
    expected = [0] * len(devices)
    for _, recipient, count in flows:
        expected[recipient] += count
    stats = Stats()
    async with AsyncExitStack() as stack:
        clients = [await connect(stack, position) for position in range(len(devices))]
        nursery = await stack.enter_async_context(trio.open_nursery())  # closes first
        receivers = []
        with trio.fail_after(READY_SECONDS):
            for client, device, count in zip(clients, devices, expected, strict=True):
                await client.authenticate(device.user_id, device.device_id, device.key)
                receivers.append(Receiver(client, stats, count))
                nursery.start_soon(receivers[-1].run)
            for receiver in receivers:
                await receiver.backlog_drained.wait()
        server_cpu_before = _cpu(server_pids)
        client_cpu_before = time.process_time()
        started = time.perf_counter_ns()
        with trio.move_on_after(load.timeout) as deadline:
            async with trio.open_nursery() as senders:
                for sender, recipient, count in flows:
                    if load.mode is Mode.PIPELINED:
                        senders.start_soon(_send_pipelined, clients[sender], devices[recipient],
                                           count, load.size, load.window, stats)
                    else:
                        senders.start_soon(_send_sequential, clients[sender],
                                           devices[recipient], receivers[recipient], count,
                                           load.size, stats)
            for receiver in receivers:
                await receiver.complete.wait()
        if deadline.cancelled_caught:
            stats.error(f"timed out after {load.timeout} s")
        with trio.move_on_after(SETTLE_SECONDS):
            for client in clients:
                await client.settle()
        server_cpu = _cpu(server_pids) - server_cpu_before
        client_cpu = time.process_time() - client_cpu_before
        nursery.cancel_scope.cancel()
    delivered = len(stats.latencies_ns)
    seconds = ((stats.last_receipt_ns if delivered else time.perf_counter_ns()) - started) / 1e9
    return {
        "mode": str(load.mode), "both_ways": load.both_ways, "pairs": load.pairs, "size": load.size,
        "window": load.window, "messages": load.messages, "sent": stats.sent,
        "delivered": delivered, "seconds": round(seconds, 4),
        "messages_per_second": rate_of(delivered, seconds),
        "latency_ms": latency_summary([ns / 1e6 for ns in stats.latencies_ns]),
        # Failed sends, a time-out, and every message not delivered.
        "errors": stats.errors + (load.messages - delivered),
        "error_samples": stats.error_samples,
        "duplicates": stats.duplicates, "out_of_order": stats.out_of_order,
        "server_cpu_us_per_message": (round(server_cpu / delivered * 1e6, 1)
                                      if server_pids and delivered else None),
        "server_peak_rss_mib": (round(sum(peak_rss_mib(pid) for pid in server_pids), 1)
                                if server_pids else None),
        "client_cpu_us_per_message": round(client_cpu / max(delivered, 1) * 1e6, 1),
    }


async def exchange_on(target: Target, load: ExchangeLoad) -> dict[str, Any]:
    """The ``exchange`` scenario: ``load`` between devices provisioned on the relay under
    test, each device on a connection and UDP socket of its own."""
    load.check()
    devices = await target.provisioner.provision(2 * load.pairs)

    async def connect(stack: AsyncExitStack, position: int) -> RelayClient:
        return await stack.enter_async_context(connect_relay(
            target.host, target.port, ca=target.ca, server_name="localhost"))

    pids = {target.server.pid} if target.server is not None else set()
    result = await run_exchange(load, devices, connect, pids)
    return {"scenario": "exchange", "relay": f"{target.host}:{target.port}", **result}
