"""``cryptopass-bench``: load tests against a relay, the transport ceiling, and the costs
under them (store, cryptography, client library, memory per connection).

The scenarios that load a relay run against one they start themselves (the default: a
temporary data directory, the relay pinned to ``--relay-cpu``) or against a running one
(``--relay HOST:PORT --ca CERT`` with ``--data-dir``, ``--store`` or the admin API:
bench/target.py); ``cluster`` starts its own nodes. ``--json`` prints one
machine-readable object instead of a table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import trio
import typer

from bench import connection_memory, crypto_cost, internal, scenarios, store_cost
from bench.admin_provisioner import ProvisioningError
from bench.calls import run_calls
from bench.cli_options import (
    JsonOption,
    RelayCpuOption,
    TimeoutOption,
    exchange_load,
    target_options,
    with_options,
)
from bench.cluster import DEFAULT_POSTGRES, ClusterSetup, Placement, StoreKind, run_cluster
from bench.encrypted_link import check_text_size
from bench.exchange import ExchangeLoad, exchange_on
from bench.files import run_files
from bench.forward import run_forward
from bench.group_cost import MAX_GROUP_DEVICES, group_cost
from bench.messenger_cost import messenger_cost
from bench.push_wake import PUSH_RELAY_ARGS, push_wakeups
from bench.report import print_result
from bench.target import Target, TargetOptions, check_options, open_target
from bench.transport import run_transport
from client.message_content import MAX_TEXT_BYTES
from relay.limits import SENDS_PER_MINUTE
from relay.logs import configure_logging

__all__ = ["Target", "app", "main"]

app = typer.Typer(help="Load tests for Cryptopass relays.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.add_typer(internal.app, name="internal", hidden=True)

Scenario = Callable[[Target], Awaitable[dict[str, Any]]]


def _avoid_cpu(relay_cpu: int | None) -> None:
    """Keep the load generator off the relay's CPU (when there is another)."""
    if relay_cpu is None:
        return
    others = os.sched_getaffinity(0) - {relay_cpu}
    if others:
        os.sched_setaffinity(0, others)


def _run(work: Callable[[], Awaitable[dict[str, Any]]], as_json: bool, title: str, *,
         relay_cpu: int | None = None) -> None:
    """Run ``work`` and print its result (one JSON line, or nested tables on a terminal);
    exit 1 when it counted errors."""
    _avoid_cpu(relay_cpu)
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
        print_result(title, result)
    if result.get("errors"):
        raise typer.Exit(1)


def _run_on_target(scenario: Scenario, options: TargetOptions, as_json: bool, title: str, *,
                   needs_codes: bool = False) -> None:
    """Run ``scenario`` on the relay under test (started, or reached, by ``open_target``)."""
    check_options(options, needs_codes=needs_codes)  # refused before anything starts

    async def work() -> dict[str, Any]:
        async with open_target(options, needs_codes=needs_codes) as target:
            return await scenario(target)
    _run(work, as_json, title, relay_cpu=options.relay_cpu)


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


@app.command()
@with_options("target", target_options)
def live(devices: Annotated[int, typer.Option(help="Connected devices.", min=2)] = 20,
         messages: Annotated[int, typer.Option(help="Messages each device sends.", min=1)] = 50,
         size: Annotated[int, typer.Option(help="Payload bytes per message.", min=16)] = 256,
         rate: Annotated[float, typer.Option(
             help="Total messages/s to send (0: flat out).", min=0)] = 0,
         window: Annotated[int, typer.Option(
             help="Sends in flight per device when flat out.", min=1)] = 8,
         processes: Annotated[int, typer.Option(help="Load generator processes.", min=1)] = 1,
         timeout: TimeoutOption = 120,
         encrypted: Annotated[bool, typer.Option(
             "--encrypted", help="End-to-end encrypted texts of --size bytes through the "
             "client library (sessions set up in a warm-up).")] = False,
         group: Annotated[int | None, typer.Option(
             "--group", metavar="N",
             help=f"Instead: the cost of one group message to N devices (2 to "
                  f"{MAX_GROUP_DEVICES}) against the same text sent pairwise, --messages "
                  f"times each (bench/group_cost.py): sender CPU and bytes uploaded, relay "
                  f"CPU and bytes stored.", show_default=False)] = None,
         as_json: JsonOption = False, *, target: TargetOptions) -> None:
    """Devices send to random others; delivered messages/s and end-to-end latency."""
    if group is not None:
        _live_group(group, messages, size, target, as_json)
        return
    if encrypted:
        try:
            check_text_size(size)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--size") from error
    _run_on_target(lambda relay: scenarios.live(
        relay, devices=devices, messages=messages, size=size, rate=rate, window=window,
        processes=processes, time_limit=timeout, encrypted=encrypted), target, as_json, "live")


def _group_sends(group: int, messages: int) -> int:
    """What ``live --group`` takes of the sender's SEND budget: a key to each other device,
    each group message as a MULTI_SEND (one SEND per 16 devices), each pairwise text one SEND
    per other device."""
    others = group - 1
    return others + messages * (-(-others // 16) + others)


def _live_group(group: int, messages: int, size: int, target: TargetOptions,
                as_json: bool) -> None:
    if not 2 <= group <= MAX_GROUP_DEVICES:
        raise typer.BadParameter(f"a group of 2 to {MAX_GROUP_DEVICES} devices",
                                 param_hint="--group")
    if _group_sends(group, messages) > SENDS_PER_MINUTE:
        fitting = max(number for number in range(SENDS_PER_MINUTE + 1)
                      if number == 0 or _group_sends(group, number) <= SENDS_PER_MINUTE)
        raise typer.BadParameter(
            f"the run makes {_group_sends(group, messages)} SENDs' worth from one device, more "
            f"than the relay's {SENDS_PER_MINUTE} a minute: use --messages {fitting} or fewer",
            param_hint="--messages")
    if size > MAX_TEXT_BYTES:
        raise typer.BadParameter(f"a text is at most {MAX_TEXT_BYTES} bytes",
                                 param_hint="--size")
    _run_on_target(lambda relay: group_cost(relay, group=group, messages=messages, size=size),
                   target, as_json, "live --group")


@app.command()
@with_options("target", target_options)
def offline(messages: Annotated[int, typer.Option(help="Messages queued.", min=1)] = 2000,
            size: Annotated[int, typer.Option(help="Payload bytes.", min=16)] = 256,
            window: Annotated[int, typer.Option(help="Sends in flight.", min=1)] = 256,
            timeout: TimeoutOption = 120,
            encrypted: Annotated[bool, typer.Option(
                "--encrypted", help="End-to-end encrypted texts of --size bytes through "
                "the client library; the drain decrypts each.")] = False,
            push: Annotated[bool, typer.Option(
                "--push", help="Wake-up pushes instead: --messages devices register a Web Push "
                "endpoint on the bench's loopback receiver and disconnect; one message to "
                "each; the time from send to wake-up received (p50, p99) and pushes per "
                "second. A running relay (--relay) needs push_webpush_subject and "
                "push_webpush_allow_loopback_http.")] = False,
            as_json: JsonOption = False, *, target: TargetOptions) -> None:
    """A sender queues messages for an offline device, which then connects and drains."""
    if encrypted and size > MAX_TEXT_BYTES:
        raise typer.BadParameter(f"an encrypted text is at most {MAX_TEXT_BYTES} bytes",
                                 param_hint="--size")
    if push:
        if encrypted:
            raise typer.BadParameter("--push measures wake-ups, not encryption",
                                     param_hint="--encrypted")
        if target.relay is None:
            target = dataclasses.replace(target, relay_args=" ".join(
                (*PUSH_RELAY_ARGS, target.relay_args)))
        _run_on_target(lambda relay: push_wakeups(
            relay, devices=messages, window=window, size=size, time_limit=timeout),
            target, as_json, "offline --push")
        return
    _run_on_target(lambda relay: scenarios.offline(
        relay, messages=messages, size=size, window=window, time_limit=timeout,
        encrypted=encrypted), target, as_json, "offline")


@app.command()
@with_options("target", target_options)
def enrol(devices: Annotated[int, typer.Option(help="Devices to enrol.", min=1)] = 50,
          concurrency: Annotated[int, typer.Option(help="Enrolments in flight.", min=1)] = 8,
          as_json: JsonOption = False, *, target: TargetOptions) -> None:
    """Devices enrolled per second end to end: declare, SMS code, verify.

    A running relay (--relay) needs --sms-listen: its SMS gateway posts the codes there."""
    _run_on_target(lambda relay: scenarios.enrol(relay, devices=devices,
                                                 concurrency=concurrency),
                   target, as_json, "enrol", needs_codes=True)


@app.command()
@with_options("target", target_options)
def connections(devices: Annotated[int, typer.Option(help="Idle devices.", min=1)] = 100,
                processes: Annotated[int, typer.Option(
                    help="Load generator processes.", min=1)] = 1,
                as_json: JsonOption = False, *, target: TargetOptions) -> None:
    """Idle authenticated devices held by one relay, and its memory per connection."""
    _run_on_target(lambda relay: scenarios.connections(relay, devices=devices,
                                                       processes=processes),
                   target, as_json, "connections")


@app.command()
def transport(devices: Annotated[int, typer.Option(help="Connected clients.", min=1)] = 20,
              messages: Annotated[int, typer.Option(
                  help="Frames (--forward: messages) each client sends.")] = 50,
              size: Annotated[int, typer.Option(help="Payload bytes per frame.", min=16)] = 256,
              window: Annotated[int, typer.Option(help="Frames in flight per client.")] = 8,
              timeout: TimeoutOption = 120,
              compare: Annotated[bool | None, typer.Option(
                  "--compare/--no-compare",
                  help="Also run `live` with the same shape and print the ratios (default: "
                       "yes for the echo ceiling, no with --forward).",
                  show_default=False)] = None,
              forward: Annotated[bool, typer.Option(
                  "--forward", help="Instead of the echo server: the `live` load through the "
                  "client library to a server that forwards each SEND as a DELIVER and keeps "
                  "nothing (the relay's traffic shape without its work; bench/forward.py).")
              ] = False,
              rate: Annotated[float, typer.Option(
                  help="With --forward: total messages/s to send (0: flat out).", min=0)] = 0,
              relay_cpu: RelayCpuOption = None, as_json: JsonOption = False) -> None:
    """The ceiling: the same traffic over bare aioquic streams to an echo server, or
    (--forward) through a server that forwards without storing, checking or authenticating."""
    if forward:
        if devices < 2:
            raise typer.BadParameter("the live load needs at least 2 devices",
                                     param_hint="--devices")

        async def forward_work() -> dict[str, Any]:
            return await run_forward(devices=devices, messages=messages, size=size,
                                     window=window, rate=rate, time_limit=timeout,
                                     compare=bool(compare), relay_cpu=relay_cpu)
        _run(forward_work, as_json, "transport --forward", relay_cpu=relay_cpu)
        return
    if rate:
        raise typer.BadParameter("the echo ceiling sends flat out: --rate goes with --forward",
                                 param_hint="--rate")

    async def work() -> dict[str, Any]:
        return await run_transport(devices=devices, messages=messages, size=size,
                                   window=window, time_limit=timeout,
                                   compare=compare is not False, relay_cpu=relay_cpu)
    _run(work, as_json, "transport", relay_cpu=relay_cpu)


@app.command()
@with_options("target", target_options)
def calls(calls: Annotated[int, typer.Option(help="Concurrent 1:1 calls measured.",
                                             min=1)] = 20,
          seconds: Annotated[float, typer.Option(help="Seconds of media measured.",
                                                 min=0.1)] = 5.0,
          ramp: Annotated[bool, typer.Option(
              help="Then double the calls until more than 1 % of datagrams are lost.")] = True,
          ramp_max: Annotated[int, typer.Option(help="The most calls the ramp tries.",
                                                min=1)] = 160,
          ramp_seconds: Annotated[float, typer.Option(help="Seconds per ramp step.",
                                                      min=0.1)] = 2.0,
          timeout: TimeoutOption = 120, as_json: JsonOption = False, *,
          target: TargetOptions) -> None:
    """Calls through the media relay (50 datagrams/s each way): forwarded datagrams/s,
    latency added over a bare QUIC datagram echo, loss, and the calls carried below 1 %."""
    _run_on_target(lambda relay: run_calls(
        relay, calls=calls, seconds=seconds, ramp=ramp, ramp_max=ramp_max,
        ramp_seconds=ramp_seconds, time_limit=timeout), target, as_json, "calls")


@app.command()
@with_options("load", exchange_load)
@with_options("target", target_options)
def exchange(as_json: JsonOption = False, *, load: ExchangeLoad,
             target: TargetOptions) -> None:
    """Device A sends to device B (per pair): throughput, latency, relay and client CPU.

    --mode sequential sends one message at a time: its latency is the round time (send,
    commit, push, receipt)."""
    _run_on_target(lambda relay: exchange_on(relay, load), target, as_json, "exchange")


@app.command()
@with_options("load", exchange_load)
def cluster(nodes: Annotated[int, typer.Option(
                help="Relay nodes: A on the first, B on the last.", min=1, max=2)] = 2,
            store: Annotated[StoreKind, typer.Option(
                help="The nodes' store (postgresql: a fresh schema of --postgres).")
            ] = StoreKind.POSTGRESQL,
            postgres: Annotated[str, typer.Option(
                help="PostgreSQL database for --store postgresql.")] = DEFAULT_POSTGRES,
            workers: Annotated[int, typer.Option(
                help="Worker processes of the node (serve --workers; PostgreSQL, one node).",
                min=1)] = 1,
            placement: Annotated[Placement, typer.Option(
                help="With --workers: where the kernel puts each connection (random), or "
                "both devices of pair i on worker i mod W.")] = Placement.RANDOM,
            as_json: JsonOption = False, *, load: ExchangeLoad) -> None:
    """The exchange through relay nodes (subprocesses) sharing one store."""
    setup = ClusterSetup(nodes=nodes, store=store, postgres=postgres, workers=workers,
                         placement=placement)
    try:
        setup.check()
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    _run(lambda: run_cluster(setup, load), as_json, "cluster")


@app.command()
@with_options("target", target_options)
def messenger(runs: Annotated[int, typer.Option(help="Rounds (encrypted, sealed, plaintext).",
                                                min=1)] = 3,
              messages: Annotated[int, typer.Option(help="Messages per run.", min=1)] = 500,
              size: Annotated[int, typer.Option(
                  help="Text bytes per message.", min=1, max=MAX_TEXT_BYTES)] = 256,
              timeout: Annotated[float, typer.Option(
                  help="Seconds each run may take.")] = 120,
              as_json: JsonOption = False, *, target: TargetOptions) -> None:
    """Messages/s between two devices through the client library: encrypted, sealed and
    plaintext.

    One message at a time; encrypted texts go through Messenger (Double Ratchet, the
    end-to-end state written after every change), identified; sealed ones too, then sealed
    (sender certificate, two layers) and sent on a fresh unauthenticated connection each
    (at most 100 per run: the relay admits 120 sealed sends a minute per delivery token);
    plaintext through RelayClient."""
    _run_on_target(lambda relay: messenger_cost(relay, runs=runs, messages=messages,
                                                size=size, time_limit=timeout),
                   target, as_json, "messenger")


@app.command()
@with_options("target", target_options)
def files(size: Annotated[int, typer.Option(help="File size in MiB.", min=1)] = 64,
          runs: Annotated[int, typer.Option(help="Rounds (each: up, then down).", min=1)] = 3,
          timeout: TimeoutOption = 120, as_json: JsonOption = False, *,
          target: TargetOptions) -> None:
    """An encrypted file's upload and download MB/s through the relay, beside bare QUIC
    bulk transfer of the same bytes measured in the same run, and their ratios."""
    _run_on_target(lambda relay: run_files(relay, size=size * 1024 * 1024, runs=runs,
                                           time_limit=timeout, relay_cpu=target.relay_cpu),
                   target, as_json, "files")


@app.command()
def crypto(runs: Annotated[int, typer.Option(help="Runs.", min=1)] = 5,
           handshakes: Annotated[int, typer.Option(
               help="PQXDH handshakes per run.", min=1)] = 200,
           pairs: Annotated[int, typer.Option(
               help="Encrypt + decrypt pairs of 256 bytes per run.", min=1)] = 2000,
           as_json: JsonOption = False) -> None:
    """End-to-end cryptography on one core: PQXDH handshakes/s and ratchet pairs/s."""
    async def work() -> dict[str, Any]:
        return crypto_cost.measure(runs=runs, handshakes=handshakes, pairs=pairs)
    _run(work, as_json, "crypto")


@app.command("store-cost")
def store_cost_command(
        runs: Annotated[int, typer.Option(help="Runs.", min=1)] = 3,
        messages: Annotated[int, typer.Option(help="Sends (then acknowledgements) per run.",
                                              min=1)] = 2000,
        batch: Annotated[list[int] | None, typer.Option(
            help="Writes in flight; repeat for several (default: 1, 4, 16 and 64).",
            min=1)] = None,
        as_json: JsonOption = False) -> None:
    """The embedded store's CPU per send and per acknowledgement, with no network, for each
    batch size (writes in flight)."""
    batches = tuple(batch) if batch else store_cost.BATCHES
    _run(lambda: store_cost.measure(runs=runs, messages=messages, batches=batches), as_json,
         "store-cost")


@app.command()
def memory(devices: Annotated[int, typer.Option(help="Idle devices.", min=1)] = 1000,
           tracemalloc: Annotated[bool, typer.Option(
               "--tracemalloc", help="Also report the Python heap by file and line "
               "(inflates RSS).")] = False,
           top: Annotated[int, typer.Option(help="Lines and files reported.", min=1)] = 25,
           as_json: JsonOption = False) -> None:
    """Where an idle connection's memory goes, in a relay run inside the bench."""
    configure_logging("json", "warning")  # the relay runs here; standard output is the result
    _run(lambda: connection_memory.measure(devices, trace=tracemalloc, top=top), as_json,
         "memory")


def main() -> None:
    app()
