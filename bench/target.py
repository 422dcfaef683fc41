"""The relay under test, and how the bench puts its devices on it.

Four ways, chosen by the options (``check_options`` refuses incoherent sets):

* no ``--relay``: the bench starts a relay in a temporary data directory;
* ``--relay --data-dir D``: a running relay whose SQLite store is ``D/relay.db``;
* ``--relay --store URL``: a running relay on that store (SQLite or PostgreSQL);
* ``--relay --admin-url --admin-token --org --sms-listen``: a running relay reached
  only through its admin API and QUIC; the relay's SMS gateway posts to the bench.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
import typer

from bench.admin_provisioner import open_admin_provisioner
from bench.enrol_devices import CodeSource, OutboxCodes
from bench.provisioners import Provisioner, StoreProvisioner
from bench.sms_webhook import SMS_WEBHOOK_PATH, SmsInbox, serve_sms_webhook
from bench.spawn import (
    BENCH_CONNECTIONS_PER_ADDRESS,
    BENCH_SEND_BUDGETS,
    SpawnedServer,
    spawn_relay,
)
from storage.store_url import StoreLocation, parse_store_url
from transport.addresses import parse_host_port

__all__ = ["Target", "TargetOptions", "check_options", "open_target"]

SMS_TOKEN_BYTES = 32
"""Random bytes of a generated ``--sms-token`` (256 bits, like the relay's API tokens)."""

BENCH_ENROLMENTS_PER_ADDRESS = 1_000_000
"""ENROL_STARTs and ENROL_VERIFYs per hour from one address that a relay the bench starts
allows (settings ``enrol_starts_per_address``, ``enrol_verifies_per_address``): more than any
run enrols."""


@dataclass(frozen=True, kw_only=True)
class TargetOptions:
    """The command line's say on the relay under test (all None: start one)."""

    spawn_relay: bool = False
    """Asked for explicitly (``--spawn-relay``); starting one is also the default."""
    relay: str | None = None
    ca: Path | None = None
    data_dir: Path | None = None
    store: str | None = None
    admin_url: str | None = None
    admin_token: str | None = None
    org: str | None = None
    sms_listen: str | None = None
    sms_token: str | None = None
    relay_cpu: int | None = None
    relay_args: str = ""


@dataclass
class Target:
    """The relay under test."""

    host: str
    port: int
    ca: Path | None
    provisioner: Provisioner
    """Declares users and provisions enrolled devices on it."""
    codes: CodeSource | None
    """Where enrolment codes arrive (None: the bench cannot see them)."""
    server: SpawnedServer | None
    """Set when the bench started the relay (then its CPU and memory are measured)."""


def _refuse(message: str, hint: str) -> None:
    raise typer.BadParameter(message, param_hint=hint)


def check_options(options: TargetOptions, *, needs_codes: bool = False) -> StoreLocation | None:
    """Refuse an incoherent option set; return the store location when one is given.

    ``needs_codes``: the scenario enrols through SMS codes (``enrol``), so a running
    relay needs ``--sms-listen``.

    Raises:
        typer.BadParameter: naming the options at fault.
    """
    remote_only = {"--data-dir": options.data_dir, "--store": options.store,
                   "--admin-url": options.admin_url, "--admin-token": options.admin_token,
                   "--org": options.org, "--sms-listen": options.sms_listen,
                   "--sms-token": options.sms_token, "--ca": options.ca}
    if options.spawn_relay and options.relay is not None:
        _refuse("--spawn-relay starts a relay; --relay names a running one: choose one",
                "--spawn-relay")
    if options.relay is None:
        given = [name for name, value in remote_only.items() if value is not None]
        if given:
            _refuse(f"{', '.join(given)} need --relay (without it the bench starts a relay)",
                    given[0])
        return None
    if options.relay_args:
        _refuse("--relay-args apply to a relay the bench starts, not --relay", "--relay-args")
    ways = [name for name, value in (("--data-dir", options.data_dir),
                                     ("--store", options.store),
                                     ("--admin-url", options.admin_url)) if value is not None]
    if not ways:
        _refuse("--relay needs a way to declare the bench devices: --data-dir DIR, "
                "--store URL, or --admin-url with --admin-token, --org and --sms-listen",
                "--relay")
    if len(ways) > 1:
        _refuse(f"choose one of {' and '.join(ways)}", ways[1])
    if options.admin_url is None:
        strays = [name for name in ("--admin-token", "--org")
                  if remote_only[name] is not None]
        if strays:
            _refuse(f"{', '.join(strays)} go with --admin-url", strays[0])
    else:
        missing = [name for name in ("--admin-token", "--org", "--sms-listen")
                   if remote_only[name] is None]
        if missing:
            _refuse(f"--admin-url needs {', '.join(missing)}", "--admin-url")
        if not options.admin_url.startswith("https://"):
            _refuse("expected https://HOST:PORT (the admin site is served over TLS)",
                    "--admin-url")
    if options.sms_listen is None:
        if options.sms_token is not None:
            _refuse("--sms-token goes with --sms-listen", "--sms-token")
        if needs_codes:
            _refuse("enrolling on a running relay needs --sms-listen (the relay's SMS "
                    "gateway posts the codes there)", "--sms-listen")
    elif options.admin_url is None and not needs_codes:
        _refuse("--sms-listen is used with --admin-url (or by enrol)", "--sms-listen")
    for name, address in (("--relay", options.relay), ("--sms-listen", options.sms_listen)):
        if address is not None:
            try:
                parse_host_port(address)
            except ValueError as error:
                _refuse(str(error), name)
    if options.store is not None or options.data_dir is not None:
        try:
            return parse_store_url(options.store, data_dir=options.data_dir or Path())
        except ValueError as error:
            _refuse(str(error), "--store")
    return None


@asynccontextmanager
async def open_target(options: TargetOptions, *,
                      needs_codes: bool = False) -> AsyncIterator[Target]:
    """The relay under test (started here without ``--relay``), with its provisioner."""
    location = check_options(options, needs_codes=needs_codes)
    if options.relay is None:
        async with _spawned_target(options) as target:
            yield target
        return
    host, port = parse_host_port(options.relay)
    async with trio.open_nursery() as nursery:
        inbox: SmsInbox | None = None
        if options.sms_listen is not None:
            inbox = SmsInbox()
            token = options.sms_token or _announce_generated_token()
            bound = await nursery.start(serve_sms_webhook, options.sms_listen, inbox, token)
            print(f"SMS webhook: sms_http_url=http://{bound[0]}:{bound[1]}{SMS_WEBHOOK_PATH}",
                  file=sys.stderr)
        if location is not None:
            yield Target(host=host, port=port, ca=options.ca,
                         provisioner=StoreProvisioner(location), codes=inbox, server=None)
        else:
            assert options.admin_url and options.admin_token and options.org and inbox
            async with open_admin_provisioner(options.admin_url, options.admin_token,
                                              options.org, ca=options.ca, host=host,
                                              port=port, codes=inbox) as provisioner:
                yield Target(host=host, port=port, ca=options.ca, provisioner=provisioner,
                             codes=inbox, server=None)
        nursery.cancel_scope.cancel()


def _announce_generated_token() -> str:
    token = secrets.token_urlsafe(SMS_TOKEN_BYTES)
    # Standard error: --json keeps standard output to the one result object.
    print(f"SMS webhook: generated sms_http_token={token} (configure the relay with it, "
          "or pass --sms-token)", file=sys.stderr)
    return token


@asynccontextmanager
async def _spawned_target(options: TargetOptions) -> AsyncIterator[Target]:
    with tempfile.TemporaryDirectory(prefix="cryptopass-bench-") as temporary:
        # The bench enrols every device from one address (loopback): the relay's enrolment
        # limits per address, meant for floods, would stop it at 20 an hour. --relay-args may
        # set them again.
        unlimited = [f"--set=enrol_{kind}_per_address={BENCH_ENROLMENTS_PER_ADDRESS}"
                     for kind in ("starts", "verifies")]
        async with spawn_relay(Path(temporary) / "relay", *unlimited, *BENCH_SEND_BUDGETS,
                               *BENCH_CONNECTIONS_PER_ADDRESS,
                               *options.relay_args.split(), cpu=options.relay_cpu) as server:
            location = parse_store_url(None, data_dir=server.data_dir)
            yield Target(host="127.0.0.1", port=server.port, ca=server.cert,
                         provisioner=StoreProvisioner(location), codes=OutboxCodes(server),
                         server=server)
