"""The audit log is append-only in the database itself, not only through the Store API:
a direct DELETE or an edit of anything but the subject is refused (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import pathlib
import sqlite3
import uuid

import psycopg
import pytest
from psycopg import sql

from storage.postgres import open_postgres_store
from storage.sqlite import open_sqlite_store
from tests.storage_conformance import NOW

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


async def test_sqlite_refuses_deleting_or_rewriting_audit_entries(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "relay.db"
    async with open_sqlite_store(path, synchronous="NORMAL") as store:
        await store.append_audit(organisation_id=1, actor="cli", action="user.declare",
                                 subject="+447000000001", address="local", now=NOW)
    connection = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            connection.execute("DELETE FROM audit_log")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            connection.execute("UPDATE audit_log SET action = 'nothing'")
        connection.execute("UPDATE audit_log SET subject = 'erased-1'")  # pseudonymisation
        assert connection.execute("SELECT action, subject FROM audit_log").fetchall() == [
            ("user.declare", "erased-1")]
    finally:
        connection.close()


async def test_postgres_refuses_deleting_or_rewriting_audit_entries() -> None:
    dsn = os.environ.get("CRYPTOPASS_TEST_POSTGRES", DEFAULT_DSN)
    schema = f"audit_{uuid.uuid4().hex}"
    try:
        admin = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {error}")
        pytest.skip(f"PostgreSQL is unreachable at {dsn!r}: {error}")
    try:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        scoped = psycopg.conninfo.make_conninfo(dsn, options=f"-csearch_path={schema}")
        async with open_postgres_store(scoped) as store:
            await store.append_audit(organisation_id=1, actor="cli", action="user.declare",
                                     subject="+447000000001", address="local", now=NOW)
        with psycopg.connect(scoped, autocommit=True) as connection:
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                connection.execute("DELETE FROM audit_log")
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                connection.execute("UPDATE audit_log SET actor = 'someone else'")
            connection.execute("UPDATE audit_log SET subject = 'erased-1'")
            assert connection.execute("SELECT action, subject FROM audit_log").fetchall() == [
                ("user.declare", "erased-1")]
    finally:
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        admin.close()
