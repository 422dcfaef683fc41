"""``cryptopass-bench``: load tests against a relay, and the transport ceiling.

Every scenario runs against a relay it starts itself (the default: a temporary
data directory, the relay pinned to ``--relay-cpu``) or against a running one
(``--relay HOST:PORT --ca CERT`` with ``--data-dir``, ``--store`` or the admin API:
bench/target.py). ``--json`` prints one machine-readable object instead of a table.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import trio
import typer
from rich.console import Console
from rich.table import Table

from bench import scenarios
from bench.admin_provisioner import ProvisioningError
from bench.encrypted_link import check_text_size
from bench.target import Target, TargetOptions, check_options, open_target
from bench.transport import run_transport
from client.message_content import MAX_TEXT_BYTES

__all__ = ["Target", "app", "main"]

T = TypeVar("T")

app = typer.Typer(help="Load tests for Cryptopass relays.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


SpawnRelayOption = Annotated[bool, typer.Option(
    "--spawn-relay", help="Start a relay in a temporary data directory and measure its CPU "
    "and memory (what happens without --relay).")]
RelayOption = Annotated[str | None, typer.Option(
    help="Address of a running relay, HOST:PORT (default: start one). Devices are "
         "declared with --data-dir, --store or --admin-url.")]
CaOption = Annotated[Path | None, typer.Option(
    help="CA certificate of that relay (PEM), for QUIC and the admin API.")]
DataDirOption = Annotated[Path | None, typer.Option(
    help="Data directory of that relay: devices go into DIR/relay.db "
         "(short for --store sqlite:///DIR/relay.db).")]
StoreOption = Annotated[str | None, typer.Option(
    help="Store of that relay, sqlite:///PATH or postgresql://USER@HOST/DB: devices are "
         "written there as enrolment would leave them.")]
AdminUrlOption = Annotated[str | None, typer.Option(
    help="Admin site of that relay, https://HOST:PORT: users are declared through the "
         "API and enrolled over QUIC (needs --admin-token, --org, --sms-listen); they "
         "are deleted after the run.")]
AdminTokenOption = Annotated[str | None, typer.Option(
    envvar="CRYPTOPASS_BENCH_ADMIN_TOKEN",
    help="API token (cpr_...) of --org, from `cryptopass-relay admin token create`.")]
OrgOption = Annotated[str | None, typer.Option(
    help="The token's organisation; it needs a free seat per bench device.")]
SmsListenOption = Annotated[str | None, typer.Option(
    help="HOST:PORT where the bench receives the relay's SMS (configure the relay with "
         "sms_gateway=http, sms_http_url=http://HOST:PORT/sms, sms_http_token).")]
SmsTokenOption = Annotated[str | None, typer.Option(
    envvar="CRYPTOPASS_BENCH_SMS_TOKEN",
    help="Bearer token the relay's SMS gateway sends (default: generated and printed).")]
RelayCpuOption = Annotated[int | None, typer.Option(
    help="Pin a spawned relay to this CPU (the bench then avoids it).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
RelayArgsOption = Annotated[str, typer.Option(
    help="Extra arguments for a spawned relay's serve command.")]


def _avoid_cpu(relay_cpu: int | None) -> None:
    """Keep the load generator off the relay's CPU (when there is another)."""
    if relay_cpu is None:
        return
    others = os.sched_getaffinity(0) - {relay_cpu}
    if others:
        os.sched_setaffinity(0, others)


def _run(work: Callable[[], Awaitable[dict[str, Any]]], options: TargetOptions,
         as_json: bool, title: str, *, needs_codes: bool = False) -> None:
    check_options(options, needs_codes=needs_codes)  # refused before anything starts
    _avoid_cpu(options.relay_cpu)
    try:
        result = trio.run(work)
    except BaseException as error:
        refusal = _provisioning_error(error)
        if refusal is None:
            raise
        typer.echo(f"error: {refusal}", err=True)
        raise typer.Exit(1) from error
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _print_table(title, result)
    if result.get("errors"):
        raise typer.Exit(1)


def _provisioning_error(error: BaseException) -> ProvisioningError | None:
    """The ProvisioningError behind ``error``, unwrapping the nurseries' groups."""
    if isinstance(error, ProvisioningError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _provisioning_error(inner)
            if found is not None:
                return found
    return None


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
         spawn_relay: SpawnRelayOption = False,
         relay: RelayOption = None, ca: CaOption = None, data_dir: DataDirOption = None,
         store: StoreOption = None, admin_url: AdminUrlOption = None,
         admin_token: AdminTokenOption = None, org: OrgOption = None,
         sms_listen: SmsListenOption = None, sms_token: SmsTokenOption = None,
         relay_cpu: RelayCpuOption = None, relay_args: RelayArgsOption = "",
         as_json: JsonOption = False) -> None:
    """Devices send to random others; delivered messages/s and end-to-end latency."""
    options = TargetOptions(spawn_relay=spawn_relay, relay=relay, ca=ca, data_dir=data_dir,
                            store=store,
                            admin_url=admin_url, admin_token=admin_token, org=org,
                            sms_listen=sms_listen, sms_token=sms_token, relay_cpu=relay_cpu,
                            relay_args=relay_args)
    if encrypted:
        try:
            check_text_size(size)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--size") from error

    async def work() -> dict[str, Any]:
        async with open_target(options) as target:
            return await scenarios.live(target, devices=devices, messages=messages, size=size,
                                        rate=rate, window=window, processes=processes,
                                        time_limit=timeout, encrypted=encrypted)
    _run(work, options, as_json, "live")


@app.command()
def offline(messages: Annotated[int, typer.Option(help="Messages queued.", min=1)] = 2000,
            size: Annotated[int, typer.Option(help="Payload bytes.", min=16)] = 256,
            window: Annotated[int, typer.Option(help="Sends in flight.", min=1)] = 256,
            timeout: Annotated[float, typer.Option(help="Seconds before giving up.")] = 120,
            encrypted: Annotated[bool, typer.Option(
                "--encrypted", help="End-to-end encrypted texts of --size bytes through "
                "the client library; the drain decrypts each.")] = False,
            spawn_relay: SpawnRelayOption = False,
            relay: RelayOption = None, ca: CaOption = None, data_dir: DataDirOption = None,
            store: StoreOption = None, admin_url: AdminUrlOption = None,
            admin_token: AdminTokenOption = None, org: OrgOption = None,
            sms_listen: SmsListenOption = None, sms_token: SmsTokenOption = None,
            relay_cpu: RelayCpuOption = None, relay_args: RelayArgsOption = "",
            as_json: JsonOption = False) -> None:
    """A sender queues messages for an offline device, which then connects and drains."""
    options = TargetOptions(spawn_relay=spawn_relay, relay=relay, ca=ca, data_dir=data_dir,
                            store=store,
                            admin_url=admin_url, admin_token=admin_token, org=org,
                            sms_listen=sms_listen, sms_token=sms_token, relay_cpu=relay_cpu,
                            relay_args=relay_args)
    if encrypted and size > MAX_TEXT_BYTES:
        raise typer.BadParameter(f"an encrypted text is at most {MAX_TEXT_BYTES} bytes",
                                 param_hint="--size")

    async def work() -> dict[str, Any]:
        async with open_target(options) as target:
            return await scenarios.offline(target, messages=messages, size=size,
                                           window=window, time_limit=timeout,
                                           encrypted=encrypted)
    _run(work, options, as_json, "offline")


@app.command()
def enrol(devices: Annotated[int, typer.Option(help="Devices to enrol.", min=1)] = 50,
          concurrency: Annotated[int, typer.Option(help="Enrolments in flight.", min=1)] = 8,
          spawn_relay: SpawnRelayOption = False,
          relay: RelayOption = None, ca: CaOption = None, data_dir: DataDirOption = None,
          store: StoreOption = None, admin_url: AdminUrlOption = None,
          admin_token: AdminTokenOption = None, org: OrgOption = None,
          sms_listen: SmsListenOption = None, sms_token: SmsTokenOption = None,
          relay_cpu: RelayCpuOption = None, relay_args: RelayArgsOption = "",
          as_json: JsonOption = False) -> None:
    """Devices enrolled per second end to end: declare, SMS code, verify.

    A running relay (--relay) needs --sms-listen: its SMS gateway posts the codes there."""
    options = TargetOptions(spawn_relay=spawn_relay, relay=relay, ca=ca, data_dir=data_dir,
                            store=store,
                            admin_url=admin_url, admin_token=admin_token, org=org,
                            sms_listen=sms_listen, sms_token=sms_token, relay_cpu=relay_cpu,
                            relay_args=relay_args)

    async def work() -> dict[str, Any]:
        async with open_target(options, needs_codes=True) as target:
            return await scenarios.enrol(target, devices=devices, concurrency=concurrency)
    _run(work, options, as_json, "enrol", needs_codes=True)


@app.command()
def connections(devices: Annotated[int, typer.Option(help="Idle devices.", min=1)] = 100,
                processes: Annotated[int, typer.Option(
                    help="Load generator processes.", min=1)] = 1,
                spawn_relay: SpawnRelayOption = False,
                relay: RelayOption = None, ca: CaOption = None, data_dir: DataDirOption = None,
                store: StoreOption = None, admin_url: AdminUrlOption = None,
                admin_token: AdminTokenOption = None, org: OrgOption = None,
                sms_listen: SmsListenOption = None, sms_token: SmsTokenOption = None,
                relay_cpu: RelayCpuOption = None, relay_args: RelayArgsOption = "",
                as_json: JsonOption = False) -> None:
    """Idle authenticated devices held by one relay, and its memory per connection."""
    options = TargetOptions(spawn_relay=spawn_relay, relay=relay, ca=ca, data_dir=data_dir,
                            store=store,
                            admin_url=admin_url, admin_token=admin_token, org=org,
                            sms_listen=sms_listen, sms_token=sms_token, relay_cpu=relay_cpu,
                            relay_args=relay_args)

    async def work() -> dict[str, Any]:
        async with open_target(options) as target:
            return await scenarios.connections(target, devices=devices, processes=processes)
    _run(work, options, as_json, "connections")


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
    _run(work, TargetOptions(relay_cpu=relay_cpu), as_json, "transport")


def main() -> None:
    app()
