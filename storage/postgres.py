"""The server store: PostgreSQL through psycopg 3, one writer thread, group commit.

psycopg's async API needs asyncio, so this store uses the synchronous API from
trio worker threads (``trio.to_thread.run_sync``):

* Reads run on a ``psycopg_pool.ConnectionPool`` of ``READER_POOL_SIZE``
  connections, each read in one REPEATABLE READ, READ ONLY transaction; a trio
  ``CapacityLimiter`` of the same size keeps trio from parking more threads
  than there are connections.
* Every write goes through the shared ``storage.group_commit.GroupCommitWriter``
  on its own one-connection pool: every operation submitted since the last
  commit goes into ONE transaction, each under its own SAVEPOINT
  (``run_postgres_batch``), and the results go back to trio in one hop.

Other processes (another relay node, the operator CLI) may write to the same
database concurrently, so the checks that must be atomic also take row locks:
the organisation row (seat check), the recipient's device rows (device set and
queue depths), the user row (device numbering), the pending code (single use).

Envelope ids come from an identity column. The single writer serialises this
node's sends, so on one node ids increase in commit order, as ``Store``
requires. Across SEVERAL nodes sharing a database they are commit-ordered per
recipient device only (which is what delivery cursors need): a send locks the
recipient's device rows before drawing ids, so a send to the same device on
another node draws after this one commits. Sends also NOTIFY the nodes holding
their recipients (``storage.postgres_presence``), on commit.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
import trio
from psycopg_pool import ConnectionPool

from storage import envelope_sql, fanout_sql, send_sql
from storage.account_store import AccountStoreMethods
from storage.admin_store import AdminStoreMethods
from storage.base import PendingResult
from storage.blob_postgres import PostgresBlobMethods
from storage.blob_sql import BLOB_SWEEP_LIMIT
from storage.core_store import CoreStoreMethods
from storage.fanout_records import MultiSendOutcome, NewMultiSend
from storage.group_commit import GroupCommitWriter, Outcome, Replay, WriteOperation
from storage.postgres_presence import notify_recipient_nodes, notify_revoked_devices
from storage.postgres_schema import Connection, SchemaVersionTooNew, apply_migrations
from storage.push_store import PushStoreMethods
from storage.rate_limits import forget_idle_buckets, take_tokens
from storage.records import NewSend, SendOutcome
from storage.sealed_store import SealedStoreMethods
from storage.sql_dialect import POSTGRES

__all__ = [
    "CONNECT_TIMEOUT_S",
    "READER_POOL_SIZE",
    "PostgresStore",
    "SchemaVersionTooNew",
    "open_postgres_store",
]

T = TypeVar("T")

READER_POOL_SIZE = 4
"""Concurrent reads (and reader connections); the writer has one more of its own."""

CONNECT_TIMEOUT_S = 10.0
"""How long opening the store, or a write batch, waits for a connection."""

Work = Callable[[Connection], T]


# -- the writer -------------------------------------------------------------------


def run_postgres_batch(pool: ConnectionPool[Connection],
                       batch: Sequence[WriteOperation[Any]]) -> list[Outcome]:
    """The PostgreSQL ``BatchRunner``: one transaction, a SAVEPOINT per operation; or, for a
    batch of replayable operations (``WriteOperation.replayable``), no savepoint unless one of
    them raises, which saves two round trips to the server per operation.

    The pool replaces a connection found broken, so one lost connection fails
    one batch, not the writer.
    """
    if all(operation.replayable for operation in batch):
        try:
            return _run_batch(pool, batch, savepoints=False)
        except Replay as replay:
            if len(batch) == 1:  # rolled back: nothing else to keep
                return [(None, replay.__cause__)]
        except psycopg.OperationalError:
            raise  # the connection, not a statement: whether it committed is unknown
        except psycopg.DatabaseError:
            # A pipelined statement's error surfaced at COMMIT, which then rolled back: run
            # the batch again one statement at a time, which tells which operation it was.
            pass
    return _run_batch(pool, batch, savepoints=True)


def _run_batch(pool: ConnectionPool[Connection], batch: Sequence[WriteOperation[Any]], *,
               savepoints: bool) -> list[Outcome]:
    outcomes: list[Outcome] = []
    users = sorted({user_id for operation in batch for user_id in operation.locks})
    with pool.connection(timeout=CONNECT_TIMEOUT_S) as connection, \
            (contextlib.nullcontext() if savepoints else connection.pipeline()), \
            connection.transaction():
        # Without savepoints, in a pipeline: a statement whose result nobody reads (BEGIN,
        # the locks, a send's writes, a NOTIFY) costs no round trip of its own; an error
        # surfaces at the next read or at COMMIT, and the batch is then run again with
        # savepoints, one statement at a time (``Replay``).
        if not any(operation.durable for operation in batch):
            # Only acknowledgements (WriteOperation.durable): a crash of the database may
            # lose this commit, never corrupt; the envelopes are then delivered again.
            connection.execute("SET LOCAL synchronous_commit = off")
        if users:
            # Every node's writer takes the device rows its batch will lock up front,
            # in one global order: taken one operation at a time, in batch order, two
            # nodes' batches deadlocked on each other's recipients.
            connection.execute(
                "SELECT 1 FROM devices WHERE user_id = ANY(%s) ORDER BY user_id, device_id"
                " FOR UPDATE", (users,))
        for operation in batch:
            if not savepoints:
                try:
                    outcomes.append((operation.work(connection), None))
                except Exception as error:
                    raise Replay from error  # leaving the block rolls everything back
                continue
            try:
                # A nested transaction() is a SAVEPOINT: an operation that
                # raises undoes only its own changes.
                with connection.transaction():
                    result = operation.work(connection)
            except Exception as error:
                if connection.broken:
                    raise
                outcomes.append((None, error))
            else:
                outcomes.append((result, None))
    return outcomes


def postgres_writer(pool: ConnectionPool[Connection], trio_token: trio.lowlevel.TrioToken, *,
                    gather_s: float = 0.0) -> GroupCommitWriter[Connection]:
    """The group-commit writer on ``pool`` (one connection is enough); closes it when done;
    ``gather_s`` as ``GroupCommitWriter``'s."""
    return GroupCommitWriter(functools.partial(run_postgres_batch, pool), close=pool.close,
                             trio_token=trio_token, thread_name="postgres-writer",
                             gather_s=gather_s)


class PostgresStore(CoreStoreMethods, AdminStoreMethods, AccountStoreMethods,
                    PushStoreMethods, PostgresBlobMethods, SealedStoreMethods):
    """``storage.base.Store`` on PostgreSQL. Create with ``open_postgres_store``.

    The SQL is shared with SQLite (``storage.core_store`` and the modules it names); this
    class adds the cluster's wake-ups, the shared rate-limit buckets and the blobs' chunk rows
    (``storage.blob_postgres``).
    """

    _dialect = POSTGRES

    def __init__(self, *, writer: GroupCommitWriter[Connection],
                 readers: ConnectionPool[Connection]) -> None:
        self._writer = writer
        self._readers = readers
        self._reader_limiter = trio.CapacityLimiter(READER_POOL_SIZE)
        self._closed = False
        self.node_channel: str | None = None
        """This relay node's LISTEN channel, set by ``relay.cluster``: sends do not
        notify it (its own pumps are woken directly)."""

    async def _read(self, work: Work[T]) -> T:
        if self._closed:
            raise RuntimeError("the store is closed")
        return await trio.to_thread.run_sync(self._read_in_thread, work,
                                             limiter=self._reader_limiter)

    def _read_in_thread(self, work: Work[T]) -> T:
        # The pool's connections are REPEATABLE READ, READ ONLY (see
        # _configure_reader): one snapshot for every statement of the read.
        with self._readers.connection(timeout=CONNECT_TIMEOUT_S) as connection, \
                connection.transaction():
            return work(connection)

    async def _close_readers(self) -> None:
        await trio.to_thread.run_sync(self._readers.close)

    def cluster_wakeups(self) -> PostgresStore:
        """This store itself: several relay nodes may share the database, and its sends and
        deletions notify the nodes holding the devices concerned (``node_channel``)."""
        return self

    def _presence_channel(self) -> str | None:
        return self.node_channel

    def _before_user_deleted(self, connection: Any, user_id: str) -> None:
        # Nodes holding its devices close them on commit.
        notify_revoked_devices(connection, user_id=user_id)

    def _before_device_deleted(self, connection: Any, user_id: str, device_id: int) -> None:
        notify_revoked_devices(connection, user_id=user_id, device_id=device_id)

    def submit_send(self, send: NewSend) -> PendingResult[SendOutcome]:
        payloads = dict(send.payloads)  # a snapshot: the caller may reuse its mapping
        skip_channel = self.node_channel  # this node's pumps are woken directly
        return self._writer.submit(
            lambda connection: _commit_send(connection, send, payloads, skip_channel),
            locks=(send.recipient_user_id,), replayable=True)

    def submit_multi_send(self, send: NewMultiSend) -> PendingResult[MultiSendOutcome]:
        recipients = {user_id: dict(devices) for user_id, devices in send.recipients.items()}
        wake = functools.partial(_wake_recipient, skip_channel=self.node_channel)
        return self._writer.submit(lambda connection: fanout_sql.commit_multi_send(
            connection, POSTGRES, send, recipients, wake), locks=tuple(sorted(recipients)),
            replayable=True)

    async def expire(self, *, now: int, limit: int) -> int:
        # The shared sweep, and in the same transaction the buckets idle long enough to be
        # full again (SQLite's live in memory).
        def work(connection: Connection) -> int:
            expired = envelope_sql.expire(connection, POSTGRES, now=now, limit=limit)
            forget_idle_buckets(connection, now=now, limit=limit)
            return expired
        expired = await self._write(work)
        # Apart: a blob's chunks may be 100 MiB, not to hold up the envelopes' transaction.
        await self.delete_expired_blobs(now, min(limit, BLOB_SWEEP_LIMIT))
        return expired

    async def take_tokens(self, *, key: str, cost: int, capacity: int, period_ms: int,
                          now: int) -> bool:
        return await self._write(lambda connection: take_tokens(
            connection, key=key, cost=cost, capacity=capacity, period_ms=period_ms, now=now))


def _commit_send(connection: Connection, send: NewSend, payloads: Mapping[int, bytes],
                 skip_channel: str | None = None) -> SendOutcome:
    """The shared send (``storage.send_sql.commit_send``) waking, on commit, the nodes
    that hold the recipient's devices, except ``skip_channel``'s."""
    return send_sql.commit_send(connection, POSTGRES, send, payloads, functools.partial(
        _wake_holders, skip_channel=skip_channel), skip_channel=skip_channel)


def _wake_recipient(connection: Connection, user_id: str, device_ids: list[int], now: int, *,
                    skip_channel: str | None) -> None:
    notify_recipient_nodes(connection, user_id=user_id, device_ids=device_ids, now=now,
                           skip_channel=skip_channel)


def _wake_holders(connection: Connection, send: NewSend, device_ids: list[int], *,
                  skip_channel: str | None) -> None:
    notify_recipient_nodes(connection, user_id=send.recipient_user_id, device_ids=device_ids,
                           now=send.accepted_at, skip_channel=skip_channel)


# -- opening -------------------------------------------------------------------------


def _configure_reader(connection: Connection) -> None:
    # Applied to every transaction the connection opens from now on.
    connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    connection.read_only = True


def _open_pools(dsn: str) -> tuple[ConnectionPool[Connection], ConnectionPool[Connection]]:
    """Migrate the schema, then open the writer's and the readers' pools (in a thread)."""
    with psycopg.connect(dsn, connect_timeout=int(CONNECT_TIMEOUT_S)) as connection:
        apply_migrations(connection)
    writer_pool: ConnectionPool[Connection] = ConnectionPool(
        dsn, min_size=1, max_size=1, open=False, name="postgres-writer")
    reader_pool: ConnectionPool[Connection] = ConnectionPool(
        dsn, min_size=READER_POOL_SIZE, max_size=READER_POOL_SIZE, open=False,
        configure=_configure_reader, name="postgres-readers")
    try:
        writer_pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        reader_pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
    except BaseException:
        writer_pool.close()
        reader_pool.close()
        raise
    return writer_pool, reader_pool


@asynccontextmanager
async def open_postgres_store(dsn: str, *,
                              commit_gather_s: float = 0.0) -> AsyncIterator[PostgresStore]:
    """Open the store in the database ``dsn`` names (migrating it); close it on exit.

    The tables live in the first schema of the connection's ``search_path``
    (set it with ``options=-csearch_path=...`` in the DSN to share a database).
    Must run inside trio: results are handed back to this trio run.

    Args:
        dsn: A libpq connection string or URI.
        commit_gather_s: how long a busy writer gathers writes into one commit
            (``storage.group_commit``; 0, the default for tools and tests: never).

    Raises:
        SchemaVersionTooNew: The database was written by a newer release.
        psycopg.Error, psycopg_pool.PoolTimeout: The database is unreachable.
    """
    trio_token = trio.lowlevel.current_trio_token()
    writer_pool, reader_pool = await trio.to_thread.run_sync(_open_pools, dsn)
    writer = postgres_writer(writer_pool, trio_token, gather_s=commit_gather_s)
    store = PostgresStore(writer=writer, readers=reader_pool)
    writer.start()
    try:
        yield store
    finally:
        await store.close()
