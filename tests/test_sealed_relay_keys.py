"""Sealed sender's limits and the certificate keys, on a real relay over real QUIC whose clock
the test moves (``serve(now_ms=...)``): rate limits trip and recover; a rotation publishes both
keys and signs with the new one; certificates bind the device."""

from __future__ import annotations

import dataclasses
import secrets
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from client.connection import RelayClient, RelayError
from crypto.sender_certificate import RelayCertificateKey, verify_sender_certificate
from relay.limits import sender_queue_share
from relay.sealed import SealedService, check_cluster_keys
from relay.sealed_limits import TokenBuckets
from relay.sender_certificates import (
    CERTIFICATE_LIFETIME_MS,
    RELOAD_INTERVAL_MS,
    SenderKeyError,
    load_keyring,
    rotate_keys,
    sender_key_directory,
)
from relay.server import RunningRelay, serve
from relay.settings import RelaySettings
from storage.sqlite import open_sqlite_store
from tests.conftest import RelayUnderTest, SmsInbox, declare, enrol
from tests.sealed_support import anonymous, receive, token_and_hash
from wire.catalogue import ErrorCode
from wire.sealed_frames import SenderKey

PHONE_A, PHONE_B = "+33612345678", "+33698765432"
START_MS = 1_800_000_000_000


@dataclass
class Clock:
    now: int = START_MS

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def _start(settings: RelaySettings, clock: Clock, nursery: trio.Nursery) -> RelayUnderTest:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await declare(settings.data_dir, "acme", PHONE_A, PHONE_B)
    sms = SmsInbox()
    running: RunningRelay = await nursery.start(
        lambda task_status: serve(settings, task_status=task_status, on_sms_sent=sms,
                                  now_ms=clock))
    return RelayUnderTest(data_dir=settings.data_dir, running=running, sms=sms)


@pytest.fixture
async def timed_relay(relay_settings: RelaySettings, clock: Clock,
                      nursery: trio.Nursery) -> AsyncIterator[RelayUnderTest]:
    relay = await _start(relay_settings, clock, nursery)
    yield relay
    relay.running.stop()


def _pinned(keys: tuple[SenderKey, ...]) -> list[RelayCertificateKey]:
    """The published keys as a client pins them (a signing key: no end yet)."""
    return [RelayCertificateKey(key_id=key.key_id, public_key=key.public_key,
                                not_after_ms=key.not_after_ms or 2**62) for key in keys]


async def test_sealed_rate_limits_trip_and_recover(timed_relay: RelayUnderTest,
                                                   clock: Clock) -> None:
    bob = await enrol(timed_relay, PHONE_B)
    token, token_hash = token_and_hash()
    async with timed_relay.connect() as bob_client:
        await bob_client.authenticate(bob.user_id, bob.device_id, bob.key)
        await bob_client.set_delivery_token(token_hash)
    sealed_service = timed_relay.running.context.sealed
    assert isinstance(sealed_service, SealedService)
    # The real buckets, made small so that the test trips them in a few sends.
    sealed_service.per_token = TokenBuckets(capacity=2)

    async def send(client: RelayClient) -> None:
        await client.sealed_send(
            bob.user_id, {bob.device_id: b"x"}, client_message_id=secrets.token_bytes(16),
            delivery_token=token)

    async with anonymous(timed_relay) as sealed:
        await send(sealed)
        await send(sealed)
        with pytest.raises(RelayError) as limited:
            await send(sealed)
        assert limited.value.code is ErrorCode.RATE_LIMITED
        assert limited.value.retry_after_ms == 30_000  # one of two tokens a minute
        clock.now += 30_000
        await send(sealed)  # refilled
        # A wrong token is refused, and it spends its own bucket, not the right one's.
        with pytest.raises(RelayError) as refused:
            await sealed.sealed_send(bob.user_id, {bob.device_id: b"x"},
                                     client_message_id=secrets.token_bytes(16),
                                     delivery_token=secrets.token_bytes(16))
        assert refused.value.code is ErrorCode.DELIVERY_TOKEN_REFUSED
    # The per-recipient bucket counts only authorised sends: strangers cannot spend it.
    sealed_service.per_token = TokenBuckets(capacity=100)
    sealed_service.per_recipient = TokenBuckets(capacity=1)
    clock.now += 60_000
    async with anonymous(timed_relay) as stranger:
        for _ in range(3):
            with pytest.raises(RelayError):
                await stranger.sealed_send(bob.user_id, {bob.device_id: b"x"},
                                           client_message_id=secrets.token_bytes(16),
                                           delivery_token=None)
    async with anonymous(timed_relay) as sealed:
        await send(sealed)
        with pytest.raises(RelayError) as limited:
            await send(sealed)
        assert limited.value.code is ErrorCode.RATE_LIMITED
        clock.now += 60_000
        await send(sealed)
    metrics = timed_relay.running.context.metrics.sealed
    assert metrics["rate_limited"] == 2 and metrics["accepted"] == 5


async def test_a_connection_budget_trips_and_recovers() -> None:
    budget = TokenBuckets(capacity=3, period_ms=60_000, max_keys=1)
    assert [budget.take(None, now=0) for _ in range(3)] == [None, None, None]
    assert budget.take(None, now=0) == 20_000
    assert budget.take(None, now=19_999) is not None
    assert budget.take(None, now=20_000) is None
    assert budget.take(None, now=10_000) is not None  # a clock going back adds nothing


async def test_a_rotation_publishes_both_keys_and_the_new_one_signs(
        timed_relay: RelayUnderTest, clock: Clock) -> None:
    alice = await enrol(timed_relay, PHONE_A)
    async with timed_relay.connect() as client:
        await client.authenticate(alice.user_id, alice.device_id, alice.key)
        [first_key] = await client.get_sender_keys()
        old = await client.get_sender_certificate()
        certificate = verify_sender_certificate(old.certificate, _pinned((first_key,)),
                                                now_ms=clock.now)
        assert (certificate.user_id, certificate.device_id) == (alice.user_id, alice.device_id)
        assert certificate.identity_key == alice.identity_key
        assert certificate.account_key == alice.account.public_key
        assert old.expires_ms == clock.now + CERTIFICATE_LIFETIME_MS
        # The operator rotates (cryptopass-relay sender-keys rotate); the relay reads it within
        # RELOAD_INTERVAL_MS.
        await trio.to_thread.run_sync(lambda: rotate_keys(
            sender_key_directory(timed_relay.data_dir), now_ms=clock.now))
        clock.now += RELOAD_INTERVAL_MS
        keys = await client.get_sender_keys()
        assert [key.key_id for key in keys] == [first_key.key_id + 1, first_key.key_id]
        assert keys[0].not_after_ms is None  # the new one signs
        assert keys[1].not_after_ms == START_MS + CERTIFICATE_LIFETIME_MS
        new = await client.get_sender_certificate()
        pinned = _pinned(keys)
        assert verify_sender_certificate(new.certificate, pinned,
                                         now_ms=clock.now).key_id == keys[0].key_id
        # The certificate the previous key signed is still good until it expires.
        assert verify_sender_certificate(old.certificate, pinned,
                                         now_ms=clock.now).key_id == first_key.key_id
        # Once every certificate the old key signed has expired, it is no longer published.
        clock.now = START_MS + CERTIFICATE_LIFETIME_MS + RELOAD_INTERVAL_MS
        assert [key.key_id for key in await client.get_sender_keys()] == [keys[0].key_id]
    files = sorted(sender_key_directory(timed_relay.data_dir).iterdir())
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in files)


def test_key_files_are_private_and_a_rotation_prunes_keys_past_their_overlap(
        tmp_path: Path) -> None:
    directory = tmp_path / "sender-cert-keys"
    first = load_keyring(directory, now_ms=START_MS)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert load_keyring(directory, now_ms=START_MS).signing.seed == first.signing.seed  # kept
    second = rotate_keys(directory, now_ms=START_MS)
    assert [key.key_id for key in second.accepted] == [2, 1]
    after_overlap = START_MS + CERTIFICATE_LIFETIME_MS
    third = rotate_keys(directory, now_ms=after_overlap)
    assert [key.key_id for key in third.accepted] == [3, 2]
    assert sorted(path.name for path in directory.iterdir()) == ["key-2.json", "key-3.json"]
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in directory.iterdir())
    assert third.signing.seed.hex() not in repr(third.signing)  # never in a log or traceback


def test_two_processes_making_the_first_key_agree(tmp_path: Path) -> None:
    directory = tmp_path / "sender-cert-keys"
    directory.mkdir(mode=0o700)
    made = load_keyring(directory, now_ms=START_MS)
    # Another worker process of the relay starting later reads that key, never makes its own
    # (and one racing it would lose the exclusive link of key-1.json, then read the winner's).
    assert load_keyring(directory, now_ms=START_MS).signing == made.signing
    assert [path.name for path in directory.iterdir()] == ["key-1.json"]


def test_a_damaged_key_file_is_refused_by_name(tmp_path: Path) -> None:
    directory = tmp_path / "sender-cert-keys"
    load_keyring(directory, now_ms=START_MS)
    (directory / "key-1.json").write_text('{"key_id": 1, "seed": "00", "retired_at_ms": null}')
    with pytest.raises(SenderKeyError, match=r"key-1\.json"):
        load_keyring(directory, now_ms=START_MS)
    with pytest.raises(SenderKeyError, match="no signing key"):
        load_keyring(tmp_path / "empty", now_ms=START_MS, create=False)


async def test_a_node_whose_keys_differ_from_the_clusters_is_found_out(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "relay.db") as store:
        first = load_keyring(tmp_path / "node-1", now_ms=START_MS)
        same = load_keyring(tmp_path / "node-1", now_ms=START_MS)
        other = load_keyring(tmp_path / "node-2", now_ms=START_MS)  # made its own key 1
        assert await check_cluster_keys(store, first)
        assert await check_cluster_keys(store, same)
        assert not await check_cluster_keys(store, other)


async def test_the_queue_share_of_sealed_sends_is_keyed_by_token_and_by_connection(
        relay_settings: RelaySettings, clock: Clock, nursery: trio.Nursery) -> None:
    # The smallest share: 100 envelopes per device queue (10 % of 1000).
    timed_relay = await _start(dataclasses.replace(
        relay_settings, max_queue_depth=1000, sender_queue_share_percent=10), clock, nursery)
    limits_share = sender_queue_share(1000, 10)
    assert limits_share == 100
    bob = await enrol(timed_relay, PHONE_B)
    token, token_hash = token_and_hash()
    async with timed_relay.connect() as bob_client:
        await bob_client.authenticate(bob.user_id, bob.device_id, bob.key)
        await bob_client.set_delivery_token(token_hash)

    async def send(client: RelayClient) -> None:
        await client.sealed_send(bob.user_id, {bob.device_id: b"x"}, delivery_token=token,
                                 client_message_id=secrets.token_bytes(16))

    async with anonymous(timed_relay) as first:
        for _ in range(limits_share):
            await send(first)
        with pytest.raises(RelayError) as full:
            await send(first)  # this connection's share
        assert full.value.code is ErrorCode.QUEUE_FULL and "share" in full.value.reason
    async with anonymous(timed_relay) as second:
        # A new connection with the same token: the token's share, counted in the queue.
        with pytest.raises(RelayError) as full:
            await send(second)
        assert full.value.code is ErrorCode.QUEUE_FULL
        async with timed_relay.connect() as bob_client:
            await bob_client.authenticate(bob.user_id, bob.device_id, bob.key)
            received = await receive(bob_client, limits_share)
            await bob_client.settle()
        assert all(delivery.sealed for delivery in received)
        await send(second)  # read, so the token's share is free again
    timed_relay.running.stop()
