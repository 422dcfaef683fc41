"""``cryptopass-bench``: load tests against a relay, and the transport ceiling.

Every scenario runs against a relay it starts itself (``--spawn-relay``, the
default: a temporary data directory, the relay pinned to ``--relay-cpu``) or
against a running one (``--relay HOST:PORT --ca CERT --data-dir DIR``: the
data directory is where the bench declares its devices). ``--json`` prints
one machine-readable object instead of a table.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import trio
import typer
from rich.console import Console
from rich.table import Table

from bench import scenarios
from bench.encrypted_link import check_text_size
from bench.spawn import SpawnedServer, relay_command, spawn_server
from bench.transport import run_transport
from relay.message_content import MAX_TEXT_BYTES
from relay.settings import parse_host_port

__all__ = ["Target", "app", "main"]

T = TypeVar("T")

app = typer.Typer(help="Load tests for Cryptopass relays.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


@dataclass
class Target:
    """The relay under test."""

    host: str
    port: int
    ca: Path | None
    data_dir: Path
    server: SpawnedServer | None
    """Set when the bench started the relay (then its CPU and memory are measured)."""


RelayOption = Annotated[str | None, typer.Option(
    help="Address of a running relay, HOST:PORT (default: start one).")]
CaOption = Annotated[Path | None, typer.Option(help="CA certificate of that relay (PEM).")]
DataDirOption = Annotated[Path | None, typer.Option(
    help="Data directory of that relay (the bench declares its devices there).")]
RelayCpuOption = Annotated[int | None, typer.Option(
    help="Pin a spawned relay to this CPU (the bench then avoids it).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
RelayArgsOption = Annotated[str, typer.Option(
    help="Extra arguments for a spawned relay's serve command.")]


@asynccontextmanager
async def open_target(relay: str | None, ca: Path | None, data_dir: Path | None,
                      relay_cpu: int | None, relay_args: str = "") -> AsyncIterator[Target]:
    if relay is not None:
        if data_dir is None:
            raise typer.BadParameter("--relay needs --data-dir (to declare the bench devices)")
        host, port = parse_host_port(relay)
        yield Target(host=host, port=port, ca=ca, data_dir=data_dir, server=None)
        return
    with tempfile.TemporaryDirectory(prefix="cryptopass-bench-") as temporary:
        directory = Path(temporary) / "relay"
        directory.mkdir()
        async with spawn_server(relay_command(directory, *relay_args.split()), cpu=relay_cpu,
                                cert=directory / "tls" / "cert.pem",
                                make=lambda process: SpawnedServer(process=process)) as server:
            yield Target(host="127.0.0.1", port=server.port, ca=server.cert,
                         data_dir=directory, server=server)


def _avoid_cpu(relay_cpu: int | None) -> None:
    """Keep the load generator off the relay's CPU (when there is another)."""
    if relay_cpu is None:
        return
    others = os.sched_getaffinity(0) - {relay_cpu}
    if others:
        os.sched_setaffinity(0, others)


def _run(work: Callable[[], Awaitable[dict[str, Any]]], as_json: bool, title: str,
         relay_cpu: int | None) -> None:
    _avoid_cpu(relay_cpu)
    result = trio.run(work)
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _print_table(title, result)
    if result.get("errors"):
        raise typer.Exit(1)


def _print_table(title: str, result: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    for key, value in result.items():
        if isinstance(value, dict):
            shown = "  ".join(f"{name} {number}" for name, number in value.items())
        elif isinstance(value, list):
            shown = "; ".join(str(item) for item in value) or "-"
        else:
            shown = str(value)
        table.add_row(key, shown)
    Console().print(table)


@app.command()
def live(devices: Annotated[int, typer.Option(help="Connected devices.", min=2)] = 20,
         messages: Annotated[int, typer.Option(help="Messages each device sends.", min=1)] = 50,
         size: Annotated[int, typer.Option(help="Payload bytes per message.", min=16)] = 256,
         rate: Annotated[float, typer.Option(
             help="Total messages/s to send (0: flat out).", min=0)] = 0,
         window: Annotated[int, typer.Option(
             help="Sends in flight per device when flat out.", min=1)] = 8,
         processes: Annotated[int, typer.Option(help="Load generator processes.", min=1)] = 1,
         timeout: Annotated[float, typer.Option(help="Seconds before giving up.")] = 120,
         encrypted: Annotated[bool, typer.Option(
             "--encrypted", help="End-to-end encrypted texts of --size bytes through the "
             "client library (sessions set up in a warm-up).")] = False,
         relay: RelayOption = None, ca: CaOption = None, data_dir: DataDirOption = None,
         relay_cpu: RelayCpuOption = None, relay_args: RelayArgsOption = "",
         as_json: JsonOption = False) -> None:
    """Devices send to random others; delivered messages/s and end-to-end latency."""
    if encrypted:
        try:
            check_text_size(size)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--size") from error

    async def work() -> dict[str, Any]:
        async with open_target(relay, ca, data_dir, relay_cpu, relay_args) as target:
            return await scenarios.live(target, devices=devices, messages=messages, size=size,
                                        rate=rate, window=window, processes=processes,
                                        time_limit=timeout, encrypted=encrypted)
    _run(work, as_json, "live", relay_cpu)


@app.command()
def offline(messages: Annotated[int, typer.Option(help="Messages queued.", min=1)] = 2000,
            size: Annotated[int, typer.Option(help="Payload bytes.", min=16)] = 256,
            window: Annotated[int, typer.Option(help="Sends in flight.", min=1)] = 256,
            timeout: Annotated[float, typer.Option(help="Seconds before giving up.")] = 120,
            encrypted: Annotated[bool, typer.Option(
                "--encrypted", help="End-to-end encrypted texts of --size bytes through "
                "the client library; the drain decrypts each.")] = False,
            relay: RelayOption = None, ca: CaOption = None, data_dir: DataDirOption = None,
            relay_cpu: RelayCpuOption = None, relay_args: RelayArgsOption = "",
            as_json: JsonOption = False) -> None:
    """A sender queues messages for an offline device, which then connects and drains."""
    if encrypted and size > MAX_TEXT_BYTES:
        raise typer.BadParameter(f"an encrypted text is at most {MAX_TEXT_BYTES} bytes",
                                 param_hint="--size")

    async def work() -> dict[str, Any]:
        async with open_target(relay, ca, data_dir, relay_cpu, relay_args) as target:
            return await scenarios.offline(target, messages=messages, size=size,
                                           window=window, time_limit=timeout,
                                           encrypted=encrypted)
    _run(work, as_json, "offline", relay_cpu)


@app.command()
def enrol(devices: Annotated[int, typer.Option(help="Devices to enrol.", min=1)] = 50,
          concurrency: Annotated[int, typer.Option(help="Enrolments in flight.", min=1)] = 8,
          relay_cpu: RelayCpuOption = None, relay_args: RelayArgsOption = "",
          as_json: JsonOption = False) -> None:
    """Devices enrolled per second end to end: declare, SMS code, verify (spawned relay)."""
    async def work() -> dict[str, Any]:
        async with open_target(None, None, None, relay_cpu, relay_args) as target:
            return await scenarios.enrol(target, devices=devices, concurrency=concurrency)
    _run(work, as_json, "enrol", relay_cpu)


@app.command()
def connections(devices: Annotated[int, typer.Option(help="Idle devices.", min=1)] = 100,
                processes: Annotated[int, typer.Option(
                    help="Load generator processes.", min=1)] = 1,
                relay: RelayOption = None, ca: CaOption = None, data_dir: DataDirOption = None,
                relay_cpu: RelayCpuOption = None, relay_args: RelayArgsOption = "",
                as_json: JsonOption = False) -> None:
    """Idle authenticated devices held by one relay, and its memory per connection."""
    async def work() -> dict[str, Any]:
        async with open_target(relay, ca, data_dir, relay_cpu, relay_args) as target:
            return await scenarios.connections(target, devices=devices, processes=processes)
    _run(work, as_json, "connections", relay_cpu)


@app.command()
def transport(devices: Annotated[int, typer.Option(help="Connected clients.", min=1)] = 20,
              messages: Annotated[int, typer.Option(help="Frames each client sends.")] = 50,
              size: Annotated[int, typer.Option(help="Payload bytes per frame.", min=16)] = 256,
              window: Annotated[int, typer.Option(help="Frames in flight per client.")] = 8,
              timeout: Annotated[float, typer.Option(help="Seconds before giving up.")] = 120,
              compare: Annotated[bool, typer.Option(
                  help="Also run `live` with the same shape and print the ratios.")] = True,
              relay_cpu: RelayCpuOption = None, as_json: JsonOption = False) -> None:
    """The ceiling: the same traffic over bare aioquic streams to an echo server."""
    async def work() -> dict[str, Any]:
        return await run_transport(devices=devices, messages=messages, size=size,
                                   window=window, time_limit=timeout, compare=compare,
                                   relay_cpu=relay_cpu)
    _run(work, as_json, "transport", relay_cpu)


def main() -> None:
    app()
