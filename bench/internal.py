"""``cryptopass-bench internal ...``: processes the bench starts for itself (hidden).

Not for users: each is the other end of a scenario, which starts it and reads what it
prints. ``live-worker`` is one load process of ``live --processes N``
(bench/worker.py); ``echo-server`` is the transport ceiling's server
(bench/transport.py), ``forward-server`` the forward ceiling's (bench/forward.py);
``bulk-server`` is the bare bulk-transfer server of ``files``
(bench/bulk_server.py); ``hold-devices`` and ``native-costs`` are the ``memory``
scenario's client process and fresh process (bench/connection_memory.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import trio
import typer

from bench import bulk_server, connection_memory, echo_server, worker
from relay.logs import configure_logging

__all__ = ["app"]

app = typer.Typer(help="Processes cryptopass-bench starts for itself.", hidden=True,
                  no_args_is_help=True, pretty_exceptions_enable=False)


def _quiet_logs() -> None:
    # Standard output carries what the parent reads; warnings go to standard error.
    configure_logging("json", "warning")


@app.command("live-worker")
def live_worker_command() -> None:
    """One load process of a multi-process live run: settings on standard input."""
    _quiet_logs()
    worker.main()


@app.command("echo-server")
def echo_server_command(
        tls_dir: Annotated[Path, typer.Argument(help="Where to make its certificate.")]) -> None:
    """The transport ceiling's QUIC echo server, until SIGTERM."""
    _quiet_logs()
    trio.run(echo_server.serve, tls_dir)


@app.command("forward-server")
def forward_server_command(
        tls_dir: Annotated[Path, typer.Argument(help="Where to make its certificate.")]) -> None:
    """The forward ceiling's server (SEND forwarded as DELIVER, nothing kept), until SIGTERM."""
    # Imported here: it reads the relay's QUIC settings from relay.server, whose imports would
    # slow every other cryptopass-bench command's start by about half a second.
    from bench import forward_server  # noqa: PLC0415
    _quiet_logs()
    trio.run(forward_server.serve, tls_dir)


@app.command("bulk-server")
def bulk_server_command(
        tls_dir: Annotated[Path, typer.Argument(help="Where to make its certificate.")]) -> None:
    """The files scenario's bare QUIC bulk-transfer server, until SIGTERM."""
    _quiet_logs()
    trio.run(bulk_server.serve, tls_dir)


@app.command("hold-devices")
def hold_devices_command(data_dir: Path, port: int, ca: Path, devices: int) -> None:
    """Provision, connect and hold DEVICES on the relay; one JSON line once held."""
    _quiet_logs()
    trio.run(connection_memory.hold_devices, data_dir, port, ca, devices)


@app.command("native-costs")
def native_costs_command() -> None:
    """RSS per native object a connection holds, measured in this fresh process."""
    _quiet_logs()
    typer.echo(json.dumps(connection_memory.native_costs()))
