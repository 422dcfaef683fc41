"""Verification codes: limits, generation and keyed hashing.

Codes are never stored in clear: a 6-digit code hashed with a plain hash is
brute-forced from a stolen database in a millisecond, while an HMAC keyed with
the relay's enrolment secret is not, as long as the secret is kept apart from the rows:
it lives in a file of its own (``relay.enrolment_secret``), never in the store.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

__all__ = [
    "CODE_DIGITS",
    "CODE_TTL_MS",
    "GUESS_WINDOW_MS",
    "MAX_CHECKS_PER_CODE",
    "MAX_DEVICES_PER_USER",
    "MAX_GUESSES_PER_NUMBER_PER_DAY",
    "MAX_SENDS_PER_NUMBER_PER_DAY",
    "SECRET_BYTES",
    "SEND_WINDOW_MS",
    "codes_match",
    "generate_code",
    "hash_code",
    "is_well_formed_code",
    "phone_key",
    "secret_fingerprint",
]

CODE_DIGITS = 6
"""Digits in a code: easy to type from an SMS, and 10**6 guesses against 5 checks."""

CODE_TTL_MS = 10 * 60 * 1000
"""Milliseconds a code stays valid: long enough for a slow SMS, short for an attacker."""

MAX_CHECKS_PER_CODE = 5
"""Checks allowed per code, right or wrong: bounds guessing to 5 in 10**6 per code."""

MAX_SENDS_PER_NUMBER_PER_DAY = 5
"""Codes sent per number per rolling window: bounds SMS cost and spam."""

SEND_WINDOW_MS = 24 * 60 * 60 * 1000
"""Milliseconds of the rolling window ``MAX_SENDS_PER_NUMBER_PER_DAY`` counts over."""

MAX_GUESSES_PER_NUMBER_PER_DAY = 10
"""Checks of a number's codes per ``GUESS_WINDOW_MS``, whichever code they check: a new code
does not give a guesser more, so guessing stays at 10 in 10**6 a day per number (two codes'
worth of checks, for a person who mistypes)."""

GUESS_WINDOW_MS = 24 * 60 * 60 * 1000
"""Milliseconds of the window ``MAX_GUESSES_PER_NUMBER_PER_DAY`` counts over, from the first
check it counts."""

MAX_DEVICES_PER_USER = 5
"""Devices a user may register (phone, tablet, desktops); each one is a key to protect."""

SECRET_BYTES = 32
"""Size of the enrolment secret (the HMAC key): the full strength of HMAC-SHA256."""

# Domain separation: the same secret keys three different HMAC uses.
_PHONE_KEY_LABEL = b"cryptopass/enrolment/phone-key/v1\x00"
_CODE_HASH_LABEL = b"cryptopass/enrolment/code-hash/v1\x00"
_FINGERPRINT_LABEL = b"cryptopass/enrolment/secret-fingerprint/v1\x00"


def generate_code(randbelow: Callable[[int], int]) -> str:
    """Return a uniformly random code of ``CODE_DIGITS`` digits, zero-padded.

    Args:
        randbelow: ``secrets.randbelow`` in production; injectable for tests.
    """
    return str(randbelow(10**CODE_DIGITS)).zfill(CODE_DIGITS)


def is_well_formed_code(code: str) -> bool:
    """True if ``code`` is exactly ``CODE_DIGITS`` ASCII digits."""
    return len(code) == CODE_DIGITS and code.isascii() and code.isdigit()


def phone_key(secret: bytes, phone: str) -> bytes:
    """Keyed hash of an E.164 number (32 bytes).

    Lets the store rate-limit numbers that were never declared without keeping
    them in clear.
    """
    return hmac.new(secret, _PHONE_KEY_LABEL + phone.encode("ascii"), hashlib.sha256).digest()


def hash_code(secret: bytes, phone_key: bytes, code: str) -> bytes:
    """Keyed hash of a code, bound to the number it was sent to (32 bytes)."""
    message = _CODE_HASH_LABEL + phone_key + code.encode("ascii")
    return hmac.new(secret, message, hashlib.sha256).digest()


def secret_fingerprint(secret: bytes) -> bytes:
    """What the store keeps to recognise the secret (32 bytes), without it.

    An HMAC of a constant under the secret: nodes of a cluster compare it to find out that
    they read the same secret file, and it helps nobody find the secret or a code.
    """
    return hmac.new(secret, _FINGERPRINT_LABEL, hashlib.sha256).digest()


def codes_match(a: bytes, b: bytes) -> bool:
    """Compare two code hashes in constant time."""
    return hmac.compare_digest(a, b)
