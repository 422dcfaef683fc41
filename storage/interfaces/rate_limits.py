"""``RateLimits``: token buckets shared by every process that uses the store."""

from __future__ import annotations

from typing import Protocol

__all__ = ["RateLimits"]


class RateLimits(Protocol):
    """Token buckets by key (``storage.rate_limits`` keeps them)."""

    async def take_tokens(self, *, key: str, cost: int, capacity: int, period_ms: int,
                          now: int) -> bool:
        """Take ``cost`` tokens from the bucket ``key`` (``capacity`` tokens, refilled
        evenly over ``period_ms``; a new bucket is full) if it holds that many.

        Returns whether they were taken. Concurrent takers never take more than the
        bucket holds, and every process using the store shares the bucket (a cluster's
        nodes grant one allowance between them, not one each). Buckets idle long enough
        to be full again are forgotten by ``EnvelopeQueue.expire``.
        """
        ...
