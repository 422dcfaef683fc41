"""Choosing a store by URL: ``sqlite:///PATH`` (the default) or ``postgresql://...``.

``sqlite:///relay.db`` is a path relative to the working directory and
``sqlite:////var/lib/cryptopass/relay.db`` an absolute one (three slashes, then
the path, as SQLAlchemy spells it). ``postgresql://`` and ``postgres://`` URLs go
to libpq unchanged (``?options=-csearch_path%3Dname`` selects a schema).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from storage.base import Store

__all__ = ["SQLITE_FILE_NAME", "StoreLocation", "open_store", "parse_store_url"]

SQLITE_FILE_NAME = "relay.db"
"""The SQLite store's file in the data directory when no URL is given."""

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreLocation:
    kind: Literal["sqlite", "postgresql"]
    sqlite_path: Path | None = None
    """The SQLite file (kind sqlite)."""
    postgres_dsn: str | None = None
    """The libpq URI (kind postgresql); may carry a password: never log it."""

    def describe(self) -> str:
        """For logs: the SQLite path, or the PostgreSQL host and database (no credentials)."""
        if self.kind == "sqlite":
            return f"sqlite:{self.sqlite_path}"
        assert self.postgres_dsn is not None
        parts = urlsplit(self.postgres_dsn)
        return f"postgresql://{parts.hostname or ''}:{parts.port or 5432}{parts.path}"


def parse_store_url(url: str | None, *, data_dir: Path) -> StoreLocation:
    """Where the store lives; ``None`` means SQLite in ``data_dir``.

    Raises:
        ValueError: neither a ``sqlite:///PATH`` nor a ``postgresql://`` URL.
    """
    if url is None:
        return StoreLocation(kind="sqlite", sqlite_path=data_dir / SQLITE_FILE_NAME)
    if url.startswith(_SQLITE_PREFIX):
        path = url[len(_SQLITE_PREFIX):]
        if not path or path.endswith("/"):
            raise ValueError(f"expected sqlite:///PATH naming a file, got {url!r}")
        return StoreLocation(kind="sqlite", sqlite_path=Path(path))
    scheme, separator, _ = url.partition("://")
    if separator and scheme.lower() in _POSTGRES_SCHEMES:
        return StoreLocation(kind="postgresql", postgres_dsn=url)
    shown = scheme if separator else url[:20]
    raise ValueError(f"unsupported store {shown!r}: expected sqlite:///PATH or "
                     "postgresql://USER@HOST:PORT/DATABASE")


@asynccontextmanager
async def open_store(location: StoreLocation, *,
                     commit_gather_s: float = 0.0) -> AsyncIterator[Store]:
    """Open (and migrate) the store; close it on exit. ``commit_gather_s``: how long a busy
    writer gathers writes into one commit (``storage.group_commit``; 0: never)."""
    if location.kind == "sqlite":
        from storage.sqlite import open_sqlite_store  # noqa: PLC0415 (one backend per process)
        assert location.sqlite_path is not None
        async with open_sqlite_store(location.sqlite_path,
                                     commit_gather_s=commit_gather_s) as sqlite_store:
            yield sqlite_store
    else:
        from storage.postgres import open_postgres_store  # noqa: PLC0415
        assert location.postgres_dsn is not None
        async with open_postgres_store(location.postgres_dsn,
                                       commit_gather_s=commit_gather_s) as postgres_store:
            yield postgres_store
