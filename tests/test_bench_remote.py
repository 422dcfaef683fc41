"""cryptopass-bench against a relay it did not start: through the relay's store
(SQLite, PostgreSQL), through the admin API with the SMS webhook, and the option sets it
refuses. Real relay subprocesses, real QUIC, real HTTPS (no timing assertions)."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from typer.testing import CliRunner

from bench.cli import app
from bench.sms_webhook import SMS_WEBHOOK_PATH, SmsInbox, sms_webhook_app
from bench.spawn import SpawnedRelay, spawn_relay
from storage.sqlite import open_sqlite_store
from tests.postgres_schemas import fresh_schema, store_url

BIN = Path(sys.executable).parent
BENCH = str(BIN / "cryptopass-bench")
ORGANISATION = "loadtest"
SEATS = 10
SMS_TOKEN = "webhook-secret-for-tests"
RUN_SECONDS = 200
"""Ceiling for one bench run (the bench's own --timeout ends a stuck run sooner)."""


@dataclass
class RunningRelay:
    server: SpawnedRelay
    data_dir: Path
    admin_url: str
    admin_token: str
    sms_listen: str
    """Where the relay's SMS gateway posts (the bench must listen there)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


def _free_tcp_port() -> int:
    # The relay must know the webhook's URL before the bench binds it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _relay_admin(data_dir: Path, *arguments: str) -> str:
    completed = await trio.run_process(
        [str(BIN / "cryptopass-relay"), "admin", "--data-dir", str(data_dir), *arguments],
        capture_stdout=True, capture_stderr=True)
    return completed.stdout.decode()


@asynccontextmanager
async def running_relay(data_dir: Path, *extra: str) -> AsyncIterator[RunningRelay]:
    """A relay subprocess with its admin site, an organisation, an API token, and its
    SMS gateway pointed at a port the bench will listen on."""
    data_dir.mkdir(parents=True)
    await _relay_admin(data_dir, *extra, "org", "create", ORGANISATION, "--seats", str(SEATS))
    token = json.loads(await _relay_admin(data_dir, *extra, "--json", "token", "create",
                                          "--org", ORGANISATION))["token"]
    sms_port = _free_tcp_port()
    async with spawn_relay(
            data_dir, *extra, "--admin-listen", "127.0.0.1:0", "--set", "sms_gateway=http",
            "--set", f"sms_http_url=http://127.0.0.1:{sms_port}{SMS_WEBHOOK_PATH}",
            "--set", f"sms_http_token={SMS_TOKEN}") as server:
        admin = await server.wait_for("admin_https_listening")
        yield RunningRelay(server=server, data_dir=data_dir,
                           admin_url=f"https://127.0.0.1:{admin['port']}", admin_token=token,
                           sms_listen=f"127.0.0.1:{sms_port}")


async def bench(*arguments: str) -> dict[str, object]:
    with trio.fail_after(RUN_SECONDS):
        completed = await trio.run_process([BENCH, *arguments, "--json"], capture_stdout=True,
                                           capture_stderr=True, check=False)
    assert completed.returncode == 0, completed.stderr.decode()[-2000:]
    result: dict[str, object] = json.loads(completed.stdout)
    assert result["errors"] == 0, result["error_samples"]
    return result


def _admin_path(relay: RunningRelay) -> list[str]:
    return ["--relay", relay.address, "--ca", str(relay.server.cert),
            "--admin-url", relay.admin_url, "--admin-token", relay.admin_token,
            "--org", ORGANISATION, "--sms-listen", relay.sms_listen, "--sms-token", SMS_TOKEN]


async def _declared_users(data_dir: Path) -> int:
    async with open_sqlite_store(data_dir / "relay.db") as store:
        return len(await store.list_users(ORGANISATION))


async def test_live_through_the_admin_api_enrols_by_sms_and_delivers_everything(
        tmp_path: Path) -> None:
    async with running_relay(tmp_path / "relay") as relay:
        result = await bench("live", "--devices", "4", "--messages", "5", "--timeout", "60",
                             *_admin_path(relay))
        assert result["delivered"] == result["expected"] == 20
        assert result["duplicates"] == 0
        # Each device was enrolled with a code the relay posted to the bench's webhook.
        sent = [event for event in relay.server.events if event.get("event") == "sms_sent"]
        assert len(sent) == 4
        # The run gave its seats back.
        assert await _declared_users(relay.data_dir) == 0


async def test_enrol_on_a_running_relay_reads_codes_from_the_webhook(tmp_path: Path) -> None:
    async with running_relay(tmp_path / "relay") as relay:
        result = await bench("enrol", "--devices", "3", *_admin_path(relay))
        assert result["enrolled"] == 3
        enrolled = [event for event in relay.server.events
                    if event.get("event") == "sms_sent"]
        assert len(enrolled) == 3


async def test_a_wrong_webhook_token_fails_provisioning_with_a_clear_error(
        tmp_path: Path) -> None:
    async with running_relay(tmp_path / "relay") as relay:
        arguments = [*_admin_path(relay)[:-1], "not-the-relay-token"]
        with trio.fail_after(RUN_SECONDS):
            completed = await trio.run_process(
                [BENCH, "live", "--devices", "2", "--messages", "1", *arguments],
                capture_stdout=True, capture_stderr=True, check=False)
        assert completed.returncode == 1
        assert b"enrolments failed" in completed.stderr
        assert b"wrong token" in completed.stderr
        assert await _declared_users(relay.data_dir) == 0


async def test_live_through_a_sqlite_store_url(tmp_path: Path) -> None:
    data_dir = tmp_path / "relay"
    async with running_relay(data_dir) as relay:
        result = await bench("live", "--devices", "4", "--messages", "5", "--timeout", "60",
                             "--relay", relay.address, "--ca", str(relay.server.cert),
                             "--store", f"sqlite:///{data_dir / 'relay.db'}")
        assert result["delivered"] == result["expected"] == 20


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_schema() as schema:  # fails, not skips, when CI is set
        yield store_url(schema)


async def test_live_through_a_postgresql_store_url(tmp_path: Path, postgres_url: str) -> None:
    async with spawn_relay(tmp_path / "relay", store=postgres_url) as server:
        result = await bench("live", "--devices", "4", "--messages", "5", "--timeout", "60",
                             "--relay", f"127.0.0.1:{server.port}", "--ca", str(server.cert),
                             "--store", postgres_url)
    assert result["delivered"] == result["expected"] == 20


runner = CliRunner()


def _plain(output: str) -> str:
    """Typer's error box without its frame and line breaks."""
    return " ".join(output.replace("│", " ").split())


@pytest.mark.parametrize(("arguments", "message"), [
    (["--relay", "127.0.0.1:4433"], "--relay needs a way to declare"),
    (["--store", "sqlite:///x.db"], "need --relay"),
    (["--relay", "127.0.0.1:4433", "--data-dir", "d", "--store", "sqlite:///x.db"],
     "choose one of --data-dir and --store"),
    (["--relay", "127.0.0.1:4433", "--admin-url", "https://127.0.0.1:8443"],
     "--admin-url needs --admin-token, --org, --sms-listen"),
    (["--relay", "127.0.0.1:4433", "--admin-url", "https://127.0.0.1:8443",
      "--admin-token", "cpr_x", "--org", "o"], "--admin-url needs --sms-listen"),
    (["--relay", "127.0.0.1:4433", "--admin-url", "http://127.0.0.1:8443",
      "--admin-token", "cpr_x", "--org", "o", "--sms-listen", "127.0.0.1:0"],
     "expected https://"),
    (["--relay", "127.0.0.1:4433", "--store", "sqlite:///x.db", "--org", "o"],
     "--org go with --admin-url"),
    (["--relay", "127.0.0.1:4433", "--store", "sqlite:///x.db", "--sms-listen", "127.0.0.1:0"],
     "--sms-listen is used with --admin-url"),
    (["--relay", "127.0.0.1:4433", "--store", "mysql://db"], "unsupported store"),
    (["--relay", "nowhere", "--store", "sqlite:///x.db"], "expected HOST:PORT"),
    (["--spawn-relay", "--relay", "127.0.0.1:4433", "--store", "sqlite:///x.db"],
     "choose one"),
])
def test_incoherent_option_sets_are_refused(arguments: list[str], message: str) -> None:
    result = runner.invoke(app, ["live", *arguments])
    assert result.exit_code == 2
    assert message in _plain(result.output)


def test_enrol_on_a_running_relay_needs_the_webhook() -> None:
    result = runner.invoke(app, ["enrol", "--relay", "127.0.0.1:4433",
                                 "--store", "sqlite:///x.db"])
    assert result.exit_code == 2
    assert "needs --sms-listen" in _plain(result.output)


async def test_the_webhook_takes_codes_only_with_the_token_and_for_expected_numbers() -> None:
    inbox = SmsInbox()
    inbox.expect("+33610000001")
    transport = httpx.ASGITransport(app=sms_webhook_app(inbox, SMS_TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        message = {"to": "+33610000001", "body": "Cryptopass code: 123456",
                   "sent_at": "2025-01-31T12:00:00.000Z"}
        refused = await client.post(SMS_WEBHOOK_PATH, json=message,
                                    headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401
        missing = await client.post(SMS_WEBHOOK_PATH, json=message)
        assert missing.status_code == 401
        assert (inbox.received, inbox.refused) == (0, 2)
        bearer = {"Authorization": f"Bearer {SMS_TOKEN}"}
        malformed = await client.post(SMS_WEBHOOK_PATH, content=b"[1]", headers=bearer)
        assert malformed.status_code == 422
        stranger = await client.post(SMS_WEBHOOK_PATH, headers=bearer,
                                     json={**message, "to": "+33610000002"})
        assert stranger.status_code == 204
        assert inbox.received == 0  # someone else's code is not kept
        accepted = await client.post(SMS_WEBHOOK_PATH, json=message, headers=bearer)
        assert accepted.status_code == 204
    inbox.refused = 0  # a refused request makes waiting enrolments fail at once
    with trio.fail_after(5):
        assert await inbox.code_for("+33610000001") == "123456"
    inbox.refuse()
    with pytest.raises(PermissionError, match="sms-token"):
        await inbox.code_for("+33610000003")
