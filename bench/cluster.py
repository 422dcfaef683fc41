"""Relay nodes as subprocesses on one store, and a benchmark across them.

    .venv/bin/python -m bench.cluster --nodes 2 --store postgresql \\
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--workers 1] [--pairs 1] \\
        [--messages 1000] [--size 256] [--mode pipelined|sequential] [--json]

Device A is connected to node 1 and device B to the last node: with
``--nodes 2`` every message crosses nodes (committed by node 1, woken on
node 2 by NOTIFY, read from the store there). ``--nodes 1`` runs the same load
on one node, on PostgreSQL or (``--store sqlite``) on SQLite. With PostgreSQL
the run uses a fresh schema of the ``--postgres`` database, dropped afterwards.

``--pairs P`` runs P such pairs at once (A_i -> B_i, ``--messages`` shared out
between them), each device on a connection and UDP socket of its own.
``--workers W`` runs the node as ``serve --workers W`` (PostgreSQL, one node):
the kernel spreads those connections over the workers by client address, so a
pair's two devices may be on different workers (``--placement random``), or
the bench reconnects until both devices of pair i are on worker i mod W
(``--placement pair-per-worker``); the relay description counts the connections
each worker got. Devices are provisioned in the store before
the nodes start (``bench.provision``), not enrolled by SMS.
Latency and throughput are measured as in ``bench.loopback`` (same payload
header, receiver, percentiles).

``relay_node`` is also what the cluster tests use to run real nodes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import psycopg
import trio
from psycopg import sql

from bench.loopback import (
    ORGANISATION,
    BenchResult,
    Device,
    Receiver,
    Stats,
    SubprocessRelay,
    percentile,
    process_cpu_seconds,
    self_cpu_seconds,
    send_pipelined,
    send_sequential,
)
from bench.provision import provision
from bench.spawn import relay_command, spawn_server
from client.connection import RelayClient, connect_relay
from enrolment import admin
from relay.worker_ids import worker_of
from storage.store_url import open_store, parse_store_url

__all__ = ["ClusterConfig", "declare", "relay_node", "run_cluster_benchmark", "temporary_schema"]

StoreKind = Literal["sqlite", "postgresql"]
Placement = Literal["random", "pair-per-worker"]

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
STARTUP_TIMEOUT = 30.0
"""Seconds a node may take to log relay_listening."""
MAX_PLACEMENT_ATTEMPTS = 64
"""Connections tried to land one on a given worker (each lands there with
probability 1/W: 64 misses in a row mean the kernel is not spreading them)."""


@asynccontextmanager
async def relay_node(*, data_dir: Path, store: str | None, name: str,
                     extra_args: Sequence[str] = ()) -> AsyncIterator[SubprocessRelay]:
    """``cryptopass-relay serve`` on ``store`` as node ``name``; stopped (SIGTERM) on exit.

    A test may SIGKILL it meanwhile (``node.process.kill()``).
    """
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before starting)
    store_args = ["--store", store] if store is not None else []
    command = relay_command(data_dir, "--node-name", name, *store_args, *extra_args)
    async with spawn_server(
            command, cert=data_dir / "tls" / "cert.pem",
            make=lambda process: SubprocessRelay(process=process, data_dir=data_dir)) as node:
        yield node


def connect(node: SubprocessRelay) -> AbstractAsyncContextManager[RelayClient]:
    return connect_relay(node.host, node.port, ca=node.cert, server_name="localhost")


async def declare(store_url: str | None, data_dir: Path, phones: Sequence[str], *,
                  organisation: str = ORGANISATION) -> None:
    """Create the organisation and declare the phones, as an operator would."""
    async with open_store(parse_store_url(store_url, data_dir=data_dir)) as store:
        await admin.create_organisation(store, organisation, max(10, len(phones)), 0)
        for phone in phones:
            await admin.declare_user(store, organisation, phone, 0)


@contextmanager
def temporary_schema(server_url: str) -> Iterator[str]:
    """A fresh schema in the ``server_url`` database; yields a URL selecting it."""
    schema = f"cryptopass_bench_{uuid.uuid4().hex}"
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            separator = "&" if "?" in server_url else "?"
            yield f"{server_url}{separator}options={quote(f'-csearch_path={schema}', safe='')}"
        finally:
            connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(
                sql.Identifier(schema)))


# --- The benchmark ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterConfig:
    nodes: int = 2
    store: StoreKind = "postgresql"
    postgres: str = DEFAULT_POSTGRES
    messages: int = 1000
    size: int = 256
    mode: Literal["pipelined", "sequential"] = "pipelined"
    window: int = 64
    timeout: float = 120.0
    workers: int = 1
    """Worker processes of each node (``serve --workers``)."""
    pairs: int = 1
    """Sender -> receiver pairs sending at once."""
    placement: Placement = "random"
    """With workers: where the kernel puts each connection, or both devices of pair i
    on worker i mod W (no two workers then lock the same devices' rows)."""


async def run_cluster_benchmark(config: ClusterConfig) -> BenchResult:
    if config.store == "sqlite" and (config.nodes != 1 or config.workers != 1):
        raise ValueError("several nodes or workers need --store postgresql")
    if config.workers != 1 and config.nodes != 1:
        raise ValueError("--workers runs on one node")
    if config.messages < config.pairs:
        raise ValueError("--messages must be at least --pairs")
    with tempfile.TemporaryDirectory(prefix="cryptopass-cluster-") as tmp:
        if config.store == "sqlite":
            return await _run_nodes(config, None, Path(tmp))
        with temporary_schema(config.postgres) as url:
            return await _run_nodes(config, url, Path(tmp))


async def _run_nodes(config: ClusterConfig, store_url: str | None, tmp: Path) -> BenchResult:
    first_dir = tmp / "node-1"
    first_dir.mkdir()
    devices = await _provision(store_url, first_dir, 2 * config.pairs)
    worker_args = ("--workers", str(config.workers)) if config.workers > 1 else ()
    async with relay_node(data_dir=first_dir, store=store_url, name="node-1",
                          extra_args=worker_args) as first:
        if config.workers > 1:
            await first.wait_for("workers_ready")
        if config.nodes == 1:
            return await _run(config, first, first, devices)
        async with relay_node(data_dir=tmp / "node-2", store=store_url,
                              name="node-2") as second:
            return await _run(config, first, second, devices)


async def _provision(store_url: str | None, data_dir: Path, count: int) -> list[Device]:
    async with open_store(parse_store_url(store_url, data_dir=data_dir)) as store:
        provisioned = await provision(store, organisation=ORGANISATION, count=count,
                                      now=time.time_ns() // 1_000_000)
    return [Device(phone=device.phone, user_id=device.user_id, device_id=device.device_id,
                   key=device.key) for device in provisioned]


def _process_ids(nodes: Sequence[SubprocessRelay]) -> set[int]:
    """Every relay process: the nodes, and the workers of a ``--workers`` node."""
    return {node.process.pid for node in nodes} | {
        int(event["pid"]) for node in nodes for event in node.events
        if event.get("event") == "worker_started"}


async def _connect_on(stack: AsyncExitStack, node: SubprocessRelay,
                      worker: int | None) -> RelayClient:
    """A connection (entered into ``stack``), on ``worker`` if not None: the kernel
    picks the worker by client address, so connect until one lands there."""
    for _ in range(MAX_PLACEMENT_ATTEMPTS):
        async with AsyncExitStack() as attempt:
            client = await attempt.enter_async_context(connect(node))
            assert client._link is not None
            if worker is None or worker_of(client._link.quic._peer_cid.cid) == worker:
                await stack.enter_async_context(attempt.pop_all())
                return client
    raise RuntimeError(f"no connection landed on worker {worker}")


def _spread(clients: Sequence[RelayClient]) -> str:
    """Connections per worker, read from the server's connection ids."""
    counts: dict[int, int] = {}
    for client in clients:
        assert client._link is not None
        worker = worker_of(client._link.quic._peer_cid.cid) or 0
        counts[worker] = counts.get(worker, 0) + 1
    return " ".join(f"{worker}:{count}" for worker, count in sorted(counts.items()))


async def _run(config: ClusterConfig, node_a: SubprocessRelay, node_b: SubprocessRelay,
               devices: Sequence[Device]) -> BenchResult:
    senders, recipients = devices[0::2], devices[1::2]
    shares = [config.messages // config.pairs + int(pair < config.messages % config.pairs)
              for pair in range(config.pairs)]
    stats = Stats()
    async with AsyncExitStack() as connections:
        placed = config.placement == "pair-per-worker" and config.workers > 1
        places = [pair % config.workers if placed else None for pair in range(config.pairs)]
        sending_clients = [await _connect_on(connections, node_a, place) for place in places]
        receiving_clients = [await _connect_on(connections, node_b, place) for place in places]
        nursery = await connections.enter_async_context(trio.open_nursery())  # closes first
        receivers = []
        for client, device, share in zip(receiving_clients, recipients, shares, strict=True):
            await client.authenticate(device.user_id, device.device_id, device.key)
            receivers.append(Receiver(client, stats))
            receivers[-1].expected = share
            nursery.start_soon(receivers[-1].run)
        for client, device in zip(sending_clients, senders, strict=True):
            await client.authenticate(device.user_id, device.device_id, device.key)
        with trio.fail_after(STARTUP_TIMEOUT):
            for receiver in receivers:
                await receiver.backlog_drained.wait()
        pids = _process_ids((node_a, node_b))
        cpu_before = sum(process_cpu_seconds(pid) for pid in pids)
        client_cpu_before = self_cpu_seconds()
        started = time.perf_counter_ns()
        with trio.move_on_after(config.timeout) as deadline:
            async with trio.open_nursery() as sending:
                for client, recipient, receiver, share in zip(
                        sending_clients, recipients, receivers, shares, strict=True):
                    if config.mode == "pipelined":
                        sending.start_soon(send_pipelined, client, recipient, share,
                                           config.size, config.window, stats)
                    else:
                        sending.start_soon(send_sequential, client, recipient, receiver,
                                           share, config.size, stats)
            for receiver in receivers:
                await receiver.complete.wait()
        if deadline.cancelled_caught:
            stats.error(f"timed out after {config.timeout} s")
        with trio.move_on_after(5):
            for client in receiving_clients:
                await client.settle()
        cpu_after = sum(process_cpu_seconds(pid) for pid in pids)
        client_cpu = self_cpu_seconds() - client_cpu_before
        spread = _spread([*sending_clients, *receiving_clients])
        nursery.cancel_scope.cancel()
    delivered = len(stats.latencies_ns)
    seconds = ((stats.last_receipt_ns if delivered else time.perf_counter_ns()) - started) / 1e9
    latencies_ms = [ns / 1e6 for ns in stats.latencies_ns]
    latency = ({f"p{p}": round(percentile(latencies_ms, p), 3) for p in (50, 95, 99)}
               if latencies_ms else {"p50": float("nan"), "p95": float("nan"),
                                     "p99": float("nan")})
    return BenchResult(
        mode=config.mode, relay=_describe(config, spread), both_ways=False,
        size=config.size, sent=config.messages, delivered=delivered,
        seconds=round(seconds, 4),
        messages_per_second=round(delivered / seconds, 1) if seconds > 0 else 0.0,
        latency_ms=latency, errors=stats.errors,
        server_cpu_us_per_message=(round((cpu_after - cpu_before) / delivered * 1e6, 1)
                                   if delivered else None),
        client_cpu_us_per_message=round(client_cpu / max(delivered, 1) * 1e6, 1),
        duplicates=stats.duplicates, out_of_order=stats.out_of_order,
        error_samples=stats.error_samples)


def _describe(config: ClusterConfig, spread: str) -> str:
    if config.workers == 1:
        return f"{config.nodes} node(s), {config.store}, {config.pairs} pair(s)"
    return (f"1 node x {config.workers} workers, {config.store}, {config.pairs} pair(s), "
            f"placement {config.placement} (connections per worker {spread})")


def parse_args(argv: Sequence[str] | None = None) -> tuple[ClusterConfig, bool]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster",
        description="A -> B through relay nodes sharing one store (B on the last node).")
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=2)
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES,
                        help="PostgreSQL database URL (a fresh schema is used in it)")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--mode", choices=("pipelined", "sequential"), default="pipelined")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes of the node (serve --workers; PostgreSQL)")
    parser.add_argument("--pairs", type=int, default=1,
                        help="sender -> receiver pairs at once, each device its own socket")
    parser.add_argument("--placement", choices=("random", "pair-per-worker"), default="random",
                        help="with --workers: where the kernel puts each connection, or both "
                             "devices of pair i on worker i mod W")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.store == "sqlite" and (args.nodes != 1 or args.workers != 1):
        parser.error("several nodes or workers need --store postgresql")
    if args.workers < 1 or args.pairs < 1 or (args.workers > 1 and args.nodes != 1):
        parser.error("--workers and --pairs must be positive; --workers runs on one node")
    if args.messages < args.pairs:
        parser.error("--messages must be at least --pairs")
    if args.messages < 1 or args.window < 1 or args.size < 16:
        parser.error("--messages and --window must be positive, --size at least 16")
    return ClusterConfig(nodes=args.nodes, store=args.store, postgres=args.postgres,
                         messages=args.messages, size=args.size, mode=args.mode,
                         window=args.window, timeout=args.timeout, workers=args.workers,
                         pairs=args.pairs, placement=args.placement), bool(args.json)


def main(argv: Sequence[str] | None = None) -> int:
    config, as_json = parse_args(argv)
    result = trio.run(run_cluster_benchmark, config)
    print(json.dumps(result.to_json()))
    if not as_json:
        print(f"{result.relay}: {result.messages_per_second} msg/s, "
              f"p50 {result.latency_ms['p50']} ms, p99 {result.latency_ms['p99']} ms",
              file=sys.stderr)
    return 0 if result.errors == 0 and result.delivered == result.sent else 1


if __name__ == "__main__":
    sys.exit(main())
