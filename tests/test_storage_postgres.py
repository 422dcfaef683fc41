"""The PostgreSQL store: the conformance suite, then what only PostgreSQL has.

Runs against a real server: ``postgresql://postgres@127.0.0.1:5432/test`` unless
the environment variable ``CRYPTOPASS_TEST_POSTGRES`` names another. Each test
gets a fresh schema of its own, dropped afterwards. Without a reachable server
the tests are skipped, except in CI (``CI`` set) where they fail.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, suppress

import psycopg
import pytest
import trio
from psycopg import sql

from storage import postgres_schema
from storage.base import (
    AccountRecord,
    DeviceListRefusal,
    DeviceListRefused,
    SeatLimitReached,
    SendStatus,
    Store,
)
from storage.postgres import PostgresStore, SchemaVersionTooNew, open_postgres_store
from storage.postgres_schema import LATEST_SCHEMA_VERSION, Connection
from tests.storage_conformance import *  # noqa: F403
from tests.storage_conformance import (
    NOW,
    TIMEOUT_S,
    _code_for,
    _declared,
    _enrolled,
    _fetch_all,
    _organisation,
    _register_device,
    _send,
    _send_now,
)

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _server_dsn() -> str:
    return os.environ.get("CRYPTOPASS_TEST_POSTGRES", DEFAULT_DSN)


_unreachable: dict[str, str] = {}
"""DSN -> why it could not be reached: tried once per session, not once per test."""


def _connect_or_give_up(dsn: str) -> Connection:
    reason = _unreachable.get(dsn)
    if reason is None:
        try:
            return psycopg.connect(dsn, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as error:
            reason = _unreachable[dsn] = (
                f"PostgreSQL is unreachable at {dsn!r} (set CRYPTOPASS_TEST_POSTGRES to "
                f"another server): {error}")
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the PostgreSQL store tests, but {reason}")
    pytest.skip(reason)


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """A DSN whose search_path is a fresh schema, dropped after the test."""
    server_dsn = _server_dsn()
    schema = f"cryptopass_test_{uuid.uuid4().hex}"
    with _connect_or_give_up(server_dsn) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            yield psycopg.conninfo.make_conninfo(server_dsn, options=f"-csearch_path={schema}")
        finally:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def store_opener(postgres_dsn: str) -> Callable[[], AbstractAsyncContextManager[Store]]:
    return lambda: open_postgres_store(postgres_dsn)


def _query(dsn: str, query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        cursor = connection.execute(query, params or None)
        return cursor.fetchall() if cursor.description else []


async def test_the_schema_is_created_in_the_search_path_schema(postgres_dsn: str) -> None:
    async with open_postgres_store(postgres_dsn):
        pass
    assert _query(postgres_dsn, "SELECT version FROM schema_meta") == [(LATEST_SCHEMA_VERSION,)]
    tables = {row[0] for row in _query(
        postgres_dsn, "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = current_schema()")}
    assert {"organisations", "users", "devices", "envelopes", "idempotency_records",
            "verification_codes", "sms_sends", "secrets", "schema_meta"} <= tables
    # Reopening does not migrate again.
    async with open_postgres_store(postgres_dsn):
        pass
    assert _query(postgres_dsn, "SELECT version FROM schema_meta") == [(LATEST_SCHEMA_VERSION,)]


async def test_a_newer_schema_version_is_refused(postgres_dsn: str) -> None:
    async with open_postgres_store(postgres_dsn):
        pass
    _query(postgres_dsn, "UPDATE schema_meta SET version = %s", LATEST_SCHEMA_VERSION + 1)
    with pytest.raises(SchemaVersionTooNew, match="newer"):
        async with open_postgres_store(postgres_dsn):
            pass


async def test_concurrent_openers_migrate_once(postgres_dsn: str) -> None:
    async def open_and_close() -> None:
        async with open_postgres_store(postgres_dsn):
            pass

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(open_and_close)
    assert _query(postgres_dsn, "SELECT version FROM schema_meta") == [(LATEST_SCHEMA_VERSION,)]


async def test_two_stores_on_one_database_respect_the_seat_limit(postgres_dsn: str) -> None:
    # Two nodes: each one's writer serialises only its own declarations; the
    # organisation row lock serialises them across nodes.
    async with open_postgres_store(postgres_dsn) as first, \
            open_postgres_store(postgres_dsn) as second:
        organisation = await _organisation(first, seats=5)
        admitted: list[object] = []

        async def declare(store: Store) -> None:
            with suppress(SeatLimitReached):
                admitted.append(await _declared(store, organisation))

        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for index in range(20):
                    nursery.start_soon(declare, (first, second)[index % 2])
        assert len(admitted) == 5
        assert len(await second.list_users(organisation)) == 5


async def _hold_the_writer(store: PostgresStore) -> threading.Event:
    """Occupy the writer thread so that everything submitted next lands in ONE batch."""
    entered, release = threading.Event(), threading.Event()

    def block(connection: Connection) -> None:
        entered.set()
        release.wait(TIMEOUT_S)

    store.submit_write_for_tests(block)
    await trio.to_thread.run_sync(entered.wait, TIMEOUT_S)
    return release


async def test_a_failing_operation_rolls_back_only_itself(postgres_dsn: str) -> None:
    async with open_postgres_store(postgres_dsn) as store:
        sender, _ = await _enrolled(store)
        recipient, devices = await _enrolled(store)
        release = await _hold_the_writer(store)
        commits_before = store.commit_count
        first = store.submit_send(_send(sender, recipient, devices, 1))

        def half_done_then_fail(connection: Connection) -> None:
            connection.execute("UPDATE devices SET queue_depth = 999")
            connection.execute("SELECT 1 / 0")  # a database error aborts the savepoint

        failing = store.submit_write_for_tests(half_done_then_fail)
        last = store.submit_send(_send(sender, recipient, devices, 2))
        release.set()
        with trio.fail_after(TIMEOUT_S):
            assert (await first.wait()).status is SendStatus.ACCEPTED
            with pytest.raises(psycopg.errors.DivisionByZero):
                await failing.wait()
            assert (await last.wait()).status is SendStatus.ACCEPTED
        assert store.commit_count - commits_before == 2  # the held batch, then this one
        assert await store.queue_depth(user_id=recipient.user_id, device_id=1) == 2


async def test_a_lost_connection_fails_the_batch_and_the_writer_recovers(
        postgres_dsn: str) -> None:
    async with open_postgres_store(postgres_dsn) as store:
        sender, _ = await _enrolled(store)
        recipient, devices = await _enrolled(store)
        release = await _hold_the_writer(store)
        first = store.submit_send(_send(sender, recipient, devices, 1))

        def lose_the_connection(connection: Connection) -> None:
            # What a server restart or a network failure looks like.
            connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")

        failing = store.submit_write_for_tests(lose_the_connection)
        last = store.submit_send(_send(sender, recipient, devices, 2))
        release.set()
        with trio.fail_after(TIMEOUT_S):
            for pending in (first, failing, last):
                with pytest.raises(psycopg.OperationalError):
                    await pending.wait()
        assert await _fetch_all(store, recipient, 1) == []
        with trio.fail_after(TIMEOUT_S):
            retried = await _send_now(store, _send(sender, recipient, devices, 1))
        assert retried.status is SendStatus.ACCEPTED


async def test_a_closed_store_refuses_work(postgres_dsn: str) -> None:
    async with open_postgres_store(postgres_dsn) as store:
        sender, _ = await _enrolled(store)
        recipient, devices = await _enrolled(store)
        pending = store.submit_send(_send(sender, recipient, devices, 1))
    assert (await pending.wait()).status is SendStatus.ACCEPTED
    with pytest.raises(RuntimeError, match="closed"):
        store.submit_send(_send(sender, recipient, devices, 2))
    with pytest.raises(RuntimeError, match="closed"):
        await store.queue_depth(user_id=recipient.user_id, device_id=1)


async def test_users_enrolled_before_account_keys_migrate_without_one(
        postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database of schema version 6: its users keep their devices, have no account key (so
    they cannot publish a list), and a new enrolment gives them one, revoking the old ones."""
    with monkeypatch.context() as older:
        older.setattr(postgres_schema, "MIGRATIONS", postgres_schema.MIGRATIONS[:6])
        older.setattr(postgres_schema, "LATEST_SCHEMA_VERSION", 6)
        async with open_postgres_store(postgres_dsn) as store:
            user = await _declared(store)
    _query(postgres_dsn, "INSERT INTO devices (user_id, device_id, identity_key, registered_at)"
           " VALUES (%s, 1, %s, 0)", user.user_id, b"k" * 32)
    _query(postgres_dsn, "UPDATE users SET next_device_id = 2 WHERE user_id = %s", user.user_id)
    async with open_postgres_store(postgres_dsn) as store:
        assert await store.account(user.user_id) == AccountRecord(
            account_key=None, device_list=None, device_list_version=0)
        with pytest.raises(DeviceListRefused) as refused:
            await store.publish_device_list(
                user_id=user.user_id, publisher_device_id=1, account_key=b"a" * 32, version=1,
                identity_keys=frozenset({b"k" * 32}), encoded=b"list", now=NOW, max_devices=5,
                revoke_reason="removed")
        assert refused.value.reason is DeviceListRefusal.ACCOUNT_KEY_MISMATCH
        registration = await _register_device(
            store, phone=user.phone, phone_key=await _code_for(store, user.phone))
        assert (registration.revoked, registration.device.device_id) == ((1,), 2)
