"""The group-commit writer shared by every backend.

One thread owns the write connection and takes every operation submitted since
its last commit into ONE transaction: concurrent sends share one commit (one
fsync). Each operation runs inside its own savepoint, so an operation that
raises undoes only its own changes. Results go back to trio in one hop per
batch, queued without waiting for trio to take them, so the next batch starts at
once. What a transaction and a savepoint are is the backend's business: it
passes a ``BatchRunner``.

Paced traffic (many devices, each sending now and then) hands the writer one or two
operations at a time, and a commit's fixed cost (an fsync is about 80 µs of CPU on
the embedded store, most of it in the kernel) then dominates each message. So a
busy writer gathers: once it has committed within the last ``BUSY_WINDOW_S``, it
waits up to ``gather_s`` after taking its first operation for others to join, and
commits at once when ``GATHER_MAX`` are waiting. An idle writer commits at once, so
a lone message keeps its latency (docs/BENCHMARKS.md, "Paced traffic").

An operation that need not survive a power failure (``durable=False``: an
acknowledgement, whose loss only means the envelope is delivered again and
deduplicated by its id) lets the backend commit a batch made only of such operations
without waiting for the disk; the next durable commit makes it durable too.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import trio

__all__ = ["BUSY_WINDOW_S", "GATHER_MAX", "BatchRunner", "GroupCommitWriter", "Outcome",
           "Replay", "WriteOperation"]

T = TypeVar("T")
C = TypeVar("C")

Outcome = tuple[Any, BaseException | None]
"""(result, None) for an operation that succeeded, (None, error) for one that raised."""

BUSY_WINDOW_S = 0.010
"""A writer that committed less than this long ago is busy, and gathers (module docstring)."""

GATHER_MAX = 64
"""Operations waiting that end a gather at once: a batch this big shares its commit well."""

BatchRunner = Callable[[Sequence["WriteOperation[Any]"]], list[Outcome]]
"""Runs a batch in one transaction and returns one outcome per operation, in order;
raises if the transaction itself failed (then nothing of the batch is durable)."""


class Replay(Exception):
    """An operation of a batch run without savepoints raised (``WriteOperation.replayable``):
    the runner rolls the transaction back and runs the batch again, a savepoint each."""


class WriteOperation(Generic[T]):
    """A unit of work submitted to the writer; ``wait()`` returns after its commit.

    Cancelling ``wait()`` does not withdraw the operation: once submitted it is
    committed (or fails) with its batch.
    """

    __slots__ = ("_done", "_error", "_result", "durable", "locks", "replayable", "work")

    def __init__(self, work: Callable[[Any], T], locks: tuple[str, ...] = (),
                 durable: bool = True, replayable: bool = False) -> None:
        self.work = work
        self.locks = locks
        """Users whose device rows ``work`` locks: a backend shared by several writers
        (PostgreSQL) locks every batch's rows up front, in one global order."""
        self.durable = durable
        """Whether the commit must reach the disk before ``wait()`` returns (see the module
        docstring); a batch is durable if any of its operations is."""
        self.replayable = replayable
        """Whether ``work`` acts only through the connection, so that it may run again after
        its transaction rolled back: a batch of such operations runs without a savepoint
        each, and only if one of them raises is it rolled back and run again with them."""
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
                 trio_token: trio.lowlevel.TrioToken, thread_name: str,
                 gather_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        """Args:
        run_batch: commits one batch (see ``BatchRunner``).
        close: releases the write connection(s) when the thread ends.
        trio_token: the trio run to hand results back to.
        thread_name: for debuggers and ``ps``.
        gather_s: how long a busy writer waits for a batch to grow (0: never waits).
        clock: monotonic seconds (tests pass their own).
        """
        self._run_batch = run_batch
        self._close = close
        self._trio_token = trio_token
        self._pending: collections.deque[WriteOperation[Any]] = collections.deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._commit_count = 0
        self._gather_s = gather_s
        self._clock = clock
        self._last_commit_at = -float("inf")
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    @property
    def commit_count(self) -> int:
        """Transactions committed so far (one per batch); lets tests see group commit."""
        return self._commit_count

    def start(self) -> None:
        self._thread.start()

    def submit(self, work: Callable[[C], T], *, locks: tuple[str, ...] = (),
               durable: bool = True, replayable: bool = False) -> WriteOperation[T]:
        """Queue ``work`` to run in the writer's next transaction. Synchronous.

        ``locks`` names the users whose device rows ``work`` will lock (see
        ``WriteOperation.locks``); ``durable=False`` lets its commit skip waiting for the disk
        (see the module docstring); ``replayable`` as ``WriteOperation.replayable``.

        Raises:
            RuntimeError: The writer is stopping (the store is closed).
        """
        operation = WriteOperation(work, locks, durable, replayable)
        with self._condition:
            if self._stopping:
                raise RuntimeError("the store is closed")
            self._pending.append(operation)
            # A gathering writer wakes only for a full batch (or at its deadline).
            if len(self._pending) == 1 or len(self._pending) >= GATHER_MAX:
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
                batch = self._take()
                if batch is None:
                    return
                try:
                    outcomes = self._run_batch(batch)
                except Exception as error:
                    # Nothing of this batch is durable: every operation reports failure.
                    outcomes = [(None, error)] * len(batch)
                else:
                    self._commit_count += 1
                self._last_commit_at = self._clock()
                self._hand_back(batch, outcomes)
        finally:
            self._close()

    def _take(self) -> list[WriteOperation[Any]] | None:
        """The next batch, gathered while busy (module docstring); None once stopped."""
        with self._condition:
            while not self._pending and not self._stopping:
                self._condition.wait()
            if not self._pending:
                return None
            if self._gather_s > 0 and not self._stopping:
                now = self._clock()
                if now - self._last_commit_at < BUSY_WINDOW_S:
                    deadline = now + self._gather_s
                    while (len(self._pending) < GATHER_MAX and not self._stopping
                           and (left := deadline - self._clock()) > 0):
                        self._condition.wait(left)
            batch = list(self._pending)
            self._pending.clear()
            return batch

    def _hand_back(self, batch: Sequence[WriteOperation[Any]],
                   outcomes: Sequence[Outcome]) -> None:
        # One hop into trio per batch, not per operation, and without waiting for trio to
        # run it: the callbacks run in the order queued, so results settle in commit order.
        # RunFinishedError: the trio run is gone, so nobody is waiting.
        with contextlib.suppress(trio.RunFinishedError):
            self._trio_token.run_sync_soon(_settle_batch, batch, outcomes)
