"""How often one source may ask for codes and check them, on top of the limits per number.

The limits per number (``enrolment.codes``) bound what a number costs and how often its codes
can be guessed, whoever asks. Alone, they let one client flood the relay with numbers it makes
up, and spend a victim's daily allowance so that its owner cannot enrol. So every enrolment
request is also counted:

- per connection, in the connection's memory (``Allowance``): a flood on one connection is
  refused before it costs the store anything;
- per source address (an IPv4 address, an IPv6 /64), in the store's token buckets, which the
  nodes of a cluster share;
- per source address and number, so that one attacker runs out before the number does: it
  may spend at most ``ENROL_STARTS_PER_ADDRESS_PER_NUMBER`` of the number's
  ``MAX_SENDS_PER_NUMBER_PER_DAY`` codes and ``GUESSES_PER_ADDRESS_PER_NUMBER`` of its
  ``MAX_GUESSES_PER_NUMBER_PER_DAY`` checks, and its owner keeps the rest.

An attacker with many addresses can still spend a number's allowance (docs/SECURITY.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from enrolment.codes import SEND_WINDOW_MS

__all__ = [
    "ADDRESS_PERIOD_MS",
    "CONNECTION_PERIOD_MS",
    "ENROL_STARTS_PER_ADDRESS",
    "ENROL_STARTS_PER_ADDRESS_PER_NUMBER",
    "ENROL_STARTS_PER_CONNECTION",
    "ENROL_VERIFIES_PER_ADDRESS",
    "ENROL_VERIFIES_PER_CONNECTION",
    "GUESSES_PER_ADDRESS_PER_NUMBER",
    "PER_NUMBER_PERIOD_MS",
    "Allowance",
    "EnrolmentLimits",
    "refill_wait_ms",
]

ENROL_STARTS_PER_CONNECTION = 5
"""ENROL_STARTs one connection may make per ``CONNECTION_PERIOD_MS``: a person asks for a code,
and perhaps again when the SMS is late; a client asking more opens new connections (each
one a QUIC handshake, behind Retry) and meets the limit per address."""

ENROL_VERIFIES_PER_CONNECTION = 10
"""ENROL_VERIFYs one connection may make per ``CONNECTION_PERIOD_MS``: two codes' worth of
checks (``MAX_CHECKS_PER_CODE``)."""

CONNECTION_PERIOD_MS = 60 * 60 * 1000
"""The period over which a connection's allowances refill (one hour)."""

ENROL_STARTS_PER_ADDRESS = 20
"""ENROL_STARTs one source address may make per ``ADDRESS_PERIOD_MS``, all numbers together:
a few people enrolling behind one NAT; a relay setting (``enrol_starts_per_address``) for an
organisation that enrols everyone from one office at once."""

ENROL_VERIFIES_PER_ADDRESS = 40
"""ENROL_VERIFYs one source address may make per ``ADDRESS_PERIOD_MS``: two per ENROL_START
(a mistyped code); setting ``enrol_verifies_per_address``."""

ADDRESS_PERIOD_MS = 60 * 60 * 1000
"""The period over which an address's allowances refill (one hour)."""

ENROL_STARTS_PER_ADDRESS_PER_NUMBER = 3
"""ENROL_STARTs one source address may make for one number per ``PER_NUMBER_PERIOD_MS``: fewer
than the number's ``MAX_SENDS_PER_NUMBER_PER_DAY``, so that one attacker cannot spend them
all and lock the number's owner out."""

GUESSES_PER_ADDRESS_PER_NUMBER = 7
"""ENROL_VERIFYs one source address may make for one number per ``PER_NUMBER_PERIOD_MS``:
fewer than the number's ``MAX_GUESSES_PER_NUMBER_PER_DAY``, for the same reason, but more than
a code's ``MAX_CHECKS_PER_CODE``, so that a person who mistyped a code's checks away can still
check a new one from where they are."""

PER_NUMBER_PERIOD_MS = SEND_WINDOW_MS
"""The period over which an address's allowances for one number refill: the number's own
window (one day)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class EnrolmentLimits:
    """The limits per source address an ``EnrolmentService`` applies (the rest are fixed)."""

    starts_per_address: int = ENROL_STARTS_PER_ADDRESS
    """``ENROL_STARTS_PER_ADDRESS`` unless the operator sets another."""
    verifies_per_address: int = ENROL_VERIFIES_PER_ADDRESS
    """``ENROL_VERIFIES_PER_ADDRESS`` unless the operator sets another."""

    def __post_init__(self) -> None:
        if self.starts_per_address < 1 or self.verifies_per_address < 1:
            raise ValueError("enrolment limits per address must be at least 1")


def refill_wait_ms(capacity: int, period_ms: int) -> int:
    """How long an empty bucket of ``capacity`` tokens over ``period_ms`` takes to hold one
    token again: what a refused client is told to wait (never less than it must)."""
    return math.ceil(period_ms / capacity)


class Allowance:
    """A token bucket in memory, for one connection (which lives on one node).

    It holds up to ``capacity`` tokens and refills evenly over ``period_ms``; it starts full.
    Two numbers: a connection that never enrols costs nothing more than its creation.
    """

    __slots__ = ("_capacity", "_period_ms", "_tokens", "_updated_at")

    def __init__(self, capacity: int, period_ms: int, *, now: int) -> None:
        self._capacity = capacity
        self._period_ms = period_ms
        self._tokens = float(capacity)
        self._updated_at = now

    def take(self, now: int) -> int | None:
        """Take one token if there is one: None. Otherwise change nothing and return the
        milliseconds until there is one."""
        rate = self._capacity / self._period_ms
        tokens = min(float(self._capacity),
                     self._tokens + max(0, now - self._updated_at) * rate)
        self._updated_at = max(now, self._updated_at)
        self._tokens = tokens
        if tokens >= 1:
            self._tokens = tokens - 1
            return None
        return math.ceil((1 - tokens) / rate)
