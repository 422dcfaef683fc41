"""Statistics of a benchmark run: percentiles and rates."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["latency_summary", "percentile", "rate"]


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p % of values <= it.

    ``p`` is in [0, 100]; p = 0 gives the minimum, p = 100 the maximum.

    Raises:
        ValueError: an empty sequence, or p out of range.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside [0, 100]")
    ordered = sorted(values)
    # Rounding first keeps float noise (99.9 / 100 * 1000 = 999.0000000000001) off the rank.
    rank = max(1, math.ceil(round(p / 100 * len(ordered), 9)))
    return ordered[rank - 1]


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float] | None:
    """p50, p95 and p99 (milliseconds, 3 decimals), or None without samples."""
    if not latencies_ms:
        return None
    ordered = sorted(latencies_ms)
    return {name: round(percentile(ordered, p), 3)
            for name, p in (("p50", 50), ("p95", 95), ("p99", 99))}


def rate(count: int, seconds: float) -> float:
    """Events per second (0 when no time elapsed), 1 decimal."""
    return round(count / seconds, 1) if seconds > 0 else 0.0
