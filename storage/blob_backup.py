"""The embedded store's blobs in its backups: their bytes travel inside the backup file.

A backup stays ONE SQLite file: beside the copied tables it holds ``backup_blob_chunks``, each
blob's bytes up to the ``received`` of the copied ``blobs`` row, in pieces of at most
``BACKUP_PIECE_BYTES``. The copy of the tables is one snapshot; a blob's bytes below a
committed ``received`` never change afterwards (appends write past it, and a resume cuts only
past it), so reading the files after the snapshot gives exactly the snapshot's bytes. A blob
deleted between the snapshot and the read of its file is left out of the backup, row and all,
as if the backup had begun a moment later.

A restore writes the bytes back as files (0600, in a 0700 directory), then the table is dropped
from the restored store.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from storage.blob_files import BLOB_FILE_MODE, blob_file_name, fsync_directory, prepare_blob_dir

__all__ = [
    "BACKUP_PIECE_BYTES",
    "BlobBackupError",
    "check_blob_bytes",
    "copy_blobs_into_backup",
    "drop_blob_bytes",
    "replace_blob_dir",
    "write_blob_files",
]

BACKUP_PIECE_BYTES = 1024 * 1024
"""Bytes per row of ``backup_blob_chunks`` (1 MiB): what a backup or restore holds in memory."""

_CHUNK_TABLE = "backup_blob_chunks"
_CREATE_CHUNKS = f"""
    CREATE TABLE {_CHUNK_TABLE} (
        blob_id BLOB NOT NULL,
        start_offset INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (blob_id, start_offset)
    )
"""


class BlobBackupError(Exception):
    """A blob's bytes could not be backed up or restored."""


def _has_table(connection: sqlite3.Connection, name: str) -> bool:
    return connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                              (name,)).fetchone() is not None


def _copy_file(target: sqlite3.Connection, path: Path, blob_id: bytes, received: int) -> bool:
    """Copy the file's first ``received`` bytes into the backup; False if it is gone or
    shorter (its blob was deleted since the snapshot)."""
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return False
    with file:
        offset = 0
        while offset < received:
            piece = file.read(min(BACKUP_PIECE_BYTES, received - offset))
            if not piece:
                return False
            target.execute(f"INSERT INTO {_CHUNK_TABLE} VALUES (?, ?, ?)",  # noqa: S608
                           (blob_id, offset, piece))
            offset += len(piece)
    return True


def copy_blobs_into_backup(target: sqlite3.Connection, source: sqlite3.Connection,
                           blob_dir: Path, *, leave_out_lost: bool = False) -> int:
    """Add to ``target`` (the backup, just copied from ``source``) the bytes of its blobs.

    Args:
        leave_out_lost: leave out (rather than fail on) a blob still in ``source`` whose file
            is missing or short: for the copy a restore keeps of a store it replaces, which
            may be damaged (the reason for the restore).

    Returns:
        How many blobs the backup holds.

    Raises:
        BlobBackupError: a blob still in ``source`` has a missing or short file.
    """
    if not _has_table(target, "blobs"):
        return 0  # a store from before blobs
    target.execute(_CREATE_CHUNKS)
    rows = target.execute(
        "SELECT blob_id, received FROM blobs WHERE received > 0").fetchall()
    for blob_id, received in rows:
        path = blob_dir / blob_file_name(bytes(blob_id))
        if _copy_file(target, path, bytes(blob_id), int(received)):
            continue
        if not leave_out_lost and source.execute(
                "SELECT 1 FROM blobs WHERE blob_id = ?", (blob_id,)).fetchone():
            raise BlobBackupError(f"the file of a blob is missing or short: {path}")
        target.execute(f"DELETE FROM {_CHUNK_TABLE} WHERE blob_id = ?",  # noqa: S608
                       (blob_id,))
        target.execute("DELETE FROM blobs WHERE blob_id = ?", (blob_id,))
    target.execute("DELETE FROM blob_files_to_remove")  # nothing of the backup's is on disk
    target.commit()
    (count,) = target.execute("SELECT COUNT(*) FROM blobs").fetchone()
    return int(count)


def check_blob_bytes(connection: sqlite3.Connection) -> str | None:
    """Why the backup's blob bytes do not match its blobs, or None if they do."""
    if not _has_table(connection, "blobs"):
        return None
    if not _has_table(connection, _CHUNK_TABLE):
        held = connection.execute("SELECT COUNT(*) FROM blobs WHERE received > 0").fetchone()
        return None if held[0] == 0 else "it holds blobs without their bytes"
    (short,) = connection.execute(
        f"SELECT COUNT(*) FROM blobs AS b WHERE b.received != (SELECT COALESCE(SUM("  # noqa: S608
        f"length(c.data)), 0) FROM {_CHUNK_TABLE} AS c WHERE c.blob_id = b.blob_id)"
    ).fetchone()
    return None if short == 0 else f"{short} blobs lack bytes"


def write_blob_files(backup: Path, directory: Path) -> None:
    """Write the blobs' bytes of ``backup`` as files in ``directory`` (created empty, 0700),
    each 0600 and fsync'd, then the directory."""
    if directory.exists():
        shutil.rmtree(directory)
    prepare_blob_dir(directory)
    connection = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    try:
        if not _has_table(connection, _CHUNK_TABLE):
            return
        blob_ids = [bytes(row[0]) for row in connection.execute(
            f"SELECT DISTINCT blob_id FROM {_CHUNK_TABLE}")]  # noqa: S608
        for blob_id in blob_ids:
            descriptor = os.open(directory / blob_file_name(blob_id),
                                 os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                 BLOB_FILE_MODE)
            with os.fdopen(descriptor, "wb") as file:
                for (data,) in connection.execute(
                        f"SELECT data FROM {_CHUNK_TABLE} WHERE blob_id = ?"  # noqa: S608
                        " ORDER BY start_offset", (blob_id,)):
                    file.write(data)
                file.flush()
                os.fsync(file.fileno())
    finally:
        connection.close()
    fsync_directory(directory)


def drop_blob_bytes(database: Path) -> None:
    """Drop the backup's bytes from a restored store (they are files now) and give back
    their space."""
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute(f"DROP TABLE IF EXISTS {_CHUNK_TABLE}")
        connection.execute("VACUUM")
    finally:
        connection.close()


def replace_blob_dir(staged: Path, directory: Path) -> None:
    """Put ``staged`` in place of ``directory`` (whose files go)."""
    retired = directory.with_name(directory.name + ".replaced")
    if retired.exists():
        shutil.rmtree(retired)
    if directory.exists():
        directory.rename(retired)
    staged.rename(directory)
    fsync_directory(directory.parent)
    if retired.exists():
        shutil.rmtree(retired)

