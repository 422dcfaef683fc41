"""Options several ``cryptopass-bench`` commands share, each declared once.

``with_options(name, build)`` gives a command the options that are ``build``'s
parameters and passes the command what ``build`` makes of them, as the keyword argument
``name``. The commands that load a relay under test take `target_options` (the relay,
and how the bench puts its devices there: bench/target.py); ``exchange`` and ``cluster``
take `exchange_load`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.exchange import HEADER, ExchangeLoad, Mode
from bench.target import TargetOptions

__all__ = ["JsonOption", "RelayCpuOption", "TimeoutOption", "exchange_load", "target_options",
           "with_options"]

TARGET_PANEL = "Relay under test"
LOAD_PANEL = "Load"

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
RelayCpuOption = Annotated[int | None, typer.Option(
    help="Pin a spawned relay to this CPU (the bench then avoids it).",
    rich_help_panel=TARGET_PANEL)]
TimeoutOption = Annotated[float, typer.Option(help="Seconds before giving up.")]

Command = Callable[..., None]


def with_options(name: str, build: Callable[..., object]) -> Callable[[Command], Command]:
    """Give the decorated command ``build``'s parameters as options instead of ``name``,
    and call it with ``name=build(**those options)``."""
    shared = inspect.signature(build, eval_str=True).parameters

    def decorate(command: Command) -> Command:
        own = inspect.signature(command, eval_str=True)
        # Keyword-only: the order of defaults does not matter, and typer passes keywords.
        parameters = [parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                      for parameter in (*own.parameters.values(), *shared.values())
                      if parameter.name != name]

        @functools.wraps(command)
        def wrapper(**arguments: Any) -> None:
            built = build(**{key: arguments.pop(key) for key in shared})
            command(**arguments, **{name: built})

        wrapper.__signature__ = own.replace(  # type: ignore[attr-defined]
            parameters=parameters)
        return wrapper

    return decorate


def target_options(
        spawn_relay: Annotated[bool, typer.Option(
            "--spawn-relay", help="Start a relay in a temporary data directory and measure "
            "its CPU and memory (what happens without --relay).",
            rich_help_panel=TARGET_PANEL)] = False,
        relay: Annotated[str | None, typer.Option(
            help="Address of a running relay, HOST:PORT (default: start one). Devices are "
            "declared with --data-dir, --store or --admin-url.",
            rich_help_panel=TARGET_PANEL)] = None,
        ca: Annotated[Path | None, typer.Option(
            help="CA certificate of that relay (PEM), for QUIC and the admin API.",
            rich_help_panel=TARGET_PANEL)] = None,
        data_dir: Annotated[Path | None, typer.Option(
            help="Data directory of that relay: devices go into DIR/relay.db "
            "(short for --store sqlite:///DIR/relay.db).", rich_help_panel=TARGET_PANEL)] = None,
        store: Annotated[str | None, typer.Option(
            help="Store of that relay, sqlite:///PATH or postgresql://USER@HOST/DB: devices "
            "are written there as enrolment would leave them.",
            rich_help_panel=TARGET_PANEL)] = None,
        admin_url: Annotated[str | None, typer.Option(
            help="Admin site of that relay, https://HOST:PORT: users are declared through the "
            "API and enrolled over QUIC (needs --admin-token, --org, --sms-listen); they "
            "are deleted after the run.", rich_help_panel=TARGET_PANEL)] = None,
        admin_token: Annotated[str | None, typer.Option(
            envvar="CRYPTOPASS_BENCH_ADMIN_TOKEN",
            help="API token (cpr_...) of --org, from `cryptopass-relay admin token create`.",
            rich_help_panel=TARGET_PANEL)] = None,
        org: Annotated[str | None, typer.Option(
            help="The token's organisation; it needs a free seat per bench device.",
            rich_help_panel=TARGET_PANEL)] = None,
        sms_listen: Annotated[str | None, typer.Option(
            help="HOST:PORT where the bench receives the relay's SMS (configure the relay "
            "with sms_gateway=http, sms_http_url=http://HOST:PORT/sms, sms_http_token).",
            rich_help_panel=TARGET_PANEL)] = None,
        sms_token: Annotated[str | None, typer.Option(
            envvar="CRYPTOPASS_BENCH_SMS_TOKEN",
            help="Bearer token the relay's SMS gateway sends (default: generated and "
            "printed).", rich_help_panel=TARGET_PANEL)] = None,
        relay_cpu: RelayCpuOption = None,
        relay_args: Annotated[str, typer.Option(
            help="Extra arguments for a spawned relay's serve command.",
            rich_help_panel=TARGET_PANEL)] = "") -> TargetOptions:
    """The relay under test, as the command line gives it (checked by the command)."""
    return TargetOptions(spawn_relay=spawn_relay, relay=relay, ca=ca, data_dir=data_dir,
                         store=store, admin_url=admin_url, admin_token=admin_token, org=org,
                         sms_listen=sms_listen, sms_token=sms_token, relay_cpu=relay_cpu,
                         relay_args=relay_args)


def exchange_load(
        messages: Annotated[int, typer.Option(
            help="Messages in all, shared out between the flows.", min=1,
            rich_help_panel=LOAD_PANEL)] = 1000,
        size: Annotated[int, typer.Option(
            help="Payload bytes per message.", min=HEADER.size,
            rich_help_panel=LOAD_PANEL)] = 256,
        mode: Annotated[Mode, typer.Option(
            rich_help_panel=LOAD_PANEL,
            help="pipelined: --window sends in flight per sender; sequential: one message "
            "at a time, each sent once the previous one arrived (the round latency).")
        ] = Mode.PIPELINED,
        window: Annotated[int, typer.Option(
            help="Sends in flight per sender (pipelined).", min=1,
            rich_help_panel=LOAD_PANEL)] = 64,
        both_ways: Annotated[bool, typer.Option(
            "--both-ways", help="B sends to A at the same time, half of each pair's "
            "messages each way.", rich_help_panel=LOAD_PANEL)] = False,
        pairs: Annotated[int, typer.Option(
            help="Sender -> receiver pairs at once, each device on a connection and UDP "
            "socket of its own.", min=1, rich_help_panel=LOAD_PANEL)] = 1,
        timeout: Annotated[float, typer.Option(
            help="Seconds before an unfinished run is reported as such.",
            rich_help_panel=LOAD_PANEL)] = 120) -> ExchangeLoad:
    """The exchange load the command line describes (refused when it cannot run)."""
    load = ExchangeLoad(messages=messages, size=size, mode=mode, window=window,
                        both_ways=both_ways, pairs=pairs, timeout=timeout)
    try:
        load.check()
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--messages") from error
    return load
