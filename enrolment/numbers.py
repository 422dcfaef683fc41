"""Phone numbers as the enrolment package takes them: the wire's E.164 rules, its own error."""

from __future__ import annotations

from enrolment.errors import InvalidPhoneNumber
from wire import phone

__all__ = ["parse_phone"]


def parse_phone(text: str) -> str:
    """Normalise an international number to E.164, as :func:`wire.phone.parse_phone` does.

    Raises:
        InvalidPhoneNumber: the enrolment error (an ``InvalidRequest``), so that callers that
            refuse bad input by catching ``InvalidRequest`` refuse bad numbers too.
    """
    try:
        return phone.parse_phone(text)
    except phone.InvalidPhoneNumber as error:
        raise InvalidPhoneNumber(str(error)) from None
