"""Online backup and restore of the SQLite store (``sqlite3``'s backup API).

A backup copies the whole database in one step inside one read transaction:
in WAL mode that neither blocks the relay's writer nor sees half a commit, so
the copy holds exactly the transactions committed before it began (a backup
copied in several steps would restart at every commit under load and might
never finish). The copy is written beside its destination, checked, made
durable and only then renamed into place.

The blobs' bytes (files under ``blobs/`` beside the database) travel inside the same backup
file, up to each blob's committed ``received`` (``storage.blob_backup``): a backup is still one
file, and a restore writes them back as files.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import sqlite3
from pathlib import Path

from storage.blob_backup import (
    BlobBackupError,
    check_blob_bytes,
    copy_blobs_into_backup,
    drop_blob_bytes,
    replace_blob_dir,
    write_blob_files,
)
from storage.blob_files import blob_dir_for

__all__ = ["BackupError", "backup_database", "check_backup", "restore_database"]

REQUIRED_TABLES = frozenset({"schema_meta", "organisations", "users", "devices", "envelopes"})
"""Tables every relay store has: a file lacking one is not a relay backup."""

LOCK_WAIT_SECONDS = 30.0
"""How long a backup or restore waits for the relay's writer to let go of a lock."""


class BackupError(Exception):
    """The backup or restore could not be done; nothing was changed."""


def backup_database(database: Path, destination: Path, *, blob_dir: Path | None = None,
                    leave_out_lost_blobs: bool = False) -> int:
    """Copy ``database``, with its blobs' bytes, to ``destination`` consistently, even while a
    relay writes it.

    ``blob_dir`` is the store's blob directory (by default ``blobs`` beside ``database``).
    A blob whose file lost bytes fails the backup, unless ``leave_out_lost_blobs`` (the copy
    of a store about to be replaced) leaves it out.

    Returns:
        The size of the backup in bytes.

    Raises:
        BackupError: the database is missing or unreadable, or the destination unwritable.
    """
    if not database.is_file():
        raise BackupError(f"no store at {database}")
    blobs = blob_dir_for(database) if blob_dir is None else blob_dir
    partial = destination.with_name(destination.name + ".partial")
    try:
        source = sqlite3.connect(f"file:{database}?mode=ro", uri=True,
                                 timeout=LOCK_WAIT_SECONDS)
        try:
            partial.unlink(missing_ok=True)
            target = sqlite3.connect(partial)
            try:
                source.backup(target)  # pages=-1: everything, in one consistent step
                # A single file, with no -wal beside it, is what an operator copies away.
                target.execute("PRAGMA journal_mode = DELETE")
                copy_blobs_into_backup(target, source, blobs,
                                       leave_out_lost=leave_out_lost_blobs)
            finally:
                target.close()
        finally:
            source.close()
        check_backup(partial)
        _fsync(partial)
        partial.replace(destination)
        _fsync(destination.parent)
    except sqlite3.Error as error:
        partial.unlink(missing_ok=True)
        raise BackupError(f"backup of {database} failed: {error}") from None
    except BlobBackupError as error:
        partial.unlink(missing_ok=True)
        raise BackupError(f"backup of {database} failed: {error}") from None
    except (OSError, BackupError):
        partial.unlink(missing_ok=True)
        raise
    return destination.stat().st_size


def check_backup(path: Path) -> None:
    """Raise BackupError unless ``path`` is an intact relay store."""
    if not path.is_file():
        raise BackupError(f"no backup file at {path}")
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (verdict,) = connection.execute("PRAGMA quick_check").fetchone()
            tables = {row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            blob_damage = check_blob_bytes(connection) if verdict == "ok" else None
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise BackupError(f"{path} is not a readable SQLite database: {error}") from None
    if verdict != "ok":
        raise BackupError(f"{path} is damaged: {verdict}")
    missing = REQUIRED_TABLES - tables
    if missing:
        raise BackupError(f"{path} is not a relay store (missing {', '.join(sorted(missing))})")
    if blob_damage is not None:
        raise BackupError(f"{path} is damaged: {blob_damage}")


def restore_database(backup: Path, database: Path, *, now: datetime.datetime,
                     blob_dir: Path | None = None) -> Path | None:
    """Replace ``database`` and its blobs with the contents of ``backup``. The relay must be
    stopped.

    The current database, if any, is first backed up beside it, blobs included
    (``relay.db.replaced-<UTC time>``) so that a mistaken restore can be undone. The blobs'
    files are written to ``blob_dir`` (by default ``blobs`` beside ``database``), replacing
    those there.

    Returns:
        The path of that safety copy, or None if there was no database.

    Raises:
        BackupError: the backup is not an intact relay store; nothing was changed.
    """
    check_backup(backup)
    blobs = blob_dir_for(database) if blob_dir is None else blob_dir
    safety: Path | None = None
    if database.exists():
        safety = database.with_name(
            f"{database.name}.replaced-{now.strftime('%Y%m%dT%H%M%SZ')}")
        backup_database(database, safety, blob_dir=blobs, leave_out_lost_blobs=True)
    database.parent.mkdir(parents=True, exist_ok=True)
    # The files first, beside the directory they will replace: a failure leaves the store as
    # it was.
    staged = blobs.with_name(blobs.name + ".restoring")
    try:
        write_blob_files(backup, staged)
    except (OSError, sqlite3.Error) as error:
        shutil.rmtree(staged, ignore_errors=True)
        raise BackupError(f"restore of the blobs into {staged} failed: {error}") from None
    try:
        source = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
        try:
            target = sqlite3.connect(database, timeout=LOCK_WAIT_SECONDS)
            try:
                # Through SQLite, not a file copy: the database's -wal and -shm
                # files (if a relay was killed) stay consistent with it.
                source.backup(target)
            finally:
                target.close()
        finally:
            source.close()
        drop_blob_bytes(database)
    except sqlite3.Error as error:
        shutil.rmtree(staged, ignore_errors=True)
        raise BackupError(f"restore into {database} failed: {error}") from None
    replace_blob_dir(staged, blobs)
    return safety


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    descriptor = os.open(path, flags)
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
            os.fsync(descriptor)
    finally:
        os.close(descriptor)
