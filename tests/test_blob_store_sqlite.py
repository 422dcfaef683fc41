"""The embedded blob store: the conformance suite on a real SQLite file, then its files."""

from __future__ import annotations

import fcntl
import os
import pathlib
import sqlite3
import stat
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from storage.base import BlobOffsetMismatch, NotFound, Store
from storage.blob_files import blob_file_name
from storage.sqlite import SqliteStore, open_sqlite_store
from tests.blob_store_conformance import *  # noqa: F403
from tests.blob_store_conformance import DAY_MS, _create, _info, _upload
from tests.storage_conformance import NOW, _declared, _organisation


@pytest.fixture
def database_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "data" / "relay.db"


@pytest.fixture
def store_opener(
        database_path: pathlib.Path) -> Callable[[], AbstractAsyncContextManager[Store]]:
    return lambda: open_sqlite_store(database_path, synchronous="NORMAL")


def _blob_files(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(directory.iterdir())


async def test_blob_files_are_private_and_named_by_a_hash_of_the_id(
        database_path: pathlib.Path) -> None:
    async with open_sqlite_store(database_path) as store:
        user = await _declared(store)
        blob_id = await _create(store, user, 8)
        await store.append_blob(blob_id, 0, b"12345678")
        directory = store.blob_dir
    assert directory == database_path.parent / "blobs"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    [path] = _blob_files(directory)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.name == blob_file_name(blob_id)
    # A listing reveals no id (the capability to download): not in hex, nor any part of it.
    assert blob_id.hex()[:16] not in path.name
    assert path.read_bytes() == b"12345678"


async def test_an_existing_blob_directory_is_made_private(
        database_path: pathlib.Path) -> None:
    directory = database_path.parent / "blobs"
    directory.mkdir(parents=True, mode=0o755)
    os.chmod(directory, 0o755)
    async with open_sqlite_store(database_path):
        pass
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


async def test_bytes_a_crash_left_past_received_are_cut_off_on_resume(
        database_path: pathlib.Path) -> None:
    async with open_sqlite_store(database_path) as store:
        user = await _declared(store)
        blob_id = await _create(store, user, 20)
        await store.append_blob(blob_id, 0, b"0123456789")
        path = store.blob_dir / blob_file_name(blob_id)
    # A crash after the write and before the commit leaves bytes the store never accepted.
    with path.open("ab") as file:
        file.write(b"UNCOMMITTED")
    async with open_sqlite_store(database_path) as store:
        assert (await _info(store, blob_id)).received == 10
        assert await store.read_blob(blob_id, 0, 100) == b"0123456789"
        assert await store.append_blob(blob_id, 10, b"abcdefghij") == 20
        assert await store.read_blob(blob_id, 0, 100) == b"0123456789abcdefghij"
    assert path.read_bytes() == b"0123456789abcdefghij"


async def test_expired_and_terminated_blobs_leave_no_file(
        database_path: pathlib.Path) -> None:
    async with open_sqlite_store(database_path) as store:
        terminated_name = await _organisation(store)
        terminated = await _declared(store, terminated_name)
        survivor = await _declared(store)
        expiring = await _create(store, survivor, 4, ttl_ms=DAY_MS)
        kept = await _create(store, survivor, 4, ttl_ms=2 * DAY_MS)
        gone = await _create(store, terminated, 4)
        for blob_id in (expiring, kept, gone):
            await store.append_blob(blob_id, 0, b"data")
        assert len(_blob_files(store.blob_dir)) == 3
        await store.terminate_organisation(terminated_name)
        await store.expire(now=NOW + DAY_MS, limit=100)
        assert _blob_files(store.blob_dir) == [store.blob_dir / blob_file_name(kept)]
        assert await store.read_for_tests(lambda connection: connection.execute(
            "SELECT COUNT(*) FROM blob_files_to_remove").fetchone()[0]) == 0


async def test_files_whose_rows_went_before_a_crash_are_removed_at_opening(
        database_path: pathlib.Path) -> None:
    async with open_sqlite_store(database_path) as store:
        user = await _declared(store)
        blob_id = await _create(store, user, 4)
        await store.append_blob(blob_id, 0, b"data")
        path = store.blob_dir / blob_file_name(blob_id)
    # The rows go (the trigger records the id) but the process dies before the unlink.
    with sqlite3.connect(database_path) as connection:
        connection.execute("DELETE FROM blobs")
    assert path.exists()
    async with open_sqlite_store(database_path):
        assert not path.exists()


async def test_the_blob_directory_can_be_chosen(tmp_path: pathlib.Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "blobs"
    async with open_sqlite_store(tmp_path / "relay.db", blob_dir=elsewhere) as store:
        assert isinstance(store, SqliteStore)
        user = await _declared(store)
        blob_id = await _create(store, user, 3)
        await _upload(store, blob_id, b"abc")
    assert (elsewhere / blob_file_name(blob_id)).read_bytes() == b"abc"
    assert not (tmp_path / "blobs").exists()


async def test_an_append_while_another_holds_the_blob_is_refused_without_waiting(
        database_path: pathlib.Path) -> None:
    async with open_sqlite_store(database_path) as store:
        user = await _declared(store)
        blob_id = await _create(store, user, 20)
        await store.append_blob(blob_id, 0, b"0123456789")
        # Another process's append, between its write and its commit, holds the file's lock.
        path = store.blob_dir / blob_file_name(blob_id)
        descriptor = os.open(path, os.O_WRONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            with pytest.raises(BlobOffsetMismatch) as refused:
                await store.append_blob(blob_id, 10, b"abcdefghij")
            assert refused.value.received == 10
        finally:
            os.close(descriptor)
        assert path.read_bytes() == b"0123456789"
        assert (await _info(store, blob_id)).received == 10
        assert await store.append_blob(blob_id, 10, b"abcdefghij") == 20


async def test_a_blob_whose_file_lost_bytes_is_gone_rather_than_padded(
        database_path: pathlib.Path) -> None:
    async with open_sqlite_store(database_path) as store:
        user = await _declared(store)
        blob_id = await _create(store, user, 20)
        await store.append_blob(blob_id, 0, b"0123456789")
        path = store.blob_dir / blob_file_name(blob_id)
        path.unlink()  # by hand, or a disk that lost it
        with pytest.raises(NotFound):
            await store.read_blob(blob_id, 0, 10)
        with pytest.raises(NotFound):
            await store.append_blob(blob_id, 10, b"abcdefghij")
        assert not path.exists()  # no file of zeros where the bytes were
