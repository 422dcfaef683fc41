"""Batches of replayable writes (sends, acknowledgements) run without a savepoint each, and on
PostgreSQL in a pipeline; when one of them raises, the batch is rolled back and run again with
savepoints, so the outcome is the one the safe path gives: the failing write undone, every
other committed exactly once (storage/group_commit.py ``WriteOperation.replayable``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from storage.group_commit import WriteOperation
from storage.postgres import _open_pools, run_postgres_batch
from storage.sqlite_threads import run_sqlite_batch
from tests.test_storage_postgres import postgres_dsn  # noqa: F401 - a fixture

Work = Callable[[Any], object]


class Counted:
    """A write that inserts ``value`` into ``numbers`` and counts its runs; ``fail`` raises
    after the insert, so that only a rollback can undo it."""

    def __init__(self, value: int, *, fail: bool = False, placeholder: str = "?") -> None:
        self.value = value
        self.fail = fail
        self.runs = 0
        self._insert = f"INSERT INTO numbers (value) VALUES ({placeholder})"

    def __call__(self, connection: Any) -> int:
        self.runs += 1
        connection.execute(self._insert, (self.value,))
        if self.fail:
            raise ValueError(f"write {self.value} refused")
        return self.value


def _operations(works: list[Counted], *, replayable: bool) -> list[WriteOperation[Any]]:
    return [WriteOperation(work, replayable=replayable) for work in works]


@pytest.fixture
def sqlite_connection(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(tmp_path / "numbers.db", isolation_level=None,
                                 check_same_thread=False)
    connection.execute("CREATE TABLE numbers (value INTEGER PRIMARY KEY)")
    yield connection
    connection.close()


def _sqlite_numbers(connection: sqlite3.Connection) -> list[int]:
    return [row[0] for row in connection.execute("SELECT value FROM numbers ORDER BY value")]


def test_a_replayable_batch_that_succeeds_takes_no_savepoint_and_runs_each_write_once(
        sqlite_connection: sqlite3.Connection) -> None:
    statements: list[str] = []
    sqlite_connection.set_trace_callback(statements.append)
    works = [Counted(1), Counted(2), Counted(3)]
    outcomes = run_sqlite_batch(sqlite_connection, _operations(works, replayable=True))
    assert outcomes == [(1, None), (2, None), (3, None)]
    assert [work.runs for work in works] == [1, 1, 1]
    assert not [statement for statement in statements if "SAVEPOINT" in statement]
    assert _sqlite_numbers(sqlite_connection) == [1, 2, 3]
    # Any other write keeps its savepoint (it may act outside the database).
    statements.clear()
    run_sqlite_batch(sqlite_connection, _operations([Counted(4)], replayable=False))
    assert [statement for statement in statements if "SAVEPOINT" in statement]


def test_a_write_that_raises_in_a_replayable_batch_is_undone_and_the_rest_commit_once(
        sqlite_connection: sqlite3.Connection) -> None:
    works = [Counted(1), Counted(2, fail=True), Counted(3)]
    outcomes = run_sqlite_batch(sqlite_connection, _operations(works, replayable=True))
    assert outcomes[0] == (1, None) and outcomes[2] == (3, None)
    assert outcomes[1][0] is None and isinstance(outcomes[1][1], ValueError)
    # The first attempt was rolled back and the batch run again with savepoints.
    assert [work.runs for work in works] == [2, 2, 1]
    assert _sqlite_numbers(sqlite_connection) == [1, 3]


def test_a_lone_replayable_write_that_raises_is_rolled_back_without_a_second_run(
        sqlite_connection: sqlite3.Connection) -> None:
    work = Counted(7, fail=True)
    [(result, error)] = run_sqlite_batch(sqlite_connection, _operations([work],
                                                                         replayable=True))
    assert result is None and isinstance(error, ValueError)
    assert work.runs == 1
    assert _sqlite_numbers(sqlite_connection) == []
    assert not sqlite_connection.in_transaction


class Unread(Counted):
    """A PostgreSQL write whose result nobody reads: in a pipeline its error (a duplicate
    key) surfaces only at a later read or at COMMIT, not in this write."""

    def __call__(self, connection: Any) -> int:
        self.runs += 1
        connection.execute("INSERT INTO numbers (value) VALUES (%s)", (self.value,))
        return self.value


class Read(Counted):
    """A PostgreSQL write that reads its result back (a sync point in a pipeline)."""

    def __call__(self, connection: Any) -> int:
        self.runs += 1
        row = connection.execute("INSERT INTO numbers (value) VALUES (%s) RETURNING value",
                                 (self.value,)).fetchone()
        return int(row[0])


async def _run_postgres(dsn: str, works: list[Counted]) -> tuple[list[Any], list[int]]:
    def run() -> tuple[list[Any], list[int]]:
        writer_pool, reader_pool = _open_pools(dsn)
        try:
            with writer_pool.connection() as connection:
                connection.execute("CREATE TABLE numbers (value INTEGER PRIMARY KEY)")
                connection.execute("INSERT INTO numbers (value) VALUES (100)")
                connection.commit()
            outcomes = run_postgres_batch(writer_pool, _operations(works, replayable=True))
            with writer_pool.connection() as connection:
                numbers = [row[0] for row in connection.execute(
                    "SELECT value FROM numbers ORDER BY value")]
            return outcomes, numbers
        finally:
            writer_pool.close()
            reader_pool.close()
    return await trio.to_thread.run_sync(run)


async def test_postgres_a_pipelined_batch_commits_every_write_once(
        postgres_dsn: str) -> None:  # noqa: F811 - the fixture
    works: list[Counted] = [Unread(1), Read(2), Unread(3)]
    outcomes, numbers = await _run_postgres(postgres_dsn, works)
    assert outcomes == [(1, None), (2, None), (3, None)]
    assert [work.runs for work in works] == [1, 1, 1]
    assert numbers == [1, 2, 3, 100]


async def test_postgres_an_error_that_surfaces_later_in_the_pipeline_is_charged_to_its_write(
        postgres_dsn: str) -> None:  # noqa: F811 - the fixture
    # The duplicate key of the second write is reported at the third write's read: the batch
    # is run again one savepoint each, which charges the error to the second write only.
    works: list[Counted] = [Unread(1), Unread(100), Read(3), Unread(4)]
    outcomes, numbers = await _run_postgres(postgres_dsn, works)
    assert outcomes[0] == (1, None) and outcomes[2:] == [(3, None), (4, None)]
    assert outcomes[1][0] is None and isinstance(outcomes[1][1], psycopg.errors.UniqueViolation)
    assert [work.runs for work in works] == [2, 2, 2, 1]
    assert numbers == [1, 3, 4, 100]


async def test_postgres_an_error_found_only_at_commit_is_charged_to_its_write(
        postgres_dsn: str) -> None:  # noqa: F811 - the fixture
    # Nothing reads after the failing write: its error surfaces at COMMIT.
    works: list[Counted] = [Unread(1), Unread(100)]
    outcomes, numbers = await _run_postgres(postgres_dsn, works)
    assert outcomes[0] == (1, None)
    assert outcomes[1][0] is None and isinstance(outcomes[1][1], psycopg.errors.UniqueViolation)
    assert numbers == [1, 100]
