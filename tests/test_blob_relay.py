"""Files (blobs) through a real relay over real QUIC on loopback (PROTOCOL.md "Attachments").

Uploads and downloads cross intact and resume from offsets after a connection breaks; the size
limit and the quota refuse with clear errors and store nothing; every id one may not use is
refused with one code and one reason; the relay's receive window never runs ahead of what its
store has written; a relay process's peak memory does not grow with the file's size; and on
PostgreSQL a file uploaded through one node downloads through another.

Blob bytes are random: the relay only ever sees ciphertext. Nothing sleeps: tests wait on
answers, counters and events, each bounded by a generous ``fail_after``.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from bench.spawn import SpawnedRelay, peak_rss_mib, spawn_relay
from client.connection import ConnectionClosed, RelayClient, RelayError
from relay.blob_streams import MAX_BLOB_STREAMS_PER_CONNECTION
from relay.blobs import BLOB_CREATES_PER_HOUR, BlobService
from relay.server import RECEIVE_WINDOW_BYTES, RunningRelay, serve, wall_clock_ms
from relay.settings import RelaySettings
from tests.conftest import (
    EnrolledDevice,
    RelayUnderTest,
    SmsInbox,
    declare,
    enrol,
    link_device,
)
from tests.postgres_schemas import fresh_schema, store_url
from tests.relay_processes import connect as connect_spawned
from tests.relay_processes import declare as declare_in_store
from tests.relay_processes import enrol as enrol_spawned
from transport.quic import QuicLink
from wire.frames import ErrorCode

ALICE, BOB = "+33612345678", "+33698765432"
TIMEOUT_S = 60
"""Bound on anything that could hang; not a timing assertion."""
CHUNK = 64 * 1024
MIB = 1024 * 1024
QUOTA = 8 * MIB


# --- helpers ----------------------------------------------------------------------------------
def random_bytes(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


async def chunks_of(data: bytes, *, after: Callable[[int], Any] | None = None,
                    size: int = CHUNK) -> AsyncIterator[bytes]:
    """``data`` in chunks; ``after(sent)`` is awaited after each one if given."""
    for start in range(0, len(data), size):
        yield data[start:start + size]
        if after is not None:
            await after(start + size)


@asynccontextmanager
async def authenticated(relay: RelayUnderTest, device: EnrolledDevice) -> AsyncIterator[
        RelayClient]:
    async with relay.connect() as client:
        with trio.fail_after(TIMEOUT_S):
            await client.authenticate(device.user_id, device.device_id, device.key)
        yield client


async def upload(client: RelayClient, data: bytes) -> bytes:
    with trio.fail_after(TIMEOUT_S):
        blob_id = await client.create_blob(len(data))
        assert await client.upload_blob(blob_id, 0, chunks_of(data)) == len(data)
    return blob_id


async def download(client: RelayClient, blob_id: bytes, offset: int = 0) -> bytes:
    pieces = []
    with trio.fail_after(TIMEOUT_S):
        async with client.download_blob(blob_id, offset) as (size, chunks):
            async for chunk in chunks:
                pieces.append(chunk)
    data = b"".join(pieces)
    assert offset + len(data) == size
    return data


async def refusal(request: Any) -> RelayError:
    with pytest.raises(RelayError) as refused:
        with trio.fail_after(TIMEOUT_S):
            await request
    return refused.value


async def download_refusal(client: RelayClient, blob_id: bytes, offset: int = 0) -> RelayError:
    with pytest.raises(RelayError) as refused:
        with trio.fail_after(TIMEOUT_S):
            async with client.download_blob(blob_id, offset):
                pass
    return refused.value


async def organisation_blob_bytes(relay: RelayUnderTest) -> int:
    store = relay.running.context.store
    organisation = await store.get_organisation("acme")
    assert organisation is not None
    return await store.organisation_blob_bytes(organisation.organisation_id, wall_clock_ms())


class ObservedStore:
    """The relay's store, counting the blob bytes appended and waking whoever waits for them;
    its appends wait while ``stalled`` (an event not yet set)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._appended = trio.Event()
        self.appended = 0
        self.appends = 0
        self.stalled: trio.Event | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def append_blob(self, blob_id: bytes, offset: int, data: bytes) -> int:
        self.appends += 1
        if self.stalled is not None:
            await self.stalled.wait()
        received: int = await self._store.append_blob(blob_id, offset, data)
        self.appended += len(data)
        self._appended.set()
        self._appended = trio.Event()
        return received

    async def until_appended(self, size: int) -> None:
        with trio.fail_after(TIMEOUT_S):
            while self.appended < size:
                await self._appended.wait()


def observe_store(relay: RelayUnderTest) -> ObservedStore:
    """Make the relay's blob service (for connections opened from now on) use an
    ObservedStore."""
    context = relay.running.context
    observed = ObservedStore(context.store)
    context.blobs = BlobService(observed, settings=context.settings, metrics=context.metrics,
                                now_ms=context.now_ms)
    return observed


async def next_flush(relay: RelayUnderTest) -> None:
    """Wait until the relay's endpoint has handled more datagrams or timers (a flush)."""
    endpoint = relay.running.endpoint
    if endpoint._flushed is None:
        endpoint._flushed = trio.Event()
    await endpoint._flushed.wait()


@pytest.fixture
def relay_settings(tmp_path: Path) -> RelaySettings:
    return RelaySettings(data_dir=tmp_path / "relay", listen_port=0,
                         blob_quota_per_organisation_bytes=QUOTA)


@pytest.fixture
async def alice_and_bob(relay: RelayUnderTest) -> tuple[EnrolledDevice, EnrolledDevice]:
    return await enrol(relay, ALICE), await enrol(relay, BOB)


# --- transfers --------------------------------------------------------------------------------
async def test_an_upload_downloads_intact_on_another_account(
        relay: RelayUnderTest, alice_and_bob: tuple[EnrolledDevice, EnrolledDevice]) -> None:
    alice, bob = alice_and_bob
    data = random_bytes(3 * MIB + 12_345)
    async with authenticated(relay, alice) as client:
        blob_id = await upload(client, data)
        assert await client.blob_status(blob_id) == (len(data), len(data))
    async with authenticated(relay, bob) as client:
        assert hashlib.sha256(await download(client, blob_id)).digest() == hashlib.sha256(
            data).digest()
        assert await download(client, blob_id, len(data)) == b""  # nothing after the end
    metrics = relay.running.context.metrics
    assert metrics.blobs_created == 1
    assert metrics.blob_bytes_uploaded == len(data)
    assert metrics.blob_bytes_downloaded == len(data)


async def test_an_interrupted_upload_resumes_from_the_durable_offset(
        relay: RelayUnderTest, alice_and_bob: tuple[EnrolledDevice, EnrolledDevice]) -> None:
    alice, bob = alice_and_bob
    data = random_bytes(4 * MIB, seed=2)
    store = observe_store(relay)
    async with authenticated(relay, alice) as client:
        blob_id = await client.create_blob(len(data))

        async def break_once_stored(sent: int) -> None:
            if sent >= 2 * MIB:  # the relay has stored some, not all: the connection breaks
                await store.until_appended(MIB)
                client.close()
                await client.link.closed.wait()  # the upload then sees the connection end

        with pytest.raises(ConnectionClosed), trio.fail_after(TIMEOUT_S):
            await client.upload_blob(blob_id, 0, chunks_of(data, after=break_once_stored))
    async with authenticated(relay, alice) as client:
        size, received = await client.blob_status(blob_id)
        assert size == len(data) and MIB <= received < len(data)
        # An offset other than the durable one is refused, and says where to resume.
        wrong = await refusal(client.upload_blob(blob_id, 0, chunks_of(data)))
        assert wrong.code is ErrorCode.BLOB_OFFSET_MISMATCH and str(received) in wrong.reason
        assert await client.blob_status(blob_id) == (size, received)  # nothing changed
        with trio.fail_after(TIMEOUT_S):
            assert await client.upload_blob(blob_id, received,
                                            chunks_of(data[received:])) == len(data)
    async with authenticated(relay, bob) as client:
        assert await download(client, blob_id) == data


async def test_an_interrupted_download_resumes_from_an_offset(
        relay: RelayUnderTest, alice_and_bob: tuple[EnrolledDevice, EnrolledDevice]) -> None:
    alice, bob = alice_and_bob
    data = random_bytes(3 * MIB, seed=3)
    async with authenticated(relay, alice) as client:
        blob_id = await upload(client, data)
    kept = bytearray()
    async with authenticated(relay, bob) as client:
        with pytest.raises(ConnectionClosed), trio.fail_after(TIMEOUT_S):
            async with client.download_blob(blob_id, 0) as (size, chunks):
                assert size == len(data)
                async for chunk in chunks:
                    kept += chunk
                    if len(kept) >= MIB:
                        client.close()  # the connection breaks mid-file
    assert MIB <= len(kept) < len(data)
    async with authenticated(relay, bob) as client:
        assert bytes(kept) + await download(client, blob_id, len(kept)) == data
        # Leaving a download early stops it, and the connection serves the next one.
        async with client.download_blob(blob_id, 0) as (_, chunks):
            async for _ in chunks:
                break
        assert await download(client, blob_id, len(data) - 10) == data[-10:]


async def test_several_transfers_share_one_connection(
        relay: RelayUnderTest, alice_and_bob: tuple[EnrolledDevice, EnrolledDevice]) -> None:
    alice, _ = alice_and_bob
    files = [random_bytes(MIB // 2 + index, seed=10 + index) for index in range(3)]
    async with authenticated(relay, alice) as client:
        ids: list[bytes] = [b""] * len(files)

        async def send(index: int) -> None:
            ids[index] = await upload(client, files[index])

        async with trio.open_nursery() as nursery:
            for index in range(len(files)):
                nursery.start_soon(send, index)
        for blob_id, data in zip(ids, files, strict=True):
            assert await download(client, blob_id) == data


# --- limits -----------------------------------------------------------------------------------
async def test_the_size_limit_and_the_quota_refuse_clearly_and_store_nothing(
        relay: RelayUnderTest, alice_and_bob: tuple[EnrolledDevice, EnrolledDevice]) -> None:
    alice, _ = alice_and_bob
    settings = relay.running.context.settings
    async with authenticated(relay, alice) as client:
        too_large = await refusal(client.create_blob(settings.blob_max_bytes + 1))
        assert too_large.code is ErrorCode.BLOB_TOO_LARGE
        assert str(settings.blob_max_bytes) in too_large.reason
        assert await organisation_blob_bytes(relay) == 0
        first = await client.create_blob(QUOTA // 2 + 1)
        charged = await organisation_blob_bytes(relay)
        over = await refusal(client.create_blob(QUOTA // 2))
        assert over.code is ErrorCode.BLOB_QUOTA_EXCEEDED
        assert str(QUOTA) in over.reason and "nothing was stored" in over.reason
        assert await organisation_blob_bytes(relay) == charged
        assert await client.blob_status(first) == (QUOTA // 2 + 1, 0)


async def test_bytes_past_the_declared_size_are_refused_and_not_kept(
        relay: RelayUnderTest, alice_and_bob: tuple[EnrolledDevice, EnrolledDevice]) -> None:
    alice, bob = alice_and_bob
    data = random_bytes(MIB, seed=4)
    async with authenticated(relay, alice) as client:
        blob_id = await client.create_blob(len(data) - 1000)
        past = await refusal(client.upload_blob(blob_id, 0, chunks_of(data)))
        assert past.code is ErrorCode.BLOB_TOO_LARGE
        assert await client.blob_status(blob_id) == (len(data) - 1000, len(data) - 1000)
    async with authenticated(relay, bob) as client:
        assert await download(client, blob_id) == data[:-1000]


async def test_creates_are_limited_per_device(
        relay: RelayUnderTest, alice_and_bob: tuple[EnrolledDevice, EnrolledDevice]) -> None:
    alice, _ = alice_and_bob
    async with authenticated(relay, alice) as client:
        for _ in range(BLOB_CREATES_PER_HOUR):
            await client.create_blob(10)
        limited = await refusal(client.create_blob(10))
        assert limited.code is ErrorCode.RATE_LIMITED and limited.retry_after_ms


async def test_a_connection_runs_a_bounded_number_of_transfers_at_once(
        relay: RelayUnderTest, alice_and_bob: tuple[EnrolledDevice, EnrolledDevice]) -> None:
    alice, _ = alice_and_bob
    store = observe_store(relay)
    go_on = trio.Event()
    data = random_bytes(2 * CHUNK, seed=9)

    async def slow_chunks() -> AsyncIterator[bytes]:
        yield data[:CHUNK]
        await go_on.wait()
        yield data[CHUNK:]

    async with authenticated(relay, alice) as client:
        ids = [await client.create_blob(len(data))
               for _ in range(MAX_BLOB_STREAMS_PER_CONNECTION + 1)]
        async with trio.open_nursery() as nursery:
            for blob_id in ids[:-1]:
                nursery.start_soon(client.upload_blob, blob_id, 0, slow_chunks())
            # Each running upload has stored its first chunk.
            await store.until_appended(MAX_BLOB_STREAMS_PER_CONNECTION * CHUNK)
            one_more = await refusal(client.upload_blob(ids[-1], 0, chunks_of(data)))
            assert one_more.code is ErrorCode.RATE_LIMITED and one_more.retry_after_ms
            go_on.set()
        assert await client.upload_blob(ids[-1], 0, chunks_of(data)) == len(data)
        for blob_id in ids:
            assert await download(client, blob_id) == data


# --- who may use an id ------------------------------------------------------------------------
async def test_a_wrong_id_is_refused_exactly_as_a_missing_one(
        relay: RelayUnderTest, alice_and_bob: tuple[EnrolledDevice, EnrolledDevice]) -> None:
    alice, bob = alice_and_bob
    data = random_bytes(100_000, seed=5)
    async with authenticated(relay, alice) as client:
        blob_id = await upload(client, data)
        incomplete = await client.create_blob(1000)
    wrong = bytes([blob_id[0] ^ 1]) + blob_id[1:]  # one bit off a real id
    missing = secrets.token_bytes(32)
    async with authenticated(relay, bob) as client:
        answers = [await download_refusal(client, candidate)
                   for candidate in (wrong, missing, incomplete)]
        answers += [await refusal(client.blob_status(candidate))
                    for candidate in (wrong, missing, blob_id)]  # status: the creator's only
        answers.append(await refusal(client.upload_blob(incomplete, 0, chunks_of(b"x" * 1000))))
    assert {(answer.code, answer.reason) for answer in answers} == {
        (ErrorCode.BLOB_UNKNOWN, answers[0].reason)}


async def test_only_the_creating_device_uploads_or_reads_the_status(
        relay: RelayUnderTest, alice_and_bob: tuple[EnrolledDevice, EnrolledDevice]) -> None:
    alice, _ = alice_and_bob
    second = await link_device(relay, alice)  # the same account, another device
    data = random_bytes(10_000, seed=6)
    async with authenticated(relay, alice) as client:
        blob_id = await client.create_blob(len(data))
    async with authenticated(relay, second) as client:
        status = await refusal(client.blob_status(blob_id))
        upload_attempt = await refusal(client.upload_blob(blob_id, 0, chunks_of(data)))
        assert status.code is upload_attempt.code is ErrorCode.BLOB_UNKNOWN
    async with authenticated(relay, alice) as client:
        assert await client.blob_status(blob_id) == (len(data), 0)  # nothing was stored
        assert await client.upload_blob(blob_id, 0, chunks_of(data)) == len(data)
    async with authenticated(relay, second) as client:
        assert await download(client, blob_id) == data  # any device may read it, complete


async def test_an_expired_blob_is_refused_and_an_abandoned_upload_gives_its_quota_back(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    now = [wall_clock_ms()]
    settings = RelaySettings(data_dir=tmp_path / "relay", listen_port=0, blob_ttl_ms=60_000,
                             blob_upload_deadline_ms=10_000)
    settings.data_dir.mkdir(parents=True)
    await declare(settings.data_dir, "acme", ALICE, BOB)
    sms = SmsInbox()
    running: RunningRelay = await nursery.start(lambda task_status: serve(
        settings, task_status=task_status, now_ms=lambda: now[0], on_sms_sent=sms))
    relay = RelayUnderTest(data_dir=settings.data_dir, running=running, sms=sms)
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    store = running.context.store
    organisation = await store.get_organisation("acme")
    assert organisation is not None

    async def charged() -> int:
        return await store.organisation_blob_bytes(organisation.organisation_id, now[0])

    data = random_bytes(50_000, seed=7)
    async with authenticated(relay, alice) as client:
        blob_id = await upload(client, data)
        unfinished = await client.create_blob(20_000)
        assert await client.upload_blob(unfinished, 0, chunks_of(data[:5_000])) == 5_000
    assert await charged() == 70_000
    now[0] += settings.blob_upload_deadline_ms  # the unfinished upload is abandoned
    assert await charged() == 50_000
    async with authenticated(relay, alice) as client:
        assert (await refusal(client.blob_status(unfinished))).code is ErrorCode.BLOB_UNKNOWN
        resumed = await refusal(client.upload_blob(unfinished, 5_000, chunks_of(data[5_000:20_000])))
        assert resumed.code is ErrorCode.BLOB_UNKNOWN
    async with authenticated(relay, bob) as client:
        assert await download(client, blob_id) == data  # a complete file lives its whole TTL
    now[0] += settings.blob_ttl_ms - settings.blob_upload_deadline_ms
    async with authenticated(relay, bob) as client:
        assert (await download_refusal(client, blob_id)).code is ErrorCode.BLOB_UNKNOWN
    async with authenticated(relay, alice) as client:
        assert (await refusal(client.blob_status(blob_id))).code is ErrorCode.BLOB_UNKNOWN
    assert await charged() == 0
    running.stop()


# --- flow control and memory ------------------------------------------------------------------
def uploading(relay: RelayUnderTest) -> QuicLink | None:
    """The relay's connection holding an upload's bytes, if any."""
    return next((link for link in relay.running.endpoint.links if link.held_received), None)


async def test_the_receive_window_never_runs_ahead_of_the_store(
        relay: RelayUnderTest, alice_and_bob: tuple[EnrolledDevice, EnrolledDevice]) -> None:
    alice, bob = alice_and_bob
    stalled = observe_store(relay)
    stalled.stalled = trio.Event()
    data = random_bytes(8 * MIB, seed=8)
    async with authenticated(relay, alice) as client:
        blob_id = await client.create_blob(len(data))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.upload_blob, blob_id, 0, chunks_of(data))
            # The store writes nothing: the client must come to a stop, its credit used up,
            # with the relay holding at most one window of its bytes.
            with trio.fail_after(TIMEOUT_S):
                while not (stalled.appends and (link := uploading(relay)) is not None
                           and link.quic._local_max_data.used
                           >= link.quic._local_max_data.value):
                    await next_flush(relay)
            limit = link.quic._local_max_data
            assert link.held_received <= RECEIVE_WINDOW_BYTES
            assert limit.value - (limit.used - link.held_received) <= RECEIVE_WINDOW_BYTES
            assert limit.used < 2 * RECEIVE_WINDOW_BYTES  # far from the 8 MiB sent
            stalled.stalled.set()
        assert link.held_received == 0
    async with authenticated(relay, bob) as client:
        assert await download(client, blob_id) == data


def _peak_rss_after(relay: SpawnedRelay) -> float:
    return peak_rss_mib(relay.process.pid)


async def _transfer(relay: SpawnedRelay, sender: Any, receiver: Any, size: int,
                    seed: int) -> None:
    """Upload ``size`` random bytes as ``sender``, download them as ``receiver``; digests match.
    The bytes are made chunk by chunk on both sides: the test holds no whole file either."""
    generator, digest = random.Random(seed), hashlib.sha256()

    async def produce() -> AsyncIterator[bytes]:
        left = size
        while left:
            chunk = generator.randbytes(min(CHUNK * 4, left))
            digest.update(chunk)
            left -= len(chunk)
            yield chunk

    async with connect_spawned(relay) as client:
        await client.authenticate(sender.user_id, sender.device_id, sender.key)
        with trio.fail_after(TIMEOUT_S * 4):
            blob_id = await client.create_blob(size)
            assert await client.upload_blob(blob_id, 0, produce()) == size
    received = hashlib.sha256()
    async with connect_spawned(relay) as client:
        await client.authenticate(receiver.user_id, receiver.device_id, receiver.key)
        with trio.fail_after(TIMEOUT_S * 4):
            async with client.download_blob(blob_id, 0) as (total, chunks):
                assert total == size
                async for chunk in chunks:
                    received.update(chunk)
    assert received.digest() == digest.digest()


async def test_a_relay_process_peak_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "relay"
    data_dir.mkdir()
    await declare_in_store(None, data_dir, (ALICE, BOB), organisation="acme")
    async with spawn_relay(data_dir) as relay:
        alice, bob = await enrol_spawned(relay, ALICE), await enrol_spawned(relay, BOB)
        await _transfer(relay, alice, bob, 5 * MIB, seed=20)
        after_small = _peak_rss_after(relay)
        await _transfer(relay, alice, bob, 50 * MIB, seed=21)
        after_large = _peak_rss_after(relay)
    print(f"relay peak RSS (VmHWM): {after_small:.1f} MiB after a 5 MiB transfer, "
          f"{after_large:.1f} MiB after a 50 MiB one (+{after_large - after_small:.1f} MiB)")
    assert after_large - after_small < 16


# --- cluster ----------------------------------------------------------------------------------
@pytest.fixture
def cluster_url() -> Iterator[str]:
    with fresh_schema() as schema:
        yield store_url(schema)


async def test_a_file_uploaded_through_one_node_downloads_through_another(
        cluster_url: str, tmp_path: Path) -> None:
    await declare_in_store(cluster_url, tmp_path, (ALICE, BOB), organisation="acme")
    async with spawn_relay(tmp_path / "node-1", store=cluster_url, node_name="node-1") as first, \
            spawn_relay(tmp_path / "node-2", store=cluster_url, node_name="node-2") as second:
        alice, bob = await enrol_spawned(first, ALICE), await enrol_spawned(second, BOB)
        data = random_bytes(3 * MIB + 7, seed=30)
        async with connect_spawned(first) as client:
            await client.authenticate(alice.user_id, alice.device_id, alice.key)
            blob_id = await upload(client, data)
        async with connect_spawned(second) as client:
            await client.authenticate(bob.user_id, bob.device_id, bob.key)
            assert await download(client, blob_id) == data
            assert await download(client, blob_id, MIB) == data[MIB:]
