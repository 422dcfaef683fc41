"""``cryptopass-relay serve --workers 2`` on PostgreSQL, as a subprocess: devices on
both workers exchange messages live and offline; SIGTERM stops everything with exit
0; a worker dying stops the relay with exit 1; the supervisor's settings per worker.

Which worker a client lands on is the kernel's hash of its address (SO_REUSEPORT);
a client reads it from the first byte of the server's connection id, and the test
opens connections until one lands on each worker (the forwarding between workers is
tested deterministically in test_worker_forwarding.py).
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from bench.cluster import ClusterSetup, Placement, run_cluster
from bench.exchange import ExchangeLoad
from bench.provision import BenchDevice
from bench.spawn import SpawnedRelay, spawn_relay
from client.connection import RelayClient
from relay.config import ConfigError, load_config
from relay.settings import MAX_WORKERS, RelaySettings
from relay.supervisor import worker_settings
from relay.worker_ids import worker_of
from tests.postgres_schemas import fresh_schema, store_url
from tests.relay_processes import BIN, connect, declare, enrol
from tests.test_storage_postgres import _server_dsn
from wire.frames import Deliver, QueueEmpty

WAIT_S = 30
"""Bound on anything that could hang (a lost wake-up), not a timing assertion."""

MAX_CONNECTION_ATTEMPTS = 40
"""Connections tried to find one on a given worker: each lands there with
probability 1/2, so 40 misses in a row (2^-40) mean the spreading is broken."""

PHONE_A, PHONE_B = "+33612345678", "+33698765432"


@pytest.fixture
def cluster_url() -> Iterator[str]:
    with fresh_schema() as schema:
        yield store_url(schema)


@pytest.fixture
async def relay(cluster_url: str, tmp_path: Path) -> AsyncIterator[SpawnedRelay]:
    await declare(cluster_url, tmp_path, (PHONE_A, PHONE_B), organisation="acme")
    async with spawn_relay(tmp_path / "relay", "--workers", "2", store=cluster_url,
                           node_name="relay") as node:
        with trio.fail_after(WAIT_S):
            await node.wait_for("workers_ready")
        yield node


def worker_serving(client: RelayClient) -> int | None:
    """The worker holding the client's connection: named by the server's connection id."""
    return worker_of(client.link.quic._peer_cid.cid)  # aioquic keeps the peer's id private


async def connect_to_worker(stack: AsyncExitStack, relay: SpawnedRelay,
                            wanted: int) -> RelayClient:
    for _ in range(MAX_CONNECTION_ATTEMPTS):
        async with AsyncExitStack() as attempt:
            client = await attempt.enter_async_context(connect(relay))
            if worker_serving(client) == wanted:
                await stack.enter_async_context(attempt.pop_all())
                return client
    raise AssertionError(f"no connection landed on worker {wanted}")


async def authenticated(stack: AsyncExitStack, relay: SpawnedRelay, device: BenchDevice,
                        worker: int) -> RelayClient:
    client = await connect_to_worker(stack, relay, worker)
    await client.authenticate(device.user_id, device.device_id, device.key)
    return client


async def next_delivery(deliveries: AsyncIterator[Deliver | QueueEmpty]
                        ) -> Deliver | QueueEmpty:
    with trio.fail_after(WAIT_S):
        return await deliveries.__anext__()


def workers_that_logged(relay: SpawnedRelay, event: str) -> set[int]:
    return {entry["worker"] for entry in relay.events
            if entry.get("event") == event and "worker" in entry}


async def test_devices_on_both_workers_exchange_messages_and_sigterm_stops_all(
        relay: SpawnedRelay) -> None:
    device_a, device_b = await enrol(relay, PHONE_A), await enrol(relay, PHONE_B)
    async with AsyncExitStack() as stack:
        client_a = await authenticated(stack, relay, device_a, worker=0)
        # B is offline: worker 0 commits, nobody is woken.
        await client_a.send(device_b.user_id, {device_b.device_id: b"offline"},
                            client_message_id=1)
        client_b = await authenticated(stack, relay, device_b, worker=1)
        b_deliveries = client_b.deliveries()
        stored = await next_delivery(b_deliveries)
        assert isinstance(stored, Deliver) and stored.ciphertext == b"offline"
        client_b.acknowledge(stored.envelope_id)
        assert isinstance(await next_delivery(b_deliveries), QueueEmpty)
        # B is live on worker 1: worker 0's commit wakes it (NOTIFY), it pushes.
        await client_a.send(device_b.user_id, {device_b.device_id: b"live"},
                            client_message_id=2)
        live = await next_delivery(b_deliveries)
        assert isinstance(live, Deliver) and live.ciphertext == b"live"
        client_b.acknowledge(live.envelope_id)
        # And back, from worker 1 to A live on worker 0.
        a_deliveries = client_a.deliveries()
        assert isinstance(await next_delivery(a_deliveries), QueueEmpty)
        await client_b.send(device_a.user_id, {device_a.device_id: b"reply"},
                            client_message_id=1)
        reply = await next_delivery(a_deliveries)
        assert isinstance(reply, Deliver) and reply.ciphertext == b"reply"
        client_a.acknowledge(reply.envelope_id)
        await client_a.settle()
        await client_b.settle()
    assert workers_that_logged(relay, "device_authenticated") >= {0, 1}
    assert workers_that_logged(relay, "cluster_node_ready") == {0, 1}

    relay.process.send_signal(signal.SIGTERM)
    with trio.fail_after(WAIT_S):
        assert await relay.process.wait() == 0
    await relay.wait_for("workers_stopped")
    assert workers_that_logged(relay, "relay_stopped") == {0, 1}
    nodes = {entry["node"] for entry in relay.events if entry.get("event") == "cluster_node_ready"}
    assert nodes == {"relay-0", "relay-1"}


async def test_a_worker_dying_stops_the_relay_with_a_failure(relay: SpawnedRelay) -> None:
    started = {entry["worker"]: entry["pid"] for entry in relay.events
               if entry.get("event") == "worker_started"}
    assert set(started) == {0, 1}
    await trio.run_process(["kill", "-KILL", str(started[1])])
    with trio.fail_after(WAIT_S):
        assert await relay.process.wait() == 1
    exited = await relay.wait_for("worker_exited")
    assert (exited["worker"], exited["status"]) == (1, -signal.SIGKILL)
    assert workers_that_logged(relay, "relay_stopped") == {0}  # stopped, not killed


async def test_workers_stop_when_their_supervisor_is_killed(relay: SpawnedRelay) -> None:
    relay.process.kill()  # SIGKILL: it can pass nothing on; its workers see their stdin close
    with trio.fail_after(WAIT_S):
        while workers_that_logged(relay, "relay_stopped") != {0, 1}:
            await relay.changed.wait()
    assert workers_that_logged(relay, "supervisor_gone") == {0, 1}


async def test_several_workers_on_sqlite_are_refused(tmp_path: Path) -> None:
    result = await trio.run_process(
        [str(BIN / "cryptopass-relay"), "serve", "--data-dir", str(tmp_path),
         "--listen", "127.0.0.1:0", "--workers", "2"],
        capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 1
    assert b"workers" in result.stderr and b"needs a PostgreSQL store" in result.stderr
    assert not (tmp_path / "relay.db").exists()


@pytest.mark.parametrize(("environ", "message"), [
    ({"CRYPTOPASS_WORKERS": str(MAX_WORKERS + 1)},
     f"setting workers (from CRYPTOPASS_WORKERS): at most {MAX_WORKERS}"),
    ({"CRYPTOPASS_WORKERS": "0"}, "setting workers (from CRYPTOPASS_WORKERS): must be positive"),
    ({"CRYPTOPASS_WORKERS": "2", "CRYPTOPASS_STORE": "sqlite:///relay.db"},
     "setting workers (from CRYPTOPASS_WORKERS): more than 1 needs a PostgreSQL store"),
    ({"CRYPTOPASS_WORKERS": "2", "CRYPTOPASS_STORE": "postgresql://db/relay",
      "CRYPTOPASS_METRICS_LISTEN": "127.0.0.1:65535"},
     "setting metrics_listen (from CRYPTOPASS_METRICS_LISTEN): worker k listens on port"),
])
def test_bad_worker_settings_are_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ=environ)
    assert str(caught.value).startswith(message), str(caught.value)


def test_each_worker_is_a_node_of_its_own_with_its_own_metrics_port() -> None:
    settings = RelaySettings(workers=3, store="postgresql://db/relay", node_name="edge",
                             metrics_listen="[::1]:9100", admin_listen="127.0.0.1:8443",
                             listen_port=0)
    first, third = (worker_settings(settings, index, port=4433) for index in (0, 2))
    assert (first.node_name, first.metrics_listen, first.admin_listen, first.listen_port) == (
        "edge-0", "[::1]:9100", "127.0.0.1:8443", 4433)
    assert (third.node_name, third.metrics_listen, third.admin_listen) == (
        "edge-2", "[::1]:9102", None)
    any_port = RelaySettings(workers=2, store="postgresql://db/relay",
                             metrics_listen="127.0.0.1:0")
    assert worker_settings(any_port, 1, port=1).metrics_listen == "127.0.0.1:0"


async def test_the_cluster_benchmark_runs_pairs_over_two_workers(cluster_url: str) -> None:
    # cluster_url: only for the server check (skip, or fail in CI); the run makes its schema.
    # What `cryptopass-bench cluster --nodes 1 --workers 2 --pairs 2 --placement
    # pair-per-worker --messages 40` runs.
    result = await run_cluster(
        ClusterSetup(nodes=1, workers=2, placement=Placement.PAIR_PER_WORKER,
                     postgres=_server_dsn()),
        ExchangeLoad(messages=40, pairs=2, timeout=WAIT_S))
    assert result["errors"] == 0, result["error_samples"]
    assert result["delivered"] == result["sent"] == result["messages"] == 40
    assert (result["duplicates"], result["out_of_order"]) == (0, 0)
    relay = result["relay"]
    assert isinstance(relay, str) and relay.endswith("(connections per worker 0:2 1:2)"), relay
