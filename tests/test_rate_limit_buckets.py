"""The embedded store's in-memory rate-limit buckets: exact refill, and bounded memory under any
key distribution without ever scanning the table (a client that makes up keys, as FETCH_BUNDLE
lets it, once froze the event loop with a full scan per new key past the cap)."""

from __future__ import annotations

import pytest

from storage.rate_limits import MemoryBuckets

NOW = 1_700_000_000_000  # a fixed instant (ms)


class CountingBuckets(MemoryBuckets):
    """MemoryBuckets with a small cap."""

    MAX_KEYS = 8


def take(buckets: MemoryBuckets, key: str, now: int = NOW, cost: int = 1) -> bool:
    return buckets.take(key=key, cost=cost, capacity=3, period_ms=3000, now=now)


def test_a_bucket_refuses_past_its_capacity_and_refills_evenly() -> None:
    buckets = MemoryBuckets()
    assert [take(buckets, "k") for _ in range(4)] == [True, True, True, False]
    assert not take(buckets, "k", NOW + 999)  # one token per 1000 ms: not yet
    assert take(buckets, "k", NOW + 1000)
    assert not take(buckets, "k", NOW + 1000)
    assert take(buckets, "k", NOW + 10_000, cost=3)  # refills to its capacity, no further


def test_made_up_keys_never_grow_the_table_past_its_cap() -> None:
    buckets = CountingBuckets()
    for number in range(1000):
        assert take(buckets, f"bundle requester {number}")  # each key new, each bucket not full
        assert len(buckets) <= CountingBuckets.MAX_KEYS


def test_the_least_recently_used_bucket_is_the_one_forgotten() -> None:
    buckets = CountingBuckets()
    for number in range(CountingBuckets.MAX_KEYS):
        take(buckets, f"k{number}")
    for _ in range(2):
        take(buckets, "k0")  # k0 is now the most recently used, and holds no token
    assert not take(buckets, "k0")
    take(buckets, "new")  # evicts k1, the least recently used
    assert not take(buckets, "k0")  # still limited: kept
    assert len(buckets) == CountingBuckets.MAX_KEYS


@pytest.mark.parametrize("cost", [4, 100])
def test_a_cost_above_the_capacity_is_refused_and_stores_nothing(cost: int) -> None:
    buckets = MemoryBuckets()
    assert not take(buckets, "k", cost=cost)
    assert len(buckets) == 0
