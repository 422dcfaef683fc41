"""Files end to end through a real relay on loopback (QUIC, SQLite file, blob files): a
50 MiB file arrives intact, the relay's data directory holds none of its plaintext, a blob
altered on the relay is refused with nothing saved, and interrupted transfers resume."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import stat
import tracemalloc
from contextlib import aclosing
from pathlib import Path

import pytest
import trio

from bench.encrypted_offline import encrypted_device
from bench.spawn import spawn_relay
from client.attachments import upload_file
from client.connection import RECEIVE_WINDOW_BYTES
from client.downloads import FileRefused, download_file
from client.message_content import FileMessage
from client.messenger import Messenger, ReceivedMessage
from client.profile import Profile
from tests.account_support import TIMEOUT_S, enrolled_profile, linked_profile
from tests.conftest import RelayUnderTest
from tests.relay_processes import connect, declare, enrol

ALICE, BOB = "+33612345678", "+33698765432"
MIB = 1024 * 1024
BIG_TIMEOUT_S = 300
"""Bound on a 50 MiB transfer each way on a loaded machine; not a timing assertion."""


def write_marked_file(path: Path, size: int, marker: bytes) -> bytes:
    """A file of ``size`` bytes: ``marker`` then random filler, repeated; returns its SHA-256.
    Any stretch of plaintext a relay kept would hold a marker."""
    digest = hashlib.sha256()
    block = marker + os.urandom(4096 - len(marker))
    with path.open("wb") as file:
        left = size
        while left > 0:
            piece = block[:min(len(block), left)]
            file.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.digest()


def sha256_of(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while piece := file.read(MIB):
            digest.update(piece)
    return digest.digest()


def files_containing(directory: Path, needle: bytes) -> list[Path]:
    """Every file under ``directory`` (the SQLite file, its WAL, blobs, logs...) that holds
    ``needle``, read in overlapping pieces."""
    found = []
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        tail = b""
        with path.open("rb") as file:
            while piece := file.read(MIB):
                if needle in tail + piece:
                    found.append(path)
                    break
                tail = piece[-len(needle):]
    return found


async def send_file(profile: Profile, phone: str, path: Path) -> tuple[int, ...]:
    with trio.fail_after(BIG_TIMEOUT_S):
        async with Messenger.connect(profile) as messenger:
            receipt = await messenger.send_file(phone, path)
    return receipt.recipient_devices


async def receive_files(profile: Profile, download_dir: Path) -> list[ReceivedMessage]:
    found = []
    with trio.fail_after(BIG_TIMEOUT_S):
        async with Messenger.connect(profile) as messenger, aclosing(
                messenger.messages(stop_when_empty=True, download_dir=download_dir)) as messages:
            async for message in messages:
                found.append(message)
    return found


def blob_files(relay: RelayUnderTest) -> list[Path]:
    return sorted(path for path in (relay.data_dir / "blobs").iterdir() if path.is_file())


async def test_a_50_mib_file_crosses_intact_and_the_relay_keeps_none_of_its_plaintext(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "A", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "B", BOB)
    marker = b"PLAINTEXT-MARKER-" + secrets.token_hex(16).encode()
    name_marker = secrets.token_hex(16)
    source = tmp_path / f"holiday-{name_marker}.bin"
    expected = write_marked_file(source, 50 * MIB, marker)
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    assert await send_file(alice, BOB, source) == (bob.data.device_id,)
    [message] = await receive_files(bob, downloads)

    assert message.problem is None and message.file is not None
    assert message.file == downloads / source.name
    assert sha256_of(message.file) == expected
    assert stat.S_IMODE(message.file.stat().st_mode) == 0o600
    assert sorted(downloads.iterdir()) == [message.file]  # no part file left behind
    assert len(blob_files(relay)) == 1  # uploaded once
    for needle in (marker, name_marker.encode(), b"holiday-"):
        assert files_containing(relay.data_dir, needle) == []
    assert files_containing(tmp_path / "B", marker) == []  # nor Bob's profile
    assert await receive_files(bob, downloads) == []  # acknowledged


async def test_a_received_file_lands_0600_under_a_sanitised_name_never_replacing_one(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "A", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "B", BOB)
    hostile = tmp_path / "..\\..\\.bashrc\x1b[2J.txt"
    hostile.write_bytes(b"echo gotcha\n")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "bashrc[2J.txt").write_bytes(b"mine")
    for _ in range(2):
        await send_file(alice, BOB, hostile)

    first, second = await receive_files(bob, downloads)

    assert first.file == downloads / "bashrc[2J (1).txt"
    assert second.file == downloads / "bashrc[2J (2).txt"
    assert (downloads / "bashrc[2J.txt").read_bytes() == b"mine"
    for message in (first, second):
        assert message.file is not None and message.file.read_bytes() == b"echo gotcha\n"
        assert stat.S_IMODE(message.file.stat().st_mode) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["A", "B", "downloads", "relay", hostile.name])  # nothing written outside it


async def test_a_blob_altered_on_the_relay_is_refused_and_nothing_is_saved(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "A", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "B", BOB)
    source = tmp_path / "contract.pdf"
    source.write_bytes(os.urandom(3 * MIB + 5))
    await send_file(alice, BOB, source)
    [stored] = blob_files(relay)
    with stored.open("r+b") as blob:  # the operator (or a thief with write access) flips a bit
        blob.seek(2 * MIB)
        byte = blob.read(1)
        blob.seek(2 * MIB)
        blob.write(bytes([byte[0] ^ 0x01]))
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    [message] = await receive_files(bob, downloads)

    assert message.file is None
    assert message.problem is not None
    assert "contract.pdf was refused and not saved" in message.problem
    assert list(downloads.iterdir()) == []  # neither the file nor its part
    assert await receive_files(bob, downloads) == []  # a retry cannot help: acknowledged


async def test_an_interrupted_upload_and_download_resume_from_their_offsets(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "A", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "B", BOB)
    source = tmp_path / "video.mp4"
    source.write_bytes(os.urandom(8 * MIB))
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    def stop_halfway(scope: trio.CancelScope) -> object:
        def progress(name: str, done: int, total: int) -> None:
            if done >= total // 2:
                scope.cancel()
        return progress

    with trio.fail_after(TIMEOUT_S), trio.CancelScope() as upload:
        async with Messenger.connect(alice) as messenger:
            await messenger.send_file(BOB, source, progress=stop_halfway(upload))
    assert upload.cancelled_caught
    assert len(list((alice.directory / "uploads").iterdir())) == 1  # the resume record
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(alice) as messenger:
            await messenger.send_file(BOB, source)
    assert len(blob_files(relay)) == 1  # the same blob, completed
    assert list((alice.directory / "uploads").iterdir()) == []

    with trio.fail_after(TIMEOUT_S), trio.CancelScope() as download:
        async with Messenger.connect(bob) as messenger, aclosing(messenger.messages(
                stop_when_empty=True, download_dir=downloads,
                progress=stop_halfway(download))) as messages:
            async for _ in messages:
                raise AssertionError("handed over before its file was complete")
    assert download.cancelled_caught
    [part] = list(downloads.iterdir())
    assert part.name.startswith(".cryptopass-") and part.name.endswith(".part")
    assert stat.S_IMODE(part.stat().st_mode) == 0o600
    assert 0 < part.stat().st_size < 8 * MIB

    [message] = await receive_files(bob, downloads)  # delivered again: not acknowledged
    assert message.file == downloads / "video.mp4"
    assert message.file.read_bytes() == source.read_bytes()
    assert list(downloads.iterdir()) == [message.file]


async def test_the_client_never_holds_a_whole_file_in_memory(tmp_path: Path) -> None:
    """The relay runs in a process of its own, so what tracemalloc sees here is the client's:
    sending and receiving a 48 MiB file peaks far below its size. An upload holds about the
    bytes it may have unacknowledged; a download at most what the client's receive window lets
    the relay send ahead of the writer (RECEIVE_WINDOW_BYTES, 16 MiB), which a slow disk or a
    busy machine can fill: a bound that does not grow with the file, unlike a whole-file
    buffer."""
    data = tmp_path / "relay"
    data.mkdir()
    await declare(None, data, [ALICE, BOB], organisation="acme")
    size = 48 * MIB
    source = tmp_path / "big.bin"
    write_marked_file(source, size, b"M")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    async with spawn_relay(data) as relay:
        alice_credentials, bob_credentials = [await enrol(relay, phone) for phone in (ALICE, BOB)]
        address = f"127.0.0.1:{relay.port}"
        alice = encrypted_device(alice_credentials, tmp_path / "A", address, relay.cert)
        bob = encrypted_device(bob_credentials, tmp_path / "B", address, relay.cert)
        for device in (alice, bob):
            device.profile.save()
        tracemalloc.start()
        try:
            with trio.fail_after(BIG_TIMEOUT_S):
                async with connect(relay) as sending, connect(relay) as receiving:
                    await sending.authenticate(alice_credentials.user_id,
                                               alice_credentials.device_id,
                                               alice_credentials.key)
                    await receiving.authenticate(bob_credentials.user_id,
                                                 bob_credentials.device_id, bob_credentials.key)
                    async with Messenger.attach(sending, alice.profile, alice.crypto,
                                                alice.contacts) as sender, \
                            Messenger.attach(receiving, bob.profile, bob.crypto,
                                             bob.contacts) as receiver:
                        tracemalloc.reset_peak()
                        await sender.send_file(BOB, source)
                        _, upload_peak = tracemalloc.get_traced_memory()
                        tracemalloc.reset_peak()
                        async with aclosing(receiver.messages(
                                download_dir=downloads)) as messages:
                            async for message in messages:
                                assert message.file is not None, message.problem
                                break
                        _, download_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert sha256_of(message.file) == sha256_of(source)
    assert upload_peak < size // 4, upload_peak
    assert download_peak < RECEIVE_WINDOW_BYTES + 4 * MIB < size // 2, download_peak


async def test_a_file_changed_since_an_interrupted_upload_starts_over_with_a_new_key(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    """A key never seals two different plaintexts: the resume record is for the file as it
    was, so a changed file gets a new key and a new blob, and the receiver gets the new
    content whole."""
    alice = await enrolled_profile(relay, tmp_path / "A", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "B", BOB)
    source = tmp_path / "draft.txt"
    source.write_bytes(os.urandom(4 * MIB))
    with trio.fail_after(TIMEOUT_S), trio.CancelScope() as upload:
        async with Messenger.connect(alice) as messenger:
            def stop_halfway(name: str, done: int, total: int) -> None:
                if done >= total // 2:
                    upload.cancel()
            await messenger.send_file(BOB, source, progress=stop_halfway)
    assert upload.cancelled_caught
    [record] = list((alice.directory / "uploads").iterdir())
    assert stat.S_IMODE(record.stat().st_mode) == 0o600  # it holds the file's key
    first_attempt = record.read_bytes()
    edited = os.urandom(4 * MIB)
    source.write_bytes(edited)

    await send_file(alice, BOB, source)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    [message] = await receive_files(bob, downloads)

    assert isinstance(message.content, FileMessage)
    assert message.content.key not in first_attempt  # a new key...
    assert message.content.blob_id not in first_attempt  # ...and a new blob
    assert message.file is not None and message.file.read_bytes() == edited


async def test_one_upload_reaches_every_device_of_both_accounts(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice_1 = await enrolled_profile(relay, tmp_path / "A1", ALICE)
    alice_2 = await linked_profile(relay, alice_1, tmp_path / "A2")
    bob_1 = await enrolled_profile(relay, tmp_path / "B1", BOB)
    bob_2 = await linked_profile(relay, bob_1, tmp_path / "B2")
    source = tmp_path / "minutes.odt"
    source.write_bytes(os.urandom(MIB + 17))

    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(alice_1) as messenger:
            receipt = await messenger.send_file(BOB, source)
    assert receipt.recipient_devices == (bob_1.data.device_id, bob_2.data.device_id)
    assert receipt.own_devices == (alice_2.data.device_id,)
    assert len(blob_files(relay)) == 1  # uploaded once for all three
    for profile in (bob_1, bob_2, alice_2):
        downloads = tmp_path / f"downloads-{profile.directory.name}"
        downloads.mkdir()
        [message] = await receive_files(profile, downloads)
        assert message.file == downloads / "minutes.odt"
        assert message.file.read_bytes() == source.read_bytes()
        assert message.sender_confirmed and not message.identity_changed


@pytest.mark.parametrize("lie", ["size", "digest", "key", "chunk_size", "blob_id"])
async def test_a_message_that_does_not_match_its_blob_saves_nothing(
        relay: RelayUnderTest, tmp_path: Path, lie: str) -> None:
    """A hostile sender (or a relay swapping blobs) announces what the blob is not: the
    receiver refuses it and nothing appears in the download directory."""
    alice = await enrolled_profile(relay, tmp_path / "A", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "B", BOB)
    source = tmp_path / "claim.pdf"
    source.write_bytes(os.urandom(300_000))
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(alice) as messenger:
            uploaded = await upload_file(messenger.client, source, records=alice.directory,
                                         recipient=BOB)
            other = await messenger.client.create_blob(16)
    honest = FileMessage(sender_phone=ALICE, recipient_phone=BOB, sent_at="t",
                         blob_id=uploaded.blob_id, key=uploaded.key, digest=uploaded.digest,
                         size=uploaded.size, chunk_size=uploaded.chunk_size, name="claim.pdf",
                         media_type=None)
    lies = {"size": {"size": uploaded.size + 1}, "digest": {"digest": bytes(32)},
            "key": {"key": bytes(32)}, "chunk_size": {"chunk_size": 4096},
            "blob_id": {"blob_id": other}}  # an incomplete blob is refused as unknown
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(bob) as messenger:
            assert await download_file(messenger.client, honest, downloads) == (
                downloads / "claim.pdf")
            (downloads / "claim.pdf").unlink()
            with pytest.raises(FileRefused, match=r"claim\.pdf"):
                await download_file(messenger.client, dataclasses.replace(honest, **lies[lie]),
                                    downloads)
    assert list(downloads.iterdir()) == []
