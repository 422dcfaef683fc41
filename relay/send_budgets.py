"""Each sender device's budget of SENDs and ciphertext bytes per minute, kept in memory.

A SEND is checked against its device's budget before it is submitted to the store, and that
submission is synchronous (submission order is commit order, which keeps each sender's order),
so the budget cannot be a store round trip: each relay process keeps it in memory. A device is
connected to one node at a time (the cluster's presence claim closes any older connection), so
the process that holds its connection limits it; a device that reconnects to another node starts
with a full budget there, at the cost of a handshake and an authentication, and the per-sender
share of each recipient's queue (``NewSend.max_sender_share``) still bounds what it can leave in
any queue.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from relay.limits import SEND_BUDGET_PERIOD_MS

__all__ = ["SendBudgets"]

_ROUNDING = 1e-6
"""Tolerance on a refilled bucket: waiting the milliseconds ``take`` named always suffices, even
when floating point leaves the refill a hair short."""


class SendBudgets:
    """Two token buckets per sender device, messages and bytes, refilled evenly over a period.

    Bounded under any number of devices: the buckets form an LRU (only authenticated devices
    have one), and a new device past ``MAX_DEVICES`` evicts the least recently used. Each
    ``take`` touches one entry.
    """

    MAX_DEVICES = 100_000
    """Sender devices kept (about 20 MB); the one evicted is the longest idle, likeliest full."""

    def __init__(self, *, messages: int, payload_bytes: int,
                 period_ms: int = SEND_BUDGET_PERIOD_MS) -> None:
        """Each device may send ``messages`` SENDs and ``payload_bytes`` bytes of ciphertext
        per ``period_ms``, in bursts of up to that much.

        Raises:
            ValueError: a size or the period is not positive.
        """
        if messages < 1 or payload_bytes < 1 or period_ms < 1:
            raise ValueError("send budgets and their period must be positive")
        self.messages = messages
        self.payload_bytes = payload_bytes
        self.period_ms = period_ms
        # device -> (SENDs left, bytes left, last taken at), least recently used first
        self._buckets: OrderedDict[tuple[str, int], tuple[float, float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, device: tuple[str, int], *, payload_bytes: int, now: int,
             messages: int = 1) -> int | None:
        """Take ``messages`` SENDs (one, or what a MULTI_SEND counts as) of ``payload_bytes``
        bytes from ``device``'s budget.

        A SEND larger than the whole byte budget costs the whole budget (it passes once a period,
        rather than never). A clock behind the last take adds nothing.

        Returns:
            None if taken; otherwise the milliseconds until the SEND would be (nothing taken).
        """
        cost = min(payload_bytes, self.payload_bytes)
        count = float(min(messages, self.messages))
        bucket = self._buckets.get(device)
        if bucket is None:
            if len(self._buckets) >= self.MAX_DEVICES:
                self._buckets.popitem(last=False)
            sends_left, bytes_left, last = float(self.messages), float(self.payload_bytes), now
        else:
            self._buckets.move_to_end(device)
            sends_left, bytes_left, last = bucket
            elapsed = max(0, now - last)
            sends_left = min(float(self.messages),
                             sends_left + elapsed * self.messages / self.period_ms)
            bytes_left = min(float(self.payload_bytes),
                             bytes_left + elapsed * self.payload_bytes / self.period_ms)
            last = max(now, last)
        if sends_left < count - _ROUNDING or bytes_left < cost - _ROUNDING:
            self._buckets[device] = (sends_left, bytes_left, last)
            wait = max((count - sends_left) * self.period_ms / self.messages,
                       (cost - bytes_left) * self.period_ms / self.payload_bytes)
            return max(1, math.ceil(wait - _ROUNDING))
        self._buckets[device] = (max(0.0, sends_left - count), max(0.0, bytes_left - cost),
                                 last)
        return None
