"""A device's identity: its Ed25519 key, and the X25519 key PQXDH derives from it.

The identity key is the Ed25519 key the device already authenticates to the relay with, so
the key a user compares in a safety number is the very key that signs prekeys and that the
relay checks. For PQXDH's Diffie-Hellman with the identity we convert that key to X25519 with
libsodium's birational map (`crypto_sign_ed25519_pk_to_curve25519` /
`crypto_sign_ed25519_sk_to_curve25519`) instead of publishing a second, separately signed
X25519 identity key: one key to pin, one key to verify, nothing extra to sign or rotate.
docs/CRYPTO.md gives the reasoning and the literature on using one key for both.
"""

from __future__ import annotations

from nacl.bindings import (
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
)
from nacl.exceptions import CryptoError as NaclCryptoError

from crypto.primitives import (
    ED25519_PUBLIC_KEY_SIZE,
    Ed25519KeyPair,
    InvalidPublicKeyError,
    X25519KeyPair,
    x25519_keypair_from_private,
)

__all__ = ["identity_dh_keypair", "identity_dh_public_key"]


def identity_dh_public_key(identity_key: bytes) -> bytes:
    """Return the X25519 public key of a peer's 32-byte Ed25519 identity key.

    Raises:
        InvalidPublicKeyError: the key is not 32 bytes, not a valid point, or of small order
            (libsodium refuses those; a DH with them would reveal nothing secret).
    """
    if len(identity_key) != ED25519_PUBLIC_KEY_SIZE:
        raise InvalidPublicKeyError(
            f"identity key must be {ED25519_PUBLIC_KEY_SIZE} bytes, got {len(identity_key)}"
        )
    try:
        return crypto_sign_ed25519_pk_to_curve25519(identity_key)
    except NaclCryptoError as error:
        raise InvalidPublicKeyError("identity key is not a usable Ed25519 point") from error


def identity_dh_keypair(identity: Ed25519KeyPair) -> X25519KeyPair:
    """Return our own identity's X25519 key pair (private scalar = clamped SHA-512(seed)[:32])."""
    secret_key = identity.private_key + identity.public_key  # libsodium's 64-byte form.
    return x25519_keypair_from_private(crypto_sign_ed25519_sk_to_curve25519(secret_key))
