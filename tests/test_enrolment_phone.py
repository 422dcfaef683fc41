"""Phone parsing, masking and national formatting."""

from __future__ import annotations

import re

import phonenumbers
import pytest

from enrolment import errors, numbers
from enrolment.errors import EnrolmentError, InvalidRequest
from wire.phone import InvalidPhoneNumber, mask_phone, national_format, parse_phone


@pytest.mark.parametrize(
    ("text", "e164"),
    [
        ("+33612345678", "+33612345678"),
        ("+33 6 12 34 56 78", "+33612345678"),
        ("  +33 (0)6-12-34-56-78 ", "+33612345678"),
        ("+1 650-253-0000", "+16502530000"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+49 30 901820", "+4930901820"),
    ],
)
def test_parse_valid_international_numbers(text: str, e164: str) -> None:
    assert parse_phone(text) == e164


@pytest.mark.parametrize(
    "text",
    ["", "+", "hello", "+33 1", "+999 123 456 789", "+33 6 12 34 56 78 90 12", "+1" + "5" * 100],
)
def test_parse_rejects_invalid_numbers(text: str) -> None:
    with pytest.raises(InvalidPhoneNumber) as caught:
        parse_phone(text)
    assert str(caught.value)  # a human message, not an empty error


@pytest.mark.parametrize("text", ["06 12 34 56 78", "0612345678", "33612345678"])
def test_parse_requires_international_form(text: str) -> None:
    with pytest.raises(InvalidPhoneNumber, match=r"international form.*\+"):
        parse_phone(text)


def test_invalid_phone_number_is_an_enrolment_value_error() -> None:
    # The wire's error is a ValueError; the enrolment package raises its own form of it, which is
    # also an InvalidRequest, so that every caller refusing bad input refuses bad numbers too.
    assert issubclass(InvalidPhoneNumber, ValueError)
    assert issubclass(errors.InvalidPhoneNumber, InvalidPhoneNumber)
    assert issubclass(errors.InvalidPhoneNumber, ValueError)
    assert issubclass(errors.InvalidPhoneNumber, InvalidRequest)
    assert issubclass(errors.InvalidPhoneNumber, EnrolmentError)


@pytest.mark.parametrize("text", ["", "hello", "06 12 34 56 78", "+999 123 456 789"])
def test_the_enrolment_package_refuses_bad_numbers_as_invalid_requests(text: str) -> None:
    with pytest.raises(errors.InvalidPhoneNumber) as caught:
        numbers.parse_phone(text)
    with pytest.raises(InvalidPhoneNumber) as direct:
        parse_phone(text)
    assert str(caught.value) == str(direct.value)


def test_the_enrolment_package_parses_like_the_wire() -> None:
    assert numbers.parse_phone("+33 6 12 34 56 78") == parse_phone("+33 6 12 34 56 78")


def test_mask_keeps_country_code_and_last_two_digits() -> None:
    assert mask_phone("+33612345678") == "+33******78"
    assert mask_phone("+16502530000") == "+1******00"


@pytest.mark.parametrize(
    "e164", ["+33612345678", "+16502530000", "+442079460958", "+4930901820", "+8613912345678"]
)
def test_mask_never_leaks_middle_digits(e164: str) -> None:
    number = phonenumbers.parse(e164, None)
    national = str(number.national_number)
    masked = mask_phone(e164)
    # Exactly the country code and the last two digits survive, nothing else.
    assert re.sub(r"\D", "", masked) == f"{number.country_code}{national[-2:]}"
    assert national[:-2] not in masked


def test_mask_hides_garbage_completely() -> None:
    assert re.sub(r"\D", "", mask_phone("not a number 12345")) == ""


def test_national_format() -> None:
    assert national_format("+33612345678") == "06 12 34 56 78"
    assert national_format("+16502530000") == "(650) 253-0000"
    with pytest.raises(InvalidPhoneNumber):
        national_format("garbage")
