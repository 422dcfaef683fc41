"""The embedded store: one SQLite file in WAL mode, one writer thread, group commit.

Every write goes through ``GroupCommitWriter`` (see ``storage.sqlite_threads``):
operations submitted while a transaction is being committed are committed
together in the next one, each under its own SAVEPOINT. Reads run on a small
pool of reader connections. The file may be opened by another process (the
operator CLI) at the same time; ``busy_timeout`` makes each side wait its turn.
"""

from __future__ import annotations

import pathlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import trio

from storage.account_store import AccountStoreMethods
from storage.admin_store import AdminStoreMethods
from storage.blob_files import FileBlobMethods, blob_dir_for, prepare_blob_dir
from storage.blob_sql import BLOB_SWEEP_LIMIT
from storage.core_store import CoreStoreMethods
from storage.group_commit import GroupCommitWriter
from storage.push_store import PushStoreMethods
from storage.rate_limits import MemoryBuckets
from storage.records import User
from storage.sealed_store import SealedStoreMethods
from storage.sql_dialect import SQLITE
from storage.sqlite_schema import SchemaVersionTooNew, apply_migrations
from storage.sqlite_threads import ReaderPool, sqlite_writer

__all__ = ["BUSY_TIMEOUT_MS", "READER_POOL_SIZE", "SchemaVersionTooNew", "SqliteStore",
           "open_sqlite_store"]

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
"""How long a connection waits for another process's lock before failing (ms).

The operator CLI holds the write lock only for short transactions."""

READER_POOL_SIZE = 4
"""Concurrent reads: enough to overlap the writer; more only adds threads and memory."""

# A PRAGMA cannot take a bound parameter, so the allowed statements are spelled out.
_SYNCHRONOUS_PRAGMAS = {
    "OFF": "PRAGMA synchronous = OFF",
    "NORMAL": "PRAGMA synchronous = NORMAL",
    "FULL": "PRAGMA synchronous = FULL",
    "EXTRA": "PRAGMA synchronous = EXTRA",
}


def _connect(path: pathlib.Path, synchronous_pragma: str) -> sqlite3.Connection:
    # isolation_level=None: the module must not open transactions behind our
    # back; BEGIN/COMMIT/SAVEPOINT are issued explicitly. check_same_thread is
    # off because trio's worker threads take turns with a pooled connection.
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute(synchronous_pragma)
    except BaseException:
        connection.close()
        raise
    return connection


def _open_writer_connection(path: pathlib.Path, synchronous_pragma: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = _connect(path, synchronous_pragma)
    try:
        (journal_mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(journal_mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch {path} to WAL mode ({journal_mode})")
        apply_migrations(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def _truncate_wal(path: pathlib.Path) -> None:
    """Copy the WAL into the database and cut the WAL file to zero bytes (waiting for readers
    and the writer as any connection would, up to ``BUSY_TIMEOUT_MS``)."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        connection.close()


class SqliteStore(CoreStoreMethods, AdminStoreMethods, AccountStoreMethods,
                  PushStoreMethods, FileBlobMethods, SealedStoreMethods):
    """``storage.base.Store`` on one SQLite file. Create with ``open_sqlite_store``.

    The SQL is shared with PostgreSQL (``storage.core_store`` and the modules it names); the
    blobs' bytes are files in ``blob_dir`` (``storage.blob_files``).
    """

    _dialect = SQLITE

    def __init__(self, *, path: pathlib.Path, writer: GroupCommitWriter[sqlite3.Connection],
                 readers: ReaderPool, blob_dir: pathlib.Path) -> None:
        self.path = path
        self.blob_dir = self._blob_dir = blob_dir
        self._writer = writer
        self._readers = readers
        self._closed = False
        self._buckets = MemoryBuckets()  # one process per embedded store (see rate_limits)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._readers.run(work)

    async def _close_readers(self) -> None:
        self._readers.close()

    async def take_tokens(self, *, key: str, cost: int, capacity: int, period_ms: int,
                          now: int) -> bool:
        return self._buckets.take(key=key, cost=cost, capacity=capacity,
                                  period_ms=period_ms, now=now)

    def cluster_wakeups(self) -> None:
        """None: one relay process serves the file, so there is no other node to wake."""
        return None

    async def expire(self, *, now: int, limit: int) -> int:
        """As every store does, then delete up to ``BLOB_SWEEP_LIMIT`` expired blobs."""
        expired = await super().expire(now=now, limit=limit)
        await self.delete_expired_blobs(now, min(limit, BLOB_SWEEP_LIMIT))
        return expired

    # Deleting users deletes their blobs' rows (ON DELETE CASCADE); their files go next.

    async def delete_user(self, *, organisation: str, phone: str) -> User:
        deleted = await super().delete_user(organisation=organisation, phone=phone)
        await self.remove_deleted_blob_files()
        return deleted

    async def erase_user(self, *, organisation: str, phone: str, pseudonym: str) -> User:
        erased = await super().erase_user(organisation=organisation, phone=phone,
                                          pseudonym=pseudonym)
        await self.remove_deleted_blob_files()
        return erased

    async def terminate_organisation(self, name: str) -> list[User]:
        removed = await super().terminate_organisation(name)
        await self.remove_deleted_blob_files()
        return removed

    async def forget_legacy_secret(self, name: str) -> None:
        """As every store does, then empty the WAL file: its older frames may still hold the
        page with the secret, and would otherwise stay in the file until written over."""
        await super().forget_legacy_secret(name)
        await trio.to_thread.run_sync(_truncate_wal, self.path)

    async def read_for_tests(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Test hook: run ``work`` on a reader connection, outside every ``Store`` contract
        (to inspect connection settings such as PRAGMAs)."""
        return await self._read(work)


@asynccontextmanager
async def open_sqlite_store(path: pathlib.Path, *, synchronous: str = "FULL",
                            blob_dir: pathlib.Path | None = None,
                            commit_gather_s: float = 0.0) -> AsyncIterator[SqliteStore]:
    """Open (creating if needed) the store in ``path``; close it on exit.

    Must run inside trio: results are handed back to this trio run.

    Args:
        path: The database file; its parent directories are created.
        synchronous: SQLite ``synchronous`` level. FULL (default) makes an
            accepted envelope survive power loss; NORMAL only a process crash.
        blob_dir: Where the blobs' files live (created 0700 if need be); by default
            ``blobs`` beside ``path`` (``storage.blob_files.blob_dir_for``).
        commit_gather_s: how long a busy writer gathers writes into one commit
            (``storage.group_commit``; 0, the default for tools and tests: never).

    Raises:
        ValueError: Unknown ``synchronous`` level.
        SchemaVersionTooNew: The file was written by a newer release.
        sqlite3.Error: The file cannot be opened or put in WAL mode.
    """
    synchronous_pragma = _SYNCHRONOUS_PRAGMAS.get(synchronous.upper())
    if synchronous_pragma is None:
        raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS_PRAGMAS)}")
    trio_token = trio.lowlevel.current_trio_token()
    write_connection = await trio.to_thread.run_sync(
        _open_writer_connection, path, synchronous_pragma)
    writer = sqlite_writer(write_connection, trio_token, synchronous_pragma=synchronous_pragma,
                           gather_s=commit_gather_s)
    readers = ReaderPool(lambda: _connect(path, synchronous_pragma), size=READER_POOL_SIZE)
    blobs = blob_dir_for(path) if blob_dir is None else blob_dir
    store = SqliteStore(path=path, writer=writer, readers=readers, blob_dir=blobs)
    writer.start()
    try:
        await trio.to_thread.run_sync(prepare_blob_dir, blobs)
        await store.remove_deleted_blob_files()  # what a crash left between commit and unlink
        yield store
    finally:
        await store.close()
