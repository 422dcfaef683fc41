"""The sizes of the relay's rate limits; their buckets live in the store
(``Store.take_tokens``), so a cluster's nodes share each one."""

from __future__ import annotations

__all__ = [
    "DEVICE_LIST_PUBLISHES_PER_HOUR",
    "DEVICE_LIST_PUBLISH_PERIOD_MS",
    "LINK_OPENS_PER_ADDRESS",
    "LINK_OPEN_PERIOD_MS",
    "LOOKUPS_PER_MINUTE",
    "LOOKUP_PERIOD_MS",
    "MAX_OPEN_LINK_CHANNELS",
    "MAX_WAITING_LINK_FETCHES",
]

LOOKUPS_PER_MINUTE = 60
"""Phone numbers one device may look up per minute: enough to open a few
conversations, too few to enumerate an organisation's directory."""

LOOKUP_PERIOD_MS = 60_000
"""The period over which LOOKUPS_PER_MINUTE refill."""

DEVICE_LIST_PUBLISHES_PER_HOUR = 20
"""Device lists one device may publish per hour: linking or removing a few devices, not a
loop that churns device ids and revocation notices."""

DEVICE_LIST_PUBLISH_PERIOD_MS = 60 * 60 * 1000
"""The period over which DEVICE_LIST_PUBLISHES_PER_HOUR refill (one hour)."""

LINK_OPENS_PER_ADDRESS = 10
"""Link channels one source address (an IPv4 address, an IPv6 /64) may open per hour: a
person links a device or two, retrying a few times; LINK_OPEN needs no credentials."""

LINK_OPEN_PERIOD_MS = 60 * 60 * 1000
"""The period over which LINK_OPENS_PER_ADDRESS refill (one hour)."""

MAX_OPEN_LINK_CHANNELS = 10_000
"""Unexpired link channels the store holds at most, all addresses together: bounds what
unauthenticated clients make the relay keep (4 x 8 KiB per side, 10 minutes each)."""

MAX_WAITING_LINK_FETCHES = 2
"""LINK_FETCHes one connection may have waiting at once (one per side is all a device needs):
one client cannot pin many of the relay's tasks."""
