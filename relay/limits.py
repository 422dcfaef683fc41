"""Rate limits kept in memory, per node."""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["LOOKUPS_PER_MINUTE", "TokenBucket"]

LOOKUPS_PER_MINUTE = 60
"""Phone numbers one device may look up per minute: enough to open a few
conversations, too few to enumerate an organisation's directory."""


class TokenBucket:
    """Per-key token buckets: ``capacity`` tokens, refilled over ``period_ms``."""

    MAX_KEYS = 100_000
    """Buckets kept before the full ones are forgotten (memory bound)."""

    def __init__(self, *, capacity: int, period_ms: int) -> None:
        self._capacity = capacity
        self._rate = capacity / period_ms  # tokens per millisecond
        self._buckets: dict[Hashable, tuple[float, int]] = {}

    def allow(self, key: Hashable, cost: int, now_ms: int) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket if it holds that many."""
        tokens, last = self._buckets.get(key, (float(self._capacity), now_ms))
        tokens = min(float(self._capacity), tokens + (now_ms - last) * self._rate)
        if tokens < cost:
            self._buckets[key] = (tokens, now_ms)
            return False
        if len(self._buckets) >= self.MAX_KEYS:
            self._forget_full(now_ms)
        self._buckets[key] = (tokens - cost, now_ms)
        return True

    def _forget_full(self, now_ms: int) -> None:
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + (now_ms - last) * self._rate >= self._capacity:
                del self._buckets[key]
