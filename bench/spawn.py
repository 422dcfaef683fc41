"""Starting a relay (or the transport echo server) as a subprocess, and reading its costs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from bench.relay_process import RelayProcess

__all__ = ["SpawnedServer", "cpu_seconds", "peak_rss_mib", "rss_mib", "spawn_server"]

BIN = Path(sys.executable).parent
S = TypeVar("S", bound="SpawnedServer")

STOP_SECONDS = 15.0
"""How long a stopped server may take to exit before it is killed."""


@dataclass(kw_only=True)
class SpawnedServer(RelayProcess):
    host: str = "127.0.0.1"
    port: int = 0
    cert: Path = Path()

    @property
    def pid(self) -> int:
        return self.process.pid


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


def relay_command(data_dir: Path, *extra: str) -> list[str]:
    return [str(BIN / "cryptopass-relay"), "serve", "--data-dir", str(data_dir),
            "--listen", "127.0.0.1:0", *extra]
