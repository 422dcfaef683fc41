"""The relay process's lifecycle, with ``cryptopass-relay serve`` in a subprocess:
SIGTERM in the middle of a stream of sends loses nothing accepted and exits 0;
SIGHUP swaps the TLS certificate for new connections without dropping open ones;
the JSON log carries what operators need and none of the users' data."""

from __future__ import annotations

import datetime
import json
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import trio
from nacl.signing import SigningKey

from bench.spawn import SpawnedRelay, spawn_relay
from client.connection import ConnectionClosed, RelayClient, RelayError, connect_relay
from relay.lifecycle import STOP_DEADLINE_SECONDS
from relay.tls import ensure_development_certificate
from tests.conftest import EnrolledDevice, declare, new_account
from tests.test_cli_scenario import free_udp_port, last_code
from tests.test_relay_e2e import authenticated, drain_backlog
from wire.frames import ErrorCode

ALICE, BOB = "+33612345678", "+33698765432"
SENDERS = 4
"""Concurrent send loops on one connection: several sends are in flight when SIGTERM lands."""
SENDS_BEFORE_SIGTERM = 100


@asynccontextmanager
async def relay_process(data_dir: Path, port: int, *extra: str) -> AsyncIterator[SpawnedRelay]:
    async with spawn_relay(data_dir, *extra, listen=f"127.0.0.1:{port}") as relay:
        yield relay


def connect(port: int, ca: Path) -> AbstractAsyncContextManager[RelayClient]:
    return connect_relay("127.0.0.1", port, ca=ca, server_name="localhost")


async def enrol_through(relay: SpawnedRelay, data_dir: Path, port: int, phone: str,
                        count: int) -> EnrolledDevice:
    key = SigningKey.generate()
    async with connect(port, data_dir / "tls" / "cert.pem") as client:
        await client.enrol_start(phone)
        await relay.wait_for("sms_sent", count)
        account = new_account()
        enrolled = await client.enrol_verify(
            phone, last_code(data_dir / "sms-outbox.jsonl", phone), key.verify_key.encode(),
            account)
    return EnrolledDevice(phone=phone, user_id=enrolled.user_id, device_id=enrolled.device_id,
                          key=key, account=account)


async def test_sigterm_during_a_stream_of_sends_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    await declare(data, "acme", ALICE, BOB)
    port = free_udp_port()
    ca = data / "tls" / "cert.pem"
    accepted: list[int] = []
    closed_by: list[BaseException] = []
    async with relay_process(data, port) as relay:
        alice = await enrol_through(relay, data, port, ALICE, 1)
        bob = await enrol_through(relay, data, port, BOB, 2)
        enough = trio.Event()

        async def send_loop(sender: RelayClient, first: int) -> None:
            number = first
            try:
                while True:
                    await sender.send(bob.user_id, {bob.device_id: b"payload-%d" % number},
                                      client_message_id=number)
                    accepted.append(number)
                    if len(accepted) >= SENDS_BEFORE_SIGTERM:
                        enough.set()
                    number += SENDERS
            except (ConnectionClosed, RelayError) as error:
                closed_by.append(error)

        async with connect(port, ca) as sender:
            await authenticated(sender, alice)
            async with trio.open_nursery() as nursery:
                for first in range(SENDERS):
                    nursery.start_soon(send_loop, sender, first)
                await enough.wait()
                relay.process.send_signal(signal.SIGTERM)
        with trio.fail_after(STOP_DEADLINE_SECONDS + 5):
            assert await relay.process.wait() == 0
    assert len(closed_by) == SENDERS
    assert any(isinstance(error, ConnectionClosed) and error.code == ErrorCode.GOING_AWAY
               for error in closed_by), closed_by
    assert len(accepted) >= SENDS_BEFORE_SIGTERM
    log = relay.events

    async with relay_process(data, port) as restarted, connect(port, ca) as receiver:
        await authenticated(receiver, bob)
        delivered = await drain_backlog(receiver)
        await receiver.settle()
        log += restarted.events
    kept = {delivery.client_message_id for delivery in delivered}
    assert set(accepted) <= kept  # nothing accepted was lost
    assert len(delivered) == len(kept)  # and nothing duplicated

    assert [event["event"] for event in log if event["event"] in (
        "stop_requested", "relay_stopped")] == ["stop_requested", "relay_stopped"]
    text = json.dumps(log)
    for secret in (ALICE, BOB, ALICE[1:], BOB[1:], "payload-"):
        assert secret not in text
    for event in log:
        assert {"timestamp", "level", "event"} <= event.keys(), event
        assert event["timestamp"].endswith("Z"), event  # UTC
    authenticated_events = [event for event in log if event["event"] == "device_authenticated"]
    assert authenticated_events
    assert all({"connection_id", "organisation_id"} <= event.keys()
               for event in authenticated_events)


def make_pair(directory: Path) -> tuple[Path, Path]:
    cert, key, _ = ensure_development_certificate(
        directory, now=datetime.datetime.now(datetime.UTC))
    return cert, key


async def refused_by_tls(port: int, ca: Path) -> bool:
    """Whether a connection trusting only ``ca`` fails its handshake."""
    refused = False
    try:
        async with connect(port, ca):
            pass
    except* ConnectionClosed:
        refused = True
    return refused


async def test_sighup_reloads_the_certificate_without_dropping_connections(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    await declare(data, "acme", ALICE)
    old_cert, old_key = make_pair(tmp_path / "old")
    new_cert, new_key = make_pair(tmp_path / "new")
    served_cert, served_key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(old_cert, served_cert)
    shutil.copy(old_key, served_key)
    port = free_udp_port()
    async with relay_process(data, port, "--cert", str(served_cert),
                             "--key", str(served_key)) as relay:
        async with connect(port, old_cert) as kept_open:
            await kept_open.enrol_start(ALICE)
            await relay.wait_for("sms_sent")
            shutil.copy(new_cert, served_cert)  # rotation: new files, then SIGHUP
            shutil.copy(new_key, served_key)
            relay.process.send_signal(signal.SIGHUP)
            await relay.wait_for("certificate_reloaded")
            async with connect(port, new_cert):
                pass  # the handshake verified the new certificate
            assert await refused_by_tls(port, old_cert)  # the old one is no longer served
            # The connection opened before the reload still works.
            enrolled = await kept_open.enrol_verify(
                ALICE, last_code(data / "sms-outbox.jsonl", ALICE),
                SigningKey.generate().verify_key.encode(), new_account())
            assert enrolled.user_id
        relay.process.send_signal(signal.SIGTERM)
        with trio.fail_after(STOP_DEADLINE_SECONDS + 5):
            assert await relay.process.wait() == 0
