"""Operations on a live relay: metrics move with traffic, health and readiness,
a backup taken under load holds everything accepted before it began."""

from __future__ import annotations

import datetime
import os
import re
import sys
from pathlib import Path

import httpx
import pytest
import trio
from nacl.signing import SigningKey

from client.connection import RelayClient
from relay.settings import RelaySettings
from storage.sqlite import open_sqlite_store
from storage.sqlite_backup import BackupError, backup_database, restore_database
from tests.conftest import RelayUnderTest, enrol, new_account
from tests.test_relay_e2e import authenticated, collect

ALICE, BOB = "+33612345678", "+33698765432"
BIN = Path(sys.executable).parent


@pytest.fixture
def relay_settings(tmp_path: Path) -> RelaySettings:
    return RelaySettings(data_dir=tmp_path / "relay", listen_port=0,
                         metrics_listen="127.0.0.1:0")


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 if absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.escape(name + (f"{{{wanted}}}" if labels else "")) + r" (\S+)"
    match = re.search("^" + pattern + "$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def scrape(relay: RelayUnderTest, path: str = "/metrics") -> httpx.Response:
    address = relay.running.context.operations_address
    assert address is not None
    with trio.fail_after(10):
        async with httpx.AsyncClient() as http:
            return await http.get(f"http://{address[0]}:{address[1]}{path}")


async def test_metrics_move_as_traffic_flows(relay: RelayUnderTest) -> None:
    before = (await scrape(relay)).text
    assert sample(before, "cryptopass_sends_total", outcome="accepted") == 0
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    async with relay.connect() as receiver, relay.connect() as sender:
        await authenticated(receiver, bob)
        await authenticated(sender, alice)
        for number in range(3):
            await sender.send(bob.user_id, {bob.device_id: b"secret text %d" % number},
                              client_message_id=number)
        await sender.send(bob.user_id, {bob.device_id: b"again"}, client_message_id=0)
        await collect(receiver, 3)
        await receiver.settle()
        during = (await scrape(relay)).text
        assert sample(during, "cryptopass_connections_open") >= 2
        assert sample(during, "cryptopass_devices_connected") == 2
    after = (await scrape(relay)).text
    assert sample(after, "cryptopass_sends_total", outcome="accepted") == 3
    assert sample(after, "cryptopass_sends_total", outcome="duplicate") == 1
    assert sample(after, "cryptopass_envelopes_delivered_total") == 3
    assert sample(after, "cryptopass_envelopes_acknowledged_total") == 3
    assert sample(after, "cryptopass_enrolment_total", step="start", outcome="ok") == 2
    assert sample(after, "cryptopass_enrolment_total", step="verify", outcome="ok") == 2
    assert sample(after, "cryptopass_sms_total", outcome="sent") == 2
    assert sample(after, "cryptopass_connections_opened_total") >= 4
    assert sample(after, "cryptopass_buffered_bytes") == 0  # nothing held between frames
    assert sample(after, "cryptopass_buffered_bytes_unauthenticated") == 0
    assert sample(after, "cryptopass_buffer_refusals_total") == 0
    assert sample(after, "cryptopass_connections_refused_total") == 0
    assert sample(after, "cryptopass_delivery_latency_seconds_count") == 3
    assert sample(after, "cryptopass_storage_commit_latency_seconds_count") == 4
    assert sample(after, "cryptopass_storage_commits_total") > sample(
        before, "cryptopass_storage_commits_total")
    # No user identifier in any label or value.
    for identifier in (ALICE, BOB, ALICE[1:], alice.user_id, bob.user_id, "secret text"):
        assert identifier not in after


async def test_enrolment_refusals_are_counted_by_outcome(relay: RelayUnderTest) -> None:
    async with relay.connect() as client:
        await client.enrol_start(ALICE)
        code = await relay.sms.code_for(ALICE)
        wrong = "000000" if code != "000000" else "111111"
        with pytest.raises(Exception, match="VERIFICATION_FAILED"):
            await client.enrol_verify(ALICE, wrong, SigningKey.generate().verify_key.encode(),
                                      new_account())
    text = (await scrape(relay)).text
    assert sample(text, "cryptopass_enrolment_total", step="verify",
                  outcome="verification_failed") == 1


async def test_health_and_readiness(relay: RelayUnderTest) -> None:
    assert (await scrape(relay, "/healthz")).status_code == 200
    ready = await scrape(relay, "/readyz")
    assert (ready.status_code, ready.json()) == (
        200, {"ready": True, "checks": {"storage": True, "listener": True}})
    relay.running.endpoint.stop_accepting()  # as when stopping
    not_ready = await scrape(relay, "/readyz")
    assert (not_ready.status_code, not_ready.json()["checks"]["listener"]) == (503, False)
    assert (await scrape(relay, "/healthz")).status_code == 200


async def test_a_backup_under_load_restores_everything_accepted_before_it(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    accepted: list[int] = []
    backup = tmp_path / "backup.db"
    backed_up = trio.Event()
    enough_accepted = trio.Event()
    accepted_before_backup: list[int] = []

    async def stream_of_sends(sender: RelayClient) -> None:
        number = 0
        while not backed_up.is_set() or number < len(accepted_before_backup) + 50:
            await sender.send(bob.user_id, {bob.device_id: b"m%d" % number},
                              client_message_id=number)
            accepted.append(number)
            number += 1
            if number == 200:
                enough_accepted.set()

    async with relay.connect() as sender:
        await authenticated(sender, alice)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream_of_sends, sender)
            # Wait on an event: a loop of checkpoints would starve the worker
            # threads the store runs on, and so the very sends it waits for.
            with trio.fail_after(30):
                await enough_accepted.wait()
            accepted_before_backup.extend(accepted)
            await trio.to_thread.run_sync(backup_database, relay.data_dir / "relay.db", backup)
            backed_up.set()
    assert len(accepted) > len(accepted_before_backup)  # the relay kept accepting meanwhile

    restored = tmp_path / "restored" / "relay.db"
    assert restore_database(backup, restored, now=datetime.datetime.now(datetime.UTC)) is None
    async with open_sqlite_store(restored) as store:
        queue = await store.fetch_queue(user_id=bob.user_id, device_id=bob.device_id,
                                        after_envelope_id=0, limit=100_000, now=0)
    kept = {envelope.client_message_id for envelope in queue}
    assert set(accepted_before_backup) <= kept
    assert kept <= set(accepted)


async def test_restore_is_refused_while_a_relay_runs_and_checks_its_input(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    backup = tmp_path / "backup.db"
    await trio.to_thread.run_sync(backup_database, relay.data_dir / "relay.db", backup)
    result = await trio.run_process(
        [str(BIN / "cryptopass-relay"), "restore", "--from", str(backup), "--data-dir",
         str(relay.data_dir)], capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 1
    assert f"cannot restore: the data directory {relay.data_dir} is in use by a relay (pid " \
        f"{os.getpid()})".encode() in result.stderr  # this process: the relay runs in it

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    target = tmp_path / "other" / "relay.db"
    with pytest.raises(BackupError, match="not a readable SQLite database"):
        restore_database(garbage, target, now=datetime.datetime.now(datetime.UTC))
    assert not target.exists()  # nothing changed


async def test_restore_keeps_the_replaced_store(tmp_path: Path) -> None:
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    for path, organisation in ((first, "acme"), (second, "globex")):
        async with open_sqlite_store(path) as store:
            await store.create_organisation(name=organisation, seats=1, now=0)
    live = tmp_path / "data" / "relay.db"
    restore_database(first, live, now=datetime.datetime(2026, 1, 2, 3, 4, 5))
    safety = restore_database(second, live, now=datetime.datetime(2026, 1, 2, 3, 4, 6))
    assert safety == live.with_name("relay.db.replaced-20260102T030406Z")
    async with open_sqlite_store(live) as store:
        assert await store.get_organisation("globex") is not None
        assert await store.get_organisation("acme") is None
    async with open_sqlite_store(safety) as store:
        assert await store.get_organisation("acme") is not None
