"""What a device signs when it publishes prekeys, and how anyone checks it.

Shared by the device (which signs) and the relay (which verifies every
signature before storing a key: docs/ARCHITECTURE.md, "Invariants and where
they hold"). The identity key is the device's Ed25519 key, the one it
authenticates with.

Signed message (bytes), for each kind of signed prekey::

    label || key_id (4 bytes, big-endian) || public key

with ``label`` = ``b"cryptopass/1 signed-prekey\\x00"`` for the signed X25519
prekey and ``b"cryptopass/1 kem-prekey\\x00"`` for ML-KEM-1024 prekeys (the
last-resort one and the one-time ones alike). The labels separate the domains,
so a signature over one kind can never pass for another, nor for the
connection challenge (``wire.frames.auth_transcript``). One-time X25519
prekeys are not signed (as in Signal's PQXDH: the initiator gains nothing from
a signature on a key that is used once and optional).
"""

from __future__ import annotations

import enum

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

__all__ = [
    "KEM_PREKEY_LABEL",
    "KEM_PUBLIC_KEY_SIZE",
    "MAX_KEY_ID",
    "SIGNATURE_SIZE",
    "SIGNED_PREKEY_LABEL",
    "X25519_PUBLIC_KEY_SIZE",
    "PrekeyKind",
    "signed_message",
    "verify_prekey_signature",
]

SIGNED_PREKEY_LABEL = b"cryptopass/1 signed-prekey\x00"
KEM_PREKEY_LABEL = b"cryptopass/1 kem-prekey\x00"

X25519_PUBLIC_KEY_SIZE = 32
"""Bytes of an X25519 public key (RFC 7748)."""
KEM_PUBLIC_KEY_SIZE = 1568
"""Bytes of an ML-KEM-1024 encapsulation key (FIPS 203, table 3)."""
SIGNATURE_SIZE = 64
"""Bytes of an Ed25519 signature (RFC 8032)."""
MAX_KEY_ID = 2**32 - 1
"""Key ids are chosen by the device and fit in 4 bytes."""


class PrekeyKind(enum.Enum):
    SIGNED = "signed"  # the signed X25519 prekey (medium-term)
    ONE_TIME = "one_time"  # one-time X25519 prekeys (unsigned)
    KEM_LAST_RESORT = "kem_last_resort"  # the signed ML-KEM-1024 last-resort prekey
    KEM_ONE_TIME = "kem_one_time"  # signed one-time ML-KEM-1024 prekeys

    @property
    def public_key_size(self) -> int:
        if self in (PrekeyKind.SIGNED, PrekeyKind.ONE_TIME):
            return X25519_PUBLIC_KEY_SIZE
        return KEM_PUBLIC_KEY_SIZE

    @property
    def label(self) -> bytes | None:
        """The signing label, or None for the unsigned one-time X25519 prekeys."""
        if self is PrekeyKind.SIGNED:
            return SIGNED_PREKEY_LABEL
        if self is PrekeyKind.ONE_TIME:
            return None
        return KEM_PREKEY_LABEL


def signed_message(kind: PrekeyKind, key_id: int, public_key: bytes) -> bytes:
    """The exact bytes the identity key signs for a prekey of ``kind``.

    Raises:
        ValueError: an unsigned kind, a key id out of range or a key of the wrong size.
    """
    label = kind.label
    if label is None:
        raise ValueError(f"{kind.value} prekeys are not signed")
    if not 0 <= key_id <= MAX_KEY_ID:
        raise ValueError(f"key id {key_id} is outside 0..{MAX_KEY_ID}")
    if len(public_key) != kind.public_key_size:
        raise ValueError(f"a {kind.value} public key has {kind.public_key_size} bytes, "
                         f"not {len(public_key)}")
    return label + key_id.to_bytes(4, "big") + public_key


def verify_prekey_signature(identity_key: bytes, kind: PrekeyKind, key_id: int,
                            public_key: bytes, signature: bytes) -> bool:
    """True if ``signature`` is the identity key's signature over this prekey."""
    if len(signature) != SIGNATURE_SIZE:
        return False
    try:
        message = signed_message(kind, key_id, public_key)
        VerifyKey(identity_key).verify(message, signature)
    except (ValueError, BadSignatureError):
        return False
    return True
