"""The ``cluster`` scenario: the exchange load through relay nodes sharing one store.

Device A is connected to node 1 and device B to the last node: with ``nodes=2`` every
message crosses nodes (committed by node 1, woken on node 2 by NOTIFY, read from the
store there). ``nodes=1`` runs the same load on one node, on PostgreSQL or on SQLite.
With PostgreSQL the run uses a fresh schema of the ``postgres`` database, dropped
afterwards.

With ``pairs`` P, P such pairs send at once, each device on a connection and UDP socket
of its own. ``workers`` W runs the node as ``serve --workers W`` (PostgreSQL, one node):
the kernel spreads those connections over the workers by client address, so a pair's
two devices may be on different workers (``random``), or the bench reconnects until
both devices of pair i are on worker i mod W (``pair-per-worker``); the description of
the relay counts the connections each worker got. Devices are provisioned in the store
before the nodes start. Relay CPU counts every node and worker process.
"""

from __future__ import annotations

import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from bench.exchange import ExchangeLoad, run_exchange
from bench.provisioners import StoreProvisioner
from bench.spawn import (
    BENCH_CONNECTIONS_PER_ADDRESS,
    BENCH_SEND_BUDGETS,
    SpawnedRelay,
    spawn_relay,
)
from client.connection import RelayClient, connect_relay
from relay.worker_ids import worker_of
from storage.store_url import parse_store_url

__all__ = ["DEFAULT_POSTGRES", "ClusterSetup", "Placement", "StoreKind", "run_cluster",
           "temporary_schema"]



class StoreKind(StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class Placement(StrEnum):
    RANDOM = "random"
    PAIR_PER_WORKER = "pair-per-worker"


DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
MAX_NODES = 2
MAX_PLACEMENT_ATTEMPTS = 64
"""Connections tried to land one on a given worker (each lands there with
probability 1/W: 64 misses in a row mean the kernel is not spreading them)."""


@dataclass(frozen=True)
class ClusterSetup:
    nodes: int = 2
    store: StoreKind = StoreKind.POSTGRESQL
    postgres: str = DEFAULT_POSTGRES
    """PostgreSQL database URL; each run uses a fresh schema in it."""
    workers: int = 1
    """Worker processes of the node (``serve --workers``)."""
    placement: Placement = Placement.RANDOM
    """With workers: where the kernel puts each connection, or both devices of pair i
    on worker i mod W (no two workers then lock the same devices' rows)."""

    def check(self) -> None:
        """Raise ValueError, naming the option, for a set-up that cannot run."""
        if not 1 <= self.nodes <= MAX_NODES:
            raise ValueError(f"--nodes is 1 or {MAX_NODES}")
        if self.workers < 1:
            raise ValueError("--workers must be positive")
        if self.store is StoreKind.SQLITE and (self.nodes != 1 or self.workers != 1):
            raise ValueError("several nodes or workers need --store postgresql")
        if self.workers != 1 and self.nodes != 1:
            raise ValueError("--workers runs on one node")

    def describe(self, pairs: int, spread: str) -> str:
        if self.workers == 1:
            return f"{self.nodes} node(s), {self.store}, {pairs} pair(s)"
        return (f"1 node x {self.workers} workers, {self.store}, {pairs} pair(s), "
                f"placement {self.placement} (connections per worker {spread})")


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


async def run_cluster(setup: ClusterSetup, load: ExchangeLoad) -> dict[str, Any]:
    """Start the nodes, run ``load`` through them, stop them; the exchange's figures."""
    setup.check()
    load.check()
    with tempfile.TemporaryDirectory(prefix="cryptopass-cluster-") as temporary:
        if setup.store is StoreKind.SQLITE:
            return await _run_nodes(setup, load, None, Path(temporary))
        with temporary_schema(setup.postgres) as url:
            return await _run_nodes(setup, load, url, Path(temporary))


@asynccontextmanager
async def _nodes(setup: ClusterSetup, store_url: str | None,
                 directory: Path) -> AsyncIterator[list[SpawnedRelay]]:
    worker_args = ("--workers", str(setup.workers)) if setup.workers > 1 else ()
    async with AsyncExitStack() as stack:
        nodes = []
        for number in range(1, setup.nodes + 1):
            nodes.append(await stack.enter_async_context(spawn_relay(
                directory / f"node-{number}", *worker_args, *BENCH_SEND_BUDGETS,
                *BENCH_CONNECTIONS_PER_ADDRESS, store=store_url,
                node_name=f"node-{number}")))
        if setup.workers > 1:
            await nodes[0].wait_for("workers_ready")
        yield nodes


async def _run_nodes(setup: ClusterSetup, load: ExchangeLoad, store_url: str | None,
                     directory: Path) -> dict[str, Any]:
    location = parse_store_url(store_url, data_dir=directory / "node-1")
    (directory / "node-1").mkdir()
    devices = await StoreProvisioner(location).provision(2 * load.pairs)
    async with _nodes(setup, store_url, directory) as nodes:
        placed = setup.placement is Placement.PAIR_PER_WORKER and setup.workers > 1
        landed: Counter[int] = Counter()

        async def connect(stack: AsyncExitStack, position: int) -> RelayClient:
            # A_i on the first node, B_i on the last; pair i on worker i mod W if placed.
            node = nodes[0] if position % 2 == 0 else nodes[-1]
            wanted = (position // 2) % setup.workers if placed else None
            client, worker = await _connect_on(stack, node, wanted)
            landed[worker] += 1
            return client

        result = await run_exchange(load, devices, connect, _process_ids(nodes))
    spread = " ".join(f"{worker}:{count}" for worker, count in sorted(landed.items()))
    return {"scenario": "cluster", "relay": setup.describe(load.pairs, spread),
            "nodes": setup.nodes, "store": str(setup.store), "workers": setup.workers,
            "placement": str(setup.placement), **result}


def _process_ids(nodes: Sequence[SpawnedRelay]) -> set[int]:
    """Every relay process: the nodes, and the workers of a ``--workers`` node."""
    return {node.pid for node in nodes} | {
        int(event["pid"]) for node in nodes for event in node.events
        if event.get("event") == "worker_started"}


async def _connect_on(stack: AsyncExitStack, node: SpawnedRelay,
                      worker: int | None) -> tuple[RelayClient, int]:
    """A connection (entered into ``stack``) and the worker holding it, on ``worker`` if
    not None: the kernel picks the worker by client address, so connect until one lands
    there. The worker is named by the first byte of the server's connection id."""
    for _ in range(MAX_PLACEMENT_ATTEMPTS):
        async with AsyncExitStack() as attempt:
            client = await attempt.enter_async_context(connect_relay(
                node.host, node.port, ca=node.cert, server_name="localhost"))
            assert client._link is not None
            landed = worker_of(client._link.quic._peer_cid.cid) or 0
            if worker is None or landed == worker:
                await stack.enter_async_context(attempt.pop_all())
                return client, landed
    raise RuntimeError(f"no connection landed on worker {worker}")
