"""Phone number parsing, formatting and masking (E.164, via ``phonenumbers``).

Both ends need these rules: the relay keys users by E.164 number, and the client parses what its
user types before it sends an ENROL_START or a LOOKUP. Nothing here does I/O.
"""

from __future__ import annotations

import phonenumbers

__all__ = ["InvalidPhoneNumber", "mask_phone", "national_format", "parse_phone"]


class InvalidPhoneNumber(ValueError):
    """The text is not a valid phone number in international form (INVALID_PHONE_NUMBER)."""


# Longest input we hand to the parser: E.164 has at most 15 digits, and we
# allow generous room for spaces, dashes and parentheses, not for megabytes.
MAX_PHONE_TEXT_CHARS = 64

# Fixed-width mask: a width that followed the number's length would leak it.
_MASK = "******"
_UNPARSABLE_MASK = "+" + _MASK


def parse_phone(text: str) -> str:
    """Parse a phone number written in international form.

    Args:
        text: user input such as ``"+33 6 12 34 56 78"``; it must start with
            ``+`` (we serve several countries, so no default region is assumed).

    Returns:
        The number in E.164 form (``"+33612345678"``).

    Raises:
        InvalidPhoneNumber: not international, unparsable or not a valid number.
    """
    stripped = text.strip()
    if len(stripped) > MAX_PHONE_TEXT_CHARS:
        raise InvalidPhoneNumber("the phone number is too long")
    if not stripped.startswith("+"):
        raise InvalidPhoneNumber(
            "write the phone number in international form, starting with + and the country code"
        )
    try:
        number = phonenumbers.parse(stripped, None)
    except phonenumbers.NumberParseException as error:
        raise InvalidPhoneNumber("this is not a phone number") from error
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhoneNumber("this phone number does not exist")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def mask_phone(e164: str) -> str:
    """Mask a number for logs: country code and last 2 digits only (``+33******78``).

    Never raises: anything that is not a parsable number is masked completely.
    """
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return _UNPARSABLE_MASK
    national = str(number.national_number)
    # Short numbers would be revealed almost entirely by their last 2 digits.
    if len(national) < 6:
        return f"+{number.country_code}{_MASK}"
    return f"+{number.country_code}{_MASK}{national[-2:]}"


def national_format(e164: str) -> str:
    """Format an E.164 number the way people of its country write it (``06 12 34 56 78``).

    Raises:
        InvalidPhoneNumber: ``e164`` is not a parsable number.
    """
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException as error:
        raise InvalidPhoneNumber("this is not a phone number") from error
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
