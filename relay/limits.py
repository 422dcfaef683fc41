"""The sizes of the relay's rate limits; their buckets live in the store
(``Store.take_tokens``), so a cluster's nodes share each one."""

from __future__ import annotations

__all__ = ["LOOKUPS_PER_MINUTE", "LOOKUP_PERIOD_MS"]

LOOKUPS_PER_MINUTE = 60
"""Phone numbers one device may look up per minute: enough to open a few
conversations, too few to enumerate an organisation's directory."""

LOOKUP_PERIOD_MS = 60_000
"""The period over which LOOKUPS_PER_MINUTE refill."""
