"""``cryptopass-relay``: run the relay, and operator commands on its store.

Operator commands open the store directly, so they work whether or not a
relay runs on the data directory; when one does, they also tell it what
changed through its control socket (e.g. to close a deleted user's
connections at once).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import trio
import typer
from rich.console import Console
from rich.table import Table

from enrolment import admin
from enrolment.errors import EnrolmentError
from enrolment.phone import national_format
from relay.control import notify_relay
from relay.logs import LogFormat, configure_logging
from relay.server import RunningRelay, serve
from relay.settings import (
    DEFAULT_DATA_DIR,
    DEFAULT_ENVELOPE_TTL_MS,
    DEFAULT_LISTEN,
    DEFAULT_MAX_QUEUE_DEPTH,
    RelaySettings,
    parse_host_port,
)
from storage.base import StoreError, User
from storage.sqlite import open_sqlite_store

__all__ = ["app", "main"]

T = TypeVar("T")

app = typer.Typer(help="Cryptopass relay server and operator commands.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
admin_app = typer.Typer(help="Operator commands on the relay's store.", no_args_is_help=True)
org_app = typer.Typer(help="Organisations.", no_args_is_help=True)
user_app = typer.Typer(help="Declared users of an organisation.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
admin_app.add_typer(org_app, name="org")
admin_app.add_typer(user_app, name="user")

DataDirOption = Annotated[Path | None, typer.Option(
    "--data-dir", help=f"Relay data directory [default: {DEFAULT_DATA_DIR}].")]
JsonOption = Annotated[bool | None, typer.Option("--json", help="Print JSON.")]

_admin_options: dict[str, Any] = {"data_dir": DEFAULT_DATA_DIR, "json": False}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@app.command("serve")
def serve_command(
        data_dir: Annotated[Path, typer.Option(help="Data directory.")] = DEFAULT_DATA_DIR,
        listen: Annotated[str, typer.Option(help="UDP address for QUIC, HOST:PORT.")]
        = DEFAULT_LISTEN,
        cert: Annotated[Path | None, typer.Option(help="TLS certificate chain (PEM).")] = None,
        key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
        log_format: Annotated[str, typer.Option(help="json or console.")] = "json",
        retry: Annotated[bool, typer.Option(
            help="Validate client addresses with QUIC Retry.")] = True,
        envelope_ttl_days: Annotated[float, typer.Option(
            help="Delete envelopes not acknowledged within this many days.", min=0.001)]
        = DEFAULT_ENVELOPE_TTL_MS / 86_400_000,
        max_queue_depth: Annotated[int, typer.Option(
            help="Envelopes one device may hold before sends to it are refused.", min=1)]
        = DEFAULT_MAX_QUEUE_DEPTH) -> None:
    """Run the relay until SIGTERM or SIGINT."""
    if (cert is None) != (key is None):
        _fail("--cert and --key go together")
    if log_format not in ("json", "console"):
        _fail("--log-format must be json or console")
    try:
        host, port = parse_host_port(listen)
    except ValueError as error:
        _fail(f"--listen: {error}")
    fmt: LogFormat = "console" if log_format == "console" else "json"
    configure_logging(fmt)
    settings = RelaySettings(data_dir=data_dir, listen_host=host, listen_port=port,
                             cert=cert, key=key, retry=retry,
                             envelope_ttl_ms=int(envelope_ttl_days * 86_400_000),
                             max_queue_depth=max_queue_depth)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            running: RunningRelay = await nursery.start(serve, settings)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    running.stop()
                    break

    try:
        trio.run(run)
    except OSError as error:
        _fail(f"cannot start: {error}")


@admin_app.callback()
def _admin(data_dir: DataDirOption = None, json_output: JsonOption = None) -> None:
    if data_dir is not None:
        _admin_options["data_dir"] = data_dir
    if json_output is not None:
        _admin_options["json"] = json_output


def _options(data_dir: Path | None, json_output: bool | None) -> tuple[Path, bool]:
    return (data_dir or _admin_options["data_dir"],
            _admin_options["json"] if json_output is None else json_output)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _with_store(data_dir: Path, work: Callable[[Any], Awaitable[T]]) -> T:
    async def run() -> T:
        async with open_sqlite_store(data_dir / "relay.db") as store:
            return await work(store)

    try:
        return trio.run(run)
    except (EnrolmentError, StoreError) as error:
        _fail(str(error) or type(error).__name__)
        raise  # unreachable: _fail exits


def _user_json(user: User) -> dict[str, Any]:
    return {"user_id": user.user_id, "phone": user.phone, "state": user.state.value,
            "declared_at": user.declared_at, "enrolled_at": user.enrolled_at}


@org_app.command("create")
def org_create(name: str,
               seats: Annotated[int, typer.Option(help="Seats in the licence.")],
               data_dir: DataDirOption = None, json_output: JsonOption = None) -> None:
    """Create organisation NAME with a licence of --seats users."""
    directory, as_json = _options(data_dir, json_output)
    organisation = _with_store(directory, lambda store: admin.create_organisation(
        store, name, seats, _now_ms()))
    if as_json:
        typer.echo(json.dumps({"organisation_id": organisation.organisation_id,
                               "name": organisation.name, "seats": organisation.seats,
                               "state": organisation.state.value}))
    else:
        typer.echo(f"Organisation {organisation.name} created with {organisation.seats} seats.")


@user_app.command("add")
def user_add(phone: str, org: Annotated[str, typer.Option(help="Organisation name.")],
             data_dir: DataDirOption = None, json_output: JsonOption = None) -> None:
    """Declare PHONE as a user of --org (uses one seat)."""
    directory, as_json = _options(data_dir, json_output)
    user = _with_store(directory, lambda store: admin.declare_user(
        store, org, phone, _now_ms()))
    if as_json:
        typer.echo(json.dumps(_user_json(user)))
    else:
        typer.echo(f"Declared {national_format(user.phone)} in {org}.")


@user_app.command("list")
def user_list(org: Annotated[str, typer.Option(help="Organisation name.")],
              data_dir: DataDirOption = None, json_output: JsonOption = None) -> None:
    """List the users of --org."""
    directory, as_json = _options(data_dir, json_output)
    users = _with_store(directory, lambda store: admin.list_users(store, org))
    if as_json:
        typer.echo(json.dumps([_user_json(user) for user in users]))
        return
    table = Table("phone", "state", "user id")
    for user in users:
        table.add_row(user.phone, user.state.value, user.user_id)
    Console().print(table)


@user_app.command("delete")
def user_delete(phone: str, org: Annotated[str, typer.Option(help="Organisation name.")],
                data_dir: DataDirOption = None, json_output: JsonOption = None) -> None:
    """Delete PHONE from --org: its devices are revoked and disconnected at once."""
    directory, as_json = _options(data_dir, json_output)

    async def work(store: Any) -> tuple[User, int]:
        user = await admin.delete_user(store, org, phone)
        answer = await notify_relay(directory, {"op": "revoke-user", "user_id": user.user_id})
        return user, int(answer.get("closed", 0)) if answer else 0

    user, closed = _with_store(directory, work)
    if as_json:
        typer.echo(json.dumps({"deleted": _user_json(user), "connections_closed": closed}))
    else:
        typer.echo(f"Deleted {national_format(user.phone)} from {org}; "
                   f"{closed} live connection(s) closed.")


def main() -> None:
    app()
