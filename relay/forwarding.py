"""One worker's side of a shared UDP port: its connection ids, and forwarding.

``WorkerRouting`` plugs into ``QuicEndpoint(routing=...)``:

* every server connection is a ``WorkerQuicConnection``, whose connection ids
  (the first one, and each one aioquic issues later) start with this worker's
  index; so does the source id of each Retry;
* a datagram whose destination id names no local connection is routed by
  ``relay.worker_ids.route_unrouted``: a new client is answered here, a datagram
  of another worker's connection is sent to that worker with the client's
  address, anything else is dropped;
* ``run`` receives what the other workers forwarded here and feeds it to the
  endpoint, which answers from its own socket (the same port).

Workers talk over Unix datagram socket pairs made by the supervisor before it
starts them (relay/supervisor.py): no path in the file system, so only the
relay's own processes hold an end.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import trio
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicHeader, QuicProtocolVersion
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.worker_ids import (
    ForwardingError,
    Route,
    WorkerConnectionIds,
    decode_forwarded,
    encode_forwarded,
    route_unrouted,
)
from transport.quic import MAX_DATAGRAM_BYTES, MAX_RECEIVE_BATCH, NetworkAddress, QuicEndpoint

__all__ = [
    "CONNECTION_ID_BYTES",
    "ForwardingCollector",
    "Worker",
    "WorkerQuicConnection",
    "WorkerRouting",
]

CONNECTION_ID_BYTES = 8
"""Length of the connection ids the relay issues (aioquic's default, which the
server configuration keeps): short-header packets carry no length, so every
worker must parse them with this one."""

SUPPORTED_VERSIONS = (QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2)
"""Versions a server configuration accepts by default: any other is answered
with Version Negotiation by whichever worker receives it."""

MAX_FORWARDED_MESSAGE_BYTES = MAX_DATAGRAM_BYTES + 64
"""A forwarded datagram plus its envelope (at most 28 bytes of address)."""


class WorkerQuicConnection(QuicConnection):
    """A server connection whose every connection id names this worker.

    aioquic draws its own ids with ``os.urandom``: the first in ``__init__`` (it
    only becomes visible in the first packet sent, and in the transport
    parameters), then more in ``_replenish_connection_ids``, whose new entries are
    rewritten here before anything announces them.
    """

    def __init__(self, *, connection_ids: WorkerConnectionIds, configuration: QuicConfiguration,
                 original_destination_connection_id: bytes,
                 retry_source_connection_id: bytes | None) -> None:
        self._worker_connection_ids = connection_ids
        super().__init__(configuration=configuration,
                         original_destination_connection_id=original_destination_connection_id,
                         retry_source_connection_id=retry_source_connection_id)
        first = self._host_cids[0]
        first.cid = connection_ids.new(configuration.connection_id_length)
        self.host_cid = first.cid
        self._local_initial_source_connection_id = first.cid

    def _replenish_connection_ids(self) -> None:
        issued = len(self._host_cids)
        super()._replenish_connection_ids()
        for connection_id in self._host_cids[issued:]:
            connection_id.cid = self._worker_connection_ids.new(
                self._configuration.connection_id_length)


class WorkerRouting:
    """Connection ids and forwarding of worker ``worker_index`` of ``worker_count``.

    Args:
        receive_socket: this worker's end of its socket pair (non-blocking).
        peer_sockets: worker index -> the sending end towards that worker.
    """

    def __init__(self, *, worker_index: int, worker_count: int, receive_socket: socket.socket,
                 peer_sockets: Mapping[int, socket.socket],
                 connection_ids: WorkerConnectionIds | None = None) -> None:
        self.worker_index = worker_index
        self.worker_count = worker_count
        self.connection_ids = connection_ids or WorkerConnectionIds(worker_index)
        self._receive_socket = receive_socket
        self._peer_sockets = dict(peer_sockets)
        self._feeding_forwarded = False
        self.forwarded = 0
        """Datagrams sent on to the worker holding their connection."""
        self.received_forwarded = 0
        """Datagrams other workers sent here."""
        self.dropped: dict[str, int] = {"unknown_worker": 0, "forward_failed": 0,
                                        "malformed": 0, "loop": 0}
        """Datagrams ignored, by reason."""

    # -- ConnectionIdRouting (transport/quic.py) -------------------------------------------------

    def new_connection(self, *, configuration: QuicConfiguration,
                       original_destination_connection_id: bytes,
                       retry_source_connection_id: bytes | None) -> QuicConnection:
        return WorkerQuicConnection(
            connection_ids=self.connection_ids, configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id)

    def new_retry_connection_id(self) -> bytes:
        return self.connection_ids.new(CONNECTION_ID_BYTES)

    def take_unrouted(self, header: QuicHeader, data: bytes, address: NetworkAddress) -> bool:
        decision = route_unrouted(header, own_index=self.worker_index,
                                  worker_count=self.worker_count,
                                  connection_id_length=CONNECTION_ID_BYTES,
                                  supported_versions=SUPPORTED_VERSIONS)
        if decision.route is Route.LOCAL:
            return False
        if decision.route is Route.DROP:
            self.dropped["unknown_worker"] += 1
            return True
        if self._feeding_forwarded:
            # Forwarded here, yet naming a third worker: only a bug could do
            # that; a datagram is forwarded once, never passed around.
            self.dropped["loop"] += 1
            return True
        owner = decision.worker_index
        if owner is None or owner not in self._peer_sockets:  # no such worker here: as DROP
            self.dropped["unknown_worker"] += 1
            return True
        try:
            self._peer_sockets[owner].send(encode_forwarded(data, address))
        except OSError:  # the owner's queue is full, or it is gone: as a loss on the network
            self.dropped["forward_failed"] += 1
        else:
            self.forwarded += 1
        return True

    # -- receiving what the others forward -----------------------------------------------------

    async def run(self, endpoint: QuicEndpoint, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Feed datagrams forwarded by other workers to ``endpoint`` until cancelled."""
        sock = self._receive_socket
        task_status.started()
        while True:
            await trio.lowlevel.wait_readable(sock)
            batch: list[tuple[bytes, Any]] = []
            for _ in range(MAX_RECEIVE_BATCH):
                try:
                    message = sock.recv(MAX_FORWARDED_MESSAGE_BYTES)
                except (BlockingIOError, InterruptedError):
                    break
                try:
                    batch.append(decode_forwarded(message))
                except ForwardingError:
                    self.dropped["malformed"] += 1
            self.received_forwarded += len(batch)
            if batch:
                with self.feeding_forwarded():
                    endpoint.receive_forwarded(batch)

    @contextlib.contextmanager
    def feeding_forwarded(self) -> Iterator[None]:
        """While open, what reaches the endpoint was forwarded by another worker: a datagram
        that names a third worker then is dropped as a loop, never passed on again."""
        self._feeding_forwarded = True
        try:
            yield
        finally:
            self._feeding_forwarded = False

    def collector(self) -> Collector:
        """Prometheus families of this worker's forwarding counters."""
        return ForwardingCollector(self)

    def close(self) -> None:
        self._receive_socket.close()
        for sock in self._peer_sockets.values():
            sock.close()


class ForwardingCollector(Collector):
    """Reads a worker's forwarding counters at scrape time."""

    def __init__(self, routing: WorkerRouting) -> None:
        self._routing = routing

    def collect(self) -> Iterator[Metric]:
        routing = self._routing
        yield CounterMetricFamily(
            "cryptopass_worker_datagrams_forwarded",
            "Datagrams this worker received for another worker's connection and sent on.",
            value=routing.forwarded)
        yield CounterMetricFamily(
            "cryptopass_worker_datagrams_received_forwarded",
            "Datagrams other workers received for this worker's connections.",
            value=routing.received_forwarded)
        dropped = CounterMetricFamily(
            "cryptopass_worker_datagrams_dropped",
            "Datagrams naming no connection of any worker, or that could not be forwarded.",
            labels=["reason"])
        for reason, count in sorted(routing.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped


@dataclass(frozen=True, kw_only=True)
class Worker:
    """What ``relay.server.serve`` needs to run as one worker of several."""

    index: int
    """0 to count - 1; worker 0 also serves the admin HTTPS and the control socket."""
    udp_socket: socket.socket
    """Bound to the shared port with SO_REUSEPORT, by the supervisor."""
    routing: WorkerRouting
