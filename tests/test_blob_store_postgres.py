"""The PostgreSQL blob store: the conformance suite on a real server (a fresh schema per
test), then its chunk rows."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import psycopg

from storage.base import Store
from storage.blob_postgres import MAX_CHUNKS_PER_READ
from storage.interfaces.blobs import MAX_BLOB_PIECE_BYTES
from storage.postgres import open_postgres_store
from tests.blob_store_conformance import *  # noqa: F403
from tests.blob_store_conformance import _create, _read_all, _upload
from tests.storage_conformance import _declared, _organisation
from tests.test_storage_postgres import postgres_dsn, store_opener

__all__ = ["postgres_dsn", "store_opener"]  # the fixtures this module runs the suite with

_StoreOpener = Callable[[], AbstractAsyncContextManager[Store]]


def _chunks(dsn: str) -> list[tuple[int, int]]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        return [(int(end), int(length)) for end, length in connection.execute(
            "SELECT end_offset, octet_length(data) FROM blob_chunks ORDER BY end_offset")]


async def test_each_append_is_one_bounded_chunk_row(postgres_dsn: str) -> None:
    data = secrets.token_bytes(2 * MAX_BLOB_PIECE_BYTES + 10)
    async with open_postgres_store(postgres_dsn) as store:
        user = await _declared(store)
        blob_id = await _create(store, user, len(data))
        await _upload(store, blob_id, data, piece=MAX_BLOB_PIECE_BYTES)
        # A read spanning chunk boundaries, from inside one chunk to inside the last.
        start = MAX_BLOB_PIECE_BYTES - 3
        assert await store.read_blob(blob_id, start, MAX_BLOB_PIECE_BYTES) == data[
            start:start + MAX_BLOB_PIECE_BYTES]
    assert _chunks(postgres_dsn) == [
        (MAX_BLOB_PIECE_BYTES, MAX_BLOB_PIECE_BYTES),
        (2 * MAX_BLOB_PIECE_BYTES, MAX_BLOB_PIECE_BYTES),
        (len(data), 10)]


async def test_chunks_go_with_their_blob(postgres_dsn: str) -> None:
    async with open_postgres_store(postgres_dsn) as store:
        name = await _organisation(store)
        user = await _declared(store, name)
        blob_id = await _create(store, user, 10)
        await _upload(store, blob_id, b"0123456789", piece=3)
        assert len(_chunks(postgres_dsn)) == 4
        await store.terminate_organisation(name)
    assert _chunks(postgres_dsn) == []


async def test_a_blob_uploaded_in_tiny_pieces_is_read_in_bounded_steps(
        postgres_dsn: str) -> None:
    data = secrets.token_bytes(3 * MAX_CHUNKS_PER_READ + 5)
    async with open_postgres_store(postgres_dsn) as store:
        user = await _declared(store)
        blob_id = await _create(store, user, len(data))
        await _upload(store, blob_id, data, piece=1)
        # One call fetches MAX_CHUNKS_PER_READ rows at most; the caller reads on.
        first = await store.read_blob(blob_id, 0, len(data))
        assert first == data[:MAX_CHUNKS_PER_READ]
        assert await _read_all(store, blob_id, piece=len(data)) == data
