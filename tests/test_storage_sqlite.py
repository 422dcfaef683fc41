"""The SQLite store: the conformance suite, then what only SQLite has."""

from __future__ import annotations

import pathlib
import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest
import trio

from storage import sqlite_schema
from storage.base import AccountRecord, DeviceListRefusal, DeviceListRefused, SendStatus, Store
from storage.sqlite import SchemaVersionTooNew, SqliteStore, open_sqlite_store
from storage.sqlite_schema import LATEST_SCHEMA_VERSION
from tests.storage_conformance import *  # noqa: F403
from tests.storage_conformance import (
    NOW,
    TIMEOUT_S,
    _code_for,
    _declared,
    _enrolled,
    _fetch_all,
    _register_device,
    _send,
    _send_now,
)


@pytest.fixture
def database_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "data" / "relay.db"


@pytest.fixture
def store_opener(
        database_path: pathlib.Path) -> Callable[[], AbstractAsyncContextManager[Store]]:
    # NORMAL instead of FULL only to spare the test machine's disk; the default
    # is exercised by test_the_default_is_full_synchronous.
    return lambda: open_sqlite_store(database_path, synchronous="NORMAL")


def _pragma(path: pathlib.Path, name: str) -> object:
    with sqlite3.connect(path) as connection:
        return connection.execute(f"PRAGMA {name}").fetchone()[0]


async def test_the_file_is_created_in_wal_mode(database_path: pathlib.Path) -> None:
    async with open_sqlite_store(database_path):
        assert database_path.exists()
        assert _pragma(database_path, "journal_mode") == "wal"
    with sqlite3.connect(database_path) as connection:
        assert connection.execute("SELECT version FROM schema_meta").fetchone() == (
            LATEST_SCHEMA_VERSION,)


async def test_the_default_is_full_synchronous(database_path: pathlib.Path) -> None:
    async with open_sqlite_store(database_path) as store:
        def read(connection: sqlite3.Connection) -> tuple[int, int, int]:
            return (connection.execute("PRAGMA synchronous").fetchone()[0],
                    connection.execute("PRAGMA foreign_keys").fetchone()[0],
                    connection.execute("PRAGMA busy_timeout").fetchone()[0])
        synchronous, foreign_keys, busy_timeout = await store.read_for_tests(read)
    assert (synchronous, foreign_keys) == (2, 1)  # 2 is FULL
    assert busy_timeout > 0


async def test_an_unknown_synchronous_level_is_refused(database_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        async with open_sqlite_store(database_path, synchronous="SOMETIMES"):
            pass


async def test_a_newer_schema_version_is_refused(database_path: pathlib.Path) -> None:
    async with open_sqlite_store(database_path):
        pass
    with sqlite3.connect(database_path) as connection:
        connection.execute("UPDATE schema_meta SET version = ?", (LATEST_SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaVersionTooNew, match="newer"):
        async with open_sqlite_store(database_path):
            pass


async def test_a_second_opener_writes_while_the_first_reads(
        database_path: pathlib.Path) -> None:
    # The operator CLI opens the same file while the relay runs.
    async with open_sqlite_store(database_path) as relay:
        sender, _ = await _enrolled(relay)
        recipient, devices = await _enrolled(relay)
        async with open_sqlite_store(database_path) as operator:
            async with trio.open_nursery() as nursery:
                async def read_repeatedly() -> None:
                    for _ in range(20):
                        await _fetch_all(relay, recipient, 1)
                nursery.start_soon(read_repeatedly)
                for client_message_id in range(20):
                    await _send_now(operator, _send(sender, recipient, devices,
                                                    client_message_id))
            assert len(await _fetch_all(relay, recipient, 1)) == 20
            # And the other way round: the relay writes while the operator has it open.
            await _send_now(relay, _send(sender, recipient, devices, 20))
            assert await operator.queue_depth(user_id=recipient.user_id, device_id=1) == 21


async def _hold_the_writer(store: SqliteStore) -> tuple[threading.Event, threading.Event]:
    """Occupy the writer thread so that everything submitted next lands in ONE batch."""
    entered, release = threading.Event(), threading.Event()

    def block(connection: sqlite3.Connection) -> None:
        entered.set()
        release.wait(TIMEOUT_S)

    store.submit_write_for_tests(block)
    await trio.to_thread.run_sync(entered.wait, TIMEOUT_S)
    return entered, release


async def test_a_failing_operation_rolls_back_only_itself(database_path: pathlib.Path) -> None:
    async with open_sqlite_store(database_path) as store:
        sender, _ = await _enrolled(store)
        recipient, devices = await _enrolled(store)
        _, release = await _hold_the_writer(store)
        commits_before = store.commit_count
        first = store.submit_send(_send(sender, recipient, devices, 1))

        def half_done_then_fail(connection: sqlite3.Connection) -> None:
            connection.execute("UPDATE devices SET queue_depth = 999")
            raise RuntimeError("boom")

        failing = store.submit_write_for_tests(half_done_then_fail)
        last = store.submit_send(_send(sender, recipient, devices, 2))
        release.set()
        with trio.fail_after(TIMEOUT_S):
            assert (await first.wait()).status is SendStatus.ACCEPTED
            with pytest.raises(RuntimeError, match="boom"):
                await failing.wait()
            assert (await last.wait()).status is SendStatus.ACCEPTED
        assert store.commit_count - commits_before == 2  # the held batch, then this one
        assert await store.queue_depth(user_id=recipient.user_id, device_id=1) == 2


async def test_a_lost_transaction_fails_the_whole_batch(database_path: pathlib.Path) -> None:
    async with open_sqlite_store(database_path) as store:
        sender, _ = await _enrolled(store)
        recipient, devices = await _enrolled(store)
        _, release = await _hold_the_writer(store)
        first = store.submit_send(_send(sender, recipient, devices, 1))

        def lose_the_transaction(connection: sqlite3.Connection) -> None:
            # What SQLite itself does on SQLITE_FULL or an I/O error.
            connection.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")

        failing = store.submit_write_for_tests(lose_the_transaction)
        last = store.submit_send(_send(sender, recipient, devices, 2))
        release.set()
        with trio.fail_after(TIMEOUT_S):
            for pending in (first, failing, last):
                with pytest.raises(sqlite3.OperationalError, match="full"):
                    await pending.wait()
        assert await _fetch_all(store, recipient, 1) == []
        # The writer carries on with the next batch.
        retried = await _send_now(store, _send(sender, recipient, devices, 1))
        assert retried.status is SendStatus.ACCEPTED


async def test_close_commits_what_was_submitted(database_path: pathlib.Path) -> None:
    async with open_sqlite_store(database_path) as store:
        sender, _ = await _enrolled(store)
        recipient, devices = await _enrolled(store)
        pending = store.submit_send(_send(sender, recipient, devices, 1))
    assert (await pending.wait()).status is SendStatus.ACCEPTED
    with pytest.raises(RuntimeError, match="closed"):
        store.submit_send(_send(sender, recipient, devices, 2))
    with pytest.raises(RuntimeError, match="closed"):
        await store.queue_depth(user_id=recipient.user_id, device_id=1)
    async with open_sqlite_store(database_path) as reopened:
        assert await reopened.queue_depth(user_id=recipient.user_id, device_id=1) == 1
        queued = await _fetch_all(reopened, recipient, 1)
        assert queued[0].accepted_at == NOW


async def test_users_enrolled_before_account_keys_migrate_without_one(
        database_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file of schema version 4: its users keep their devices, have no account key (so they
    cannot publish a list), and a new enrolment gives them one, revoking the old devices."""
    with monkeypatch.context() as older:
        older.setattr(sqlite_schema, "MIGRATIONS", sqlite_schema.MIGRATIONS[:4])
        older.setattr(sqlite_schema, "LATEST_SCHEMA_VERSION", 4)
        async with open_sqlite_store(database_path) as store:
            user = await _declared(store)
    with sqlite3.connect(database_path) as connection:
        connection.execute("INSERT INTO devices (user_id, device_id, identity_key, registered_at)"
                           " VALUES (?, 1, ?, 0)", (user.user_id, b"k" * 32))
        connection.execute("UPDATE users SET next_device_id = 2 WHERE user_id = ?",
                           (user.user_id,))
    async with open_sqlite_store(database_path) as store:
        assert await store.account(user.user_id) == AccountRecord(
            account_key=None, device_list=None, device_list_version=0)
        assert [device.device_id for device in await store.list_devices(user.user_id)] == [1]
        with pytest.raises(DeviceListRefused) as refused:
            await store.publish_device_list(
                user_id=user.user_id, publisher_device_id=1, account_key=b"a" * 32, version=1,
                identity_keys=frozenset({b"k" * 32}), encoded=b"list", now=NOW, max_devices=5,
                revoke_reason="removed")
        assert refused.value.reason is DeviceListRefusal.ACCOUNT_KEY_MISMATCH
        registration = await _register_device(
            store, phone=user.phone, phone_key=await _code_for(store, user.phone))
        assert (registration.revoked, registration.device.device_id) == ((1,), 2)
