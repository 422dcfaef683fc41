"""The threads that own SQLite connections: the group-commit writer's SQLite
transactions (see ``storage.group_commit``), and a pool of readers.

SQLite allows one writer at a time per file, and every COMMIT in FULL mode costs
an fsync, so one thread owns the only write connection.

Reads run on a small pool of separate connections; WAL lets them proceed while
the writer commits.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import trio

from storage.group_commit import GroupCommitWriter, Outcome, Replay, WriteOperation

__all__ = ["RELAXED_SYNCHRONOUS", "ReaderPool", "SqliteBatchRunner", "run_sqlite_batch",
           "sqlite_writer"]

T = TypeVar("T")


RELAXED_SYNCHRONOUS = "PRAGMA synchronous = NORMAL"
"""The level of a batch that need not reach the disk (``WriteOperation.durable``): in WAL
mode, NORMAL commits without an fsync and loses nothing on a process crash; the next
commit at the configured level (or a checkpoint) makes it durable too, since WAL frames
reach the disk in order."""


class SqliteBatchRunner:
    """The SQLite ``BatchRunner``: one IMMEDIATE transaction, a SAVEPOINT per operation;
    a batch of operations that need not be durable commits at ``RELAXED_SYNCHRONOUS``."""

    def __init__(self, connection: sqlite3.Connection, synchronous_pragma: str) -> None:
        """Args:
        connection: the writer's connection, in autocommit mode, at ``synchronous_pragma``.
        synchronous_pragma: the configured ``PRAGMA synchronous = ...`` statement.
        """
        self._connection = connection
        self._strict = synchronous_pragma
        # Relaxing helps only a level that syncs on every commit (FULL, EXTRA).
        level = synchronous_pragma.rsplit(maxsplit=1)[-1]
        self._relaxed = RELAXED_SYNCHRONOUS if level in {"FULL", "EXTRA"} else synchronous_pragma
        self._current = synchronous_pragma

    def __call__(self, batch: Sequence[WriteOperation[Any]]) -> list[Outcome]:
        wanted = (self._strict if any(operation.durable for operation in batch)
                  else self._relaxed)
        if wanted != self._current:
            self._connection.execute(wanted)  # outside a transaction, as SQLite requires
            self._current = wanted
        return run_sqlite_batch(self._connection, batch)


def run_sqlite_batch(connection: sqlite3.Connection,
                     batch: Sequence[WriteOperation[Any]]) -> list[Outcome]:
    """One IMMEDIATE transaction, a SAVEPOINT per operation, at the connection's level; or,
    for a batch of replayable operations, no savepoint unless one of them raises."""
    if all(operation.replayable for operation in batch):
        try:
            return _run_without_savepoints(connection, batch)
        except Replay as replay:
            if len(batch) == 1:  # rolled back: nothing else to keep
                return [(None, replay.__cause__)]
    return _run_with_savepoints(connection, batch)


def _run_without_savepoints(connection: sqlite3.Connection,
                            batch: Sequence[WriteOperation[Any]]) -> list[Outcome]:
    """Two statements fewer per operation (SAVEPOINT, RELEASE): the common case, where
    nothing raises. Raises ``Replay``, with the batch rolled back, if an operation did."""
    outcomes: list[Outcome] = []
    with _immediate_transaction(connection):
        for operation in batch:
            try:
                outcomes.append((operation.work(connection), None))
            except Exception as error:
                raise Replay from error
    return outcomes


def _run_with_savepoints(connection: sqlite3.Connection,
                         batch: Sequence[WriteOperation[Any]]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    with _immediate_transaction(connection):
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
    return outcomes


@contextlib.contextmanager
def _immediate_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back if anything raises inside or at the commit.

    IMMEDIATE takes the write lock now (waiting up to busy_timeout for another process)
    rather than failing half-way through the batch.
    """
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield
        connection.execute("COMMIT")
    except Exception:
        if connection.in_transaction:
            # The original error is the one worth reporting.
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        raise


def sqlite_writer(connection: sqlite3.Connection, trio_token: trio.lowlevel.TrioToken, *,
                  synchronous_pragma: str = "PRAGMA synchronous = FULL",
                  gather_s: float = 0.0) -> GroupCommitWriter[sqlite3.Connection]:
    """The group-commit writer owning ``connection`` (autocommit mode, at
    ``synchronous_pragma``) from now on; ``gather_s`` as ``GroupCommitWriter``'s."""
    return GroupCommitWriter(SqliteBatchRunner(connection, synchronous_pragma),
                             close=connection.close, trio_token=trio_token,
                             thread_name="sqlite-writer", gather_s=gather_s)


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
