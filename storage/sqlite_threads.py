"""The threads that own SQLite connections: the group-commit writer's SQLite
transactions (see ``storage.group_commit``), and a pool of readers.

SQLite allows one writer at a time per file, and every COMMIT in FULL mode costs
an fsync, so one thread owns the only write connection.

Reads run on a small pool of separate connections; WAL lets them proceed while
the writer commits.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio

from storage.group_commit import GroupCommitWriter, Outcome, WriteOperation

__all__ = ["ReaderPool", "run_sqlite_batch", "sqlite_writer"]

T = TypeVar("T")


def run_sqlite_batch(connection: sqlite3.Connection,
                     batch: Sequence[WriteOperation[Any]]) -> list[Outcome]:
    """The SQLite ``BatchRunner``: one IMMEDIATE transaction, a SAVEPOINT per operation."""
    outcomes: list[Outcome] = []
    try:
        # IMMEDIATE takes the write lock now (waiting up to busy_timeout for
        # another process) rather than failing half-way through the batch.
        connection.execute("BEGIN IMMEDIATE")
        for operation in batch:
            connection.execute("SAVEPOINT operation")
            try:
                result = operation.work(connection)
            except Exception as error:
                if not connection.in_transaction:
                    # SQLite rolled the whole transaction back (disk full,
                    # I/O error): earlier operations are lost too.
                    raise
                connection.execute("ROLLBACK TO operation")
                connection.execute("RELEASE operation")
                outcomes.append((None, error))
            else:
                connection.execute("RELEASE operation")
                outcomes.append((result, None))
        connection.execute("COMMIT")
    except Exception:
        if connection.in_transaction:
            # The original error is the one worth reporting.
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        raise
    return outcomes


def sqlite_writer(connection: sqlite3.Connection,
                  trio_token: trio.lowlevel.TrioToken) -> GroupCommitWriter[sqlite3.Connection]:
    """The group-commit writer owning ``connection`` (autocommit mode) from now on."""
    return GroupCommitWriter(functools.partial(run_sqlite_batch, connection),
                             close=connection.close, trio_token=trio_token,
                             thread_name="sqlite-writer")


class ReaderPool:
    """At most ``size`` reads at once, each on its own connection and snapshot."""

    def __init__(self, open_connection: Callable[[], sqlite3.Connection], *, size: int) -> None:
        self._open_connection = open_connection
        self._limiter = trio.CapacityLimiter(size)
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in a worker thread inside one read transaction.

        Raises:
            RuntimeError: The pool is closed.
        """
        if self._closed:
            raise RuntimeError("the store is closed")
        return await trio.to_thread.run_sync(self._run_in_thread, work, limiter=self._limiter)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _run_in_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._open_connection()
        try:
            # One snapshot for every statement of the read.
            connection.execute("BEGIN")
            try:
                return work(connection)
            finally:
                connection.execute("ROLLBACK")
        finally:
            with self._lock:
                keep = not self._closed
                if keep:
                    self._idle.append(connection)
            if not keep:
                connection.close()
