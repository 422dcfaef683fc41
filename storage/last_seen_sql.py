"""The day each device last authenticated (``devices.last_seen_on``), for the console.

One ISO date (``YYYY-MM-DD``, UTC) per device, which orders as text. The relay writes it at
most once a day per device (``relay.last_seen``), and the UPDATE below only moves it forward,
so a late or repeated write never takes it back.
"""

from __future__ import annotations

import datetime
from typing import Any

from storage.sql_dialect import Dialect

__all__ = ["LAST_SEEN_COLUMN", "devices_last_seen", "record_device_seen"]

Connection = Any

LAST_SEEN_COLUMN = (
    # NULL until the device first authenticates after this migration. The same DDL on both
    # databases: a nullable column without a default is added without rewriting the table.
    "ALTER TABLE devices ADD COLUMN last_seen_on TEXT",
)


def record_device_seen(connection: Connection, dialect: Dialect, *, user_id: str,
                       device_id: int, day: datetime.date) -> bool:
    """See ``Store.record_device_seen``."""
    text = day.isoformat()
    cursor = connection.execute(dialect.sql(
        "UPDATE devices SET last_seen_on = ? WHERE user_id = ? AND device_id = ?"
        " AND (last_seen_on IS NULL OR last_seen_on < ?)"), (text, user_id, device_id, text))
    return bool(cursor.rowcount)


def devices_last_seen(connection: Connection, dialect: Dialect,
                      user_id: str) -> dict[int, datetime.date]:
    """See ``Store.devices_last_seen``."""
    rows = connection.execute(dialect.sql(
        "SELECT device_id, last_seen_on FROM devices"
        " WHERE user_id = ? AND last_seen_on IS NOT NULL"), (user_id,)).fetchall()
    return {int(row[0]): datetime.date.fromisoformat(str(row[1])) for row in rows}
