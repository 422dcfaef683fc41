"""Wake-up pushes: each device's push target and the durable wake-up queue, for both stores.

This module owns the ``push_targets`` and ``push_wakeups`` tables. Their DDL is a migration of
its own (``SQLITE_PUSH_TABLES``, ``POSTGRES_PUSH_TABLES``, appended to the stores'
``MIGRATIONS``); change them only through a further migration written here.

A target belongs to a device (a foreign key that cascades: it goes with the device, however the
device goes); a wake-up belongs to a target (it goes with it). A wake-up row names only its
recipient device: no sender, envelope or count. It is either pending (``pushed`` = 0: due at
``next_attempt_at``, claimed while ``claim_token`` is set) or pushed (``pushed`` = 1: kept until
the device connects, so that later envelopes within the interval are coalesced). Every function
runs inside the caller's transaction.
"""

# S608 (SQL built from strings): the statements join only constant text and the dialect's
# clauses; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from storage.push_records import (
    ClaimedWakeup,
    StoredPushTarget,
    WakeupClaims,
    WakeupResult,
    WakeupsScheduled,
)
from storage.sql_dialect import POSTGRES, SQLITE, Connection, Dialect

__all__ = [
    "POSTGRES_PUSH_TABLES",
    "SQLITE_PUSH_TABLES",
    "claim_wakeups",
    "clear_push_target",
    "clear_wakeup",
    "devices_with_targets",
    "finish_wakeup",
    "get_push_target",
    "next_wakeup_due",
    "push_target_devices",
    "recover_wakeups",
    "schedule_wakeups",
    "set_push_target",
]


def _tables(*, blob: str, big: str) -> tuple[str, ...]:
    return (
        # One target per device; p256dh and auth only for Web Push.
        f"""
        CREATE TABLE push_targets (
            user_id TEXT NOT NULL,
            device_id INTEGER NOT NULL,
            provider TEXT NOT NULL,
            token TEXT NOT NULL,
            p256dh {blob},
            auth {blob},
            registered_at {big} NOT NULL,
            PRIMARY KEY (user_id, device_id),
            FOREIGN KEY (user_id, device_id)
                REFERENCES devices (user_id, device_id) ON DELETE CASCADE
        )
        """,
        # committed_at: when the first envelope the wake-up announces was committed (the
        # delay metric); attempts: sends tried since it became pending.
        f"""
        CREATE TABLE push_wakeups (
            user_id TEXT NOT NULL,
            device_id INTEGER NOT NULL,
            pushed INTEGER NOT NULL DEFAULT 0 CHECK (pushed IN (0, 1)),
            urgent INTEGER NOT NULL DEFAULT 0 CHECK (urgent IN (0, 1)),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at {big} NOT NULL,
            committed_at {big} NOT NULL,
            pushed_at {big},
            claim_token {blob},
            PRIMARY KEY (user_id, device_id),
            FOREIGN KEY (user_id, device_id)
                REFERENCES push_targets (user_id, device_id) ON DELETE CASCADE
        )
        """,
        "CREATE INDEX push_wakeups_due ON push_wakeups (pushed, next_attempt_at)",
    )


SQLITE_PUSH_TABLES = _tables(blob="BLOB", big="INTEGER")
POSTGRES_PUSH_TABLES = _tables(blob="BYTEA", big="BIGINT")

# Only PostgreSQL keeps presence (several nodes share it); a SQLite store serves one node,
# whose relay leaves its connected devices out before asking.
_ABSENT = (" AND NOT EXISTS (SELECT 1 FROM presence p WHERE p.user_id = t.user_id"
           " AND p.device_id = t.device_id AND p.expires_at > ?"
           " AND p.channel IS DISTINCT FROM ?)")
"""The device is held by no node but the one asking (its parameters: now, and the asking
node's channel: that node knows its own connections better than its lease rows do)."""


class _Statements:
    """This module's statements in one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        sql = dialect.sql
        shared = dialect is POSTGRES
        absent = _ABSENT if shared else ""
        lock_target = " FOR UPDATE OF t" if shared else ""
        skip_locked = " FOR UPDATE OF w SKIP LOCKED" if shared else ""
        self.shared = shared
        self.set_target = sql(
            "INSERT INTO push_targets (user_id, device_id, provider, token, p256dh, auth,"
            " registered_at) SELECT user_id, device_id, ?, ?, ?, ?, ? FROM devices"
            " WHERE user_id = ? AND device_id = ?"
            " ON CONFLICT (user_id, device_id) DO UPDATE SET provider = excluded.provider,"
            " token = excluded.token, p256dh = excluded.p256dh, auth = excluded.auth,"
            " registered_at = excluded.registered_at")
        self.clear_target = sql("DELETE FROM push_targets WHERE user_id = ? AND device_id = ?")
        self.delete_gone_target = sql(
            "DELETE FROM push_targets WHERE user_id = ? AND device_id = ? AND provider = ?"
            " AND token = ?")
        self.get_target = sql(
            "SELECT provider, token, p256dh, auth FROM push_targets"
            " WHERE user_id = ? AND device_id = ?")
        self.all_targets = sql("SELECT user_id, device_id FROM push_targets")
        self.targets_of_users = sql(
            "SELECT user_id, device_id FROM push_targets WHERE user_id = ANY(?)" if shared
            else "SELECT user_id, device_id FROM push_targets WHERE user_id = ?")
        # The target row locked (PostgreSQL): nodes scheduling one device take turns.
        self.wakeup_of_target = sql(
            "SELECT t.provider, w.pushed, w.pushed_at, w.urgent FROM push_targets t"
            " LEFT JOIN push_wakeups w ON w.user_id = t.user_id AND w.device_id = t.device_id"
            " WHERE t.user_id = ? AND t.device_id = ?" + absent + lock_target)
        self.insert_wakeup = sql(
            "INSERT INTO push_wakeups (user_id, device_id, urgent, next_attempt_at,"
            " committed_at) VALUES (?, ?, ?, ?, ?)")
        self.rearm_wakeup = sql(
            "UPDATE push_wakeups SET pushed = 0, urgent = ?, attempts = 0, next_attempt_at = ?,"
            " committed_at = ?, pushed_at = NULL, claim_token = NULL"
            " WHERE user_id = ? AND device_id = ?")
        self.mark_urgent = sql(
            "UPDATE push_wakeups SET urgent = 1 WHERE user_id = ? AND device_id = ?"
            " AND pushed = 0")
        self.clear_wakeup = sql("DELETE FROM push_wakeups WHERE user_id = ? AND device_id = ?")
        self.due_wakeups = sql(
            "SELECT w.user_id, w.device_id, w.urgent, w.attempts, w.committed_at, t.provider,"
            " t.token, t.p256dh, t.auth FROM push_wakeups w JOIN push_targets t"
            " ON t.user_id = w.user_id AND t.device_id = w.device_id"
            " WHERE w.pushed = 0 AND w.next_attempt_at <= ? ORDER BY w.next_attempt_at"
            " LIMIT ?" + skip_locked)
        self.claim = sql(
            "UPDATE push_wakeups SET next_attempt_at = ?, attempts = attempts + 1,"
            " claim_token = ? WHERE user_id = ? AND device_id = ?")
        self.next_due = sql("SELECT MIN(next_attempt_at) FROM push_wakeups WHERE pushed = 0")
        # The first three parameters are 1 if the push was urgent. An urgent envelope that
        # arrived while a plain push was in flight (urgent = 1 now) leaves the wake-up pending,
        # due at once, to go out urgently; otherwise it is pushed, and ``urgent`` then says
        # whether that push was.
        again = "urgent = 1 AND ? = 0"
        self.finish_pushed = sql(
            f"UPDATE push_wakeups SET pushed = CASE WHEN {again} THEN 0 ELSE 1 END,"
            f" urgent = CASE WHEN {again} THEN 1 ELSE ? END, pushed_at = ?,"
            " next_attempt_at = ?, attempts = 0, claim_token = NULL"
            " WHERE user_id = ? AND device_id = ? AND claim_token = ?")
        self.finish_retry = sql(
            "UPDATE push_wakeups SET next_attempt_at = ?, claim_token = NULL"
            " WHERE user_id = ? AND device_id = ? AND claim_token = ?")
        self.claimed = sql(
            "SELECT 1 FROM push_wakeups WHERE user_id = ? AND device_id = ?"
            " AND claim_token = ?" + dialect.for_update)
        self.recover = sql(
            "INSERT INTO push_wakeups (user_id, device_id, next_attempt_at, committed_at)"
            " SELECT t.user_id, t.device_id, ?, ? FROM push_targets t JOIN devices d"
            " ON d.user_id = t.user_id AND d.device_id = t.device_id"
            " WHERE d.queue_depth > 0" + absent
            + " ON CONFLICT (user_id, device_id) DO NOTHING")


_STATEMENTS = {dialect: _Statements(dialect) for dialect in (SQLITE, POSTGRES)}


def set_push_target(connection: Connection, dialect: Dialect, *, user_id: str, device_id: int,
                    target: StoredPushTarget, now: int) -> bool:
    """See ``PushTargetStore.set_push_target``."""
    cursor = connection.execute(_STATEMENTS[dialect].set_target, (
        target.provider, target.token, target.p256dh, target.auth, now, user_id, device_id))
    return cursor.rowcount > 0


def clear_push_target(connection: Connection, dialect: Dialect, *, user_id: str,
                      device_id: int) -> None:
    """See ``PushTargetStore.clear_push_target`` (its wake-up goes by ON DELETE CASCADE)."""
    connection.execute(_STATEMENTS[dialect].clear_target, (user_id, device_id))


def get_push_target(connection: Connection, dialect: Dialect, *, user_id: str,
                    device_id: int) -> StoredPushTarget | None:
    """See ``PushTargetStore.get_push_target``."""
    row = connection.execute(_STATEMENTS[dialect].get_target, (user_id, device_id)).fetchone()
    return None if row is None else _target(row)


def push_target_devices(connection: Connection, dialect: Dialect) -> list[tuple[str, int]]:
    """See ``PushTargetStore.push_target_devices``."""
    rows = connection.execute(_STATEMENTS[dialect].all_targets).fetchall()
    return [(str(user_id), int(device_id)) for user_id, device_id in rows]


def _target(row: Sequence[Any]) -> StoredPushTarget:
    provider, token, p256dh, auth = row
    return StoredPushTarget(provider=str(provider), token=str(token),
                            p256dh=None if p256dh is None else bytes(p256dh),
                            auth=None if auth is None else bytes(auth))


def devices_with_targets(connection: Connection, dialect: Dialect,
                         devices: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
    """See ``PushTargetStore.devices_with_targets``."""
    wanted = set(devices)
    user_ids = sorted({user_id for user_id, _ in wanted})
    return _devices_with_targets(connection, _STATEMENTS[dialect], user_ids) & wanted


def _devices_with_targets(connection: Connection, statements: _Statements,
                          user_ids: list[str]) -> set[tuple[str, int]]:
    """The devices of these users that have a target: one statement on PostgreSQL."""
    if not user_ids:
        return set()
    if statements.shared:
        rows = connection.execute(statements.targets_of_users, (user_ids,)).fetchall()
    else:
        rows = [row for user_id in user_ids
                for row in connection.execute(statements.targets_of_users, (user_id,))
                .fetchall()]
    return {(str(user_id), int(device_id)) for user_id, device_id in rows}


def schedule_wakeups(connection: Connection, dialect: Dialect,
                     devices: Iterable[tuple[str, int, bool]], *, now: int,
                     interval_ms: int, urgent_interval_ms: int = 0,
                     committed_at: Mapping[tuple[str, int], int] | None = None,
                     own_channel: str | None = None) -> WakeupsScheduled:
    """See ``WakeupQueue.schedule_wakeups``; ``own_channel`` is the asking node's LISTEN
    channel on a shared store (its own presence rows do not count)."""
    statements = _STATEMENTS[dialect]
    wanted: dict[tuple[str, int], bool] = {}
    for user_id, device_id, urgent in devices:
        wanted[user_id, device_id] = wanted.get((user_id, device_id), False) or urgent
    scheduled: dict[str, int] = {}
    coalesced: dict[str, int] = {}
    if not wanted:
        return WakeupsScheduled(scheduled=scheduled, coalesced=coalesced)
    # Most recipients have no target: one look-up for the whole batch leaves them out.
    with_targets = _devices_with_targets(connection, statements,
                                         sorted({user_id for user_id, _ in wanted}))
    for (user_id, device_id), urgent in sorted(wanted.items()):
        if (user_id, device_id) not in with_targets:
            continue
        arguments = ((user_id, device_id, now, own_channel) if statements.shared
                     else (user_id, device_id))
        row = connection.execute(statements.wakeup_of_target, arguments).fetchone()
        if row is None:  # the target went meanwhile, or a node holds the device
            continue
        provider, pushed, pushed_at, pushed_urgently = str(row[0]), row[1], row[2], row[3]
        first = now if committed_at is None else committed_at.get((user_id, device_id), now)
        if pushed is None:
            connection.execute(statements.insert_wakeup,
                               (user_id, device_id, int(urgent), now, first))
        elif pushed and (pushed_at + interval_ms <= now or (urgent and (
                not pushed_urgently or pushed_at + urgent_interval_ms <= now))):
            connection.execute(statements.rearm_wakeup,
                               (int(urgent), now, first, user_id, device_id))
        else:
            if urgent:  # pending: it goes out as urgent
                connection.execute(statements.mark_urgent, (user_id, device_id))
            coalesced[provider] = coalesced.get(provider, 0) + 1
            continue
        scheduled[provider] = scheduled.get(provider, 0) + 1
    return WakeupsScheduled(scheduled=scheduled, coalesced=coalesced)


def clear_wakeup(connection: Connection, dialect: Dialect, *, user_id: str,
                 device_id: int) -> None:
    """See ``WakeupQueue.clear_wakeup``."""
    connection.execute(_STATEMENTS[dialect].clear_wakeup, (user_id, device_id))


def claim_wakeups(connection: Connection, dialect: Dialect, *, now: int, limit: int,
                  lease_ms: int, claim_token: bytes) -> WakeupClaims:
    """See ``WakeupQueue.claim_wakeups``: SKIP LOCKED on PostgreSQL, so that nodes claiming
    at once take different rows; the lease then keeps them taken after this commits."""
    statements = _STATEMENTS[dialect]
    claimed: list[ClaimedWakeup] = []
    if limit > 0:
        rows = connection.execute(statements.due_wakeups, (now, limit)).fetchall()
        for (user_id, device_id, urgent, attempts, committed_at,
             provider, token, p256dh, auth) in rows:
            connection.execute(statements.claim,
                               (now + lease_ms, claim_token, user_id, device_id))
            claimed.append(ClaimedWakeup(
                user_id=str(user_id), device_id=int(device_id),
                target=_target((provider, token, p256dh, auth)), urgent=bool(urgent),
                attempts=int(attempts), committed_at=int(committed_at)))
    (next_due,) = connection.execute(statements.next_due).fetchone()
    return WakeupClaims(claimed=tuple(claimed),
                        next_due_at=None if next_due is None else int(next_due))


def finish_wakeup(connection: Connection, dialect: Dialect, *, user_id: str, device_id: int,
                  claim_token: bytes, result: WakeupResult, now: int,
                  retry_at: int | None = None, target: StoredPushTarget | None = None,
                  sent_urgent: bool = False) -> bool:
    """See ``WakeupQueue.finish_wakeup``."""
    statements = _STATEMENTS[dialect]
    if result is WakeupResult.PUSHED:
        urgent = int(sent_urgent)
        return connection.execute(statements.finish_pushed, (
            urgent, urgent, urgent, now, now, user_id, device_id, claim_token)).rowcount > 0
    if result is WakeupResult.RETRY:
        if retry_at is None:
            raise ValueError("a retry needs its time")
        return connection.execute(statements.finish_retry,
                                  (retry_at, user_id, device_id, claim_token)).rowcount > 0
    if target is None:
        raise ValueError("a gone target must be named")
    if connection.execute(statements.claimed, (user_id, device_id, claim_token)).fetchone() is None:
        return False
    # Only the target the wake-up was sent to (its wake-up goes with it). One registered
    # since then stays, and the wake-up is due again, for it.
    if connection.execute(statements.delete_gone_target,
                          (user_id, device_id, target.provider, target.token)).rowcount == 0:
        connection.execute(statements.finish_retry, (now, user_id, device_id, claim_token))
    return True


def next_wakeup_due(connection: Connection, dialect: Dialect) -> int | None:
    """See ``WakeupQueue.next_wakeup_due``."""
    (next_due,) = connection.execute(_STATEMENTS[dialect].next_due).fetchone()
    return None if next_due is None else int(next_due)


def recover_wakeups(connection: Connection, dialect: Dialect, *, now: int) -> int:
    """See ``WakeupQueue.recover_wakeups``."""
    statements = _STATEMENTS[dialect]
    arguments = (now, now, now, None) if statements.shared else (now, now)
    return connection.execute(statements.recover, arguments).rowcount
