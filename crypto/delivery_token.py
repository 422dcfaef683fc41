"""Profile keys and delivery tokens: who may send a sealed envelope to an account.

An account has a random 32-byte **profile key**, which its devices share only inside end-to-end
encrypted messages: with the account's own devices and with each contact it writes to. The
**delivery token** derived from it authorises a sealed send (``SEALED_SEND``) to the account
without saying who sends: whoever holds the token is someone the account chose to tell. The
account registers only the token's SHA-256 hash with the relay, so the relay's store (and a
copy of it) cannot be used to send with it. Rotating the profile key makes a new token; the
relay then refuses the old one.

    delivery token = HMAC-SHA256(profile key, DELIVERY_TOKEN_LABEL)[:16]
    token hash     = SHA-256(delivery token)

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac

from crypto.primitives import RandomSource

__all__ = ["DELIVERY_TOKEN_LABEL", "DELIVERY_TOKEN_SIZE", "PROFILE_KEY_SIZE", "delivery_token",
           "delivery_token_hash", "new_profile_key"]

PROFILE_KEY_SIZE = 32
DELIVERY_TOKEN_SIZE = 16
"""Bytes of a delivery token: 128 bits, out of reach of guessing at any rate the relay allows."""
DELIVERY_TOKEN_LABEL = b"cryptopass delivery token v1"


def new_profile_key(random: RandomSource) -> bytes:
    """A fresh profile key (at enrolment, at first use, or when rotating)."""
    return random.bytes(PROFILE_KEY_SIZE)


def delivery_token(profile_key: bytes) -> bytes:
    """The 16-byte delivery token of ``profile_key``.

    Raises:
        ValueError: the profile key is not 32 bytes.
    """
    if len(profile_key) != PROFILE_KEY_SIZE:
        raise ValueError(f"a profile key has {PROFILE_KEY_SIZE} bytes")
    return hmac.new(profile_key, DELIVERY_TOKEN_LABEL, hashlib.sha256).digest()[
        :DELIVERY_TOKEN_SIZE]


def delivery_token_hash(token: bytes) -> bytes:
    """The 32-byte SHA-256 of a delivery token: what the recipient registers with the relay.

    Raises:
        ValueError: the token is not 16 bytes.
    """
    if len(token) != DELIVERY_TOKEN_SIZE:
        raise ValueError(f"a delivery token has {DELIVERY_TOKEN_SIZE} bytes")
    return hashlib.sha256(token).digest()
