"""Safety numbers: 60 digits two users compare to check each other's identity keys.

Signal's numeric fingerprint (libsignal `NumericFingerprintGenerator`, version 0), extended
to users with several devices by hashing all their device identity keys in sorted order (as
WhatsApp's multi-device security code covers every device):

    h = SHA-512(version (2 bytes, 0) || keys || user_id (UTF-8))
    repeat 5200 times: h = SHA-512(h || keys)          keys = sorted identity keys, joined
    digits = for each of the first six 5-byte chunks of h: big-endian int mod 100000, 5 digits

Each user gets 30 digits; the safety number is the two halves in ascending order, so both
sides compute the same 60 digits. Adding, removing or changing a device changes the number.
The 5200 iterations make finding a second key set with the same digits cost ~2^112 hashes
(Signal's figure): computation is slow on purpose, the key is not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from crypto.primitives import ED25519_PUBLIC_KEY_SIZE

__all__ = ["MAX_KEYS_PER_USER", "SAFETY_NUMBER_DIGITS", "format_safety_number", "safety_number"]

SAFETY_NUMBER_DIGITS = 60
_FINGERPRINT_VERSION = b"\x00\x00"  # libsignal's version 0 prefix.
_ITERATIONS = 5200  # libsignal's count (see the module docstring).
_CHUNKS_PER_USER = 6
_CHUNK_BYTES = 5
_CHUNK_MODULUS = 100_000  # Five decimal digits per chunk.
MAX_KEYS_PER_USER = 16  # The relay's device cap per user (PROTOCOL.md TOO_MANY_DEVICES).


def _user_digits(user_id: str, identity_keys: Iterable[bytes]) -> str:
    keys = sorted(identity_keys)
    if not 1 <= len(keys) <= MAX_KEYS_PER_USER:
        raise ValueError(f"a user has 1..{MAX_KEYS_PER_USER} identity keys, not {len(keys)}")
    if any(len(key) != ED25519_PUBLIC_KEY_SIZE for key in keys):
        raise ValueError(f"identity keys are {ED25519_PUBLIC_KEY_SIZE} bytes")
    joined = b"".join(keys)
    digest = hashlib.sha512(_FINGERPRINT_VERSION + joined + user_id.encode()).digest()
    for _ in range(_ITERATIONS):
        digest = hashlib.sha512(digest + joined).digest()
    chunks = (digest[index * _CHUNK_BYTES:(index + 1) * _CHUNK_BYTES]
              for index in range(_CHUNKS_PER_USER))
    return "".join(f"{int.from_bytes(chunk, 'big') % _CHUNK_MODULUS:05d}" for chunk in chunks)


def safety_number(local_user_id: str, local_identity_keys: Iterable[bytes],
                  remote_user_id: str, remote_identity_keys: Iterable[bytes]) -> str:
    """Return the 60-digit safety number; both users get the same digits.

    Args:
        local_user_id, remote_user_id: the relay's stable user ids.
        local_identity_keys, remote_identity_keys: every current device's 32-byte
            Ed25519 identity key of that user (any order).

    Raises:
        ValueError: a user has no key, over 16 keys, or a key of the wrong size.
    """
    halves = sorted([_user_digits(local_user_id, local_identity_keys),
                     _user_digits(remote_user_id, remote_identity_keys)])
    return halves[0] + halves[1]


def format_safety_number(digits: str) -> str:
    """Group the 60 digits in twelve blocks of five, as apps show them."""
    return " ".join(digits[index:index + 5] for index in range(0, len(digits), 5))
