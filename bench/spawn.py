"""Starting a relay (or the transport echo server) as a subprocess, following it through
its JSON log, and reading its costs.

``spawn_relay`` is the one way the bench, and the tests that run real relay processes,
start ``cryptopass-relay serve``: the relay a scenario loads (bench/target.py), the nodes
of ``cryptopass-bench cluster``, and the tests' relays. Waiting for a log event
(``relay_listening``, ``sms_sent``, ``device_authenticated``) is how they know the relay
did something, without sleeping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from storage.store_url import parse_store_url

__all__ = ["BENCH_CONNECTIONS_PER_ADDRESS", "BENCH_SEND_BUDGETS", "BIN", "DEFAULT_WAIT_SECONDS",
           "RelayProcess", "SpawnedRelay", "SpawnedServer", "cpu_seconds", "peak_rss_mib",
           "rss_mib", "spawn_relay", "spawn_server"]

BIN = Path(sys.executable).parent
"""Where the project's commands are installed (the virtual environment's bin)."""
S = TypeVar("S", bound="SpawnedServer")

STOP_SECONDS = 15.0
"""How long a stopped server may take to exit before it is killed."""
DEFAULT_WAIT_SECONDS = 30.0
"""How long ``wait_for`` waits for an event before failing."""
BENCH_CONNECTIONS_PER_ADDRESS = ("--set=connections_per_address=1000000",)
"""``serve`` arguments that let a relay the bench starts take every bench device's connection
from one address (loopback), past the per-address limit meant for floods (docs/SECURITY.md)."""
BENCH_SEND_BUDGETS = ("--set=sends_per_minute=1000000000",
                      "--set=send_bytes_per_minute=1125899906842624",  # 2**50
                      "--set=sender_queue_share_percent=100")
"""``serve`` arguments that lift the per-device send budgets and the sender's share of a queue
(docs/SECURITY.md) for the relays the bench starts: its loads send flat out from one device, and
queue thousands from one sender for an offline device, to measure the relay, which those
limits (meant for floods) would stop. The checks still run, so their cost is measured."""


@dataclass(kw_only=True)
class RelayProcess:
    """A relay subprocess whose standard error (JSON lines) is parsed as it arrives."""

    process: trio.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    async def follow_log(self) -> None:
        """Parse the relay's JSON log lines (and keep its stderr pipe drained)."""
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    self.events.append(event)
            self._wake()
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, event: str, count: int = 1) -> dict[str, Any]:
        """The ``count``-th log event named ``event``, once it is logged.

        Raises:
            RuntimeError: the relay exited first.
            trio.TooSlowError: not logged within DEFAULT_WAIT_SECONDS.
        """
        with trio.fail_after(DEFAULT_WAIT_SECONDS):
            while True:
                matching = [e for e in self.events if e.get("event") == event]
                if len(matching) >= count:
                    return matching[count - 1]
                if self.process.returncode is not None:
                    raise RuntimeError(f"relay exited ({self.process.returncode}) "
                                       f"before {event!r}")
                await self.changed.wait()


@dataclass(kw_only=True)
class SpawnedServer(RelayProcess):
    host: str = "127.0.0.1"
    port: int = 0
    cert: Path = Path()

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass(kw_only=True)
class SpawnedRelay(SpawnedServer):
    """A ``cryptopass-relay serve`` subprocess on ``data_dir``."""

    data_dir: Path

    @property
    def outbox(self) -> Path:
        """Where the relay's development SMS gateway appends what it sends."""
        return self.data_dir / "sms-outbox.jsonl"


def _proc_status(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    raise ValueError(f"no {field} for process {pid}")


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of a process (VmHWM), in MiB."""
    return _proc_status(pid, "VmHWM")


def rss_mib(pid: int) -> float:
    """Current resident memory of a process (VmRSS), in MiB."""
    return _proc_status(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def spawn_server(command: Sequence[str], *, cpu: int | None = None,
                       cert: Path | None = None,
                       make: Callable[[trio.Process], S]) -> AsyncIterator[S]:
    """Run ``command`` (a relay or echo server logging JSON with a ``relay_listening``
    event carrying ``port``), optionally pinned to one CPU; stop it with SIGTERM on exit
    (a test may SIGKILL it meanwhile). ``make`` builds the object that follows it."""
    process = await trio.lowlevel.open_process(
        list(command), stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if cpu is not None:
        os.sched_setaffinity(process.pid, {cpu})
    server = make(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.follow_log)
            listening = await server.wait_for("relay_listening")
            server.port = int(listening["port"])
            if cert is not None:
                server.cert = cert
            try:
                yield server
            finally:
                with trio.CancelScope(shield=True):
                    if process.returncode is None:
                        process.terminate()
                    with trio.move_on_after(STOP_SECONDS):
                        await process.wait()
                nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


@asynccontextmanager
async def spawn_relay(data_dir: Path, *serve_args: str, store: str | None = None,
                      node_name: str | None = None, listen: str = "127.0.0.1:0",
                      cpu: int | None = None) -> AsyncIterator[SpawnedRelay]:
    """``cryptopass-relay serve --data-dir DATA_DIR --listen LISTEN``, once it listens.

    Args:
        serve_args: more arguments for ``serve`` (``--workers 2``, ``--set ...``).
        store: ``--store`` (default: SQLite in ``data_dir``).
        node_name: ``--node-name``, for a cluster node.
        listen: the QUIC address (default: any free port on loopback).
        cpu: pin the relay to this CPU.

    Stopped with SIGTERM on exit (a test may SIGKILL it meanwhile: ``relay.process.kill()``).
    With a PostgreSQL store, the enrolment secret is ``DATA_DIR/../enrolment.secret``: the
    nodes spawned side by side (``node-1``, ``node-2``) read one, as a cluster's nodes must.
    """
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before starting)
    command = [str(BIN / "cryptopass-relay"), "serve", "--data-dir", str(data_dir),
               "--listen", listen]
    if store is not None:
        command += ["--store", store]
        if parse_store_url(store, data_dir=data_dir).kind == "postgresql":
            command += ["--enrolment-secret-file", str(data_dir.parent / "enrolment.secret")]
    if node_name is not None:
        command += ["--node-name", node_name]
    async with spawn_server([*command, *serve_args], cpu=cpu,
                            cert=data_dir / "tls" / "cert.pem",
                            make=lambda process: SpawnedRelay(process=process,
                                                              data_dir=data_dir)) as relay:
        yield relay
