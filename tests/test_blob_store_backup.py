"""``backup`` and ``restore`` carry the embedded store's blobs: one backup file, real SQLite
files, the operator's commands as real processes."""

from __future__ import annotations

import datetime
import secrets
import sqlite3
import stat
from pathlib import Path

import pytest
import trio

from bench.spawn import BIN
from storage.blob_backup import copy_blobs_into_backup
from storage.blob_files import blob_file_name
from storage.sqlite import open_sqlite_store
from storage.sqlite_backup import BackupError, backup_database, check_backup, restore_database
from tests.blob_store_conformance import _create, _read_all, _upload
from tests.storage_conformance import NOW, _declared

RESTORED_AT = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


async def _store_with_blobs(database: Path) -> dict[bytes, bytes]:
    """A store holding a complete blob, a partial one and an empty one: id -> durable bytes."""
    async with open_sqlite_store(database, synchronous="NORMAL") as store:
        user = await _declared(store)
        complete = secrets.token_bytes(3 * 1024 * 1024 + 17)  # several backup pieces
        partial = secrets.token_bytes(1000)
        blobs = {await _create(store, user, len(complete)): complete,
                 await _create(store, user, 2000): partial,
                 await _create(store, user, 0): b""}
        for blob_id, data in blobs.items():
            await _upload(store, blob_id, data, piece=1024 * 1024)
    return blobs


async def _assert_holds(database: Path, blobs: dict[bytes, bytes]) -> None:
    async with open_sqlite_store(database, synchronous="NORMAL") as store:
        for blob_id, data in blobs.items():
            info = await store.blob_info(blob_id, NOW)
            assert info is not None and info.received == len(data)
            assert await _read_all(store, blob_id, piece=1024 * 1024) == data
        on_disk = sorted(path.name for path in store.blob_dir.iterdir())
        assert stat.S_IMODE(store.blob_dir.stat().st_mode) == 0o700
        for path in store.blob_dir.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert on_disk == sorted(blob_file_name(blob_id) for blob_id, data in blobs.items() if data)


async def test_backup_and_restore_round_trip_the_blobs(tmp_path: Path) -> None:
    database = tmp_path / "live" / "relay.db"
    blobs = await _store_with_blobs(database)
    backup = tmp_path / "backup.db"
    backup_database(database, backup)
    check_backup(backup)
    restored = tmp_path / "restored" / "relay.db"
    assert restore_database(backup, restored, now=RESTORED_AT) is None
    await _assert_holds(restored, blobs)
    # The bytes are files again: the restored store does not keep a second copy.
    with sqlite3.connect(restored) as connection:
        assert connection.execute("SELECT COUNT(*) FROM sqlite_master"
                                  " WHERE name = 'backup_blob_chunks'").fetchone() == (0,)


async def test_a_backup_holds_a_blob_only_up_to_its_committed_bytes(tmp_path: Path) -> None:
    database = tmp_path / "live" / "relay.db"
    async with open_sqlite_store(database, synchronous="NORMAL") as store:
        user = await _declared(store)
        blob_id = await _create(store, user, 100)
        await store.append_blob(blob_id, 0, b"committed")
        path = store.blob_dir / blob_file_name(blob_id)
        # An append in flight: its bytes are written, its commit has not happened yet.
        with path.open("ab") as file:
            file.write(b"IN FLIGHT")
        backup = tmp_path / "backup.db"
        await trio.to_thread.run_sync(backup_database, database, backup)
    restored = tmp_path / "restored" / "relay.db"
    restore_database(backup, restored, now=RESTORED_AT)
    async with open_sqlite_store(restored, synchronous="NORMAL") as store:
        assert await store.read_blob(blob_id, 0, 100) == b"committed"
        assert await store.append_blob(blob_id, 9, b" and more") == 18
    assert (restored.parent / "blobs" / blob_file_name(blob_id)).read_bytes() == (
        b"committed and more")


async def test_a_blob_deleted_during_the_backup_is_left_out_whole(tmp_path: Path) -> None:
    database = tmp_path / "live" / "relay.db"
    async with open_sqlite_store(database, synchronous="NORMAL") as store:
        user = await _declared(store)
        deleted, kept = await _create(store, user, 4), await _create(store, user, 4)
        for blob_id in (deleted, kept):
            await store.append_blob(blob_id, 0, b"data")
        snapshot = tmp_path / "snapshot.db"
        with sqlite3.connect(database) as source, sqlite3.connect(snapshot) as target:
            source.backup(target)
        # Deleted after the tables were copied, before its file was read.
        await store.delete_organisation_blobs(user.organisation_id)
        kept = await _create(store, user, 4)
        await store.append_blob(kept, 0, b"new!")
        with sqlite3.connect(database) as source, sqlite3.connect(snapshot) as target:
            assert copy_blobs_into_backup(target, source, store.blob_dir) == 0
            assert target.execute("SELECT COUNT(*) FROM blobs").fetchone() == (0,)
    check_backup(snapshot)


async def test_a_backup_missing_a_live_blobs_file_fails_and_leaves_nothing(
        tmp_path: Path) -> None:
    database = tmp_path / "live" / "relay.db"
    async with open_sqlite_store(database, synchronous="NORMAL") as store:
        user = await _declared(store)
        blob_id = await _create(store, user, 4)
        await store.append_blob(blob_id, 0, b"data")
        (store.blob_dir / blob_file_name(blob_id)).unlink()
    backup = tmp_path / "backup.db"
    with pytest.raises(BackupError, match="missing or short"):
        backup_database(database, backup)
    assert list(tmp_path.glob("backup.db*")) == []


async def test_a_backup_whose_blob_bytes_were_cut_is_refused(tmp_path: Path) -> None:
    database = tmp_path / "live" / "relay.db"
    await _store_with_blobs(database)
    backup = tmp_path / "backup.db"
    backup_database(database, backup)
    with sqlite3.connect(backup) as connection:
        connection.execute("DELETE FROM backup_blob_chunks WHERE start_offset > 0")
    with pytest.raises(BackupError, match="lack bytes"):
        check_backup(backup)
    target = tmp_path / "restored" / "relay.db"
    with pytest.raises(BackupError):
        restore_database(backup, target, now=RESTORED_AT)
    assert not target.exists()


async def test_restore_replaces_the_blobs_and_keeps_the_old_ones_in_the_safety_copy(
        tmp_path: Path) -> None:
    first, second = tmp_path / "first" / "relay.db", tmp_path / "second" / "relay.db"
    first_blobs = await _store_with_blobs(first)
    second_blobs = await _store_with_blobs(second)
    backup = tmp_path / "backup.db"
    backup_database(first, backup)
    safety = restore_database(backup, second, now=RESTORED_AT)
    assert safety is not None
    await _assert_holds(second, first_blobs)
    assert not (second.parent / "blobs.restoring").exists()
    assert not (second.parent / "blobs.replaced").exists()
    undo = tmp_path / "undo" / "relay.db"
    restore_database(safety, undo, now=RESTORED_AT)
    await _assert_holds(undo, second_blobs)


async def test_the_operator_commands_round_trip_a_blob(tmp_path: Path) -> None:
    live, restored = tmp_path / "live", tmp_path / "restored"
    blobs = await _store_with_blobs(live / "relay.db")
    backup = tmp_path / "backup.db"
    for command in (["backup", "--to", str(backup), "--data-dir", str(live)],
                    ["restore", "--from", str(backup), "--data-dir", str(restored)]):
        with trio.fail_after(60):
            done = await trio.run_process([str(BIN / "cryptopass-relay"), *command],
                                          capture_stdout=True, capture_stderr=True,
                                          check=False)
        assert done.returncode == 0, done.stderr.decode()
    await _assert_holds(restored / "relay.db", blobs)


async def test_a_restore_over_a_store_that_lost_a_blob_file_still_restores(
        tmp_path: Path) -> None:
    good, damaged = tmp_path / "good" / "relay.db", tmp_path / "damaged" / "relay.db"
    blobs = await _store_with_blobs(good)
    backup = tmp_path / "backup.db"
    backup_database(good, backup)
    lost = await _store_with_blobs(damaged)
    lost_id = next(blob_id for blob_id, data in lost.items() if data)
    (damaged.parent / "blobs" / blob_file_name(lost_id)).unlink()
    safety = restore_database(backup, damaged, now=RESTORED_AT)
    await _assert_holds(damaged, blobs)
    # The copy of the replaced store keeps what it could: every blob but the lost one.
    assert safety is not None
    undo = tmp_path / "undo" / "relay.db"
    restore_database(safety, undo, now=RESTORED_AT)
    del lost[lost_id]
    await _assert_holds(undo, lost)
