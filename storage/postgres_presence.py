"""Cluster presence on PostgreSQL: which node holds each connected device.

Several relay nodes share one database. Each node LISTENs on a channel of its
own (``node_channel``); the ``presence`` table (schema v2) maps every connected
device to the channel of the node holding it, with a lease (``expires_at``) the
node keeps renewing. A node that dies stops renewing; its rows expire and
nobody is notified on its behalf any more.

Notifications are only wake-ups, never data:

* ``wake USER DEVICE``: something was queued for the device; sent by the
  sending transaction itself (``notify_recipient_nodes``), so it fires on
  commit and only on commit.
* ``replaced USER DEVICE TOKEN``: the device connected to another node; the
  holder closes its connection whose session token is TOKEN (and no other: a
  later connection of the device to the same node keeps running).
* ``revoked USER DEVICE``: the device was deleted (with its user); the holder
  closes it at once, whatever its token (invariant: revocation is immediate).

Every function here runs in a worker thread on a connection in a transaction
(the caller's), and takes ``now``/``expires_at`` from the caller's clock.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from storage.postgres_schema import Connection

__all__ = [
    "DeviceGone",
    "Notification",
    "NotificationKind",
    "PreviousHolder",
    "claim_device",
    "current_schema",
    "forget_node",
    "holders",
    "node_channel",
    "notify_prekeys_low",
    "notify_recipient_nodes",
    "notify_revoked_devices",
    "parse_notification",
    "reassert_device",
    "release_device",
    "renew_leases",
]

CHANNEL_PREFIX = "cryptopass_node_"
"""Channels are identifiers: at most 63 bytes (NAMEDATALEN - 1), hence a hash."""

MAX_NOTIFICATION_BYTES = 512
"""Longest payload this module ever sends; longer ones are not ours and are ignored."""


class NotificationKind(enum.Enum):
    WAKE = "wake"
    REPLACED = "replaced"
    REVOKED = "revoked"
    PREKEYS_LOW = "prekeys_low"


class DeviceGone(Exception):
    """The device was deleted before it could be claimed: refuse the connection."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Notification:
    kind: NotificationKind
    user_id: str
    device_id: int
    session_token: str | None = None
    """REPLACED only: the session to close."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PreviousHolder:
    """Who held a device before a claim (another node, or an older connection here)."""

    node_name: str
    channel: str
    session_token: str
    expires_at: int


def node_channel(schema: str, node_name: str) -> str:
    """The LISTEN channel of ``node_name`` for the tables in ``schema``.

    Channels are database-wide while the tables live in a schema, so two
    clusters sharing a database (one per schema) must not hear each other.
    """
    digest = hashlib.blake2b(f"{schema}\0{node_name}".encode(), digest_size=16).hexdigest()
    return CHANNEL_PREFIX + digest


def current_schema(connection: Connection) -> str:
    row = connection.execute("SELECT current_schema()").fetchone()
    if row is None or row[0] is None:
        raise RuntimeError("the connection has no current schema (check search_path)")
    return str(row[0])


def claim_device(connection: Connection, *, user_id: str, device_id: int, node_name: str,
                 channel: str, session_token: str, expires_at: int) -> PreviousHolder | None:
    """Make this node's session the device's holder; tell the previous holder.

    The device row is locked FOR SHARE first: it conflicts with the FOR UPDATE
    every send to the device takes, so a send either committed before this
    claim (and the new holder's first queue read sees it) or it notifies the
    new holder. Returns the previous holder (None if there was none).

    Raises:
        DeviceGone: the device was deleted meanwhile (``notify_revoked_devices``
            locks the device rows too, so a claim never slips past a deletion).
    """
    locked = connection.execute(
        "SELECT 1 FROM devices WHERE user_id = %s AND device_id = %s FOR SHARE",
        (user_id, device_id)).fetchone()
    if locked is None:
        raise DeviceGone(f"device {device_id} of this user no longer exists")
    row = connection.execute(
        "SELECT node_name, channel, session_token, expires_at FROM presence"
        " WHERE user_id = %s AND device_id = %s FOR UPDATE", (user_id, device_id)).fetchone()
    connection.execute(
        "INSERT INTO presence (user_id, device_id, node_name, channel, session_token,"
        " expires_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (user_id, device_id)"
        " DO UPDATE SET node_name = excluded.node_name, channel = excluded.channel,"
        " session_token = excluded.session_token, expires_at = excluded.expires_at",
        (user_id, device_id, node_name, channel, session_token, expires_at))
    if row is None:
        return None
    previous = PreviousHolder(node_name=str(row[0]), channel=str(row[1]),
                              session_token=str(row[2]), expires_at=int(row[3]))
    if previous.channel != channel:
        # Another node held it: it closes that connection when told (on commit).
        connection.execute("SELECT pg_notify(%s, %s)", (previous.channel, _payload(
            NotificationKind.REPLACED, user_id, device_id, previous.session_token)))
    return previous


def reassert_device(connection: Connection, *, user_id: str, device_id: int,
                    node_name: str, channel: str, session_token: str,
                    expires_at: int) -> bool:
    """After this node was cut off: hold the device again, unless someone took it over.

    Writes the row back if it is missing (a PostgreSQL failover may lose recent
    commits) or already ours. Returns False if the device is gone or another
    session holds it now: the caller closes its connection.
    """
    locked = connection.execute(
        "SELECT 1 FROM devices WHERE user_id = %s AND device_id = %s FOR SHARE",
        (user_id, device_id)).fetchone()
    if locked is None:
        return False
    row = connection.execute(
        "SELECT session_token FROM presence WHERE user_id = %s AND device_id = %s FOR UPDATE",
        (user_id, device_id)).fetchone()
    if row is not None and row[0] != session_token:
        return False
    connection.execute(
        "INSERT INTO presence (user_id, device_id, node_name, channel, session_token,"
        " expires_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (user_id, device_id)"
        " DO UPDATE SET expires_at = excluded.expires_at",
        (user_id, device_id, node_name, channel, session_token, expires_at))
    return True


def release_device(connection: Connection, *, user_id: str, device_id: int,
                   session_token: str) -> bool:
    """Forget the device's presence if this session still holds it."""
    deleted = connection.execute(
        "DELETE FROM presence WHERE user_id = %s AND device_id = %s AND session_token = %s",
        (user_id, device_id, session_token)).rowcount
    return deleted > 0


def renew_leases(connection: Connection, *, channel: str, expires_at: int) -> int:
    """Extend every lease of the node; returns how many devices it holds."""
    return connection.execute("UPDATE presence SET expires_at = %s WHERE channel = %s",
                              (expires_at, channel)).rowcount


def forget_node(connection: Connection, *, channel: str) -> int:
    """Drop every presence of the node (it stops, or restarts and holds nothing yet)."""
    return connection.execute("DELETE FROM presence WHERE channel = %s", (channel,)).rowcount


def holders(connection: Connection, *, user_id: str, device_id: int,
            now: int) -> str | None:
    """The node name holding the device under an unexpired lease, or None."""
    row = connection.execute(
        "SELECT node_name FROM presence WHERE user_id = %s AND device_id = %s"
        " AND expires_at > %s", (user_id, device_id, now)).fetchone()
    return None if row is None else str(row[0])


def notify_recipient_nodes(connection: Connection, *, user_id: str,
                           device_ids: Sequence[int], now: int,
                           skip_channel: str | None) -> None:
    """Wake the nodes holding these devices once the current transaction commits.

    Runs inside the sending transaction after its inserts. ``skip_channel``
    is the sending node's own channel: its local pumps are woken directly.
    """
    connection.execute(
        "SELECT pg_notify(channel, 'wake ' || user_id || ' ' || device_id) FROM presence"
        " WHERE user_id = %s AND device_id = ANY(%s) AND expires_at > %s"
        " AND channel IS DISTINCT FROM %s",
        (user_id, list(device_ids), now, skip_channel))


def notify_prekeys_low(connection: Connection, *, user_id: str, device_ids: Sequence[int],
                       now: int, skip_channel: str | None) -> None:
    """Tell the nodes holding these devices that their one-time prekeys run low (a bundle
    claim on another node took from them); the holder pushes PREKEYS_LOW."""
    connection.execute(
        "SELECT pg_notify(channel, 'prekeys_low ' || user_id || ' ' || device_id)"
        " FROM presence WHERE user_id = %s AND device_id = ANY(%s) AND expires_at > %s"
        " AND channel IS DISTINCT FROM %s",
        (user_id, list(device_ids), now, skip_channel))


def notify_revoked_devices(connection: Connection, *, user_id: str,
                           device_id: int | None = None) -> None:
    """Tell the nodes holding the user's devices (only ``device_id`` if given) to close them,
    once the deletion commits.

    Call in the deleting transaction, before deleting. The device rows are
    locked first: a concurrent claim is either visible here (and notified) or
    waits and then finds the device gone.
    """
    # A NULL device_id selects every device of the user.
    connection.execute("SELECT 1 FROM devices WHERE user_id = %s"
                       " AND (%s::integer IS NULL OR device_id = %s) FOR UPDATE",
                       (user_id, device_id, device_id))
    connection.execute(
        "SELECT pg_notify(channel, 'revoked ' || user_id || ' ' || device_id) FROM presence"
        " WHERE user_id = %s AND (%s::integer IS NULL OR device_id = %s)",
        (user_id, device_id, device_id))


def _payload(kind: NotificationKind, user_id: str, device_id: int,
             session_token: str | None = None) -> str:
    parts = [kind.value, user_id, str(device_id)]
    if session_token is not None:
        parts.append(session_token)
    return " ".join(parts)


def parse_notification(payload: str) -> Notification | None:
    """Decode a payload this module sent; None for anything else (never raises)."""
    if len(payload) > MAX_NOTIFICATION_BYTES:
        return None
    parts = payload.split(" ")
    try:
        kind = NotificationKind(parts[0])
    except ValueError:
        return None
    expected = 4 if kind is NotificationKind.REPLACED else 3
    if len(parts) != expected or not parts[2].isdigit() or not parts[1]:
        return None
    return Notification(kind=kind, user_id=parts[1], device_id=int(parts[2]),
                        session_token=parts[3] if kind is NotificationKind.REPLACED else None)
