"""The replay guard for initial messages that consumed no one-time prekey.

An initial message that used a one-time X25519 or one-time ML-KEM prekey cannot be accepted
twice: the responder deletes that secret once the message authenticated. One that used only
reusable prekeys (the signed prekey and the last-resort ML-KEM key) could be, so the responder
remembers its base key (PQXDH §4.2 leaves replay protection to the application).

The memory is kept per (signed prekey id, KEM prekey id) pair, for exactly as long as both keys
live: `crypto.prekeys.LocalPrekeys` drops a pair's set when it deletes either key after
rotation. Nothing is ever evicted early (an evicted base key could be replayed). Instead each
pair's set is capped: a full pair refuses further initial messages, and a full *current* pair
makes prekey rotation due at once, so the device publishes a pair with an empty set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_BASE_KEYS_PER_PREKEY_PAIR", "BaseKeyMemory", "PrekeyPair"]

MAX_BASE_KEYS_PER_PREKEY_PAIR = 20_000
"""Base keys remembered per (signed prekey, last-resort KEM key) pair: 20,000 x 32 bytes is
640 kB of saved state. Such sessions start only when the relay has run out of one-time keys,
so an honest device meets this cap only with over 20,000 of them within one rotation interval;
it then rotates early and loses nothing. docs/CRYPTO.md gives the bound over all pairs."""

PrekeyPair = tuple[int, int]
"""(signed prekey id, last-resort KEM prekey id)."""


@dataclass(kw_only=True)
class BaseKeyMemory:
    """Base keys already accepted, per prekey pair. Mutable: change it only on success."""

    used: dict[PrekeyPair, set[bytes]] = field(default_factory=dict)

    def has_used(self, pair: PrekeyPair, base_key: bytes) -> bool:
        """True if an initial message with `base_key` was already accepted on `pair`."""
        return base_key in self.used.get(pair, ())

    def is_full(self, pair: PrekeyPair) -> bool:
        """True if `pair` can remember no more base keys (so must accept no more)."""
        return len(self.used.get(pair, ())) >= MAX_BASE_KEYS_PER_PREKEY_PAIR

    def remember(self, pair: PrekeyPair, base_key: bytes) -> None:
        """Record an accepted base key.

        Raises:
            ValueError: the pair is full (the caller must refuse the message before this).
        """
        if self.is_full(pair):
            raise ValueError(f"the base-key memory of prekey pair {pair} is full")
        self.used.setdefault(pair, set()).add(base_key)

    def forget_prekey(self, key_id: int) -> None:
        """Drop the sets of every pair that uses prekey `key_id` (it was deleted, so no
        message naming it can be accepted any more)."""
        for pair in [pair for pair in self.used if key_id in pair]:
            del self.used[pair]

    def to_state(self) -> list[Any]:
        """A msgpack-ready snapshot, sorted so the same memory always gives the same bytes."""
        return [[signed_prekey_id, kem_prekey_id, sorted(base_keys)]
                for (signed_prekey_id, kem_prekey_id), base_keys in sorted(self.used.items())]

    @classmethod
    def from_state(cls, state: Any) -> BaseKeyMemory:
        """Rebuild from `to_state` output. Raises TypeError/ValueError if corrupt."""
        if not isinstance(state, list):
            raise TypeError("expected a list of prekey pairs")
        used: dict[PrekeyPair, set[bytes]] = {}
        for signed_prekey_id, kem_prekey_id, base_keys in state:
            if not all(isinstance(base_key, bytes) for base_key in base_keys):
                raise TypeError("expected base keys as bytes")
            used[(int(signed_prekey_id), int(kem_prekey_id))] = set(base_keys)
        return cls(used=used)
