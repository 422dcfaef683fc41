"""The wake-up push store on SQLite: the conformance suite on a real file."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from storage.base import Store
from storage.sqlite import open_sqlite_store
from tests.push_conformance import *  # noqa: F403


@pytest.fixture
def store_opener(tmp_path: pathlib.Path) -> Callable[[], AbstractAsyncContextManager[Store]]:
    path = tmp_path / "relay.sqlite3"
    return lambda: open_sqlite_store(path, synchronous="NORMAL")
