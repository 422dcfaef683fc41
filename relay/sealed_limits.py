"""Sealed sends' limits, kept in memory: per connection, per delivery token and per recipient.

A sealed send names no sender, so the per-sender budgets of identified SENDs
(``relay.send_budgets``, ``NewSend.max_sender_share``) cannot apply. What a sealed send does
carry is bounded instead: the connection it arrives on, the delivery token it shows (its hash)
and its recipient. Each is a token bucket refilled evenly over a minute, kept in an LRU bounded
like ``SendBudgets``, in the memory of the node that holds the connection: none is ever
written to the store, so no rate-limit row links the recipient to anything of the sender.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable

__all__ = [
    "SEALED_LIMIT_PERIOD_MS",
    "SEALED_SENDS_PER_CONNECTION",
    "SEALED_SENDS_PER_RECIPIENT",
    "SEALED_SENDS_PER_TOKEN",
    "SealedConnection",
    "TokenBuckets",
]

SEALED_LIMIT_PERIOD_MS = 60_000
"""The period over which every sealed-send bucket refills (a minute)."""
SEALED_SENDS_PER_CONNECTION = 120
"""Sealed sends one connection may make per minute, accepted or refused: the sealed
counterpart of an identified device's SEND budget, and what a token guesser pays per try."""
SEALED_SENDS_PER_TOKEN = 120
"""Sealed sends per minute showing one delivery token (by its hash, right or wrong): every
contact of a recipient shows the same token, so this bounds them together; refills in a minute."""
SEALED_SENDS_PER_RECIPIENT = 300
"""Sealed sends accepted per minute for one recipient user, from everyone: a recipient's queue
cannot be flooded faster than this by senders it never identified (counted only once the
token or organisation check passed, so a stranger cannot spend it)."""


class TokenBuckets:
    """One token bucket per key, ``capacity`` tokens refilled over ``period_ms``; an LRU of at
    most ``max_keys`` keys (the evicted one, the longest idle, is likeliest full)."""

    def __init__(self, *, capacity: int, period_ms: int = SEALED_LIMIT_PERIOD_MS,
                 max_keys: int = 100_000) -> None:
        if capacity < 1 or period_ms < 1 or max_keys < 1:
            raise ValueError("bucket sizes and the period must be positive")
        self.capacity, self.period_ms, self.max_keys = capacity, period_ms, max_keys
        self._buckets: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, *, now: int) -> int | None:
        """Take one token of ``key``'s bucket: None if taken, else the milliseconds until one
        would be (nothing taken). A clock behind the last take adds nothing."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            left, last = float(self.capacity), now
        else:
            self._buckets.move_to_end(key)
            left, last = bucket
            left = min(float(self.capacity),
                       left + max(0, now - last) * self.capacity / self.period_ms)
            last = max(now, last)
        if left < 1 - 1e-6:
            self._buckets[key] = (left, last)
            return max(1, int(-(-(1 - left) * self.period_ms // self.capacity)))
        self._buckets[key] = (left - 1, last)
        return None


class SealedConnection:
    """What one connection's sealed sends are counted against, in its session's memory: its
    budget of sends per minute, and the sends it got accepted per recipient, capped at the
    per-sender share of a queue (the connection-keyed half of the share; the token-keyed half
    is counted in the store, ``NewSend.queue_share_key``). Forgotten with the connection."""

    def __init__(self) -> None:
        self.budget = TokenBuckets(capacity=SEALED_SENDS_PER_CONNECTION, max_keys=1)
        self.accepted: Counter[str] = Counter()
        """Recipient user -> sends accepted on this connection (at most MAX_RECIPIENTS)."""

    MAX_RECIPIENTS = 1024
    """Recipients counted per connection; past it, the least counted are forgotten first."""

    def note_accepted(self, recipient_user_id: str) -> None:
        if recipient_user_id not in self.accepted and len(self.accepted) >= self.MAX_RECIPIENTS:
            least, _ = self.accepted.most_common()[-1]
            del self.accepted[least]
        self.accepted[recipient_user_id] += 1
