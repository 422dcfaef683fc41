"""Wake-up pushes end to end: real relays, real QUIC clients, a real SQLite file or PostgreSQL.

The provider is a recording one (tests/push_support.py), passed to ``serve`` as the relay's
providers; the providers themselves are tested against real push services elsewhere. Every
check waits for the scheduler to settle (``WakeupScheduler.settled``) or for a push to arrive,
never sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from prometheus_client import generate_latest

from client.connection import RelayClient, RelayError
from enrolment.sms import SmsOutcomes
from relay.context import LiveSession
from relay.push_providers import PushOutcome, PushResult
from relay.server import RunningRelay, serve
from relay.settings import RelaySettings
from relay.telemetry import relay_registry
from relay.wakeups import WakeupScheduler
from storage.sqlite import open_sqlite_store
from tests.conftest import EnrolledDevice, RelayUnderTest, SmsInbox, declare, enrol
from tests.postgres_schemas import fresh_schema, store_url
from tests.push_samples import AUTH_SECRET, P256DH
from tests.push_support import RecordingProvider
from tests.relay_processes import declare as declare_in_store
from wire.catalogue import ErrorCode
from wire.push_frames import PushSet

WAIT_S = 30
"""Bound on anything that could hang (a lost wake-up), not a timing assertion."""
PHONE_A, PHONE_B, PHONE_C = "+33612345678", "+33698765432", "+33611111111"


def _scheduler(relay: RelayUnderTest) -> WakeupScheduler:
    scheduler = relay.running.context.wakeups
    assert isinstance(scheduler, WakeupScheduler)
    return scheduler


async def _settled(*relays: RelayUnderTest) -> None:
    with trio.fail_after(WAIT_S):
        for relay in relays:
            await _scheduler(relay).settled()


@pytest.fixture
def provider() -> RecordingProvider:
    return RecordingProvider()


@pytest.fixture
async def push_relay(relay_settings: RelaySettings, provider: RecordingProvider,
                     nursery: trio.Nursery) -> AsyncIterator[RelayUnderTest]:
    relay_settings.data_dir.mkdir(parents=True, exist_ok=True)
    await declare(relay_settings.data_dir, "acme", PHONE_A, PHONE_B, PHONE_C)
    sms = SmsInbox()
    running: RunningRelay = await nursery.start(
        lambda task_status: serve(relay_settings, task_status=task_status, on_sms_sent=sms,
                                  push_providers={"outbox": provider}))
    yield RelayUnderTest(data_dir=relay_settings.data_dir, running=running, sms=sms)
    running.stop()


async def _authenticated(relay: RelayUnderTest, device: EnrolledDevice,
                         client: RelayClient) -> RelayClient:
    await client.authenticate(device.user_id, device.device_id, device.key)
    return client


@asynccontextmanager
async def _until_detached(relay: RelayUnderTest, device: EnrolledDevice) -> AsyncIterator[None]:
    """On leaving, wait until the relay has noticed that the device's connection ended."""
    context = relay.running.context
    gone = trio.Event()
    detach = context.detach

    def detach_and_tell(session: LiveSession) -> None:
        detach(session)
        if session.device == (device.user_id, device.device_id):
            gone.set()

    context.detach = detach_and_tell  # type: ignore[method-assign]
    try:
        yield
        with trio.fail_after(WAIT_S):
            await gone.wait()
    finally:
        del context.detach


async def _register(relay: RelayUnderTest, device: EnrolledDevice, token: str) -> None:
    async with _until_detached(relay, device), relay.connect() as client:
        await _authenticated(relay, device, client)
        await client.set_push_target("outbox", token)


async def test_a_device_sets_reads_and_clears_its_target_and_bad_targets_change_nothing(
        push_relay: RelayUnderTest) -> None:
    device = await enrol(push_relay, PHONE_A)
    async with push_relay.connect() as client:
        await _authenticated(push_relay, device, client)
        assert await client.get_push_target() is None
        await client.set_push_target("outbox", "first-token")
        assert await client.get_push_target() == ("outbox", "first-token")
        # A provider this relay does not serve.
        with pytest.raises(RelayError) as unavailable:
            await client.set_push_target("webpush", "https://push.example.test/w",
                                         p256dh=P256DH, auth=AUTH_SECRET)
        assert unavailable.value.code is ErrorCode.PUSH_PROVIDER_UNAVAILABLE
        assert "outbox" in unavailable.value.reason
        # A target the provider refuses: the reason says why.
        with pytest.raises(RelayError) as refused:
            await client.set_push_target("outbox", "refused-token")
        assert refused.value.code is ErrorCode.INVALID_PUSH_TARGET
        assert "refuses" in refused.value.reason
        # A malformed one (built past the client's own checks): refused by name.
        malformed = object.__new__(PushSet)
        for name, value in (("provider", "outbox"), ("token", "bad\r\ntoken"),
                            ("p256dh", None), ("auth", None)):
            object.__setattr__(malformed, name, value)
        with pytest.raises(RelayError) as bad:
            await client.request(malformed)
        assert bad.value.code is ErrorCode.MALFORMED_FRAME and "PushSet.token" in bad.value.reason
        assert await client.get_push_target() == ("outbox", "first-token")
        await client.clear_push_target()
        assert await client.get_push_target() is None
        await client.clear_push_target()  # clearing nothing is fine
    async with open_sqlite_store(push_relay.data_dir / "relay.db") as store:
        assert await store.push_target_devices() == []


async def test_an_away_device_gets_one_push_however_many_messages_and_a_connected_one_none(
        push_relay: RelayUnderTest, provider: RecordingProvider,
        capsys: pytest.CaptureFixture[str]) -> None:
    sender = await enrol(push_relay, PHONE_A)
    away = await enrol(push_relay, PHONE_B)
    await _register(push_relay, away, "away-token")
    async with push_relay.connect() as client:
        await _authenticated(push_relay, sender, client)
        for number in range(1, 6):
            await client.send(away.user_id, {away.device_id: b"hello"},
                              client_message_id=number)
        await _settled(push_relay)
        with trio.fail_after(WAIT_S):
            push = await provider.pushes.receive()
        assert push.target.token == "away-token" and not push.urgent
        assert len(provider.sent) == 1
        # A call offer: at once, urgent, although the device was woken moments ago.
        await client.send(away.user_id, {away.device_id: b"ring"}, client_message_id=6,
                          urgent=True)
        await _settled(push_relay)
        assert [push.urgent for push in provider.sent] == [False, True]
        # Once connected, the device is delivered to, never pushed.
        async with _until_detached(push_relay, away), push_relay.connect() as woken:
            await _authenticated(push_relay, away, woken)
            await _settled(push_relay)
            await client.send(away.user_id, {away.device_id: b"live"}, client_message_id=7,
                              urgent=True)
            await _settled(push_relay)
            assert len(provider.sent) == 2
        # It left without acknowledging what it was given: it is woken at once (coalescing
        # started anew when it connected), and the next envelope is coalesced into that push.
        await _settled(push_relay)
        assert len(provider.sent) == 3
        await client.send(away.user_id, {away.device_id: b"again"}, client_message_id=8)
        await _settled(push_relay)
        assert len(provider.sent) == 3
    metrics = push_relay.running.context.metrics
    assert metrics.pushes["sent", "outbox"] == 3
    assert metrics.pushes["coalesced", "outbox"] >= 1
    assert metrics.push_delay.count == 3
    scraped = generate_latest(relay_registry(push_relay.running.context,
                                             SmsOutcomes())).decode()
    assert 'cryptopass_pushes_sent_total{provider="outbox"} 3.0' in scraped
    assert "cryptopass_push_delay_seconds_count 3.0" in scraped
    logs = capsys.readouterr()
    assert "push_target_set" in logs.out + logs.err  # the relay's logs were captured
    for secret in ("away-token", away.user_id, sender.user_id, PHONE_B):
        assert secret not in scraped
        assert secret not in logs.out + logs.err


async def test_a_gone_target_is_deleted_and_the_device_pushed_no_more(
        push_relay: RelayUnderTest, provider: RecordingProvider) -> None:
    sender = await enrol(push_relay, PHONE_A)
    away = await enrol(push_relay, PHONE_B)
    await _register(push_relay, away, "gone-token")
    provider.answers.append(PushOutcome(result=PushResult.GONE, detail="410"))
    async with push_relay.connect() as client:
        await _authenticated(push_relay, sender, client)
        await client.send(away.user_id, {away.device_id: b"one"}, client_message_id=1)
        await _settled(push_relay)
        await client.send(away.user_id, {away.device_id: b"two"}, client_message_id=2,
                          urgent=True)
        await _settled(push_relay)
    assert len(provider.sent) == 1
    assert push_relay.running.context.metrics.pushes["removed", "outbox"] == 1
    async with push_relay.connect() as client:
        await _authenticated(push_relay, away, client)
        assert await client.get_push_target() is None


@pytest.fixture
def cluster_url() -> Iterator[str]:
    with fresh_schema() as schema:
        yield store_url(schema)


async def test_two_postgresql_nodes_send_each_push_once(
        cluster_url: str, tmp_path: Path, nursery: trio.Nursery) -> None:
    phones = [f"+3361000{index:04d}" for index in range(6)]
    await declare_in_store(cluster_url, tmp_path, phones, organisation="acme")
    provider = RecordingProvider()
    nodes = []
    for index in (1, 2):
        settings = RelaySettings(data_dir=tmp_path / f"node-{index}", listen_port=0,
                                 store=cluster_url, node_name=f"push-node-{index}",
                                 enrolment_secret_file=tmp_path / "enrolment.secret")
        settings.data_dir.mkdir(parents=True)
        sms = SmsInbox()
        running: RunningRelay = await nursery.start(
            lambda task_status, settings=settings, sms=sms: serve(
                settings, task_status=task_status, on_sms_sent=sms,
                push_providers={"outbox": provider}))
        nodes.append(RelayUnderTest(data_dir=settings.data_dir, running=running, sms=sms))
    try:
        sender = await enrol(nodes[0], phones[0])
        away = [await enrol(nodes[index % 2], phone) for index, phone in enumerate(phones[1:])]
        for index, device in enumerate(away):
            await _register(nodes[index % 2], device, f"token-{index}")
        # Each away device gets messages through both nodes; both nodes claim.
        message_ids = iter(range(1, 1000))
        for node in nodes:
            async with node.connect() as client:
                await _authenticated(node, sender, client)
                for device in away:
                    await client.send(device.user_id, {device.device_id: b"x"},
                                      client_message_id=next(message_ids))
                await _settled(*nodes)
        await _settled(*nodes)
        tokens = sorted(push.target.token for push in provider.sent)
        assert tokens == sorted(f"token-{index}" for index in range(len(away)))
        sent = [node.running.context.metrics.pushes["sent", "outbox"] for node in nodes]
        assert sum(sent) == len(away)
    finally:
        for node in nodes:
            node.running.stop()
