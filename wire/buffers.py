"""The relay-wide budget of incomplete frames: what all connections together may make it hold.

Each connection's :class:`~wire.protocol.ServerProtocol` counts the frames its streams have begun
but not finished, at the size their length prefixes declare, within its own budget
(``MAX_BUFFERED_BYTES_BEFORE_AUTHENTICATION``, ``MAX_BUFFERED_BYTES_PER_CONNECTION``); the
:class:`BufferPool` that every connection of a relay shares bounds their sum, so that many
connections, each within its own budget, still cannot grow the relay without bound. Sans-IO:
counters only (PROTOCOL.md "Connection budgets").
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_BUFFERED_BYTES_TOTAL", "MAX_BUFFERED_BYTES_UNAUTHENTICATED", "BufferPool"]

MAX_BUFFERED_BYTES_TOTAL = 256 * 1024 * 1024
"""Bytes of incomplete frames all connections of a relay process may hold together: past it,
a frame that would need more is refused (RATE_LIMITED) until others complete."""

MAX_BUFFERED_BYTES_UNAUTHENTICATED = 64 * 1024 * 1024
"""The share of MAX_BUFFERED_BYTES_TOTAL that connections without a proven device may take
together: a flood of unauthenticated connections leaves the rest to enrolled devices."""


@dataclass(kw_only=True)
class BufferPool:
    """Counts the bytes of incomplete frames every connection holds, against two limits.

    A connection reserves before it keeps bytes and releases when the frame completes, fails or
    the connection closes: ``used`` is what is held now, and is never above ``limit``.
    """

    limit: int = MAX_BUFFERED_BYTES_TOTAL
    """Bytes all connections may hold together."""
    unauthenticated_limit: int = MAX_BUFFERED_BYTES_UNAUTHENTICATED
    """Bytes the connections not yet authenticated may hold together (within ``limit``)."""
    used: int = 0
    """Bytes held now, by every connection."""
    used_unauthenticated: int = 0
    """The part of ``used`` held by connections not yet authenticated."""
    peak: int = 0
    """The most ``used`` has ever been (operations and tests read it)."""
    refusals: int = 0
    """Reservations refused because a limit of the pool was reached."""

    def reserve(self, size: int, *, authenticated: bool) -> bool:
        """Count ``size`` more bytes if both limits allow it; False (and nothing counted) if not."""
        if self.used + size > self.limit or (
                not authenticated
                and self.used_unauthenticated + size > self.unauthenticated_limit):
            self.refusals += 1
            return False
        self.used += size
        if not authenticated:
            self.used_unauthenticated += size
        self.peak = max(self.peak, self.used)
        return True

    def release(self, size: int, *, authenticated: bool) -> None:
        """Forget ``size`` bytes reserved with the same ``authenticated``."""
        self.used -= size
        if not authenticated:
            self.used_unauthenticated -= size

    def authenticate(self, size: int) -> None:
        """A connection holding ``size`` bytes proved its device: they leave the
        unauthenticated share (the total is unchanged, so this cannot fail)."""
        self.used_unauthenticated -= size
