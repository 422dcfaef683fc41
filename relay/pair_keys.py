"""Keys of rate-limit buckets that concern two users, which name neither.

A limit per (requester, target), such as the bundle fetches one device may make for one user
(``relay.prekeys``), kept under a key naming both would be a row linking two users in the
store for as long as the bucket lives (PostgreSQL keeps a cluster's buckets in its
``rate_limits`` table): a record of who starts sessions with whom. ``PairKeys`` names such a
bucket by an HMAC-SHA256 of the pair under a random key held only in this process's memory and
replaced every ``ROTATION_MS``: a row of the store (or of a backup) cannot be tied to a pair
without that key, which is never written anywhere, and after a day not even with it.

The cost: each process of a cluster has its own key, so a device that moves between nodes gets
one allowance per node it reaches (the per-device bucket, keyed by the requester alone, still
bounds its fetches in all), and every allowance starts full again at each replacement.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["PairKeys"]


class PairKeys:
    """HMAC-named bucket keys under an in-memory key replaced daily."""

    ROTATION_MS = 24 * 60 * 60 * 1000
    """How long one key names the buckets (a day): then it is replaced and forgotten."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._period: int | None = None

    def key(self, label: str, *parts: str, now: int) -> str:
        """``label`` and the HMAC of ``parts`` under the current period's key."""
        period = now // self.ROTATION_MS
        if period != self._period:
            self._key, self._period = secrets.token_bytes(32), period
        message = "\x00".join(parts).encode()
        return f"{label} {hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]}"
