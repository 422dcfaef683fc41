"""Helpers of the sealed-sender relay tests: store dumps, deliveries, anonymous connections."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import trio

from client.connection import RelayClient, connect_anonymous
from tests.conftest import RelayUnderTest
from wire.frames import Deliver, QueueEmpty

WAIT_S = 30
"""Bound on anything that could hang, not a timing assertion."""


def token_and_hash() -> tuple[bytes, bytes]:
    """A delivery token (as a recipient derives one) and the hash the relay keeps."""
    token = secrets.token_bytes(16)
    return token, hashlib.sha256(token).digest()


def anonymous(relay: RelayUnderTest) -> AbstractAsyncContextManager[RelayClient]:
    return connect_anonymous("127.0.0.1", relay.port, ca=relay.running.cert_path,
                             server_name="localhost")


def dump_sqlite(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table of the SQLite store (read beside the running relay)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [name for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: connection.execute(f'SELECT * FROM "{table}"').fetchall()
                for table in tables}
    finally:
        connection.close()


def mentions(row: tuple[object, ...], text: str) -> bool:
    """Whether any value of ``row`` holds ``text`` (as text, or as UTF-8 bytes)."""
    needle = text.encode()
    return any((isinstance(value, str) and text in value)
               or (isinstance(value, bytes | bytearray | memoryview) and needle in bytes(value))
               for value in row)


def assert_no_row_links(rows: dict[str, list[tuple[object, ...]]], sender: str,
                        recipient: str) -> None:
    """No row names both users; no envelope or idempotency row names the sender."""
    for table, table_rows in rows.items():
        for row in table_rows:
            assert not (mentions(row, sender) and mentions(row, recipient)), (table, row)
            if table in ("envelopes", "idempotency_records"):
                assert not mentions(row, sender), (table, row)


async def receive(client: RelayClient, count: int) -> list[Deliver]:
    """The next ``count`` deliveries (QUEUE_EMPTY skipped), each acknowledged."""
    received: list[Deliver] = []
    with trio.fail_after(WAIT_S):
        async for delivery in client.deliveries():
            if isinstance(delivery, QueueEmpty):
                continue
            received.append(delivery)
            client.acknowledge(delivery.envelope_id)
            if len(received) == count:
                break
    return received

