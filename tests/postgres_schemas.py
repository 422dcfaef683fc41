"""A fresh PostgreSQL schema per test, for the tests of several relay nodes.

Uses the server and the skip/fail policy of ``test_storage_postgres.py``
(``CRYPTOPASS_TEST_POSTGRES``; skipped without a server unless ``CI`` is set).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psycopg
from psycopg import sql

from tests.test_storage_postgres import _connect_or_give_up, _server_dsn

__all__ = ["conninfo", "fresh_schema", "store_url"]


@contextmanager
def fresh_schema() -> Iterator[str]:
    """Create a schema, yield its name, drop it with everything in it."""
    schema = f"cryptopass_test_{uuid.uuid4().hex}"
    with _connect_or_give_up(_server_dsn()) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            yield schema
        finally:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def conninfo(schema: str) -> str:
    """A libpq key=value string whose search_path is ``schema``."""
    return psycopg.conninfo.make_conninfo(_server_dsn(), options=f"-csearch_path={schema}")


def store_url(schema: str) -> str:
    """A ``postgresql://`` URL (what ``--store`` takes) whose search_path is ``schema``."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo(schema))
    user = quote(str(params.get("user", "postgres")), safe="")
    password = params.get("password")
    credentials = f"{user}:{quote(str(password), safe='')}" if password else user
    host = params.get("host", "127.0.0.1")
    port = params.get("port", 5432)
    database = params.get("dbname", "postgres")
    options = quote(str(params["options"]), safe="")
    return f"postgresql://{credentials}@{host}:{port}/{database}?options={options}"
