"""``cryptopass-relay doctor``: check a deployment before its users find what is wrong.

Each check is a small function returning a ``Check`` (a name, ``ok``, ``warn`` or ``fail``, and
a sentence saying what was seen); ``run_checks`` runs them all for one configuration. They only
read: the store is opened without migrating it (a store at an older schema version is reported,
never upgraded), the data directory's lock is tested, never taken, and nothing is written
except PostgreSQL's NOTIFY on a channel of the doctor's own.

The listen port check binds the UDP port when no relay holds the data directory's lock (it must
be free for ``serve`` to start); when one does, it makes a QUIC handshake to it, with the
relay's ALPN, and closes at once: the port answers as a Cryptopass relay. The handshake does not
verify the certificate (the ``certificate`` check reads it from disk), so it does not prove
that the relay answering is the one holding this data directory.

Registered on ``cryptopass-relay`` by ``relay.cli``.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import secrets
import socket
import sqlite3
import ssl
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import psycopg
import typer
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from relay.config import ConfigError, load_config, parse_assignment
from relay.data_dir import DATA_DIR_MODE, DATA_FILE_MODE, LOCK_FILE_NAME
from relay.enrolment_secret import CREATE_COMMAND, SECRET_FILE_MODE, enrolment_secret_path
from relay.sender_certificates import (
    KEY_FILE_MODE,
    SenderKeyError,
    load_keyring,
    sender_key_directory,
)
from relay.settings import DEFAULT_DATA_DIR, RelaySettings
from storage import postgres_schema, sqlite_schema
from storage.store_url import StoreLocation, parse_store_url
from transport.addresses import parse_host_port
from wire.limits import ALPN

__all__ = [
    "CERT_WARN_DAYS",
    "CLOCK_FAIL_S",
    "CLOCK_WARN_S",
    "Check",
    "Status",
    "check_admin_accounts",
    "check_certificate",
    "check_clock_skew",
    "check_data_dir",
    "check_enrolment_secret",
    "check_listen_port",
    "check_postgres_listen",
    "check_sms_gateway",
    "check_store",
    "clock_skew_status",
    "quic_handshake",
    "register_doctor_command",
    "run_checks",
]

Status = Literal["ok", "warn", "fail"]

CERT_WARN_DAYS = 14
"""A certificate expiring within this many days is a warning (the alert's threshold too)."""
CLOCK_WARN_S = 1.0
CLOCK_FAIL_S = 30.0
"""Clock skew against PostgreSQL: above 1 s the expiry times of codes, sessions and envelopes
written by different nodes disagree noticeably; above 30 s one-time codes and sessions may
expire early or late on one node."""
CONNECT_TIMEOUT_S = 5
"""Seconds to wait for PostgreSQL before the store is reported unreachable."""
HANDSHAKE_TIMEOUT_S = 5.0
"""Seconds to wait for a running relay's QUIC handshake."""
NOTIFY_TIMEOUT_S = 5.0
"""Seconds to wait for the doctor's own NOTIFY to come back."""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str

    def line(self) -> str:
        """One line of the report: ``STATUS  NAME  detail``."""
        return f"{self.status:<4}  {self.name}  {self.detail}"


# --- certificate ---------------------------------------------------------------------------

def check_certificate(cert_path: Path, key_path: Path, *, now: datetime.datetime,
                      development: bool = False) -> Check:
    """The certificate parses, is valid now and for 14 more days, and matches the key."""
    name = "certificate"
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError:
        if development:
            return Check(name, "warn", f"no certificate at {cert_path}: serve will generate a "
                                       "self-signed development one")
        return Check(name, "fail", f"no certificate at {cert_path}")
    except (OSError, ValueError) as error:
        return Check(name, "fail", f"cannot read the certificate {cert_path}: {error}")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        return Check(name, "fail", f"cannot read the key {key_path}: {error}")
    if not _same_public_key(certificate, key):
        return Check(name, "fail", f"the key {key_path} does not match the certificate "
                                   f"{cert_path}")
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if now < start:
        return Check(name, "fail", f"not valid before {start.isoformat()} ({cert_path})")
    if now >= end:
        return Check(name, "fail", f"expired on {end.isoformat()} ({cert_path})")
    days = (end - now) / datetime.timedelta(days=1)
    which = "development certificate" if development else str(cert_path)
    if days < CERT_WARN_DAYS:
        return Check(name, "warn", f"{which} expires in {days:.1f} days ({end.isoformat()})")
    return Check(name, "ok", f"{which} valid until {end.date().isoformat()} ({days:.0f} days), "
                             "matches its key")


def _same_public_key(certificate: x509.Certificate, key: PrivateKeyTypes) -> bool:
    def spki(public: Any) -> bytes:
        encoded: bytes = public.public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        return encoded

    return spki(certificate.public_key()) == spki(key.public_key())


# --- listen port ---------------------------------------------------------------------------

def relay_running(data_dir: Path) -> bool:
    """Whether a process holds ``data_dir``'s lock (relay/data_dir.py); tested, never kept."""
    try:
        descriptor = os.open(data_dir / LOCK_FILE_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False  # no lock file: no relay ever ran here
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # releases the lock if this process just took it
    return False


def _udp_port_bound(host: str, port: int) -> OSError | None:
    """None if ``host:port`` could be bound now (then released at once), else why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            return error
    return None


def _reachable_host(host: str) -> str:
    """Where to reach a relay listening on ``host``: a wildcard is reached on loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104


def quic_handshake(host: str, port: int, *, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> str | None:
    """Complete a QUIC handshake with the relay's ALPN on ``host:port``, then close; None if
    it completed, else why not. Blocking (a command, not the relay): aioquic sans-IO over one
    UDP socket. The certificate is not verified: the check is that a relay answers."""
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[ALPN],
                                      verify_mode=ssl.CERT_NONE)
    quic = QuicConnection(configuration=configuration)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as udp:
        udp.connect((host, port))
        peer = udp.getpeername()
        quic.connect(peer, now=time.monotonic())
        deadline = time.monotonic() + timeout_s
        while True:
            for datagram, _ in quic.datagrams_to_send(now=time.monotonic()):
                udp.send(datagram)
            while (event := quic.next_event()) is not None:
                if isinstance(event, quic_events.HandshakeCompleted):
                    quic.close()
                    for datagram, _ in quic.datagrams_to_send(now=time.monotonic()):
                        udp.send(datagram)
                    return None
                if isinstance(event, quic_events.ConnectionTerminated):
                    return f"closed: {event.reason_phrase or hex(event.error_code)}"
            now = time.monotonic()
            if now >= deadline:
                return f"no answer within {timeout_s:g} s"
            timer = quic.get_timer()
            wait = deadline - now if timer is None else min(deadline, timer) - now
            udp.settimeout(max(wait, 0.001))
            try:
                quic.receive_datagram(udp.recv(65536), peer, now=time.monotonic())
            except TimeoutError:
                if timer is not None and time.monotonic() >= timer:
                    quic.handle_timer(now=time.monotonic())
            except ConnectionRefusedError:
                return "the port is closed"


def check_listen_port(data_dir: Path, host: str, port: int) -> Check:
    """Free when no relay runs on ``data_dir``; bound when one does."""
    name, address = "listen-port", f"UDP {host}:{port}"
    running = relay_running(data_dir)
    if port == 0:
        return Check(name, "ok", "listen_port is 0: the relay takes any free port")
    if running:
        failure = quic_handshake(_reachable_host(host), port)
        if failure is None:
            return Check(name, "ok", f"a relay holds {data_dir} and answers a QUIC handshake "
                                     f"on {address}")
        return Check(name, "fail", f"a relay holds {data_dir} but {address} does not answer "
                                   f"a QUIC handshake ({failure}): it listens elsewhere, or "
                                   "is not serving")
    error = _udp_port_bound(host, port)
    if error is None:
        return Check(name, "ok", f"{address} is free (no relay runs on {data_dir})")
    if error.errno == errno.EADDRINUSE:
        return Check(name, "fail", f"{address} is in use by another process, and no relay "
                                   f"runs on {data_dir}: serve could not start")
    return Check(name, "fail", f"cannot bind {address}: {error.strerror or error}")


# --- store ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _sqlite_read_only(path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        yield connection
    finally:
        connection.close()


def _postgres(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)


def _schema_check(found: int, latest: int, where: str) -> Check:
    if found == latest:
        return Check("store", "ok", f"{where} reachable, schema version {found} (the latest)")
    if found == 0:
        return Check("store", "fail", f"{where} has no schema: start the relay once to create it")
    if found < latest:
        return Check("store", "fail", f"{where} is at schema version {found}, this release's is "
                                      f"{latest}: back it up, then start the relay to migrate it")
    return Check("store", "fail", f"{where} is at schema version {found}, newer than this "
                                  f"release's {latest}: upgrade the relay")


def check_store(location: StoreLocation) -> Check:
    """The store can be opened and is at this release's schema version (read, not migrated)."""
    where = location.describe()
    if location.kind == "sqlite":
        assert location.sqlite_path is not None
        if not location.sqlite_path.is_file():
            return Check("store", "fail", f"no store at {location.sqlite_path}: start the relay "
                                          "once to create it")
        try:
            with _sqlite_read_only(location.sqlite_path) as connection:
                found = sqlite_schema.read_schema_version(connection)
        except sqlite3.Error as error:
            return Check("store", "fail", f"cannot read {where}: {error}")
        return _schema_check(found, sqlite_schema.LATEST_SCHEMA_VERSION, where)
    assert location.postgres_dsn is not None
    try:
        with _postgres(location.postgres_dsn) as connection:
            found = postgres_schema.read_schema_version(connection)
    except psycopg.Error as error:
        return Check("store", "fail", f"cannot reach {where}: {_first_line(error)}")
    return _schema_check(found, postgres_schema.LATEST_SCHEMA_VERSION, where)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_postgres_listen(location: StoreLocation) -> Check:
    """LISTEN works: a NOTIFY on a channel of the doctor's own comes back (the cluster's
    presence and wake-ups depend on it, docs/CLUSTER.md)."""
    name = "postgres-listen"
    if location.postgres_dsn is None:
        return Check(name, "ok", "embedded store: no LISTEN needed")
    channel = f"cryptopass_doctor_{secrets.token_hex(8)}"
    try:
        with _postgres(location.postgres_dsn) as listener, \
                _postgres(location.postgres_dsn) as notifier:
            listener.execute(f"LISTEN {channel}")
            notifier.execute("SELECT pg_notify(%s, 'doctor')", (channel,))
            received = [notify.payload for notify in
                        listener.notifies(timeout=NOTIFY_TIMEOUT_S, stop_after=1)]
    except psycopg.Error as error:
        return Check(name, "fail", f"cannot LISTEN on {location.describe()}: "
                                   f"{_first_line(error)}")
    if received != ["doctor"]:
        return Check(name, "fail", f"a NOTIFY did not come back within {NOTIFY_TIMEOUT_S:g} s "
                                   "(a connection pooler in transaction mode drops LISTEN)")
    return Check(name, "ok", "LISTEN/NOTIFY round trip works")


def clock_skew_status(skew_s: float) -> Status:
    """ok up to 1 s, warn up to 30 s, fail beyond."""
    magnitude = abs(skew_s)
    if magnitude > CLOCK_FAIL_S:
        return "fail"
    return "warn" if magnitude > CLOCK_WARN_S else "ok"


def check_clock_skew(location: StoreLocation,
                     clock: Callable[[], float] = time.time) -> Check:
    """This machine's clock against PostgreSQL's (every node writes expiry times compared on
    the others); SQLite is on this machine, so there is nothing to compare."""
    name = "clock-skew"
    if location.postgres_dsn is None:
        return Check(name, "ok", "embedded store: one clock")
    try:
        with _postgres(location.postgres_dsn) as connection:
            before = clock()
            row = connection.execute("SELECT extract(epoch FROM clock_timestamp())::float8"
                                     ).fetchone()
            after = clock()
    except psycopg.Error as error:
        return Check(name, "fail", f"cannot read the database's clock: {_first_line(error)}")
    assert row is not None
    skew = (before + after) / 2 - float(row[0])
    status = clock_skew_status(skew)
    direction = "ahead of" if skew > 0 else "behind"
    return Check(name, status, f"this machine is {abs(skew):.3f} s {direction} the database "
                               f"(warn above {CLOCK_WARN_S:g} s, fail above {CLOCK_FAIL_S:g} s)")


def check_admin_accounts(location: StoreLocation) -> Check:
    """At least one console account exists (else nobody can log in to the admin console)."""
    name = "admin-accounts"
    query = "SELECT role, count(*) FROM accounts GROUP BY role"
    try:
        if location.kind == "sqlite":
            assert location.sqlite_path is not None
            if not location.sqlite_path.is_file():
                return Check(name, "fail", "no store to read")
            with _sqlite_read_only(location.sqlite_path) as connection:
                rows = connection.execute(query).fetchall()
        else:
            assert location.postgres_dsn is not None
            with _postgres(location.postgres_dsn) as pg:
                rows = pg.execute(query).fetchall()
    except (sqlite3.Error, psycopg.Error) as error:
        return Check(name, "fail", f"cannot read the accounts: {_first_line(error)}")
    counts = {str(role): int(count) for role, count in rows}
    if not counts:
        return Check(name, "warn", "no admin account: nobody can log in to the console "
                                   "(cryptopass-relay admin operator create --email ...)")
    return Check(name, "ok", ", ".join(f"{counts[role]} {role}" for role in sorted(counts)))


# --- files ---------------------------------------------------------------------------------

def _mode(status: os.stat_result) -> str:
    return oct(stat.S_IMODE(status.st_mode))


def check_data_dir(data_dir: Path) -> Check:
    """The data directory is DATA_DIR_MODE and every file directly in it, and the TLS key,
    DATA_FILE_MODE (relay/data_dir.py): it holds the store, the key and the SMS outbox."""
    name = "data-dir"
    try:
        status = data_dir.stat()
    except FileNotFoundError:
        return Check(name, "warn", f"{data_dir} does not exist yet")
    if not stat.S_ISDIR(status.st_mode):
        return Check(name, "fail", f"{data_dir} is not a directory")
    if stat.S_IMODE(status.st_mode) & ~DATA_DIR_MODE:
        return Check(name, "fail", f"{data_dir} is mode {_mode(status)}, should be "
                                   f"{oct(DATA_DIR_MODE)}: others can read the store")
    loose = []
    candidates = [*data_dir.iterdir(), data_dir / "tls" / "key.pem"]
    for path in candidates:
        with contextlib.suppress(FileNotFoundError):
            entry = path.lstat()
            if stat.S_ISREG(entry.st_mode) and stat.S_IMODE(entry.st_mode) & ~DATA_FILE_MODE:
                loose.append(f"{path.name} {_mode(entry)}")
    if loose:
        return Check(name, "fail", f"files others can read (should be {oct(DATA_FILE_MODE)}): "
                                   + ", ".join(sorted(loose)))
    return Check(name, "ok", f"{data_dir} is {oct(DATA_DIR_MODE)}, its files "
                             f"{oct(DATA_FILE_MODE)}")


def check_enrolment_secret(path: Path) -> Check:
    """The enrolment secret's file exists and is its owner's only (relay/enrolment_secret.py).
    Group-readable is only a warning: an orchestrator's mounted secret may be so by design."""
    name = "enrolment-secret"
    try:
        status = path.stat()
    except FileNotFoundError:
        return Check(name, "fail", f"no enrolment secret at {path}: run `{CREATE_COMMAND}`, or "
                                   "copy the cluster's file (docs/CLUSTER.md)")
    except OSError as error:
        return Check(name, "fail", f"cannot read {path}: {error.strerror or error}")
    if not stat.S_ISREG(status.st_mode):
        return Check(name, "fail", f"{path} is not a regular file")
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o007:
        return Check(name, "fail", f"{path} is mode {_mode(status)}: anyone on the machine can "
                                   f"read it (should be {oct(SECRET_FILE_MODE)})")
    if mode & 0o070:
        return Check(name, "warn", f"{path} is mode {_mode(status)}: its group can read it "
                                   f"(should be {oct(SECRET_FILE_MODE)})")
    return Check(name, "ok", f"{path} is {_mode(status)}")


def check_sender_keys(directory: Path) -> Check:
    """The sender-certificate keys (relay/sender_certificates.py): readable, one signs, and the
    files are their owner's only. None yet is fine: a relay makes the first key at start."""
    name = "sender-keys"
    if not directory.is_dir():
        return Check(name, "ok", f"none yet in {directory}: the relay makes the first key at "
                                 "start (a cluster's nodes must share one: docs/CLUSTER.md)")
    try:
        keyring = load_keyring(directory, now_ms=int(time.time() * 1000), create=False)
    except (SenderKeyError, OSError) as error:
        return Check(name, "fail", str(error))
    for path in directory.iterdir():
        if path.is_file() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            return Check(name, "fail", f"{path} is mode {_mode(path.stat())}: others can read "
                                       f"the relay's signing key (should be {oct(KEY_FILE_MODE)})")
    return Check(name, "ok", f"key {keyring.signing.key_id} signs, {len(keyring.accepted)} "
                             f"published, in {directory}; every node must hold the same")


def check_sms_gateway(settings: RelaySettings) -> Check:
    """Which gateway sends the codes, and whether an HTTP one is reached over TLS."""
    name = "sms-gateway"
    if settings.sms_gateway == "outbox":
        return Check(name, "ok", f"outbox file {settings.data_dir / 'sms-outbox.jsonl'} "
                                 "(no SMS is sent: for development and tests)")
    url = settings.sms_http_url
    if not url:
        return Check(name, "fail", "sms_gateway is http but sms_http_url is not set")
    parts = urlsplit(url)
    shown = f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
    if not settings.sms_http_token:
        return Check(name, "fail", f"HTTP {shown} without sms_http_token")
    if parts.scheme != "https":
        return Check(name, "warn", f"HTTP {shown} is not https: codes and the token travel "
                                   "in clear")
    return Check(name, "ok", f"HTTP {shown}")


# --- all of them ---------------------------------------------------------------------------

def run_checks(settings: RelaySettings, *, now: datetime.datetime | None = None) -> list[Check]:
    """Every check, in the order printed.

    Raises:
        ValueError: the store setting is not a store URL.
    """
    location = parse_store_url(settings.store, data_dir=settings.data_dir)
    development = settings.cert is None
    cert = settings.cert or settings.data_dir / "tls" / "cert.pem"
    key = settings.key or settings.data_dir / "tls" / "key.pem"
    checks = [
        check_certificate(cert, key, now=now or datetime.datetime.now(datetime.UTC),
                          development=development),
        check_listen_port(settings.data_dir, settings.listen_host, settings.listen_port),
        store := check_store(location),
    ]
    if location.postgres_dsn is not None and store.detail.startswith("cannot reach"):
        unreachable = "not checked: the store is unreachable"
        checks += [Check("postgres-listen", "fail", unreachable),
                   Check("clock-skew", "fail", unreachable)]
    else:
        checks += [check_postgres_listen(location), check_clock_skew(location)]
    checks += [
        check_data_dir(settings.data_dir),
        check_enrolment_secret(enrolment_secret_path(settings.data_dir,
                                                     settings.enrolment_secret_file)),
        check_sender_keys(sender_key_directory(settings.data_dir)),
        check_sms_gateway(settings),
        check_admin_accounts(location) if store.status != "fail"
        else Check("admin-accounts", "fail", "not checked: the store check failed"),
    ]
    return checks


def register_doctor_command(app: typer.Typer) -> None:
    """Add ``doctor`` to ``cryptopass-relay``."""

    @app.command("doctor")
    def doctor(
            data_dir: Annotated[Path | None, typer.Option(
                "--data-dir", help="Relay data directory \\[default: the configured data_dir, "
                                   f"else {DEFAULT_DATA_DIR}].")] = None,
            store: Annotated[str | None, typer.Option(
                "--store", help="Store URL \\[default: the configured store, else SQLite in "
                                "the data directory].")] = None,
            listen: Annotated[str | None, typer.Option(
                "--listen", help="UDP HOST:PORT the relay listens on \\[default: the "
                                 "configured one].")] = None,
            config: Annotated[Path | None, typer.Option(
                "--config", help="TOML configuration file \\[env: CRYPTOPASS_CONFIG].")]
            = None,
            set_: Annotated[list[str] | None, typer.Option(
                "--set", help="Any setting, FIELD=VALUE (repeatable), as for serve.")] = None,
            json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")]
            = False) -> None:
        """Check a deployment: certificate, UDP port, store, LISTEN, clock, file modes, SMS
        gateway, admin accounts. One line per check (ok, warn or fail); exit 1 on any fail."""
        try:
            flags: dict[str, Any] = dict(parse_assignment(text) for text in set_ or [])
            if listen is not None:
                try:
                    flags["listen_host"], flags["listen_port"] = parse_host_port(listen)
                except ValueError as error:
                    raise ConfigError(f"--listen: {error}") from None
            named = {"data_dir": data_dir, "store": store}
            flags.update({field: value for field, value in named.items() if value is not None})
            settings = load_config(config_file=config, environ=os.environ,
                                   flags=flags).settings
            checks = run_checks(settings)
        except (ConfigError, ValueError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        failed = any(check.status == "fail" for check in checks)
        if json_output:
            typer.echo(json.dumps({"ok": not failed, "checks": [
                {"name": check.name, "status": check.status, "detail": check.detail}
                for check in checks]}, indent=2))
        else:
            for check in checks:
                typer.echo(check.line())
        if failed:
            raise typer.Exit(1)
