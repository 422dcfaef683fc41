"""The embedded store's blobs: metadata in the SQLite file, bytes in files under
``DATA_DIR/blobs/`` (the directory beside the database file).

* A blob's file is named by a hash of its id (``blob_file_name``): listing the directory
  reveals no id (an id is the capability to download), and no name ever comes from a client.
  The directory is 0700 and every file 0600.
* An append writes its bytes at ``received`` and fsyncs them (and, for a new file, the
  directory) BEFORE the writer commits the new ``received``: a committed byte is always on
  disk. Bytes past ``received`` (an append that crashed or lost a race) are cut off before the
  next write. Two appends to one blob at once (in one process or across the processes of
  ``serve --workers N``) are told apart by ``flock`` on its file: the one that finds it
  taken is refused as at a wrong offset.
* Deleting blob rows (expiry, termination, erasure: any ``DELETE``, cascades included) records
  their ids in ``blob_files_to_remove`` by trigger, in the same transaction; the files are
  removed after the commit, and again at opening for what a crash left behind.

File I/O runs in worker threads, never on the trio thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from storage import blob_sql
from storage.interfaces.blobs import BLOB_ID_BYTES, MAX_BLOB_PIECE_BYTES
from storage.records import BlobInfo, BlobOffsetMismatch, BlobPastSize, NotFound
from storage.sql_dialect import SQLITE

__all__ = [
    "BLOB_DIR_MODE",
    "BLOB_DIR_NAME",
    "BLOB_FILE_MODE",
    "REMOVAL_BATCH",
    "SQLITE_BLOB_FILE_TABLES",
    "FileBlobMethods",
    "blob_dir_for",
    "blob_file_name",
    "fsync_directory",
    "prepare_blob_dir",
    "remove_blob_files",
]

T = TypeVar("T")

BLOB_DIR_NAME = "blobs"
BLOB_DIR_MODE = 0o700
BLOB_FILE_MODE = 0o600

REMOVAL_BATCH = 256
"""Files removed per step after a deletion (a terminated organisation's may be many)."""
"""Files removed per step after a deletion (a terminated organisation's may be many)."""

_FILE_NAME_CONTEXT = b"cryptopass blob file name\x00"

# The ids whose rows were deleted and whose files may still be on disk (SQLite only).
SQLITE_BLOB_FILE_TABLES = (
    "CREATE TABLE blob_files_to_remove (blob_id BLOB PRIMARY KEY)",
    """
    CREATE TRIGGER blob_deleted AFTER DELETE ON blobs BEGIN
        INSERT OR IGNORE INTO blob_files_to_remove (blob_id) VALUES (old.blob_id);
    END
    """,
)


def blob_dir_for(database: Path) -> Path:
    """The blob directory of the SQLite store in ``database``: ``blobs`` beside it."""
    return database.parent / BLOB_DIR_NAME


def blob_file_name(blob_id: bytes) -> str:
    """The file name of a blob: a hash of its id, which the name does not reveal."""
    return hashlib.sha256(_FILE_NAME_CONTEXT + blob_id).hexdigest()


def prepare_blob_dir(directory: Path) -> None:
    """Create the blob directory (and its parents) if need be, and make it its owner's only."""
    directory.mkdir(mode=BLOB_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(directory, BLOB_DIR_MODE)


def remove_blob_files(directory: Path, blob_ids: list[bytes]) -> None:
    """Unlink those blobs' files (those that exist), then make the removals durable."""
    for blob_id in blob_ids:
        (directory / blob_file_name(blob_id)).unlink(missing_ok=True)
    if blob_ids:
        fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (files created or removed) durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _open_locked(path: Path) -> int | None:
    """Open (creating, 0600) the blob's file for writing with its exclusive lock; None if
    another append holds the lock.

    Never waits for the lock: a waiting worker thread would hold one of trio's thread tokens
    that the holder may need to finish (and so release it)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         BLOB_FILE_MODE)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _write_durably(descriptor: int, directory: Path, offset: int, data: bytes) -> bool:
    """Cut the file at ``offset`` (what a crash or a lost race left past it), write ``data``
    there and fsync; fsync the directory too when the file is new (offset 0).

    Returns False, writing nothing, if the file holds fewer than ``offset`` bytes: it lost
    durable bytes (removed or cut by hand), and padding it would serve zeros as the file."""
    if os.fstat(descriptor).st_size < offset:
        return False
    os.ftruncate(descriptor, offset)
    written = 0
    while written < len(data):
        written += os.pwrite(descriptor, memoryview(data)[written:], offset + written)
    os.fsync(descriptor)
    if offset == 0:
        fsync_directory(directory)
    return True


def _read_range(path: Path, offset: int, length: int) -> bytes | None:
    """``length`` bytes at ``offset``, or None if the file is missing or shorter."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        data = os.pread(descriptor, length, offset)
        while 0 < len(data) < length:
            more = os.pread(descriptor, length - len(data), offset + len(data))
            if not more:
                break
            data += more
    finally:
        os.close(descriptor)
    return data if len(data) == length else None


def _check_piece(length: int) -> None:
    if not 0 <= length <= MAX_BLOB_PIECE_BYTES:
        raise ValueError(f"a piece of a blob is 0 to {MAX_BLOB_PIECE_BYTES} bytes")


def _has_blob_tables(connection: sqlite3.Connection) -> bool:
    return connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                              " AND name = 'blob_files_to_remove'").fetchone() is not None


def _pending_removals(connection: sqlite3.Connection) -> list[bytes]:
    rows = connection.execute("SELECT blob_id FROM blob_files_to_remove LIMIT ?",
                              (REMOVAL_BATCH,)).fetchall()
    return [bytes(row[0]) for row in rows]


def _forget_removals(connection: sqlite3.Connection, blob_ids: list[bytes]) -> None:
    connection.executemany("DELETE FROM blob_files_to_remove WHERE blob_id = ?",
                           [(blob_id,) for blob_id in blob_ids])


class FileBlobMethods:
    """``storage.interfaces.blobs.BlobStore`` for ``storage.sqlite.SqliteStore``: set
    ``_blob_dir``; reads and writes go through the store's readers and writer."""

    _blob_dir: Path

    if TYPE_CHECKING:
        async def _read(self, work: Callable[[Any], T]) -> T: ...
        async def _write(self, work: Callable[[Any], T]) -> T: ...

    async def create_blob(self, *, organisation_id: int, user_id: str, device_id: int,
                          size: int, quota_bytes: int, now_ms: int, expires_ms: int,
                          upload_deadline_ms: int | None = None) -> bytes:
        blob_id = secrets.token_bytes(BLOB_ID_BYTES)
        await self._write(lambda connection: blob_sql.create_blob(
            connection, SQLITE, blob_id=blob_id, organisation_id=organisation_id,
            user_id=user_id, device_id=device_id, size=size, quota_bytes=quota_bytes,
            now_ms=now_ms, expires_ms=expires_ms, upload_deadline_ms=upload_deadline_ms))
        return blob_id

    async def blob_info(self, blob_id: bytes, now_ms: int) -> BlobInfo | None:
        return await self._read(lambda connection: blob_sql.blob_info(
            connection, SQLITE, blob_id, now_ms))

    async def _current(self, blob_id: bytes, offset: int, length: int) -> BlobInfo:
        """The blob, if ``length`` bytes may be appended at ``offset`` now; else raise."""
        info = await self._read(lambda connection: blob_sql.blob_info(
            connection, SQLITE, blob_id, None))
        if info is None:
            raise NotFound("no such blob")
        if offset != info.received:
            raise BlobOffsetMismatch(info.received)
        if offset + length > info.size:
            raise BlobPastSize(size=info.size)
        return info

    async def append_blob(self, blob_id: bytes, offset: int, data: bytes) -> int:
        _check_piece(len(data))
        info = await self._current(blob_id, offset, len(data))  # refuse before any file I/O
        if not data:
            return offset
        path = self._blob_dir / blob_file_name(blob_id)
        descriptor = await trio.to_thread.run_sync(_open_locked, path)
        if descriptor is None:
            # Another append to this blob is under way: at most one of the two can start
            # where the durable bytes end, and the other asks again (BLOB_STATUS) anyway.
            raise BlobOffsetMismatch(info.received)
        try:
            # Again under the lock: another append (of this process or another) may have
            # committed meanwhile.
            await self._current(blob_id, offset, len(data))
            if not await trio.to_thread.run_sync(_write_durably, descriptor, self._blob_dir,
                                                 offset, data):
                raise NotFound("no such blob")  # its bytes are lost: it is gone
            return await self._write(lambda connection: blob_sql.set_received(
                connection, SQLITE, blob_id, offset=offset, received=offset + len(data)))
        except NotFound:
            # Deleted meanwhile (its files' removal may have run before this open created the
            # file again), or its file lost bytes: nothing of it must stay behind.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(remove_blob_files, self._blob_dir, [blob_id])
            raise
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(os.close, descriptor)  # releases the lock

    async def read_blob(self, blob_id: bytes, offset: int, length: int) -> bytes:
        _check_piece(length)
        if offset < 0:
            raise ValueError("a blob offset is not negative")
        info = await self._read(lambda connection: blob_sql.blob_info(
            connection, SQLITE, blob_id, None))
        if info is None:
            raise NotFound("no such blob")
        end = min(offset + length, info.received)
        if end <= offset:
            return b""
        data = await trio.to_thread.run_sync(
            _read_range, self._blob_dir / blob_file_name(blob_id), offset, end - offset)
        if data is None:  # deleted since the row was read
            raise NotFound("no such blob")
        return data

    async def delete_expired_blobs(self, now_ms: int, limit: int) -> int:
        deleted = await self._write(lambda connection: blob_sql.delete_expired_blobs(
            connection, SQLITE, now_ms=now_ms, limit=limit))
        await self.remove_deleted_blob_files()
        return deleted

    async def delete_organisation_blobs(self, organisation_id: int) -> int:
        deleted = await self._write(lambda connection: blob_sql.delete_organisation_blobs(
            connection, SQLITE, organisation_id))
        await self.remove_deleted_blob_files()
        return deleted

    async def organisation_blob_bytes(self, organisation_id: int, now_ms: int) -> int:
        return await self._read(lambda connection: blob_sql.organisation_blob_bytes(
            connection, SQLITE, organisation_id, now_ms))

    async def remove_deleted_blob_files(self) -> None:
        """Remove the files of every blob whose row was deleted (then forget those ids)."""
        if not await self._read(_has_blob_tables):  # a schema from before blobs (tests make one)
            return
        while True:
            blob_ids = await self._read(_pending_removals)
            if not blob_ids:
                return
            await trio.to_thread.run_sync(remove_blob_files, self._blob_dir, blob_ids)
            await self._write(functools.partial(_forget_removals, blob_ids=blob_ids))
            if len(blob_ids) < REMOVAL_BATCH:
                return
