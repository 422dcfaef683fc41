"""Loopback benchmark: two enrolled devices exchanging messages over real QUIC.

    .venv/bin/python -m bench.loopback --messages 1000 --size 256 \\
        [--mode pipelined|sequential] [--both-ways] [--relay subprocess|inprocess] [--json]

The relay runs in a subprocess by default (``cryptopass-relay serve`` on a
temporary data directory), so that its CPU time can be read from
``/proc/PID/stat`` apart from the load generator's; ``--relay inprocess``
runs it in this trio loop instead (no relay CPU figure then).

Every payload starts with its send time (``time.perf_counter_ns()`` taken just
before ``RelayClient.send`` is called) and its index, both big-endian unsigned
64-bit; the receiver computes latency = receipt time - send time, which is valid
because both devices live in this process. Modes:

* ``pipelined``: the sender keeps up to ``--window`` sends in flight.
* ``sequential``: one message at a time; the next send starts once the receiver
  got the previous one (pure round latency: send, commit, push, receipt).

``--both-ways`` splits the messages in two halves sent A->B and B->A at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import trio
from nacl.signing import SigningKey

from bench.spawn import SpawnedServer, relay_command, spawn_server
from bench.stats import percentile
from client.connection import ConnectionClosed, RelayClient, RelayError, connect_relay
from enrolment import admin
from enrolment.sms import SmsMessage
from relay.server import RunningRelay, serve
from relay.settings import RelaySettings
from storage.sqlite import open_sqlite_store
from wire.frames import Deliver, QueueEmpty

__all__ = [
    "BenchConfig",
    "BenchResult",
    "main",
    "percentile",
    "run_benchmark",
]

Mode = Literal["pipelined", "sequential"]
RelayKind = Literal["subprocess", "inprocess"]

ORGANISATION = "bench"
PHONE_A, PHONE_B = "+33612345678", "+33698765432"
HEADER = struct.Struct(">QQ")
"""Payload prefix: send time (perf_counter_ns) and message index."""
BIN = Path(sys.executable).parent
STARTUP_TIMEOUT = 30.0
CODE_PATTERN = re.compile(r"\b(\d{6})\b")


@dataclass(frozen=True)
class BenchConfig:
    messages: int = 1000
    size: int = 256
    mode: Mode = "pipelined"
    both_ways: bool = False
    window: int = 64
    relay: RelayKind = "subprocess"
    timeout: float = 120.0


@dataclass
class BenchResult:
    mode: str
    relay: str
    both_ways: bool
    size: int
    sent: int
    delivered: int
    seconds: float
    messages_per_second: float
    latency_ms: dict[str, float]
    errors: int
    server_cpu_us_per_message: float | None
    client_cpu_us_per_message: float
    duplicates: int
    out_of_order: int
    error_samples: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- Relays -----------------------------------------------------------------------------------


class BenchRelay(Protocol):
    """What the benchmark needs from a relay, wherever it runs."""

    host: str
    port: int
    cert: Path

    @property
    def pid(self) -> int | None: ...

    async def code_for(self, phone: str) -> str: ...


@dataclass
class InProcessRelay:
    host: str
    port: int
    cert: Path
    sms: list[SmsMessage] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)
    pid: int | None = None

    def on_sms(self, message: SmsMessage) -> None:
        self.sms.append(message)
        self.arrived.set()
        self.arrived = trio.Event()

    async def code_for(self, phone: str) -> str:
        with trio.fail_after(STARTUP_TIMEOUT):
            while True:
                for message in reversed(self.sms):
                    match = CODE_PATTERN.search(message.body)
                    if message.to == phone and match:
                        return match.group(1)
                await self.arrived.wait()


@dataclass(kw_only=True)
class SubprocessRelay(SpawnedServer):
    data_dir: Path
    codes_read: int = 0

    async def code_for(self, phone: str) -> str:
        self.codes_read += 1
        await self.wait_for("sms_sent", self.codes_read)
        outbox = self.data_dir / "sms-outbox.jsonl"
        for line in reversed(outbox.read_text().splitlines()):
            message = json.loads(line)
            match = CODE_PATTERN.search(message["body"])
            if message["to"] == phone and match:
                return match.group(1)
        raise RuntimeError(f"no code for {phone} in {outbox}")


async def _declare_in_process(data_dir: Path) -> None:
    async with open_sqlite_store(data_dir / "relay.db") as store:
        await admin.create_organisation(store, ORGANISATION, 10, 0)
        for phone in (PHONE_A, PHONE_B):
            await admin.declare_user(store, ORGANISATION, phone, 0)


@asynccontextmanager
async def inprocess_relay(data_dir: Path) -> AsyncIterator[InProcessRelay]:
    await _declare_in_process(data_dir)
    settings = RelaySettings(data_dir=data_dir, listen_host="127.0.0.1", listen_port=0)
    async with trio.open_nursery() as nursery:
        holder: list[InProcessRelay] = []

        def on_sms(message: SmsMessage) -> None:
            holder[0].on_sms(message)

        running: RunningRelay = await nursery.start(
            lambda task_status: serve(settings, task_status=task_status, on_sms_sent=on_sms))
        relay = InProcessRelay(host="127.0.0.1", port=running.address[1],
                               cert=running.cert_path)
        holder.append(relay)
        try:
            yield relay
        finally:
            running.stop()


async def _admin(data_dir: Path, *args: str) -> None:
    with trio.fail_after(STARTUP_TIMEOUT):
        result = await trio.run_process(
            [str(BIN / "cryptopass-relay"), "admin", "--data-dir", str(data_dir), *args],
            capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"cryptopass-relay admin {' '.join(args)}: "
                           f"{result.stderr.decode(errors='replace')}")


@asynccontextmanager
async def subprocess_relay(data_dir: Path) -> AsyncIterator[SubprocessRelay]:
    await _admin(data_dir, "org", "create", ORGANISATION, "--seats", "10")
    for phone in (PHONE_A, PHONE_B):
        await _admin(data_dir, "user", "add", "--org", ORGANISATION, phone)
    async with spawn_server(
            relay_command(data_dir), cert=data_dir / "tls" / "cert.pem",
            make=lambda process: SubprocessRelay(process=process, data_dir=data_dir)) as relay:
        yield relay


@asynccontextmanager
async def open_relay(kind: RelayKind, data_dir: Path) -> AsyncIterator[BenchRelay]:
    if kind == "subprocess":
        async with subprocess_relay(data_dir) as relay:
            yield relay
    else:
        async with inprocess_relay(data_dir) as in_process:
            yield in_process


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat (Linux)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    # Fields after the command name start at field 3 (state); utime is 14, stime 15.
    ticks = int(fields[14 - 3]) + int(fields[15 - 3])
    return ticks / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- Devices ----------------------------------------------------------------------------------


@dataclass
class Device:
    phone: str
    user_id: str
    device_id: int
    key: SigningKey


def _connect(relay: BenchRelay) -> AbstractAsyncContextManager[RelayClient]:
    return connect_relay(relay.host, relay.port, ca=relay.cert, server_name="localhost")


async def enrol(relay: BenchRelay, phone: str) -> Device:
    key = SigningKey.generate()
    async with _connect(relay) as client:
        await client.enrol_start(phone)
        code = await relay.code_for(phone)
        user_id, device_id = await client.enrol_verify(phone, code, key.verify_key.encode())
    return Device(phone=phone, user_id=user_id, device_id=device_id, key=key)


@dataclass
class Stats:
    """Shared by every sender and receiver of one run."""

    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    duplicates: int = 0
    out_of_order: int = 0
    last_receipt_ns: int = 0

    def error(self, description: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(description)


class Receiver:
    """Consumes one client's deliveries for the whole run; acknowledges each."""

    def __init__(self, client: RelayClient, stats: Stats) -> None:
        self.client = client
        self.stats = stats
        self.backlog_drained = trio.Event()
        self.seen: set[int] = set()
        self.expected = 0
        self.complete = trio.Event()
        self.arrived = trio.Event()
        self._last_index = -1

    async def run(self) -> None:
        try:
            async for delivery in self.client.deliveries():
                if isinstance(delivery, QueueEmpty):
                    self.backlog_drained.set()
                    continue
                self._receive(delivery)
        except ConnectionClosed as error:
            self.stats.error(f"receiver connection closed: {error}")

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
        while index not in self.seen:
            await self.arrived.wait()


def _payload(index: int, size: int) -> bytes:
    return HEADER.pack(time.perf_counter_ns(), index) + bytes(size - HEADER.size)


async def _send_one(client: RelayClient, recipient: Device, index: int, size: int,
                    stats: Stats) -> bool:
    try:
        await client.send(recipient.user_id, {recipient.device_id: _payload(index, size)},
                          client_message_id=index)
    except (RelayError, ConnectionClosed) as error:
        stats.error(f"send {index}: {error}")
        return False
    return True


async def send_pipelined(client: RelayClient, recipient: Device, count: int, size: int,
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


async def send_sequential(client: RelayClient, recipient: Device, receiver: Receiver,
                          count: int, size: int, stats: Stats) -> None:
    for index in range(count):
        if await _send_one(client, recipient, index, size, stats):
            await receiver.wait_for_index(index)


# --- The run ----------------------------------------------------------------------------------


async def run_benchmark(config: BenchConfig) -> BenchResult:
    if config.size < HEADER.size:
        raise ValueError(f"--size must be at least {HEADER.size} bytes")
    if config.messages < (2 if config.both_ways else 1):
        raise ValueError("--messages too small")
    with tempfile.TemporaryDirectory(prefix="cryptopass-bench-") as tmp:
        async with open_relay(config.relay, Path(tmp) / "relay") as relay:
            return await _run(config, relay)


async def _run(config: BenchConfig, relay: BenchRelay) -> BenchResult:
    device_a = await enrol(relay, PHONE_A)
    device_b = await enrol(relay, PHONE_B)
    stats = Stats()
    if config.both_ways:
        flows = [(config.messages // 2, 0), (config.messages - config.messages // 2, 1)]
    else:
        flows = [(config.messages, 0)]
    async with _connect(relay) as client_a, _connect(relay) as client_b, \
            trio.open_nursery() as nursery:
        await client_a.authenticate(device_a.user_id, device_a.device_id, device_a.key)
        await client_b.authenticate(device_b.user_id, device_b.device_id, device_b.key)
        receivers = [Receiver(client_a, stats), Receiver(client_b, stats)]
        for receiver in receivers:
            nursery.start_soon(receiver.run)
        with trio.fail_after(STARTUP_TIMEOUT):
            for receiver in receivers:
                await receiver.backlog_drained.wait()
        # flow (count, 0): A -> B, received by receivers[1]; flow (count, 1): B -> A.
        clients, devices = (client_a, client_b), (device_a, device_b)
        for count, sender in flows:
            receivers[1 - sender].expected = count

        server_cpu_before = process_cpu_seconds(relay.pid) if relay.pid else None
        client_cpu_before = self_cpu_seconds()
        started = time.perf_counter_ns()
        with trio.move_on_after(config.timeout) as deadline:
            async with trio.open_nursery() as senders:
                for count, sender in flows:
                    client, recipient = clients[sender], devices[1 - sender]
                    if config.mode == "pipelined":
                        senders.start_soon(send_pipelined, client, recipient, count,
                                           config.size, config.window, stats)
                    else:
                        senders.start_soon(send_sequential, client, recipient,
                                           receivers[1 - sender], count, config.size, stats)
            for _, sender in flows:
                await receivers[1 - sender].complete.wait()
        if deadline.cancelled_caught:
            stats.error(f"timed out after {config.timeout} s")
        for client in clients:
            with trio.move_on_after(5):
                await client.settle()
        server_cpu_after = process_cpu_seconds(relay.pid) if relay.pid else None
        client_cpu = self_cpu_seconds() - client_cpu_before
        nursery.cancel_scope.cancel()

    delivered = len(stats.latencies_ns)
    end = stats.last_receipt_ns if delivered else time.perf_counter_ns()
    seconds = (end - started) / 1e9
    latencies_ms = [ns / 1e6 for ns in stats.latencies_ns]
    latency = ({f"p{p}": round(percentile(latencies_ms, p), 3) for p in (50, 95, 99)}
               if latencies_ms else {"p50": math.nan, "p95": math.nan, "p99": math.nan})
    server_us: float | None = None
    if server_cpu_before is not None and server_cpu_after is not None and delivered:
        server_us = round((server_cpu_after - server_cpu_before) / delivered * 1e6, 1)
    return BenchResult(
        mode=config.mode, relay=config.relay, both_ways=config.both_ways, size=config.size,
        sent=config.messages, delivered=delivered, seconds=round(seconds, 4),
        messages_per_second=round(delivered / seconds, 1) if seconds > 0 else 0.0,
        latency_ms=latency, errors=stats.errors, server_cpu_us_per_message=server_us,
        client_cpu_us_per_message=round(client_cpu / max(delivered, 1) * 1e6, 1),
        duplicates=stats.duplicates, out_of_order=stats.out_of_order,
        error_samples=stats.error_samples)


# --- Command line -----------------------------------------------------------------------------


def summary(result: BenchResult) -> str:
    direction = "A<->B (half each way)" if result.both_ways else "A->B"
    lines = [
        f"mode {result.mode}, {direction}, relay {result.relay}, {result.size}-byte payloads",
        f"delivered    {result.delivered} / {result.sent} in {result.seconds:.3f} s",
        f"throughput   {result.messages_per_second:.1f} messages/s",
        "latency ms   p50 {p50:.3f}  p95 {p95:.3f}  p99 {p99:.3f}".format(**result.latency_ms),
        f"errors       {result.errors}  (duplicates {result.duplicates}, "
        f"out of order {result.out_of_order})",
    ]
    if result.server_cpu_us_per_message is not None:
        lines.append(f"relay CPU    {result.server_cpu_us_per_message:.1f} µs/message")
    lines.append(f"client CPU   {result.client_cpu_us_per_message:.1f} µs/message "
                 "(both devices, this process)")
    lines.extend(f"error        {sample}" for sample in result.error_samples)
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> tuple[BenchConfig, bool]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loopback",
        description="Two devices exchanging messages through a relay over QUIC on loopback.")
    parser.add_argument("--messages", type=int, default=1000, help="messages in total")
    parser.add_argument("--size", type=int, default=256,
                        help=f"payload bytes (at least {HEADER.size})")
    parser.add_argument("--mode", choices=("pipelined", "sequential"), default="pipelined")
    parser.add_argument("--both-ways", action="store_true",
                        help="A->B and B->A at once, half of the messages each")
    parser.add_argument("--window", type=int, default=64,
                        help="sends in flight per sender in pipelined mode")
    parser.add_argument("--relay", choices=("subprocess", "inprocess"), default="subprocess")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds before an unfinished run is reported as such")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.size < HEADER.size:
        parser.error(f"--size must be at least {HEADER.size}")
    if args.messages < (2 if args.both_ways else 1) or args.window < 1:
        parser.error("--messages and --window must be positive")
    return BenchConfig(messages=args.messages, size=args.size, mode=args.mode,
                       both_ways=args.both_ways, window=args.window, relay=args.relay,
                       timeout=args.timeout), bool(args.json)


def main(argv: Sequence[str] | None = None) -> int:
    config, as_json = parse_args(argv)
    result = trio.run(run_benchmark, config)
    print(json.dumps(result.to_json()) if as_json else summary(result))
    return 0 if result.errors == 0 and result.delivered == result.sent else 1


if __name__ == "__main__":
    sys.exit(main())
