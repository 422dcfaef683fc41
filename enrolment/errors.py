"""Errors the enrolment package raises on purpose.

Every one derives from ``EnrolmentError`` and carries a message that can be
shown to the person who caused it. ``InvalidRequest`` (and its subclass
``InvalidPhoneNumber``) is the caller's fault; the others are refusals.
"""

from __future__ import annotations

from enrolment.codes import CODE_TTL_MS, MAX_CHECKS_PER_CODE
from storage.records import OrganisationState
from wire import phone

__all__ = [
    "EnrolmentError",
    "InvalidPhoneNumber",
    "InvalidRequest",
    "OrganisationInactive",
    "RateLimited",
    "TooManyDevices",
    "VerificationFailed",
]


class EnrolmentError(Exception):
    """Base class of every error of the enrolment package."""


class InvalidRequest(EnrolmentError, ValueError):
    """The request is malformed (bad code format, bad key, bad name...); nothing changed."""


class InvalidPhoneNumber(InvalidRequest, phone.InvalidPhoneNumber):
    """The text is not a valid phone number in international form.

    The enrolment package's form of :class:`wire.phone.InvalidPhoneNumber`, raised by
    :func:`enrolment.numbers.parse_phone`: an ``InvalidRequest`` like every refusal of bad input.
    """


class RateLimited(EnrolmentError):
    """A limit on enrolment requests is reached (``enrolment.limits``, ``enrolment.codes``):
    too many from this connection or address, or for this number. The request went no
    further (the limits checked before this one counted it).

    ``retry_after_ms`` is when the request may succeed again, at the earliest as far as this
    limit goes: the message says it in seconds (what the relay's ERROR carries).
    """

    def __init__(self, what: str, *, retry_after_ms: int) -> None:
        """``what`` says which limit, e.g. "too many codes were requested for this number"."""
        self.retry_after_ms = max(0, retry_after_ms)
        seconds = -(-self.retry_after_ms // 1000)
        super().__init__(f"{what}; retry after {seconds} s")


class VerificationFailed(EnrolmentError):
    """The code is wrong, expired, exhausted, already used or the number is unknown.

    Deliberately one error for all of these: telling them apart would let a
    caller learn which numbers are declared. So the one message says what to do in
    every case: a code with no checks left (or expired) never works again, whatever
    is typed, and only a new code helps.
    """

    def __init__(self) -> None:
        super().__init__(
            f"the verification code is wrong, expired or has no attempts left (a code "
            f"allows {MAX_CHECKS_PER_CODE} attempts within {CODE_TTL_MS // 60_000} "
            f"minutes); once none are left, request a new code"
        )


class TooManyDevices(EnrolmentError):
    """The user already has the maximum number of devices."""

    def __init__(self, *, max_devices: int) -> None:
        super().__init__(f"this account already has the maximum of {max_devices} devices")
        self.max_devices = max_devices


class OrganisationInactive(EnrolmentError):
    """The organisation is suspended or terminated: registering a device of one of its users,
    and declaring users in it, are refused (the relay answers ORGANISATION_SUSPENDED, the admin
    API ``organisation_suspended``)."""

    def __init__(self, state: OrganisationState | None = None) -> None:
        """``state`` is the organisation's, when the refusal may name it (to its administrator);
        without it the message speaks of the account (to a device)."""
        super().__init__("the organisation of this account is not active" if state is None
                         else f"the organisation is {state.value}")
        self.state = state
