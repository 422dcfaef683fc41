"""When a seat reduction takes effect: the contract's date rules, pure (dates in, date out),
and the contract terms an operator may write (``parse_offer``, ``parse_contract_start``).

- Without commitment: on the first day of the first calendar month that begins at least
  ``MONTHLY_NOTICE_DAYS`` days after the request.
- With a 12-month commitment: on the first day of the next period when requested at least
  one month before the current period ends, otherwise on the first day of the period after.

Additions are immediate and need no rule.
"""

from __future__ import annotations

import calendar
import datetime
import re

from enrolment.errors import InvalidRequest
from storage.admin_records import LicenceOffer

__all__ = [
    "COMMITMENT_NOTICE_MONTHS",
    "COMMITMENT_PERIOD_MONTHS",
    "EARLIEST_CONTRACT_START",
    "MAX_CONTRACT_START_AHEAD_DAYS",
    "MONTHLY_NOTICE_DAYS",
    "add_months",
    "check_contract_start",
    "current_period_start",
    "parse_contract_start",
    "parse_offer",
    "reduction_effective_on",
]

MONTHLY_NOTICE_DAYS = 15
"""Notice (days) a monthly contract requires before the month a reduction applies from."""
COMMITMENT_PERIOD_MONTHS = 12
"""Length of one commitment period (months)."""
COMMITMENT_NOTICE_MONTHS = 1
"""Notice (months) before a commitment period ends for a reduction to apply at its end."""
EARLIEST_CONTRACT_START = datetime.date(2000, 1, 1)
"""No contract starts earlier: an earlier date is a typo."""
MAX_CONTRACT_START_AHEAD_DAYS = 366
"""A contract starts at most a year after it is recorded: a later date is a typo (2062 for
2026)."""

_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_offer(text: str) -> LicenceOffer:
    """The offer named as the admin API names it (``monthly``, ``annual_commitment``).

    Raises InvalidRequest naming the accepted values.
    """
    for offer in LicenceOffer:
        if offer.value == text:
            return offer
    raise InvalidRequest("the offer is " + " or ".join(offer.value for offer in LicenceOffer)
                         + f", not {text!r}")


def parse_contract_start(text: str) -> datetime.date:
    """A day written as the admin API writes ``period_start`` (YYYY-MM-DD).

    Raises InvalidRequest.
    """
    try:
        if _ISO_DAY.fullmatch(text) is None:
            raise ValueError(text)
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"the contract start is a date written YYYY-MM-DD, not {text!r}"
                             ) from None


def check_contract_start(start: datetime.date, *, today: datetime.date) -> None:
    """Raises InvalidRequest unless ``start`` is between EARLIEST_CONTRACT_START and
    MAX_CONTRACT_START_AHEAD_DAYS after ``today``."""
    latest = today + datetime.timedelta(days=MAX_CONTRACT_START_AHEAD_DAYS)
    if not EARLIEST_CONTRACT_START <= start <= latest:
        raise InvalidRequest(f"the contract start is between "
                             f"{EARLIEST_CONTRACT_START.isoformat()} and {latest.isoformat()}")


def add_months(day: datetime.date, months: int) -> datetime.date:
    """``day`` moved by ``months`` calendar months, clamped to the month's last day
    (31 January + 1 month = 28 or 29 February)."""
    month_index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(month_index, 12)
    last_day = calendar.monthrange(year, month + 1)[1]
    return datetime.date(year, month + 1, min(day.day, last_day))


def current_period_start(*, contract_start: datetime.date,
                         on: datetime.date) -> datetime.date:
    """Start of the commitment period containing ``on`` (periods count from the contract
    start, so a contract started on 31 March keeps ending on its anniversary)."""
    if on < contract_start:
        return contract_start
    periods = ((on.year - contract_start.year) * 12 + on.month - contract_start.month) \
        // COMMITMENT_PERIOD_MONTHS
    start = add_months(contract_start, periods * COMMITMENT_PERIOD_MONTHS)
    while start > on:  # the anniversary of this year has not come yet
        periods -= 1
        start = add_months(contract_start, periods * COMMITMENT_PERIOD_MONTHS)
    return start


def reduction_effective_on(*, offer: LicenceOffer, requested_on: datetime.date,
                           contract_start: datetime.date) -> datetime.date:
    """The first day a seat reduction requested on ``requested_on`` applies.

    Args:
        offer: The contract's offer.
        requested_on: The day (UTC) the administrator asked.
        contract_start: Start of the contract (counts the commitment periods).
    """
    if offer is LicenceOffer.MONTHLY:
        earliest = requested_on + datetime.timedelta(days=MONTHLY_NOTICE_DAYS)
        if earliest.day == 1:
            return earliest
        return add_months(earliest.replace(day=1), 1)
    start = current_period_start(contract_start=contract_start, on=requested_on)
    periods = ((start.year - contract_start.year) * 12 + start.month - contract_start.month) \
        // COMMITMENT_PERIOD_MONTHS
    next_start = add_months(contract_start, (periods + 1) * COMMITMENT_PERIOD_MONTHS)
    if requested_on <= add_months(next_start, -COMMITMENT_NOTICE_MONTHS):
        return next_start
    return add_months(contract_start, (periods + 2) * COMMITMENT_PERIOD_MONTHS)
