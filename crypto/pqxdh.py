"""PQXDH key agreement (Signal's PQXDH specification, revision 3, §3-4), pure functions.

https://signal.org/docs/specifications/pqxdh/

Initiator A, responder B; IK = identity (Ed25519, converted to X25519 for DH, see
`crypto.identity`), SPK = signed prekey, OPK = one-time X25519 prekey, PQPK = signed ML-KEM-1024
prekey (one-time, or last-resort), EK = A's ephemeral "base" key::

    DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)   [DH4 = DH(EK_A, OPK_B)]
    (CT, SS) = ML-KEM-1024.Encaps(PQPK_B)
    SK = HKDF-SHA256(salt = 32 zero bytes, ikm = 32 x 0xFF || DH1 || DH2 || DH3 [|| DH4] || SS,
                     info = PQXDH_INFO, length = 32)

The initiator verifies both signatures of the bundle before any computation (§4.3). The
responder accepts only a canonical base key of large order (`check_base_key`): X25519 ignores
bit 255 and, with a clamped scalar, any small-order component, so without the check one base
key would have 16 encodings that all give the same secret (docs/CRYPTO.md, "PQXDH").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from crypto.identity import identity_dh_keypair, identity_dh_public_key
from crypto.prekeys import PrekeyBundle
from crypto.primitives import (
    SHA256_SIZE,
    X25519_KEY_SIZE,
    Ed25519KeyPair,
    InvalidPublicKeyError,
    MlKem1024Encapsulation,
    RandomSource,
    X25519KeyPair,
    hkdf_sha256,
    mlkem1024_decapsulate,
    mlkem1024_encapsulate,
    x25519_dh,
    x25519_generate,
)

__all__ = [
    "PQXDH_INFO",
    "Encapsulate",
    "InitiatedAgreement",
    "PrekeyHeader",
    "check_base_key",
    "initiate",
    "respond",
]

PQXDH_INFO = b"cryptopass/1 PQXDH X25519 SHA-256 ML-KEM-1024"
"""HKDF info: the application name and the curve, hash and KEM, as PQXDH §2.1 asks."""
_CURVE25519_DOMAIN_SEPARATOR = b"\xff" * X25519_KEY_SIZE  # PQXDH §2.2: F, 32 0xFF bytes.
_ZERO_SALT = bytes(SHA256_SIZE)  # PQXDH §2.2: a zero-filled salt of hash length.

_FIELD_PRIME = 2**255 - 19  # RFC 7748 §4.1: p; a canonical u-coordinate is below it.
_SMALL_ORDER_U_COORDINATES = frozenset(bytes.fromhex(point) for point in (
    # The canonical u-coordinates (below p) of the points of order 1, 2, 4 and 8 on
    # Curve25519 and its twist (as libsodium's X25519 blocklist; the others are >= p):
    "0000000000000000000000000000000000000000000000000000000000000000",  # 0
    "0100000000000000000000000000000000000000000000000000000000000000",  # 1
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",  # order 8
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",  # order 8
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p - 1
))

Encapsulate = Callable[[bytes], MlKem1024Encapsulation]
"""ML-KEM encapsulation; injectable only so test vectors can replay recorded outputs."""


@dataclass(frozen=True, kw_only=True)
class PrekeyHeader:
    """What the initiator sends so that the responder can compute the same secret."""

    identity_key: bytes
    """The initiator's 32-byte Ed25519 identity key."""
    base_key: bytes
    """The initiator's ephemeral X25519 public key EK_A (32 bytes)."""
    signed_prekey_id: int
    """Which signed prekey of the responder was used."""
    kem_prekey_id: int
    """Which ML-KEM prekey (one-time or last-resort) was encapsulated to."""
    one_time_prekey_id: int | None
    """Which one-time X25519 prekey was used, if the bundle had one."""
    kem_ciphertext: bytes
    """The 1568-byte ML-KEM-1024 ciphertext CT."""


@dataclass(frozen=True, kw_only=True, repr=False)
class InitiatedAgreement:
    """The initiator's result: the secret, the header to send, and B's first ratchet key."""

    shared_secret: bytes
    """SK, 32 bytes: the Double Ratchet's first root key."""
    header: PrekeyHeader
    remote_ratchet_key: bytes
    """SPK_B, which the Double Ratchet uses as B's first ratchet public key."""

    def __repr__(self) -> str:
        return f"InitiatedAgreement(header={self.header!r}, shared_secret=<redacted>)"


def check_base_key(base_key: bytes) -> None:
    """Refuse a base key that is not the one canonical encoding of a large-order point.

    Raises:
        InvalidPublicKeyError: the key is not 32 bytes, has bit 255 set, encodes a
            u-coordinate >= 2^255 - 19, or is a known small-order point.
    """
    if len(base_key) != X25519_KEY_SIZE:
        raise InvalidPublicKeyError(f"base key must be {X25519_KEY_SIZE} bytes")
    if base_key[-1] & 0x80:
        raise InvalidPublicKeyError("base key has bit 255 set (non-canonical encoding)")
    if int.from_bytes(base_key, "little") >= _FIELD_PRIME:
        raise InvalidPublicKeyError("base key is not reduced modulo 2^255 - 19")
    if base_key in _SMALL_ORDER_U_COORDINATES:
        raise InvalidPublicKeyError("base key is a point of small order")


def _derive_secret(dh_outputs: list[bytes], kem_shared_secret: bytes) -> bytes:
    key_material = _CURVE25519_DOMAIN_SEPARATOR + b"".join(dh_outputs) + kem_shared_secret
    return hkdf_sha256(
        salt=_ZERO_SALT, input_key_material=key_material, info=PQXDH_INFO, length=SHA256_SIZE
    )


def initiate(
    *,
    identity: Ed25519KeyPair,
    bundle: PrekeyBundle,
    random: RandomSource,
    encapsulate: Encapsulate = mlkem1024_encapsulate,
) -> InitiatedAgreement:
    """Run PQXDH as the initiator against `bundle`.

    Raises:
        SignatureError: a prekey signature of the bundle does not verify.
        InvalidPublicKeyError: a key of the bundle is malformed or of small order.
    """
    bundle.verify()
    base = x25519_generate(random)
    identity_dh = identity_dh_keypair(identity)
    dh_outputs = [
        x25519_dh(identity_dh.private_key, bundle.signed_prekey.public_key),
        x25519_dh(base.private_key, identity_dh_public_key(bundle.identity_key)),
        x25519_dh(base.private_key, bundle.signed_prekey.public_key),
    ]
    if bundle.one_time_prekey is not None:
        dh_outputs.append(x25519_dh(base.private_key, bundle.one_time_prekey.public_key))
    encapsulation = encapsulate(bundle.kem_prekey.public_key)
    header = PrekeyHeader(
        identity_key=identity.public_key,
        base_key=base.public_key,
        signed_prekey_id=bundle.signed_prekey.key_id,
        kem_prekey_id=bundle.kem_prekey.key_id,
        one_time_prekey_id=(
            None if bundle.one_time_prekey is None else bundle.one_time_prekey.key_id
        ),
        kem_ciphertext=encapsulation.ciphertext,
    )
    return InitiatedAgreement(
        shared_secret=_derive_secret(dh_outputs, encapsulation.shared_secret),
        header=header,
        remote_ratchet_key=bundle.signed_prekey.public_key,
    )


def respond(
    *,
    identity: Ed25519KeyPair,
    header: PrekeyHeader,
    signed_prekey: X25519KeyPair,
    kem_seed: bytes,
    one_time_private_key: bytes | None,
) -> bytes:
    """Run PQXDH as the responder; return SK. The caller looked the prekeys up by the
    header's ids. A forged KEM ciphertext does not raise here (implicit rejection): it yields
    a wrong SK, and the first message's AEAD check fails.

    Raises:
        InvalidPublicKeyError: the initiator's identity key is malformed, its base key fails
            `check_base_key`, or a DH output is all zero.
        DecapsulationError: the KEM ciphertext has the wrong length.
    """
    check_base_key(header.base_key)
    identity_dh = identity_dh_keypair(identity)
    dh_outputs = [
        x25519_dh(signed_prekey.private_key, identity_dh_public_key(header.identity_key)),
        x25519_dh(identity_dh.private_key, header.base_key),
        x25519_dh(signed_prekey.private_key, header.base_key),
    ]
    if one_time_private_key is not None:
        dh_outputs.append(x25519_dh(one_time_private_key, header.base_key))
    kem_shared_secret = mlkem1024_decapsulate(kem_seed, header.kem_ciphertext)
    return _derive_secret(dh_outputs, kem_shared_secret)
