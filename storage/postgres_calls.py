"""Where each call of a PostgreSQL cluster lives: the ``call_routes`` table and its SQL.

A call's media session lives in the memory of the node that opened it (relay/calls.py). So that
a device connected to another node can find it, the holding node records the call's id, the
users invited to it and the address devices reach the node at; a CALL_JOIN reaching another
node reads the row and answers CALL_ELSEWHERE, but only to an invited user (to anyone else the
call is unknown, as it is on the holding node). Rows carry an expiry (the longest call) and go
when the call ends; a node that dies leaves rows that expire by themselves. Nothing here says
who talks to whom beyond what the holding node already knows, and no media passes through.
"""

from __future__ import annotations

from collections.abc import Iterable

from storage.postgres_schema import Connection

__all__ = ["find_call", "forget_call", "publish_call"]

# The table is created by migration 11 (storage.postgres_schema): call_id, the call's 16 random
# bytes; address, "host:port" of the holding node; invited, the user ids that may join;
# expires_at, ms since the epoch, the call's longest end.


def publish_call(connection: Connection, *, call_id: bytes, address: str,
                 invited: Iterable[str], expires_at: int, now: int) -> None:
    """Record a call this node holds (and drop the rows of calls long over)."""
    connection.execute("DELETE FROM call_routes WHERE expires_at <= %s", (now,))
    connection.execute(
        "INSERT INTO call_routes (call_id, address, invited, expires_at)"
        " VALUES (%s, %s, %s, %s)", (call_id, address, sorted(invited), expires_at))


def find_call(connection: Connection, *, call_id: bytes, user_id: str,
              now: int) -> str | None:
    """The address of the node holding ``call_id``, if ``user_id`` was invited to it."""
    row = connection.execute(
        "SELECT address FROM call_routes WHERE call_id = %s AND expires_at > %s"
        " AND %s = ANY(invited)", (call_id, now, user_id)).fetchone()
    return None if row is None else str(row[0])


def forget_call(connection: Connection, *, call_id: bytes) -> None:
    """The call ended."""
    connection.execute("DELETE FROM call_routes WHERE call_id = %s", (call_id,))
