"""Prekey signatures: what the device signs and what the relay accepts."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from crypto.prekey_format import (
    KEM_PUBLIC_KEY_SIZE,
    PrekeyKind,
    signed_message,
    verify_prekey_signature,
)

IDENTITY = SigningKey(bytes(range(32)))


def sign(kind: PrekeyKind, key_id: int, public_key: bytes) -> bytes:
    return IDENTITY.sign(signed_message(kind, key_id, public_key)).signature


def test_signed_message_layout() -> None:
    message = signed_message(PrekeyKind.SIGNED, 258, b"\x07" * 32)
    assert message == b"cryptopass/1 signed-prekey\x00" + b"\x00\x00\x01\x02" + b"\x07" * 32


@pytest.mark.parametrize("kind", [PrekeyKind.SIGNED, PrekeyKind.KEM_LAST_RESORT,
                                  PrekeyKind.KEM_ONE_TIME])
def test_a_good_signature_verifies_and_any_change_fails(kind: PrekeyKind) -> None:
    identity_key = IDENTITY.verify_key.encode()
    public_key = b"\x05" * kind.public_key_size
    signature = sign(kind, 9, public_key)
    assert verify_prekey_signature(identity_key, kind, 9, public_key, signature)
    assert not verify_prekey_signature(identity_key, kind, 10, public_key, signature)
    assert not verify_prekey_signature(identity_key, kind, 9, b"\x06" + public_key[1:],
                                       signature)
    assert not verify_prekey_signature(SigningKey.generate().verify_key.encode(), kind, 9,
                                       public_key, signature)
    assert not verify_prekey_signature(identity_key, kind, 9, public_key, signature[:-1])


def test_a_signature_does_not_cross_kinds() -> None:
    identity_key = IDENTITY.verify_key.encode()
    kem_key = b"\x01" * KEM_PUBLIC_KEY_SIZE
    signature = sign(PrekeyKind.KEM_LAST_RESORT, 1, kem_key)
    # Last-resort and one-time KEM keys share a label on purpose (same kind of key).
    assert verify_prekey_signature(identity_key, PrekeyKind.KEM_ONE_TIME, 1, kem_key, signature)
    x25519_key = b"\x01" * 32
    signature = sign(PrekeyKind.SIGNED, 1, x25519_key)
    assert not verify_prekey_signature(identity_key, PrekeyKind.ONE_TIME, 1, x25519_key,
                                       signature)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="not signed"):
        signed_message(PrekeyKind.ONE_TIME, 1, bytes(32))
    with pytest.raises(ValueError, match="outside"):
        signed_message(PrekeyKind.SIGNED, 2**32, bytes(32))
    with pytest.raises(ValueError, match="1568 bytes"):
        signed_message(PrekeyKind.KEM_ONE_TIME, 1, bytes(32))
    assert not verify_prekey_signature(bytes(31), PrekeyKind.SIGNED, 1, bytes(32), bytes(64))
