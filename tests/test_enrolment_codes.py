"""Code limits, generation and keyed hashing."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from enrolment.codes import (
    CODE_DIGITS,
    CODE_TTL_MS,
    SEND_WINDOW_MS,
    codes_match,
    generate_code,
    hash_code,
    is_well_formed_code,
    phone_key,
)

SECRET = bytes(range(32))
PHONE = "+33612345678"


def test_limits_have_their_documented_values() -> None:
    assert CODE_DIGITS == 6
    assert CODE_TTL_MS == 600_000
    assert SEND_WINDOW_MS == 86_400_000


def test_generate_code_is_zero_padded_and_draws_from_a_million() -> None:
    bounds: list[int] = []

    def randbelow(bound: int) -> int:
        bounds.append(bound)
        return 42

    assert generate_code(randbelow) == "000042"
    assert bounds == [10**CODE_DIGITS]
    assert generate_code(lambda bound: bound - 1) == "999999"
    assert generate_code(lambda bound: 0) == "000000"


def test_generated_codes_are_well_formed() -> None:
    for _ in range(200):
        assert is_well_formed_code(generate_code(secrets.randbelow))


def test_well_formed_code() -> None:
    assert is_well_formed_code("012345")
    for bad in ["", "12345", "1234567", "12a456", " 12345", "١٢٣٤٥٦", "12345\n"]:
        assert not is_well_formed_code(bad), bad


def test_phone_key_is_a_keyed_deterministic_hash() -> None:
    key = phone_key(SECRET, PHONE)
    assert len(key) == 32
    assert key == phone_key(SECRET, PHONE)
    assert key != phone_key(SECRET, "+33612345679")
    assert key != phone_key(bytes(32), PHONE)
    # Keyed: not the plain hash of the number, which anyone could recompute.
    assert key != hashlib.sha256(PHONE.encode()).digest()
    assert PHONE.encode() not in key


def test_hash_code_is_hmac_sha256_bound_to_the_number() -> None:
    key = phone_key(SECRET, PHONE)
    digest = hash_code(SECRET, key, "123456")
    assert len(digest) == 32
    expected = hmac.new(
        SECRET, b"cryptopass/enrolment/code-hash/v1\x00" + key + b"123456", hashlib.sha256
    ).digest()
    assert digest == expected
    assert digest != hash_code(SECRET, key, "123457")
    assert digest != hash_code(SECRET, phone_key(SECRET, "+33612345679"), "123456")
    assert digest != hash_code(bytes(32), key, "123456")


def test_codes_match() -> None:
    digest = hash_code(SECRET, phone_key(SECRET, PHONE), "123456")
    assert codes_match(digest, bytes(digest))
    assert not codes_match(digest, hash_code(SECRET, phone_key(SECRET, PHONE), "654321"))
    assert not codes_match(digest, digest[:-1])
