"""Safety numbers: 60 digits two users compare to check each other's account keys.

Each user has one Ed25519 account key (`crypto.device_list`), so the number covers exactly two
keys and stays the same when either user adds or removes a device. It follows the iteration
structure of libsignal's numeric fingerprint (`NumericFingerprintGenerator`, 5200 iterations),
over our keys and ids::

    h = 0x0000 || account_key || user_id            the fingerprint version, 2 bytes, then
                                                    the 32-byte key, then the UTF-8 user id
    repeat 5200 times: h = SHA-512(h || account_key)
    digits = for each of the first six 5-byte chunks of h (its first 30 bytes):
             big-endian integer mod 100000, written as 5 digits

Each user gets 30 digits; the safety number is the two halves in ascending order (compared as
strings), so both sides compute the same 60 digits.

How it differs from libsignal's: the key is the raw 32-byte Ed25519 public key (libsignal
hashes its 33-byte encoding, a 0x05 type byte then an X25519 key), and the stable id is the
relay's opaque user id (Signal uses the ACI). The same structure over other bytes gives other
digits: a Cryptopass safety number cannot be compared with a Signal one.

The 5200 iterations make finding another key with the same 30 digits cost ~2^112 hashes
(libsignal's figure): computing a number is slow on purpose, the key is not.

`tests/vectors/safety_number_reference.py` recomputes the published vectors from this
description alone (docs/CRYPTO.md, "Safety numbers").
"""

from __future__ import annotations

import hashlib

from crypto.primitives import ED25519_PUBLIC_KEY_SIZE

__all__ = [
    "MAX_USER_ID_BYTES",
    "SAFETY_NUMBER_DIGITS",
    "SAFETY_NUMBER_ITERATIONS",
    "format_safety_number",
    "safety_number",
]

SAFETY_NUMBER_DIGITS = 60
SAFETY_NUMBER_ITERATIONS = 5200
"""SHA-512 computations per user: libsignal's count (see the module docstring)."""
_FINGERPRINT_VERSION = b"\x00\x00"  # libsignal's fingerprint version field, 0.
_CHUNKS_PER_USER = 6
_CHUNK_BYTES = 5
_CHUNK_MODULUS = 100_000  # Five decimal digits per chunk.
MAX_USER_ID_BYTES = 64
"""Bytes of a user id: the relay's limit for the opaque ids it assigns (PROTOCOL.md)."""


def _user_digits(user_id: str, account_key: bytes) -> str:
    user = user_id.encode()
    if not 1 <= len(user) <= MAX_USER_ID_BYTES:
        raise ValueError(f"a user id is 1..{MAX_USER_ID_BYTES} bytes")
    if len(account_key) != ED25519_PUBLIC_KEY_SIZE:
        raise ValueError(f"an account key is {ED25519_PUBLIC_KEY_SIZE} bytes, "
                         f"not {len(account_key)}")
    digest = _FINGERPRINT_VERSION + account_key + user
    for _ in range(SAFETY_NUMBER_ITERATIONS):
        digest = hashlib.sha512(digest + account_key).digest()
    chunks = (digest[index * _CHUNK_BYTES:(index + 1) * _CHUNK_BYTES]
              for index in range(_CHUNKS_PER_USER))
    return "".join(f"{int.from_bytes(chunk, 'big') % _CHUNK_MODULUS:05d}" for chunk in chunks)


def safety_number(local_user_id: str, local_account_key: bytes,
                  remote_user_id: str, remote_account_key: bytes) -> str:
    """Return the 60-digit safety number of two users; both of them get the same digits.

    Args:
        local_user_id, remote_user_id: the relay's user ids (1..64 bytes of UTF-8).
        local_account_key, remote_account_key: each user's 32-byte Ed25519 account key
            (the key that signs the user's device list, `crypto.device_list`).

    Raises:
        ValueError: a key is not 32 bytes or a user id is empty or over 64 bytes.
    """
    halves = sorted([_user_digits(local_user_id, local_account_key),
                     _user_digits(remote_user_id, remote_account_key)])
    return halves[0] + halves[1]


def format_safety_number(digits: str) -> str:
    """Group the 60 digits in twelve blocks of five, as apps show them."""
    return " ".join(digits[index:index + 5] for index in range(0, len(digits), 5))
