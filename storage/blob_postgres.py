"""The server store's blobs: metadata (``storage.blob_sql``) and bytes both in PostgreSQL.

The bytes are chunk rows (``blob_chunks``), one per append, each at most
``MAX_BLOB_PIECE_BYTES``: every node reads what any node wrote, and the operator's
``pg_dump`` carries them with the rest of the store. An append locks the blob's row, checks
its offset, inserts its chunk and moves ``received`` in ONE transaction (the writer's batch):
two appends racing at one offset on two nodes store one chunk, and a committed ``received``
always has its chunks. Chunks go with their blob (``ON DELETE CASCADE``), so expiry, erasure
and termination delete the bytes with the rows.

A chunk is keyed by the offset where it ends, so the chunks overlapping a read are one index
range: those ending after its start and before its end plus one chunk.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from storage import blob_sql
from storage.interfaces.blobs import BLOB_ID_BYTES, MAX_BLOB_PIECE_BYTES
from storage.records import BlobInfo, BlobOffsetMismatch, BlobPastSize, NotFound
from storage.sql_dialect import POSTGRES

__all__ = ["MAX_CHUNKS_PER_READ", "POSTGRES_BLOB_CHUNK_TABLES", "PostgresBlobMethods"]

T = TypeVar("T")

Connection = psycopg.Connection[tuple[Any, ...]]

POSTGRES_BLOB_CHUNK_TABLES = (
    # end_offset: where the chunk ends in its blob (it starts octet_length(data) before).
    """
    CREATE TABLE blob_chunks (
        blob_id BYTEA NOT NULL REFERENCES blobs (blob_id) ON DELETE CASCADE,
        end_offset BIGINT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (blob_id, end_offset)
    )
    """,
    # Ciphertext does not compress: store it out of line without trying.
    "ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL",
)

_LOCK_BLOB = "SELECT size, received FROM blobs WHERE blob_id = %s FOR UPDATE"
_INSERT_CHUNK = "INSERT INTO blob_chunks (blob_id, end_offset, data) VALUES (%s, %s, %s)"
_SET_RECEIVED = "UPDATE blobs SET received = %s WHERE blob_id = %s"
_RECEIVED = "SELECT received FROM blobs WHERE blob_id = %s"
MAX_CHUNKS_PER_READ = 64
"""Chunk rows one ``read_blob`` fetches at most: a blob uploaded in tiny pieces is read in
several calls rather than as one huge result (each row is at most ``MAX_BLOB_PIECE_BYTES``)."""

# octet_length reads a stored value's length from its TOAST pointer: rows past the read's end
# are skipped without fetching their data.
_CHUNKS = ("SELECT end_offset, data FROM blob_chunks"
           " WHERE blob_id = %s AND end_offset > %s AND end_offset <= %s"
           " AND end_offset - octet_length(data) < %s ORDER BY end_offset LIMIT %s")


def _check_piece(length: int) -> None:
    if not 0 <= length <= MAX_BLOB_PIECE_BYTES:
        raise ValueError(f"a piece of a blob is 0 to {MAX_BLOB_PIECE_BYTES} bytes")


def _append(connection: Connection, blob_id: bytes, offset: int, data: bytes) -> int:
    row = connection.execute(_LOCK_BLOB, (blob_id,)).fetchone()
    if row is None:
        raise NotFound("no such blob")
    size, received = int(row[0]), int(row[1])
    if offset != received:
        raise BlobOffsetMismatch(received)
    if offset + len(data) > size:
        raise BlobPastSize(size=size)
    if not data:
        return offset
    connection.execute(_INSERT_CHUNK, (blob_id, offset + len(data), data))
    connection.execute(_SET_RECEIVED, (offset + len(data), blob_id))
    return offset + len(data)


def _read(connection: Connection, blob_id: bytes, offset: int, length: int) -> bytes:
    row = connection.execute(_RECEIVED, (blob_id,)).fetchone()
    if row is None:
        raise NotFound("no such blob")
    end = min(offset + length, int(row[0]))
    if end <= offset:
        return b""
    pieces: list[bytes] = []
    # Every chunk overlapping [offset, end) ends after offset and at most one chunk past end
    # (the index range), and starts before end. Binary results: bytea as is, not as hex text.
    with connection.cursor(binary=True) as cursor:
        rows = cursor.execute(_CHUNKS, (blob_id, offset, end + MAX_BLOB_PIECE_BYTES, end,
                                        MAX_CHUNKS_PER_READ)).fetchall()
    for chunk_end, data in rows:
        chunk_start = int(chunk_end) - len(data)
        pieces.append(bytes(data)[max(offset - chunk_start, 0):end - chunk_start])
    result = b"".join(pieces)
    if not result:  # the snapshot holds received and its chunks together
        raise RuntimeError("a blob's chunks do not cover its received bytes")
    return result


class PostgresBlobMethods:
    """``storage.interfaces.blobs.BlobStore`` for ``storage.postgres.PostgresStore``."""

    if TYPE_CHECKING:
        async def _read(self, work: Callable[[Any], T]) -> T: ...
        async def _write(self, work: Callable[[Any], T]) -> T: ...

    async def create_blob(self, *, organisation_id: int, user_id: str, device_id: int,
                          size: int, quota_bytes: int, now_ms: int, expires_ms: int,
                          upload_deadline_ms: int | None = None) -> bytes:
        blob_id = secrets.token_bytes(BLOB_ID_BYTES)
        await self._write(lambda connection: blob_sql.create_blob(
            connection, POSTGRES, blob_id=blob_id, organisation_id=organisation_id,
            user_id=user_id, device_id=device_id, size=size, quota_bytes=quota_bytes,
            now_ms=now_ms, expires_ms=expires_ms, upload_deadline_ms=upload_deadline_ms))
        return blob_id

    async def blob_info(self, blob_id: bytes, now_ms: int) -> BlobInfo | None:
        return await self._read(lambda connection: blob_sql.blob_info(
            connection, POSTGRES, blob_id, now_ms))

    async def append_blob(self, blob_id: bytes, offset: int, data: bytes) -> int:
        _check_piece(len(data))
        return await self._write(lambda connection: _append(connection, blob_id, offset, data))

    async def read_blob(self, blob_id: bytes, offset: int, length: int) -> bytes:
        _check_piece(length)
        if offset < 0:
            raise ValueError("a blob offset is not negative")
        return await self._read(lambda connection: _read(connection, blob_id, offset, length))

    async def delete_expired_blobs(self, now_ms: int, limit: int) -> int:
        return await self._write(lambda connection: blob_sql.delete_expired_blobs(
            connection, POSTGRES, now_ms=now_ms, limit=limit))

    async def delete_organisation_blobs(self, organisation_id: int) -> int:
        return await self._write(lambda connection: blob_sql.delete_organisation_blobs(
            connection, POSTGRES, organisation_id))

    async def organisation_blob_bytes(self, organisation_id: int, now_ms: int) -> int:
        return await self._read(lambda connection: blob_sql.organisation_blob_bytes(
            connection, POSTGRES, organisation_id, now_ms))
