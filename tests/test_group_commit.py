"""The group-commit writer (``storage.group_commit``) on real SQLite files and a real PostgreSQL.

What the writer promises: operations commit and settle in submission order whatever the
batches; an operation that raises undoes only itself; a busy writer gathers operations into
one batch until ``GATHER_MAX`` wait, its deadline passes by its clock, or it stops, while an
idle one commits at once; a batch with no durable operation commits without waiting for the
disk; and the writer starts its next batch without waiting for trio to take the last one's
results.

Nothing here sleeps: a work function holds the writer at a known point (``HeldWriter``), the
writer's clock is a ``FakeClock`` the test moves by hand, and ``trio.fail_after`` only guards
against a hang.
"""

from __future__ import annotations

import pathlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
import trio

from storage.group_commit import BUSY_WINDOW_S, GATHER_MAX, GroupCommitWriter, WriteOperation
from storage.postgres import open_postgres_store
from storage.postgres_schema import Connection as PostgresConnection
from storage.sqlite import open_sqlite_store
from storage.sqlite_threads import SqliteBatchRunner, sqlite_writer
from tests.postgres_schemas import conninfo, fresh_schema
from tests.storage_conformance import TIMEOUT_S

T = TypeVar("T")

SYNCHRONOUS_PRAGMAS = {
    "OFF": "PRAGMA synchronous = OFF",
    "NORMAL": "PRAGMA synchronous = NORMAL",
    "FULL": "PRAGMA synchronous = FULL",
    "EXTRA": "PRAGMA synchronous = EXTRA",
}
"""The statements the store configures a connection with (a PRAGMA takes no parameter)."""

OFF, NORMAL, FULL, EXTRA = 0, 1, 2, 3
"""What ``PRAGMA synchronous`` reads for each level."""

GATHER_FOREVER_S = 3600.0
"""A gather deadline, in the fake clock's seconds, that no test reaches: the clock never moves
that far, so the gather must end some other way (and the writer's real wait is as long)."""

GATHER_BRIEFLY_S = 0.002
"""A gather deadline the test passes by moving the fake clock; the writer, waiting this long
for real each time, looks at the clock again every few milliseconds until then."""

TASKS = 20
OPERATIONS_PER_TASK = 50
RELEASE_AT = 9
"""The operation of task 0 after whose submission the held writer is let go: every task has
queued operations by then, so the first batch has many, failing ones among them."""

CHAIN_LENGTH = 8
"""Batches the writer commits while trio's thread is blocked."""


class Refused(Exception):
    """What a failing work function raises, after changing the database (which must not stay)."""


def _fails(number: int) -> bool:
    return number % 10 == 3


def _connect(path: pathlib.Path, level: str = "NORMAL") -> sqlite3.Connection:
    """A write connection as the store opens one (autocommit, WAL), with a ``log`` table.

    NORMAL by default only to spare the test machine's disk.
    """
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    (journal_mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
    assert journal_mode == "wal"
    connection.execute(SYNCHRONOUS_PRAGMAS[level])
    connection.execute("CREATE TABLE IF NOT EXISTS log (position INTEGER PRIMARY KEY,"
                       " task INTEGER NOT NULL, number INTEGER NOT NULL, batch INTEGER NOT NULL)")
    return connection


def _logged_rows(path: pathlib.Path) -> list[tuple[int, int, int, int]]:
    """(position, task, number, batch) of every committed row, in commit order."""
    with sqlite3.connect(path) as connection:
        return [(int(position), int(task), int(number), int(batch))
                for position, task, number, batch in connection.execute(
                    "SELECT position, task, number, batch FROM log ORDER BY position")]


class FakeClock:
    """Monotonic seconds that move only when the test moves them. It counts the writer's
    readings, so that the test knows when the writer is deciding whether to gather."""

    def __init__(self) -> None:
        self.now = 0.0
        self._reads = 0
        self._read = threading.Condition()

    def __call__(self) -> float:
        with self._read:
            self._reads += 1
            self._read.notify_all()
        return self.now

    @property
    def reads(self) -> int:
        with self._read:
            return self._reads

    async def wait_for_reads(self, count: int) -> None:
        """Return once the clock has been read at least ``count`` times in all."""
        def wait() -> bool:
            with self._read:
                return self._read.wait_for(lambda: self._reads >= count, TIMEOUT_S)
        assert await trio.to_thread.run_sync(wait), f"the clock was read only {self.reads} times"


def _writer(path: pathlib.Path, *, level: str = "NORMAL", gather_s: float = 0.0,
            clock: Callable[[], float] = time.monotonic) -> GroupCommitWriter[sqlite3.Connection]:
    """A SQLite writer as ``sqlite_writer`` builds one, but on ``clock``."""
    connection = _connect(path, level)
    return GroupCommitWriter(SqliteBatchRunner(connection, SYNCHRONOUS_PRAGMAS[level]),
                             close=connection.close,
                             trio_token=trio.lowlevel.current_trio_token(),
                             thread_name="test-writer", gather_s=gather_s, clock=clock)


@asynccontextmanager
async def _running(writer: GroupCommitWriter[Any]) -> AsyncIterator[None]:
    writer.start()
    try:
        yield
    finally:
        await writer.stop()  # stopping twice is harmless: a test may stop it itself


class HeldWriter:
    """Keeps the writer inside an operation of its own (submitted not durable, so that it
    leaves its batch's durability to the others), so that the next batch is exactly what is
    submitted meanwhile, closed by the next holding operation."""

    def __init__(self, writer: GroupCommitWriter[Any]) -> None:
        self._writer = writer
        self._release = threading.Event()

    async def hold(self) -> None:
        """Submit a holding operation, let the previous one go, and return once the writer
        runs the new one: what was submitted in between has become one batch."""
        entered, release = threading.Event(), threading.Event()

        def block(connection: object) -> None:
            entered.set()
            release.wait(TIMEOUT_S)

        self._writer.submit(block, durable=False)
        previous, self._release = self._release, release
        previous.set()
        assert await trio.to_thread.run_sync(entered.wait, TIMEOUT_S), "the writer never ran it"

    def release(self) -> None:
        self._release.set()


def _record_settling(monkeypatch: pytest.MonkeyPatch) -> list[WriteOperation[Any]]:
    """Every operation, in the order its result is settled in trio."""
    settled: list[WriteOperation[Any]] = []
    settle = WriteOperation.settle

    def recording(operation: WriteOperation[Any], result: Any,
                  error: BaseException | None) -> None:
        settled.append(operation)
        settle(operation, result, error)

    monkeypatch.setattr(WriteOperation, "settle", recording)
    return settled


def _appender(writer: GroupCommitWriter[sqlite3.Connection], task: int,
              number: int) -> Callable[[sqlite3.Connection], tuple[int, int]]:
    """Work that logs (task, number) with its batch (the transactions committed before it)
    and returns (row position, batch); or, for a failing number, logs it and then raises."""
    def append(connection: sqlite3.Connection) -> tuple[int, int]:
        batch = writer.commit_count
        position = connection.execute(
            "INSERT INTO log (task, number, batch) VALUES (?, ?, ?)", (task, number, batch),
        ).lastrowid
        assert position is not None
        if _fails(number):
            raise Refused(task, number, batch)
        return position, batch
    return append


def _batch(writer: GroupCommitWriter[sqlite3.Connection]) -> Callable[[sqlite3.Connection], int]:
    """Work that logs a row and returns its batch (the transactions committed before it)."""
    return lambda connection: _appender(writer, 0, 0)(connection)[1]


async def test_concurrent_submitters_commit_and_settle_in_submission_order(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settled = _record_settling(monkeypatch)
    path = tmp_path / "log.db"
    writer = sqlite_writer(_connect(path), trio.lowlevel.current_trio_token(),
                           synchronous_pragma=SYNCHRONOUS_PRAGMAS["NORMAL"])
    held = HeldWriter(writer)
    submitted: list[tuple[tuple[int, int], WriteOperation[tuple[int, int]]]] = []

    async def submit_all(task: int) -> None:
        for number in range(OPERATIONS_PER_TASK):
            submitted.append(((task, number), writer.submit(_appender(writer, task, number))))
            if (task, number) == (0, RELEASE_AT):
                held.release()
            await trio.lowlevel.checkpoint()  # let the other tasks submit in between

    async with _running(writer):
        with trio.fail_after(TIMEOUT_S):
            await held.hold()
            async with trio.open_nursery() as nursery:
                for task in range(TASKS):
                    nursery.start_soon(submit_all, task)
            results: dict[tuple[int, int], tuple[int, int]] = {}
            refused_in: dict[tuple[int, int], int] = {}
            for key, operation in submitted:
                if _fails(key[1]):
                    with pytest.raises(Refused) as refused:
                        await operation.wait()
                    assert refused.value.args[:2] == key
                    refused_in[key] = refused.value.args[2]
                else:
                    results[key] = await operation.wait()

    assert len(submitted) == TASKS * OPERATIONS_PER_TASK
    # Committed in submission order, each as its result says; the failing ones left nothing.
    assert _logged_rows(path) == [(results[key][0], *key, results[key][1])
                                  for key, _ in submitted if key in results]
    # A failing operation shared its batch with operations that committed.
    assert refused_in[0, 3] == results[0, 2][1] == results[0, 4][1]
    # Batches in submission order, each committed once (batch 0 held the writer).
    batches = [results[key][1] if key in results else refused_in[key] for key, _ in submitted]
    assert batches == sorted(batches)
    assert set(batches) == set(range(1, writer.commit_count))
    ours = {id(operation) for _, operation in submitted}
    assert [id(operation) for operation in settled if id(operation) in ours] == [
        id(operation) for _, operation in submitted]


async def test_the_writer_commits_its_next_batch_before_trio_takes_the_last_results(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trio's thread is blocked (as by a long step that never yields) until the writer has
    committed several batches: a writer that waited for trio to take each batch's results
    would never get past the first."""
    settled = _record_settling(monkeypatch)
    writer = _writer(tmp_path / "log.db")
    later: list[WriteOperation[int]] = []
    last_ran = threading.Event()

    def link(number: int) -> Callable[[sqlite3.Connection], int]:
        def work(connection: sqlite3.Connection) -> int:
            batch = _batch(writer)(connection)
            if number + 1 < CHAIN_LENGTH:
                # Submitted while this batch runs, so it is the whole of the next one.
                later.append(writer.submit(link(number + 1)))
            else:
                last_ran.set()
            return batch
        return work

    async with _running(writer):
        first = writer.submit(link(0))
        blocked = last_ran.wait(TIMEOUT_S)  # on trio's thread: nothing queued to trio runs
        chain = [first, *later]
        assert blocked, f"{len(chain)} of {CHAIN_LENGTH} batches submitted: the writer waits for trio"
        # Handed back, not settled from the writer's thread: trio has not run since.
        assert not any(operation.done for operation in chain)
        with trio.fail_after(TIMEOUT_S):
            batches = [await operation.wait() for operation in chain]
    assert batches == list(range(CHAIN_LENGTH))
    assert [id(operation) for operation in settled] == [id(operation) for operation in chain]


async def test_a_busy_writer_gathers_until_gather_max_operations_wait(
        tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    writer = _writer(tmp_path / "log.db", gather_s=GATHER_FOREVER_S, clock=clock)
    async with _running(writer):
        with trio.fail_after(TIMEOUT_S):  # the deadline is an hour away, for real too
            assert await writer.submit(_batch(writer)).wait() == 0
            # It committed at the clock's present: it is busy. The next operation it takes
            # makes it read the clock (holding the queue's lock until it waits).
            reads = clock.reads
            first = writer.submit(_batch(writer))
            await clock.wait_for_reads(reads + 1)
            rest = [writer.submit(_batch(writer)) for _ in range(GATHER_MAX - 1)]
            batches = [await operation.wait() for operation in (first, *rest)]
    assert batches == [1] * GATHER_MAX
    assert writer.commit_count == 2


async def test_a_gather_ends_when_the_clock_passes_its_deadline(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    writer = _writer(tmp_path / "log.db", gather_s=GATHER_BRIEFLY_S, clock=clock)
    async with _running(writer):
        with trio.fail_after(TIMEOUT_S):
            assert await writer.submit(_batch(writer)).wait() == 0
            reads = clock.reads
            first = writer.submit(_batch(writer))
            await clock.wait_for_reads(reads + 1)
            # One short of a full batch: not enough to end the gather.
            gathered = [first, *(writer.submit(_batch(writer)) for _ in range(GATHER_MAX - 2))]
            # The writer's real waits ran out and it looked at the clock again: by the clock,
            # which has not moved, the deadline is still ahead, so it is still gathering.
            await clock.wait_for_reads(clock.reads + 2)
            clock.now += 2 * GATHER_BRIEFLY_S
            batches = [await operation.wait() for operation in gathered]
    assert batches == [1] * (GATHER_MAX - 1)
    assert writer.commit_count == 2


async def test_an_idle_writer_commits_a_lone_operation_at_once(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    writer = _writer(tmp_path / "log.db", gather_s=GATHER_FOREVER_S, clock=clock)
    async with _running(writer):
        # A writer that gathered would wait an hour, for real: the guard would end the test.
        with trio.fail_after(TIMEOUT_S):
            assert await writer.submit(_batch(writer)).wait() == 0  # it never committed
            clock.now += 2 * BUSY_WINDOW_S  # its last commit is long past
            assert await writer.submit(_batch(writer)).wait() == 1
    assert writer.commit_count == 2


async def test_stopping_ends_a_gather_and_commits_what_was_gathered(
        tmp_path: pathlib.Path) -> None:
    path = tmp_path / "log.db"
    clock = FakeClock()
    # A brief gather, and a clock that does not move: only stop() can end it in time.
    writer = _writer(path, gather_s=GATHER_BRIEFLY_S, clock=clock)
    async with _running(writer):
        with trio.fail_after(TIMEOUT_S):
            assert await writer.submit(_batch(writer)).wait() == 0
            reads = clock.reads
            first = writer.submit(_batch(writer))
            await clock.wait_for_reads(reads + 1)
            second = writer.submit(_batch(writer))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.stop)
            try:
                with trio.fail_after(TIMEOUT_S):
                    batches = [await first.wait(), await second.wait()]
            finally:
                # A writer deaf to stop() ends its gather now, so that stop() returns and
                # the test fails rather than hangs (joining the thread cannot be cancelled).
                clock.now += 2 * GATHER_BRIEFLY_S
        assert batches == [1, 1]
        with pytest.raises(RuntimeError, match="closed"):
            writer.submit(_batch(writer))
    assert writer.commit_count == 2
    assert [batch for *_, batch in _logged_rows(path)] == [0, 1, 1]


def _synchronous_level(connection: sqlite3.Connection) -> int:
    assert connection.in_transaction
    return int(connection.execute("PRAGMA synchronous").fetchone()[0])


DURABILITY_PLANS: list[tuple[bool, ...]] = [
    (False, False), (False, True), (False,), (True,), (True, False, True), (False,)]
"""The durable flags of the operations of successive batches: only not durable, mixed (after
a relaxed batch), relaxed again, durable alone (after a relaxed batch), and so on."""


async def _in_batches(writer: GroupCommitWriter[Any], work: Callable[[Any], T],
                      plans: Sequence[Sequence[bool]]) -> list[list[T]]:
    """Run ``work`` once per flag of each plan, each plan's operations as one batch (closed by
    ``HeldWriter``), with that flag as ``durable``; return what each saw."""
    held = HeldWriter(writer)
    await held.hold()
    batches: list[list[WriteOperation[T]]] = []
    for plan in plans:
        batches.append([writer.submit(work, durable=durable) for durable in plan])
        await held.hold()
    held.release()
    return [[await operation.wait() for operation in batch] for batch in batches]


@pytest.mark.parametrize(("level", "durable_level", "relaxed_level"), [
    ("FULL", FULL, NORMAL),
    ("EXTRA", EXTRA, NORMAL),
    ("NORMAL", NORMAL, NORMAL),  # no fsync per commit to spare: nothing changes
    ("OFF", OFF, OFF),  # NORMAL would be stricter than configured
])
async def test_sqlite_commits_a_batch_with_no_durable_operation_at_normal(
        tmp_path: pathlib.Path, level: str, durable_level: int, relaxed_level: int) -> None:
    writer = _writer(tmp_path / "log.db", level=level)
    async with _running(writer):
        with trio.fail_after(TIMEOUT_S):
            seen = await _in_batches(writer, _synchronous_level, DURABILITY_PLANS)
    assert seen == [[durable_level if any(plan) else relaxed_level] * len(plan)
                    for plan in DURABILITY_PLANS]
    assert writer.commit_count == 1 + len(DURABILITY_PLANS)  # one transaction per plan


@pytest.mark.parametrize(("synchronous", "durable_level"), [("FULL", FULL), ("NORMAL", NORMAL)])
async def test_a_store_commits_acknowledgements_without_waiting_for_the_disk(
        tmp_path: pathlib.Path, synchronous: str, durable_level: int) -> None:
    async with open_sqlite_store(tmp_path / "relay.db", synchronous=synchronous) as store:
        held = HeldWriter(store._writer)
        with trio.fail_after(TIMEOUT_S):
            await held.hold()
            acknowledged = store.submit_acknowledge(user_id="nobody", device_id=1,
                                                    envelope_ids=[2, 1])
            relaxed = store._writer.submit(_synchronous_level, durable=False)
            await held.hold()
            durable = store._writer.submit(_synchronous_level)
            held.release()
            assert await acknowledged.wait() == 0
            assert [await relaxed.wait(), await durable.wait()] == [NORMAL, durable_level]
    assert isinstance(acknowledged, WriteOperation)
    assert not acknowledged.durable


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """A fresh schema on the test server (fails in CI when there is none: see
    ``tests/test_storage_postgres.py``)."""
    with fresh_schema() as schema:
        yield conninfo(schema)


def _synchronous_commit(connection: PostgresConnection) -> str:
    row = connection.execute("SHOW synchronous_commit").fetchone()
    assert row is not None
    return str(row[0])


async def test_postgres_commits_a_batch_with_no_durable_operation_asynchronously(
        postgres_dsn: str) -> None:
    async with open_postgres_store(postgres_dsn) as store:
        with trio.fail_after(TIMEOUT_S):
            seen = await _in_batches(store._writer, _synchronous_commit, DURABILITY_PLANS)
            held = HeldWriter(store._writer)
            await held.hold()
            acknowledged = store.submit_acknowledge(user_id="nobody", device_id=1,
                                                    envelope_ids=[1])
            relaxed = store._writer.submit(_synchronous_commit, durable=False)
            await held.hold()
            held.release()
            assert await acknowledged.wait() == 0
            assert await relaxed.wait() == "off"
    assert seen == [["on" if any(plan) else "off"] * len(plan) for plan in DURABILITY_PLANS]
