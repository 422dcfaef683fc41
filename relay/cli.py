"""``cryptopass-relay``: run the relay, and operator commands on its store.

Operator commands open the store directly, so they work whether or not a
relay runs on the data directory; when one does, they also tell it what
changed through its control socket (e.g. to close a deleted user's
connections at once).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import psycopg
import trio
import typer
from rich.console import Console
from rich.table import Table

from enrolment import admin
from enrolment.errors import EnrolmentError, InvalidRequest
from enrolment.licence_dates import parse_contract_start, parse_offer
from enrolment.web.service import CLI_CALLER
from relay.admin_cli import (
    CliCloser,
    DataDirOption,
    JsonOption,
    cli_service,
    register_account_commands,
)
from relay.config import ConfigError, load_config, parse_assignment
from relay.control import notify_relay
from relay.data_dir import DATA_DIR_MODE, PRIVATE_UMASK, DataDirectoryInUse
from relay.doctor import register_doctor_command
from relay.enrolment_secret import (
    CreatedSecret,
    EnrolmentSecretError,
    create_enrolment_secret,
    enrolment_secret_path,
)
from relay.lifecycle import run_until_signalled
from relay.logs import configure_logging
from relay.operations_cli import register_operations_commands
from relay.sender_keys_cli import register_sender_key_commands
from relay.settings import (
    DEFAULT_DATA_DIR,
    DEFAULT_ENVELOPE_TTL_MS,
    DEFAULT_LISTEN,
    DEFAULT_MAX_QUEUE_DEPTH,
)
from relay.supervisor import WorkerFailed
from storage.base import StoreError, User
from storage.store_url import open_store, parse_store_url
from transport.addresses import parse_host_port
from wire.phone import national_format

__all__ = ["app", "main"]

T = TypeVar("T")

app = typer.Typer(help="Cryptopass relay server and operator commands.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
admin_app = typer.Typer(help="Operator commands on the relay's store.", no_args_is_help=True)
org_app = typer.Typer(help="Organisations.", no_args_is_help=True)
user_app = typer.Typer(help="Declared users of an organisation.", no_args_is_help=True)
secret_app = typer.Typer(help="The enrolment secret, kept in a file apart from the store.",
                         no_args_is_help=True)
app.add_typer(admin_app, name="admin")
app.add_typer(secret_app, name="secret")
admin_app.add_typer(org_app, name="org")
admin_app.add_typer(user_app, name="user")
register_operations_commands(app)
register_doctor_command(app)
register_sender_key_commands(app)

# Help texts are Rich markup: a literal "[" is written "\\[" (else "[default: x]" vanishes).
StoreOption = Annotated[str | None, typer.Option(
    "--store", help="Store URL: sqlite:///PATH or postgresql://USER@HOST/DB "
                    "\\[default: sqlite in the data directory].")]

_admin_options: dict[str, Any] = {"data_dir": DEFAULT_DATA_DIR, "json": False, "store": None}


@app.command("serve")
def serve_command(
        config: Annotated[Path | None, typer.Option(
            help="TOML configuration file (keys: setting names) \\[env: CRYPTOPASS_CONFIG].")]
        = None,
        data_dir: Annotated[Path | None, typer.Option(
            help=f"Data directory \\[default: {DEFAULT_DATA_DIR}].")] = None,
        listen: Annotated[str | None, typer.Option(
            help=f"UDP address for QUIC, HOST:PORT \\[default: {DEFAULT_LISTEN}].")] = None,
        cert: Annotated[Path | None, typer.Option(help="TLS certificate chain (PEM).")] = None,
        key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
        log_format: Annotated[str | None, typer.Option(
            help="json or console \\[default: json].")] = None,
        retry: Annotated[bool | None, typer.Option(
            help="Validate client addresses with QUIC Retry \\[default: retry].")] = None,
        envelope_ttl_days: Annotated[float | None, typer.Option(
            help="Delete envelopes not acknowledged within this many days "
                 f"\\[default: {DEFAULT_ENVELOPE_TTL_MS / 86_400_000:g}].", min=0.001)] = None,
        max_queue_depth: Annotated[int | None, typer.Option(
            help="Envelopes one device may hold before sends to it are refused "
                 f"\\[default: {DEFAULT_MAX_QUEUE_DEPTH}].", min=1)] = None,
        metrics_listen: Annotated[str | None, typer.Option(
            help="TCP HOST:PORT for /metrics, /healthz, /readyz (internal).")] = None,
        admin_listen: Annotated[str | None, typer.Option(
            help="TCP HOST:PORT for the admin console and API (HTTPS).")] = None,
        store: StoreOption = None,
        node_name: Annotated[str | None, typer.Option(
            help="This node's name, unique in a PostgreSQL cluster \\[default: host name].")]
        = None,
        workers: Annotated[int | None, typer.Option(
            help="Relay processes sharing the UDP port, one per core; more than 1 needs "
                 "a PostgreSQL --store \\[default: 1].", min=1)] = None,
        enrolment_secret_file: Annotated[Path | None, typer.Option(
            help="The enrolment secret's file, the same on every node "
                 "\\[default: DATA_DIR/enrolment.secret].")] = None,
        set_: Annotated[list[str] | None, typer.Option(
            "--set", help="Any setting, FIELD=VALUE (repeatable).")] = None) -> None:
    """Run the relay until SIGTERM or SIGINT (SIGHUP reloads the TLS certificate).

    Settings come from flags, then CRYPTOPASS_* variables, then the --config file.
    """
    try:
        flags: dict[str, Any] = dict(parse_assignment(text) for text in set_ or [])
    except ConfigError as error:
        _fail(str(error))
    if listen is not None:
        try:
            flags["listen_host"], flags["listen_port"] = parse_host_port(listen)
        except ValueError as error:
            _fail(f"--listen: {error}")
    if envelope_ttl_days is not None:
        flags["envelope_ttl_ms"] = int(envelope_ttl_days * 86_400_000)
    named = {"data_dir": data_dir, "cert": cert, "key": key, "log_format": log_format,
             "retry": retry, "max_queue_depth": max_queue_depth,
             "metrics_listen": metrics_listen, "admin_listen": admin_listen, "store": store,
             "node_name": node_name, "workers": workers,
             "enrolment_secret_file": enrolment_secret_file}
    flags.update({name: value for name, value in named.items() if value is not None})
    try:
        loaded = load_config(config_file=config, environ=os.environ, flags=flags)
    except ConfigError as error:
        _fail(str(error))
        raise  # unreachable: _fail exits
    try:
        parse_store_url(loaded.settings.store, data_dir=loaded.settings.data_dir)
    except ValueError as error:
        _fail(f"store: {error}")
    configure_logging(loaded.settings.log_format, loaded.settings.log_level)
    try:
        run_until_signalled(loaded)
    except DataDirectoryInUse as error:  # another relay runs on it: refused, nothing touched
        _fail(f"cannot start: {error}")
    except EnrolmentSecretError as error:
        _fail(f"cannot start: {error}")
    except (OSError, psycopg.OperationalError) as error:
        _fail(f"cannot start: {error}")
    except WorkerFailed as error:
        _fail(str(error))
    except ExceptionGroup as group:  # raised from inside serve's nursery
        unreachable, _ = group.split((OSError, psycopg.OperationalError, EnrolmentSecretError))
        if unreachable is None:
            raise
        _fail(f"cannot start: {_first_leaf(unreachable)}")


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


@admin_app.callback()
def _admin(data_dir: DataDirOption = None, json_output: JsonOption = None,
           store: StoreOption = None) -> None:
    # Defaults come from the relay's configuration (CRYPTOPASS_* variables, the
    # CRYPTOPASS_CONFIG file), so that in a container `admin` finds the store `serve` uses.
    try:
        configured = load_config(environ=os.environ).settings
    except ConfigError as error:
        _fail(str(error))
        raise  # unreachable: _fail exits
    _admin_options["data_dir"] = configured.data_dir
    _admin_options["store"] = configured.store
    if data_dir is not None:
        _admin_options["data_dir"] = data_dir
    if store is not None:
        _admin_options["store"] = store
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
        async with open_store(location) as store:
            return await work(store)

    try:
        location = parse_store_url(_admin_options["store"], data_dir=data_dir)
    except ValueError as error:
        _fail(f"--store: {error}")

    try:
        return trio.run(run)
    except (EnrolmentError, StoreError) as error:
        _fail(str(error) or type(error).__name__)
        raise  # unreachable: _fail exits
    except psycopg.OperationalError as error:
        _fail(f"cannot open the store {location.describe()}: {error}")
        raise  # unreachable: _fail exits


def _user_json(user: User) -> dict[str, Any]:
    return {"user_id": user.user_id, "phone": user.phone, "state": user.state.value,
            "declared_at": user.declared_at, "enrolled_at": user.enrolled_at}


def _parse_seats(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise InvalidRequest(f"seats are a whole number between 1 and {admin.MAX_SEATS}, "
                             f"not {text!r}")
    return int(text)


@org_app.command("create")
def org_create(
        name: Annotated[str, typer.Argument(
            help=f"Lowercase letters, digits and '-', at most "
                 f"{admin.MAX_ORGANISATION_NAME_CHARS} characters.")],
        seats: Annotated[str, typer.Option(
            metavar="N", help=f"Seats in the licence, 1 to {admin.MAX_SEATS}.")],
        offer: Annotated[str, typer.Option(
            metavar="OFFER", show_default=True,
            help="The contract: monthly (without commitment) or annual_commitment "
                 "(12-month periods), as the admin API's licence names it.")] = "monthly",
        start: Annotated[str | None, typer.Option(
            metavar="YYYY-MM-DD", help="Contract start (the licence's period_start; "
                                       "commitment periods count from it) "
                                       "\\[default: today, UTC].")] = None,
        data_dir: DataDirOption = None, json_output: JsonOption = None) -> None:
    """Create organisation NAME with a licence of --seats users on --offer from --start.

    Every value is checked before anything changes; audited as organisation.create and
    licence.terms (actor cli).
    """
    directory, as_json = _options(data_dir, json_output)
    try:
        flag = "--seats"
        seat_count = _parse_seats(seats)
        flag = "--offer"
        chosen_offer = parse_offer(offer)
        flag = "--start"
        contract_start = None if start is None else parse_contract_start(start)
    except InvalidRequest as error:
        _fail(f"{flag}: {error}")
        raise  # unreachable: _fail exits
    organisation, licence = _with_store(directory, lambda store: cli_service(
        store).create_organisation(CLI_CALLER, name, seat_count, offer=chosen_offer,
                                   contract_start=contract_start))
    if as_json:
        typer.echo(json.dumps({"organisation_id": organisation.organisation_id,
                               "name": organisation.name, "seats": organisation.seats,
                               "state": organisation.state.value,
                               "offer": licence.offer.value,
                               "period_start": licence.period_start.isoformat()}))
    else:
        typer.echo(f"Organisation {organisation.name} created with {organisation.seats} seats "
                   f"({licence.offer.value} from {licence.period_start.isoformat()}).")


@user_app.command("add")
def user_add(phone: Annotated[str, typer.Argument(
                 help="Phone number in international form (+33 6 12 34 56 78).")],
             org: Annotated[str, typer.Option(help="Organisation name.")],
             data_dir: DataDirOption = None, json_output: JsonOption = None) -> None:
    """Declare PHONE as a user of --org (uses one seat). Audited as user.declare (actor cli)."""
    directory, as_json = _options(data_dir, json_output)
    user = _with_store(directory, lambda store: cli_service(store).declare(
        CLI_CALLER, org, phone))
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
def user_delete(phone: Annotated[str, typer.Argument(
                    help="Phone number in international form (+33 6 12 34 56 78).")],
                org: Annotated[str, typer.Option(help="Organisation name.")],
                data_dir: DataDirOption = None, json_output: JsonOption = None) -> None:
    """Delete PHONE from --org: its devices are revoked and disconnected at once. Audited as
    user.delete (actor cli)."""
    directory, as_json = _options(data_dir, json_output)

    async def work(store: Any) -> tuple[User, int]:
        closer = CliCloser()
        user = await cli_service(store, closer).delete(CLI_CALLER, org, phone)
        closed = 0
        for user_id in closer.user_ids:  # a relay running on the data directory closes them
            answer = await notify_relay(directory, {"op": "revoke-user", "user_id": user_id})
            closed += int(answer.get("closed", 0)) if answer else 0
        return user, closed

    user, closed = _with_store(directory, work)
    if as_json:
        typer.echo(json.dumps({"deleted": _user_json(user), "connections_closed": closed}))
    else:
        typer.echo(f"Deleted {national_format(user.phone)} from {org}; "
                   f"{closed} live connection(s) closed.")


register_account_commands(admin_app, org_app, with_store=_with_store, options=_options)


@secret_app.command("create")
def secret_create(
        file: Annotated[Path | None, typer.Option(
            "--file", help="Where to write it \\[default: the configured enrolment_secret_file, "
                           "else DATA_DIR/enrolment.secret].")] = None,
        replace: Annotated[bool, typer.Option(
            "--replace", help="Make a new secret even if one exists: pending codes are lost "
                              "and the limits per number start again.")] = False,
        data_dir: Annotated[Path | None, typer.Option(
            "--data-dir", help="Data directory \\[default: the configured data_dir].")] = None,
        store: StoreOption = None) -> None:
    """Create the enrolment secret's file (mode 0600), once for a relay or a whole cluster.

    A secret an earlier version kept in the store is moved out into the file instead (and
    deleted from the store). Copy the file to every node of a cluster (docs/CLUSTER.md); back
    it up apart from the store's backups (docs/OPERATIONS.md).
    """
    try:
        configured = load_config(environ=os.environ).settings
    except ConfigError as error:
        _fail(str(error))
        raise  # unreachable: _fail exits
    directory = data_dir or configured.data_dir
    path = file or enrolment_secret_path(directory, configured.enrolment_secret_file)
    try:
        location = parse_store_url(store or configured.store, data_dir=directory)
    except ValueError as error:
        _fail(f"--store: {error}")
        raise  # unreachable: _fail exits
    if location.postgres_dsn is None:
        directory.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)

    async def run() -> CreatedSecret:
        async with open_store(location) as opened:
            return await create_enrolment_secret(opened, path, replace=replace)

    try:
        created = trio.run(run)
    except (EnrolmentSecretError, OSError) as error:
        _fail(str(error))
        raise  # unreachable: _fail exits
    except psycopg.OperationalError as error:
        _fail(f"cannot open the store {location.describe()}: {error}")
        raise  # unreachable: _fail exits
    how = "moved out of the store into" if created.moved_from_store else "created in"
    typer.echo(f"The enrolment secret was {how} {path} (mode 0600). Every node of a cluster "
               "must read this same file: copy it to each (enrolment_secret_file), and keep a "
               "copy apart from the store's backups.")


def main() -> None:
    # The store, its WAL, backups, the outbox: whatever a command creates is its owner's only.
    os.umask(PRIVATE_UMASK)
    app()
