"""The seat-reduction date rules, table-driven with fixed dates (issue 4, Licence)."""

from __future__ import annotations

import datetime

import pytest

from enrolment.licence_dates import add_months, current_period_start, reduction_effective_on
from storage.admin_records import LicenceOffer

D = datetime.date
MONTHLY = LicenceOffer.MONTHLY
ANNUAL = LicenceOffer.ANNUAL_COMMITMENT

# (why, offer, contract start, requested on, effective on)
CASES = [
    # Without commitment: first month start at least 15 days after the request.
    ("early in the month", MONTHLY, D(2025, 1, 1), D(2026, 1, 1), D(2026, 2, 1)),
    ("exactly 15 days before a month starts", MONTHLY, D(2025, 1, 1), D(2026, 1, 17),
     D(2026, 2, 1)),
    ("14 days before a month starts", MONTHLY, D(2025, 1, 1), D(2026, 1, 18), D(2026, 3, 1)),
    ("month end", MONTHLY, D(2025, 1, 1), D(2026, 1, 31), D(2026, 3, 1)),
    ("February of a common year, 15 days", MONTHLY, D(2025, 1, 1), D(2026, 2, 14),
     D(2026, 3, 1)),
    ("February of a common year, 14 days", MONTHLY, D(2025, 1, 1), D(2026, 2, 15),
     D(2026, 4, 1)),
    ("February of a leap year, 15 days", MONTHLY, D(2025, 1, 1), D(2028, 2, 15), D(2028, 3, 1)),
    ("year end, 15 days", MONTHLY, D(2025, 1, 1), D(2026, 12, 17), D(2027, 1, 1)),
    ("year end, 14 days", MONTHLY, D(2025, 1, 1), D(2026, 12, 18), D(2027, 2, 1)),
    ("the request day is a first of month", MONTHLY, D(2025, 1, 1), D(2026, 3, 1),
     D(2026, 4, 1)),
    # 12-month commitment from 1 January 2026: the period ends on 1 January 2027.
    ("first day of the period", ANNUAL, D(2026, 1, 1), D(2026, 1, 1), D(2027, 1, 1)),
    ("mid-period", ANNUAL, D(2026, 1, 1), D(2026, 6, 15), D(2027, 1, 1)),
    ("exactly one month before the end", ANNUAL, D(2026, 1, 1), D(2026, 12, 1), D(2027, 1, 1)),
    ("less than one month before the end", ANNUAL, D(2026, 1, 1), D(2026, 12, 2),
     D(2028, 1, 1)),
    ("last day of the period", ANNUAL, D(2026, 1, 1), D(2026, 12, 31), D(2028, 1, 1)),
    ("a later period", ANNUAL, D(2026, 1, 1), D(2029, 3, 3), D(2030, 1, 1)),
    # A contract started on a month end: the period ends 31 March, one month before is
    # 28 February (February has no 31st).
    ("month-end contract, one month before", ANNUAL, D(2025, 3, 31), D(2027, 2, 28),
     D(2027, 3, 31)),
    ("month-end contract, too late", ANNUAL, D(2025, 3, 31), D(2027, 3, 1), D(2028, 3, 31)),
    ("month-end contract, the day before its anniversary", ANNUAL, D(2025, 3, 31),
     D(2026, 3, 30), D(2027, 3, 31)),
    # 29 February: anniversaries fall on 28 February in common years.
    ("leap-day contract", ANNUAL, D(2024, 2, 29), D(2025, 1, 28), D(2025, 2, 28)),
    ("leap-day contract, too late", ANNUAL, D(2024, 2, 29), D(2025, 1, 29), D(2026, 2, 28)),
]


@pytest.mark.parametrize(("why", "offer", "contract_start", "requested_on", "expected"), CASES,
                         ids=[case[0] for case in CASES])
def test_reduction_effective_on(why: str, offer: LicenceOffer, contract_start: datetime.date,
                                requested_on: datetime.date, expected: datetime.date) -> None:
    assert reduction_effective_on(offer=offer, requested_on=requested_on,
                                  contract_start=contract_start) == expected, why


@pytest.mark.parametrize(("day", "months", "expected"), [
    (D(2026, 1, 31), 1, D(2026, 2, 28)),
    (D(2028, 1, 31), 1, D(2028, 2, 29)),
    (D(2026, 12, 15), 1, D(2027, 1, 15)),
    (D(2026, 1, 15), -1, D(2025, 12, 15)),
    (D(2027, 3, 31), -1, D(2027, 2, 28)),
])
def test_add_months_clamps_to_the_month_end(day: datetime.date, months: int,
                                            expected: datetime.date) -> None:
    assert add_months(day, months) == expected


def test_period_start_before_the_contract_is_the_contract_start() -> None:
    assert current_period_start(contract_start=D(2026, 5, 1), on=D(2026, 1, 1)) == D(2026, 5, 1)
    assert current_period_start(contract_start=D(2026, 5, 1), on=D(2027, 4, 30)) == D(2026, 5, 1)
    assert current_period_start(contract_start=D(2026, 5, 1), on=D(2027, 5, 1)) == D(2027, 5, 1)
