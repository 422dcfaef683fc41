"""``cryptopass-relay doctor``: each check's pass case and the failures it must catch.

A healthy data directory is made the way an operator makes one (``secret create``, ``admin
operator create``, the development certificate of a first ``serve``); PostgreSQL checks run
against the test server (tests/postgres_schemas.py), in a schema of their own.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from relay.cli import app
from relay.data_dir import PRIVATE_UMASK, lock_data_dir
from relay.doctor import (
    Check,
    check_admin_accounts,
    check_certificate,
    check_clock_skew,
    check_data_dir,
    check_enrolment_secret,
    check_listen_port,
    check_postgres_listen,
    check_sms_gateway,
    check_store,
    clock_skew_status,
    quic_handshake,
)
from relay.settings import RelaySettings
from relay.tls import ensure_development_certificate
from storage import postgres_schema, sqlite_schema
from storage.store_url import StoreLocation, parse_store_url
from tests.conftest import RelayUnderTest
from tests.postgres_schemas import conninfo, fresh_schema, store_url

runner = CliRunner()
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
NAMES = ["certificate", "listen-port", "store", "postgres-listen", "clock-skew", "data-dir",
         "enrolment-secret", "sender-keys", "sms-gateway", "admin-accounts"]


def invoke(*arguments: str) -> tuple[int, str]:
    result = runner.invoke(app, list(arguments), env={"CRYPTOPASS_CONFIG": ""})
    return result.exit_code, result.output


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def healthy(tmp_path: Path) -> Path:
    """A data directory as an operator leaves it: secret, store, an operator, a certificate."""
    data_dir = tmp_path / "data"
    previous = os.umask(PRIVATE_UMASK)  # as main() sets it; CliRunner does not run main()
    try:
        code, output = invoke("secret", "create", "--data-dir", str(data_dir))
        assert code == 0, output
        code, output = invoke("admin", "operator", "create", "--email", "ops@example.org",
                              "--data-dir", str(data_dir))
        assert code == 0, output
        ensure_development_certificate(data_dir / "tls",
                                       now=datetime.datetime.now(datetime.UTC))
    finally:
        os.umask(previous)
    return data_dir


def sqlite_location(data_dir: Path) -> StoreLocation:
    return parse_store_url(None, data_dir=data_dir)


# -- the whole command ------------------------------------------------------------------------


def test_a_healthy_data_directory_is_all_ok(healthy: Path) -> None:
    code, output = invoke("doctor", "--data-dir", str(healthy),
                          "--listen", f"127.0.0.1:{free_udp_port()}")
    assert code == 0, output
    lines = output.splitlines()
    assert [line.split()[1] for line in lines] == NAMES
    assert all(line.startswith("ok ") for line in lines), output


def test_json_output_parses_and_a_fail_exits_1(healthy: Path) -> None:
    (healthy / "enrolment.secret").unlink()
    code, output = invoke("doctor", "--data-dir", str(healthy),
                          "--listen", f"127.0.0.1:{free_udp_port()}", "--json")
    assert code == 1
    report = json.loads(output)
    assert report["ok"] is False
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    assert list(statuses) == NAMES
    assert statuses["enrolment-secret"] == "fail"
    assert statuses["store"] == "ok"


def test_an_unreachable_postgresql_fails_every_check_that_needs_it(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a TCP port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    code, output = invoke("doctor", "--data-dir", str(tmp_path), "--json",
                          "--store", f"postgresql://postgres@127.0.0.1:{port}/test",
                          "--listen", f"127.0.0.1:{free_udp_port()}")
    assert code == 1
    statuses = {check["name"]: check["status"] for check in json.loads(output)["checks"]}
    assert {statuses[name] for name in ("store", "postgres-listen", "clock-skew",
                                        "admin-accounts")} == {"fail"}


# -- certificate ------------------------------------------------------------------------------


def write_pair(directory: Path, *, not_before: datetime.datetime,
               not_after: datetime.datetime, other_key: bool = False) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.example.org")])
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(not_before).not_valid_after(not_after)
                   .sign(key, hashes.SHA256()))
    written_key = ec.generate_private_key(ec.SECP256R1()) if other_key else key
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(written_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


def certificate_status(tmp_path: Path, *, days_before: float, days_after: float,
                       other_key: bool = False) -> Check:
    pair = write_pair(tmp_path, not_before=NOW + datetime.timedelta(days=days_before),
                      not_after=NOW + datetime.timedelta(days=days_after), other_key=other_key)
    return check_certificate(*pair, now=NOW)


def test_a_valid_certificate_matching_its_key_is_ok(tmp_path: Path) -> None:
    check = certificate_status(tmp_path, days_before=-10, days_after=90)
    assert check.status == "ok", check


def test_an_expired_certificate_fails(tmp_path: Path) -> None:
    check = certificate_status(tmp_path, days_before=-100, days_after=-1)
    assert (check.status, check.detail.startswith("expired")) == ("fail", True)


def test_a_certificate_not_yet_valid_fails(tmp_path: Path) -> None:
    check = certificate_status(tmp_path, days_before=1, days_after=90)
    assert (check.status, check.detail.startswith("not valid before")) == ("fail", True)


def test_a_certificate_expiring_within_14_days_warns(tmp_path: Path) -> None:
    assert certificate_status(tmp_path, days_before=-80, days_after=13.9).status == "warn"
    assert certificate_status(tmp_path, days_before=-80, days_after=14.1).status == "ok"


def test_a_key_that_is_not_the_certificates_fails(tmp_path: Path) -> None:
    check = certificate_status(tmp_path, days_before=-10, days_after=90, other_key=True)
    assert (check.status, "does not match" in check.detail) == ("fail", True)


def test_a_missing_or_garbled_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    assert check_certificate(cert, key, now=NOW).status == "fail"
    assert check_certificate(cert, key, now=NOW, development=True).status == "warn"
    cert.write_text("not a certificate")
    assert check_certificate(cert, key, now=NOW).status == "fail"


# -- listen port ------------------------------------------------------------------------------


def test_a_free_port_is_ok_and_one_held_by_another_process_fails(tmp_path: Path) -> None:
    port = free_udp_port()
    assert check_listen_port(tmp_path, "127.0.0.1", port).status == "ok"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", port))
        check = check_listen_port(tmp_path, "127.0.0.1", port)
    assert (check.status, "in use by another process" in check.detail) == ("fail", True)


async def test_a_running_relay_must_answer_a_quic_handshake(relay: RelayUnderTest) -> None:
    check = await trio.to_thread.run_sync(check_listen_port, relay.data_dir, "127.0.0.1",
                                          relay.port)
    assert check == Check("listen-port", "ok", f"a relay holds {relay.data_dir} and answers "
                                               f"a QUIC handshake on UDP 127.0.0.1:{relay.port}")


def test_a_relay_holding_the_data_directory_but_not_the_port_fails(tmp_path: Path) -> None:
    port = free_udp_port()
    with lock_data_dir(tmp_path, purpose="serve"):  # a relay runs here, not on that port
        check = check_listen_port(tmp_path, "127.0.0.1", port)
    assert (check.status, "does not answer a QUIC handshake" in check.detail) == ("fail", True)


def test_a_udp_port_that_is_not_a_relay_does_not_pass_the_handshake() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        failure = quic_handshake("127.0.0.1", silent.getsockname()[1], timeout_s=0.2)
    assert failure == "no answer within 0.2 s"


# -- store (SQLite) ---------------------------------------------------------------------------


def test_a_store_at_an_older_schema_version_fails_and_is_not_migrated(healthy: Path) -> None:
    assert check_store(sqlite_location(healthy)).status == "ok"
    database = healthy / "relay.db"
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE schema_meta SET version = version - 1")
    check = check_store(sqlite_location(healthy))
    assert (check.status, "schema version" in check.detail) == ("fail", True)
    with sqlite3.connect(database) as connection:  # read, not migrated
        assert connection.execute("SELECT version FROM schema_meta").fetchone() == (
            sqlite_schema.LATEST_SCHEMA_VERSION - 1,)


def test_a_missing_sqlite_store_fails(tmp_path: Path) -> None:
    assert check_store(sqlite_location(tmp_path)).status == "fail"
    assert not (tmp_path / "relay.db").exists()


def test_admin_accounts_warn_when_there_are_none(healthy: Path) -> None:
    check = check_admin_accounts(sqlite_location(healthy))
    assert (check.status, check.detail) == ("ok", "1 operator")
    with sqlite3.connect(healthy / "relay.db") as connection:
        connection.execute("DELETE FROM accounts")
    assert check_admin_accounts(sqlite_location(healthy)).status == "warn"


def test_the_embedded_store_has_no_listen_and_one_clock(tmp_path: Path) -> None:
    assert check_postgres_listen(sqlite_location(tmp_path)).status == "ok"
    assert check_clock_skew(sqlite_location(tmp_path)).status == "ok"


# -- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture
def postgres_store() -> Iterator[tuple[StoreLocation, str]]:
    """A schema of its own, at the latest version."""
    with fresh_schema() as schema:
        with psycopg.connect(conninfo(schema)) as connection:
            postgres_schema.apply_migrations(connection)
        yield parse_store_url(store_url(schema), data_dir=Path("unused")), schema


def test_postgresql_store_listen_clock_and_accounts(
        postgres_store: tuple[StoreLocation, str]) -> None:
    location, schema = postgres_store
    assert check_store(location).status == "ok"
    assert check_postgres_listen(location) == Check("postgres-listen", "ok",
                                                    "LISTEN/NOTIFY round trip works")
    assert check_clock_skew(location).status == "ok"
    assert check_admin_accounts(location).status == "warn"  # a new schema: nobody yet
    with psycopg.connect(conninfo(schema), autocommit=True) as connection:
        connection.execute("UPDATE schema_meta SET version = version - 1")
    check = check_store(location)
    assert (check.status, "schema version" in check.detail) == ("fail", True)


def test_a_clock_ahead_of_the_database_is_reported(
        postgres_store: tuple[StoreLocation, str]) -> None:
    location, _ = postgres_store
    check = check_clock_skew(location, clock=lambda: datetime.datetime.now(
        datetime.UTC).timestamp() + 60)
    assert (check.status, "ahead of" in check.detail) == ("fail", True)


def test_clock_skew_thresholds() -> None:
    assert [clock_skew_status(skew) for skew in (0.0, -0.9, 1.5, -29.0, 31.0, -31.0)] == [
        "ok", "ok", "warn", "warn", "fail", "fail"]


# -- files ------------------------------------------------------------------------------------


def test_a_data_directory_others_can_read_fails(healthy: Path) -> None:
    assert check_data_dir(healthy).status == "ok"
    healthy.chmod(0o755)
    assert check_data_dir(healthy).status == "fail"
    healthy.chmod(0o700)
    (healthy / "relay.db").chmod(0o644)
    check = check_data_dir(healthy)
    assert (check.status, "relay.db 0o644" in check.detail) == ("fail", True)
    (healthy / "relay.db").chmod(0o600)
    (healthy / "tls" / "key.pem").chmod(0o640)
    assert check_data_dir(healthy).status == "fail"


def test_the_enrolment_secret_must_be_present_and_private(healthy: Path) -> None:
    secret = healthy / "enrolment.secret"
    assert check_enrolment_secret(secret).status == "ok"
    secret.chmod(0o640)
    assert check_enrolment_secret(secret).status == "warn"  # an orchestrator's mount may be
    secret.chmod(0o644)
    assert check_enrolment_secret(secret).status == "fail"
    secret.unlink()
    assert check_enrolment_secret(secret).status == "fail"


# -- SMS gateway ------------------------------------------------------------------------------


def test_sms_gateway_settings() -> None:
    assert check_sms_gateway(RelaySettings()).status == "ok"
    https = RelaySettings(sms_gateway="http", sms_http_url="https://sms.example.org/send",
                          sms_http_token="t")
    assert check_sms_gateway(https) == Check("sms-gateway", "ok",
                                             "HTTP https://sms.example.org")
    clear = RelaySettings(sms_gateway="http", sms_http_url="http://sms.example.org:8080/send",
                          sms_http_token="t")
    assert check_sms_gateway(clear).status == "warn"
    assert check_sms_gateway(RelaySettings(sms_gateway="http")).status == "fail"
