"""The threads that own SQLite connections: one group-commit writer, a pool of readers.

SQLite allows one writer at a time per file, and every COMMIT in FULL mode costs
an fsync. So a single thread owns the only write connection, and takes every
operation submitted since its last commit into ONE transaction: concurrent sends
share one fsync (group commit). Each operation runs inside its own SAVEPOINT, so
an operation that raises undoes only its own changes.

Reads run on a small pool of separate connections; WAL lets them proceed while
the writer commits.
"""

from __future__ import annotations

import collections
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import trio

__all__ = ["GroupCommitWriter", "ReaderPool", "WriteOperation"]

T = TypeVar("T")


class WriteOperation(Generic[T]):
    """A unit of work submitted to the writer; ``wait()`` returns after its commit.

    Cancelling ``wait()`` does not withdraw the operation: once submitted it is
    committed (or fails) with its batch.
    """

    __slots__ = ("_done", "_error", "_result", "work")

    def __init__(self, work: Callable[[sqlite3.Connection], T]) -> None:
        self.work = work
        self._done = trio.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    def settle(self, result: T | None, error: BaseException | None) -> None:
        """Record the outcome and wake the waiter. Call only from the trio thread."""
        self._result = result
        self._error = error
        self._done.set()

    async def wait(self) -> T:
        """Wait for the batch holding this operation to commit.

        Returns:
            What the operation's work function returned.

        Raises:
            Whatever the work function raised (its changes were rolled back), or
            the error that made the whole batch's transaction fail.
        """
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]  # set whenever _error is None


_Outcome = tuple[Any, BaseException | None]


def _settle_batch(batch: Sequence[WriteOperation[Any]], outcomes: Sequence[_Outcome]) -> None:
    for operation, (result, error) in zip(batch, outcomes, strict=True):
        operation.settle(result, error)


class GroupCommitWriter:
    """The one thread that writes, committing everything pending in one transaction.

    Operations are committed in submission order.
    """

    def __init__(self, connection: sqlite3.Connection, trio_token: trio.lowlevel.TrioToken) -> None:
        """Args:
        connection: The write connection, in autocommit mode; owned from now on.
        trio_token: The trio run to hand results back to.
        """
        self._connection = connection
        self._trio_token = trio_token
        self._pending: collections.deque[WriteOperation[Any]] = collections.deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._commit_count = 0
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)

    @property
    def commit_count(self) -> int:
        """Transactions committed so far (one per batch); lets tests see group commit."""
        return self._commit_count

    def start(self) -> None:
        self._thread.start()

    def submit(self, work: Callable[[sqlite3.Connection], T]) -> WriteOperation[T]:
        """Queue ``work`` to run in the writer's next transaction. Synchronous.

        Raises:
            RuntimeError: The writer is stopping (the store is closed).
        """
        operation = WriteOperation(work)
        with self._condition:
            if self._stopping:
                raise RuntimeError("the store is closed")
            self._pending.append(operation)
            self._condition.notify()
        return operation

    async def stop(self) -> None:
        """Commit what was submitted, stop the thread and close its connection."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        await trio.to_thread.run_sync(self._thread.join)

    def _run(self) -> None:
        try:
            while True:
                with self._condition:
                    while not self._pending and not self._stopping:
                        self._condition.wait()
                    if not self._pending:
                        return
                    batch = list(self._pending)
                    self._pending.clear()
                outcomes = self._commit_batch(batch)
                self._hand_back(batch, outcomes)
        finally:
            self._connection.close()

    def _commit_batch(self, batch: Sequence[WriteOperation[Any]]) -> list[_Outcome]:
        connection = self._connection
        outcomes: list[_Outcome] = []
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
        except Exception as error:
            # Nothing of this batch is durable, so every operation reports failure.
            if connection.in_transaction:
                # The original error is the one worth reporting.
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            return [(None, error)] * len(batch)
        self._commit_count += 1
        return outcomes

    def _hand_back(self, batch: Sequence[WriteOperation[Any]],
                   outcomes: Sequence[_Outcome]) -> None:
        # One hop into trio per batch, not per operation.
        # RunFinishedError: the trio run is gone, so nobody is waiting.
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(_settle_batch, batch, outcomes,
                                      trio_token=self._trio_token)


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
