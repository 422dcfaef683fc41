"""The group-commit writer shared by every backend.

One thread owns the write connection and takes every operation submitted since
its last commit into ONE transaction: concurrent sends share one commit (one
fsync). Each operation runs inside its own savepoint, so an operation that
raises undoes only its own changes. Results go back to trio in one hop per
batch. What a transaction and a savepoint are is the backend's business: it
passes a ``BatchRunner``.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import trio

__all__ = ["BatchRunner", "GroupCommitWriter", "Outcome", "WriteOperation"]

T = TypeVar("T")
C = TypeVar("C")

Outcome = tuple[Any, BaseException | None]
"""(result, None) for an operation that succeeded, (None, error) for one that raised."""

BatchRunner = Callable[[Sequence["WriteOperation[Any]"]], list[Outcome]]
"""Runs a batch in one transaction and returns one outcome per operation, in order;
raises if the transaction itself failed (then nothing of the batch is durable)."""


class WriteOperation(Generic[T]):
    """A unit of work submitted to the writer; ``wait()`` returns after its commit.

    Cancelling ``wait()`` does not withdraw the operation: once submitted it is
    committed (or fails) with its batch.
    """

    __slots__ = ("_done", "_error", "_result", "locks", "work")

    def __init__(self, work: Callable[[Any], T], locks: tuple[str, ...] = ()) -> None:
        self.work = work
        self.locks = locks
        """Users whose device rows ``work`` locks: a backend shared by several writers
        (PostgreSQL) locks every batch's rows up front, in one global order."""
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
        return self.result()

    @property
    def done(self) -> bool:
        """Whether the batch holding this operation has committed (or failed)."""
        return self._done.is_set()

    def result(self) -> T:
        """What ``wait()`` returns or raises, for an operation that is ``done``.

        Raises:
            RuntimeError: the operation is not done yet.
        """
        if not self._done.is_set():
            raise RuntimeError("the operation has not been committed yet")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]  # set whenever _error is None


def _settle_batch(batch: Sequence[WriteOperation[Any]], outcomes: Sequence[Outcome]) -> None:
    for operation, (result, error) in zip(batch, outcomes, strict=True):
        operation.settle(result, error)


class GroupCommitWriter(Generic[C]):
    """The one thread that writes. Operations are committed in submission order."""

    def __init__(self, run_batch: BatchRunner, *, close: Callable[[], None],
                 trio_token: trio.lowlevel.TrioToken, thread_name: str) -> None:
        """Args:
        run_batch: commits one batch (see ``BatchRunner``).
        close: releases the write connection(s) when the thread ends.
        trio_token: the trio run to hand results back to.
        thread_name: for debuggers and ``ps``.
        """
        self._run_batch = run_batch
        self._close = close
        self._trio_token = trio_token
        self._pending: collections.deque[WriteOperation[Any]] = collections.deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._commit_count = 0
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    @property
    def commit_count(self) -> int:
        """Transactions committed so far (one per batch); lets tests see group commit."""
        return self._commit_count

    def start(self) -> None:
        self._thread.start()

    def submit(self, work: Callable[[C], T], *, locks: tuple[str, ...] = ()) -> WriteOperation[T]:
        """Queue ``work`` to run in the writer's next transaction. Synchronous.

        ``locks`` names the users whose device rows ``work`` will lock (see
        ``WriteOperation.locks``).

        Raises:
            RuntimeError: The writer is stopping (the store is closed).
        """
        operation = WriteOperation(work, locks)
        with self._condition:
            if self._stopping:
                raise RuntimeError("the store is closed")
            self._pending.append(operation)
            self._condition.notify()
        return operation

    async def stop(self) -> None:
        """Commit what was submitted, stop the thread and release its connection."""
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
                try:
                    outcomes = self._run_batch(batch)
                except Exception as error:
                    # Nothing of this batch is durable: every operation reports failure.
                    outcomes = [(None, error)] * len(batch)
                else:
                    self._commit_count += 1
                self._hand_back(batch, outcomes)
        finally:
            self._close()

    def _hand_back(self, batch: Sequence[WriteOperation[Any]],
                   outcomes: Sequence[Outcome]) -> None:
        # One hop into trio per batch, not per operation.
        # RunFinishedError: the trio run is gone, so nobody is waiting.
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(_settle_batch, batch, outcomes,
                                      trio_token=self._trio_token)
