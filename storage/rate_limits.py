"""Token buckets for the relay's rate limits, kept where every node sees them.

A bucket holds up to ``capacity`` tokens and refills evenly over ``period_ms``;
a request takes ``cost`` tokens or is refused. On PostgreSQL the buckets are rows
(``rate_limits``) updated by one atomic upsert, so the nodes of a cluster (and
the workers of ``serve --workers``) share every limit instead of each granting
the full allowance. The embedded store serves one process: ``MemoryBuckets``.
"""

from __future__ import annotations

from collections import OrderedDict

from storage.sql_dialect import Connection

__all__ = [
    "BUCKET_IDLE_FORGET_MS",
    "POSTGRES_RATE_LIMIT_TABLES",
    "MemoryBuckets",
    "forget_idle_buckets",
    "take_tokens",
]

BUCKET_IDLE_FORGET_MS = 24 * 3600 * 1000
"""A bucket untouched this long is full again (no limit has a longer period): forgotten."""

POSTGRES_RATE_LIMIT_TABLES = (
    """CREATE TABLE rate_limits (
        key TEXT PRIMARY KEY,
        tokens DOUBLE PRECISION NOT NULL,
        updated_at BIGINT NOT NULL
    )""",
    "CREATE INDEX rate_limits_by_age ON rate_limits (updated_at)",
)


def take_tokens(connection: Connection, *, key: str, cost: int, capacity: int,
                period_ms: int, now: int) -> bool:
    """One atomic upsert: a new bucket starts full; an existing one is refilled for the
    time since it was last taken from, then taken from only if it holds ``cost``.
    Concurrent takers queue on the row, so together they never take more than it holds.
    A clock behind the last taker's adds nothing (refill never goes negative)."""
    if cost > capacity:
        return False
    row = connection.execute(
        "INSERT INTO rate_limits AS bucket (key, tokens, updated_at)"
        " VALUES (%(key)s, %(capacity)s - %(cost)s, %(now)s)"
        " ON CONFLICT (key) DO UPDATE SET"
        "   tokens = LEAST(%(capacity)s, bucket.tokens"
        "     + GREATEST(0, %(now)s - bucket.updated_at) * %(rate)s) - %(cost)s,"
        "   updated_at = GREATEST(%(now)s, bucket.updated_at)"
        " WHERE LEAST(%(capacity)s, bucket.tokens"
        "   + GREATEST(0, %(now)s - bucket.updated_at) * %(rate)s) >= %(cost)s"
        " RETURNING tokens",
        {"key": key, "capacity": float(capacity), "cost": float(cost), "now": now,
         "rate": capacity / period_ms}).fetchone()
    return row is not None


def forget_idle_buckets(connection: Connection, *, now: int, limit: int) -> int:
    """Delete up to ``limit`` buckets idle for BUCKET_IDLE_FORGET_MS (full again anyway)."""
    return connection.execute(
        "DELETE FROM rate_limits WHERE key IN (SELECT key FROM rate_limits"
        " WHERE updated_at < %s ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED)",
        (now - BUCKET_IDLE_FORGET_MS, limit)).rowcount


class MemoryBuckets:
    """The same buckets in one process's memory (the embedded store has one process).

    Bounded under any key distribution: the buckets form an LRU (an ``OrderedDict`` in the order
    of last use), and a new key past ``MAX_KEYS`` evicts the least recently used bucket. Every
    operation touches one or two entries, never the whole table, so a client that makes up keys
    costs the event loop the same per request at any table size.
    """

    MAX_KEYS = 100_000
    """Buckets kept (memory bound: about 20 MB of keys and tuples)."""

    def __init__(self) -> None:
        # key -> (tokens, last taken at), least recently used first
        self._buckets: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, *, key: str, cost: int, capacity: int, period_ms: int, now: int) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket, which holds up to ``capacity`` and
        refills evenly over ``period_ms``; False (and nothing taken) if it holds fewer."""
        if cost > capacity:
            return False
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.MAX_KEYS:
                # The least recently used bucket goes: it is the likeliest to be full again, and
                # evicting it is O(1) where searching for full ones scanned the whole table.
                self._buckets.popitem(last=False)
            tokens, last = float(capacity), now
        else:
            self._buckets.move_to_end(key)
            tokens, last = bucket
            tokens = min(float(capacity), tokens + max(0, now - last) * capacity / period_ms)
            last = max(now, last)
        if tokens < cost:
            self._buckets[key] = (tokens, last)
            return False
        self._buckets[key] = (tokens - cost, last)
        return True
