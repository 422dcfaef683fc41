"""The sizes of the relay's rate limits. Their buckets live in the store (``Store.take_tokens``),
so a cluster's nodes share each one, except the send budgets: those are checked before a SEND
is submitted, which must stay synchronous (submission order is commit order), so each relay
process keeps them in memory (``relay.send_budgets``)."""

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
    "MIN_SENDER_QUEUE_SHARE",
    "SENDER_QUEUE_SHARE_PERCENT",
    "SENDS_PER_MINUTE",
    "SEND_BUDGET_PERIOD_MS",
    "SEND_BYTES_PER_MINUTE",
    "sender_queue_share",
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

SENDS_PER_MINUTE = 600
"""SENDs one device may make per minute (a SEND is one message to one user, however many of its
devices it addresses): ten a second on average, bursts of 600, far above a person typing; more
is a script filling queues. The default of ``RelaySettings.sends_per_minute``."""

SEND_BYTES_PER_MINUTE = 64 * 1024 * 1024
"""Ciphertext bytes one device may send per minute, every payload of its SENDs together (64
MiB): bounds the disk one sender fills per minute. The default of
``RelaySettings.send_bytes_per_minute``."""

SEND_BUDGET_PERIOD_MS = 60_000
"""The period over which SENDS_PER_MINUTE and SEND_BYTES_PER_MINUTE refill (one minute)."""

SENDER_QUEUE_SHARE_PERCENT = 10
"""The share of a device's queue (``RelaySettings.max_queue_depth``) one sender user may hold,
in percent: ten senders that never stop still leave room for the others. The default of
``RelaySettings.sender_queue_share_percent``."""

MIN_SENDER_QUEUE_SHARE = 100
"""A sender may hold at least this many envelopes in a device's queue, whatever the percentage:
a contact writing to a device that is off for a few days is not refused."""


def sender_queue_share(max_queue_depth: int, percent: int = SENDER_QUEUE_SHARE_PERCENT) -> int:
    """Envelopes one sender user may hold in one device's queue: ``percent`` of
    ``max_queue_depth``, at least MIN_SENDER_QUEUE_SHARE (1000 with the defaults)."""
    return max(MIN_SENDER_QUEUE_SHARE, max_queue_depth * percent // 100)
