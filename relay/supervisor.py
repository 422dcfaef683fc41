"""``serve --workers N``: N relay processes on one UDP port, and the process watching them.

Python runs one thread of relay work at a time; a machine with N cores runs N
relay processes. Each worker is a full node of the PostgreSQL cluster (node
name ``NAME-k``, docs/CLUSTER.md), so a device on one worker reaches a device on
another through the store, as between machines.

The supervisor (the ``serve`` process):

* holds the data directory's lock (relay/data_dir.py, taken by
  relay/lifecycle.py before it starts) and hands the locked descriptor to
  every worker: they share its lock and never take one of their own, so the
  directory stays locked until the last of them has exited, even if the
  supervisor is killed first;
* prepares what the workers share: the data directory, the development
  certificate if none is configured (made once, so workers never race to
  write it), N UDP sockets bound to one port with SO_REUSEPORT (the kernel
  spreads clients over them by address hash; port 0 picks one port for all),
  and one Unix datagram socket pair per worker for forwarded datagrams
  (relay/forwarding.py);
* starts each worker (``python -m relay.worker_process``) in a session of its
  own, handing it its sockets and its settings (relay/worker_process.py);
* passes SIGTERM, SIGINT and SIGHUP on to every worker;
* if a worker exits while nobody asked it to, stops the others and fails
  (``WorkerFailed``: the command exits 1); an orchestrator restarts the whole
  relay, whose clients reconnect. Restarting one worker in place would leave
  its clients' connections lost anyway, for the same cost;
* exits 0 once every worker stopped cleanly after a signal.

Per worker: metrics on the configured port + k, the admin console and the
control socket on worker 0 only (both act through the store, which every
worker shares).
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import PurePath

import structlog
import trio

from relay.config import LoadedConfig
from relay.data_dir import DataDirLock
from relay.settings import RelaySettings
from relay.tls import ensure_development_certificate
from transport.addresses import parse_host_port
from transport.quic import open_udp_socket

__all__ = [
    "LAUNCH_FORMAT_VERSION",
    "READY_LINE",
    "WorkerFailed",
    "one_write_per_log_line",
    "supervise",
    "worker_settings",
]

log = structlog.get_logger("relay.supervisor")

LAUNCH_FORMAT_VERSION = 2
"""Version of the launch message a worker reads on its standard input (2: ``lock_fd``)."""

READY_LINE = b"ready\n"
"""What a worker writes on its standard output once it listens."""

EXIT_GRACE_SECONDS = 20.0
"""How long stopping workers may take before they are killed: a worker cancels
what is left of its own stop after lifecycle.STOP_DEADLINE_SECONDS (15 s)."""

FORWARDED_BUFFER_BYTES = 4 * 1024 * 1024
"""Kernel buffer of each forwarding socket: a burst of forwarded datagrams must
not be dropped while the owner is busy (as transport.quic.SOCKET_BUFFER_BYTES)."""

_FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class WorkerFailed(RuntimeError):
    """A worker process exited unasked; the others were stopped."""


def one_write_per_log_line() -> None:
    """Write each line of standard error with one ``write``.

    The supervisor and its workers share one standard error. With
    PYTHONUNBUFFERED (set in the container image) Python writes a line and its
    newline separately, so two processes logging at once interleave into two
    broken JSON lines; a line-buffered stream writes the whole line at once, and
    the kernel keeps a pipe write of up to 4 KiB in one piece.
    """
    if isinstance(sys.stderr, io.TextIOWrapper):
        sys.stderr.reconfigure(write_through=False, line_buffering=True)


def worker_settings(settings: RelaySettings, index: int, *, port: int) -> RelaySettings:
    """Worker ``index``'s settings: its node name, its metrics port, admin on worker 0."""
    metrics = settings.metrics_listen
    if metrics is not None:
        host, metrics_port = parse_host_port(metrics)
        if metrics_port != 0:  # 0: each worker picks a free port
            shown_host = f"[{host}]" if ":" in host else host
            metrics = f"{shown_host}:{metrics_port + index}"
    return dataclasses.replace(
        settings, node_name=f"{settings.node_name or socket.gethostname()}-{index}",
        listen_port=port, metrics_listen=metrics,
        admin_listen=settings.admin_listen if index == 0 else None)


@dataclass
class _WorkerSockets:
    udp: socket.socket
    """Bound to the shared port."""
    receive: socket.socket
    """Where the other workers forward this one's datagrams."""
    send: socket.socket
    """The other end: what the other workers forward with."""


@contextmanager
def _shared_sockets(host: str, port: int, count: int) -> Iterator[list[_WorkerSockets]]:
    """``count`` UDP sockets on one port and a forwarding socket pair each; closed on exit
    (each worker keeps its own copies)."""
    with ExitStack() as stack:
        sockets: list[_WorkerSockets] = []
        for _ in range(count):
            udp = stack.enter_context(open_udp_socket(host, port, reuse_port=True))
            port = udp.getsockname()[1]  # with port 0, the first socket chooses for all
            receive, send = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            stack.enter_context(receive)
            stack.enter_context(send)
            for end in (receive, send):
                end.setblocking(False)
            receive.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, FORWARDED_BUFFER_BYTES)
            send.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, FORWARDED_BUFFER_BYTES)
            sockets.append(_WorkerSockets(udp=udp, receive=receive, send=send))
        yield sockets


def _launch_message(settings: RelaySettings, index: int, sockets: Sequence[_WorkerSockets],
                    data_dir_lock: DataDirLock) -> bytes:
    mine = sockets[index]
    values = {name: str(value) if isinstance(value, PurePath) else value
              for name, value in dataclasses.asdict(settings).items()}
    return json.dumps({
        "version": LAUNCH_FORMAT_VERSION, "index": index, "count": len(sockets),
        "udp_fd": mine.udp.fileno(), "receive_fd": mine.receive.fileno(),
        "lock_fd": data_dir_lock.descriptor,
        "peer_fds": {str(other): entry.send.fileno()
                     for other, entry in enumerate(sockets) if other != index},
        "settings": values}).encode() + b"\n"


@dataclass
class _Worker:
    index: int
    process: trio.Process


async def supervise(loaded: LoadedConfig, data_dir_lock: DataDirLock) -> None:
    """Run ``loaded.settings.workers`` relay processes until SIGTERM or SIGINT.

    Args:
        data_dir_lock: the data directory's lock, held by this process; every worker
            gets a copy of its descriptor.

    Raises:
        WorkerFailed: a worker exited unasked (or failed to start).
    """
    one_write_per_log_line()
    settings = loaded.settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.cert is None or settings.key is None:
        cert, key, generated = ensure_development_certificate(
            settings.data_dir / "tls", now=datetime.datetime.now(datetime.UTC))
        if generated:
            log.warning("development_certificate_generated", path=str(cert))
        settings = dataclasses.replace(settings, cert=cert, key=key)
    for warning in loaded.warnings:
        log.warning("configuration_warning", detail=warning)
    with trio.open_signal_receiver(*_FORWARDED_SIGNALS) as signals:
        workers: list[_Worker] = []
        try:
            with _shared_sockets(settings.listen_host, settings.listen_port,
                                 settings.workers) as sockets:
                port = sockets[0].udp.getsockname()[1]
                log.info("workers_starting", workers=settings.workers, port=port)
                for index in range(settings.workers):
                    workers.append(await _start(settings, index, sockets, port,
                                                data_dir_lock))
            # Our copies are closed: each socket now lives in its worker only, so a
            # worker that dies takes its place in the port group with it.
            await _watch(workers, signals, port)
        finally:
            with trio.CancelScope(shield=True):
                for worker in workers:
                    if worker.process.returncode is None:
                        worker.process.kill()
                    await worker.process.wait()
                    if worker.process.stdin is not None:
                        await worker.process.stdin.aclose()
    log.info("workers_stopped")


async def _start(settings: RelaySettings, index: int, sockets: Sequence[_WorkerSockets],
                 port: int, data_dir_lock: DataDirLock) -> _Worker:
    mine = sockets[index]
    descriptors = [mine.udp.fileno(), mine.receive.fileno(), data_dir_lock.descriptor,
                   *(entry.send.fileno() for other, entry in enumerate(sockets)
                     if other != index)]
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "relay.worker_process"], stdin=-1, stdout=-1,
        pass_fds=descriptors,
        # Its own session: a Ctrl-C in a terminal reaches the supervisor only,
        # which passes it on once (twice would cut a worker's graceful stop short).
        start_new_session=True)
    assert process.stdin is not None
    await process.stdin.send_all(_launch_message(
        worker_settings(settings, index, port=port), index, sockets, data_dir_lock))
    # stdin stays open: a worker stops when it closes (this process is gone).
    log.info("worker_started", worker=index, pid=process.pid)
    return _Worker(index=index, process=process)


async def _watch(workers: Sequence[_Worker], signals: AsyncIterator[int], port: int) -> None:
    """Pass signals on; return once all stopped after one; raise if one exits unasked."""
    events_in, events_out = trio.open_memory_channel[tuple[str, int, int]](len(workers) * 2 + 8)
    async with trio.open_nursery() as nursery:
        for worker in workers:
            nursery.start_soon(_follow, worker, events_in.clone())
        nursery.start_soon(_receive_signals, signals, events_in.clone())
        events_in.close()
        ready: set[int] = set()
        exits: dict[int, int] = {}
        failure: str | None = None
        stopping = False
        async for kind, index, value in events_out:
            if kind == "ready":
                ready.add(index)
                if len(ready) == len(workers):
                    log.info("workers_ready", workers=len(workers), port=port)
            elif kind == "signal":
                received = signal.Signals(value)
                if received != signal.SIGHUP and not stopping:
                    log.info("stop_requested", signal=received.name)
                    stopping = True
                    nursery.start_soon(_kill_after, workers, EXIT_GRACE_SECONDS)
                _signal_all(workers, received)
            else:  # "exit"
                exits[index] = value
                if value != 0 or not stopping:
                    log.error("worker_exited", worker=index, status=value, asked=stopping)
                    failure = failure or f"worker {index} exited with status {value}"
                if not stopping:
                    stopping = True
                    _signal_all(workers, signal.SIGTERM)
                    nursery.start_soon(_kill_after, workers, EXIT_GRACE_SECONDS)
                if len(exits) == len(workers):
                    break
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise WorkerFailed(f"{failure}; the relay stopped (see the worker's log)")


async def _follow(worker: _Worker, events: trio.MemorySendChannel[tuple[str, int, int]]
                  ) -> None:
    """Report the worker's ``ready`` line, then its exit status."""
    async with events:
        output = worker.process.stdout
        assert output is not None
        seen = b""
        async for chunk in output:
            if READY_LINE not in seen:
                seen = (seen + chunk)[-len(READY_LINE) * 4:]
                if READY_LINE in seen:
                    await events.send(("ready", worker.index, 0))
        status = await worker.process.wait()
        await events.send(("exit", worker.index, status))


async def _receive_signals(signals: AsyncIterator[int],
                           events: trio.MemorySendChannel[tuple[str, int, int]]) -> None:
    async with events:
        async for received in signals:
            await events.send(("signal", -1, int(received)))


def _signal_all(workers: Sequence[_Worker], received: signal.Signals) -> None:
    for worker in workers:
        if worker.process.returncode is None:
            worker.process.send_signal(received)


async def _kill_after(workers: Sequence[_Worker], seconds: float) -> None:
    await trio.sleep(seconds)
    for worker in workers:
        if worker.process.returncode is None:
            log.error("worker_killed", worker=worker.index, after_seconds=seconds)
            worker.process.kill()
