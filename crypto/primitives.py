"""Typed wrappers over the `cryptography` package: the only primitives Cryptopass uses.

Everything here is pure (no I/O). Key material is raw bytes of a fixed, named size. Where a
primitive needs randomness, it takes a `RandomSource`, so tests and vectors can inject a
deterministic one; the one exception is ML-KEM encapsulation, whose randomness `cryptography`
draws internally (its API has no derandomised encapsulation).

Errors say whose fault they are:
- `ValueError`: we misused the API (e.g. our own private key has the wrong length).
- `CryptoError` subclasses: the input from the peer is bad (bad signature, AEAD failure,
  low-order or malformed public key, malformed KEM ciphertext).
"""

from __future__ import annotations

import builtins
import hmac
import secrets
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.mlkem import (
    MLKEM1024PrivateKey,
    MLKEM1024PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

__all__ = [
    "AES256GCM_KEY_SIZE",
    "AES256GCM_NONCE_SIZE",
    "AES256GCM_TAG_SIZE",
    "ED25519_PRIVATE_KEY_SIZE",
    "ED25519_PUBLIC_KEY_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "HKDF_SHA256_MAX_OUTPUT_SIZE",
    "MLKEM1024_CIPHERTEXT_SIZE",
    "MLKEM1024_PUBLIC_KEY_SIZE",
    "MLKEM1024_SEED_SIZE",
    "MLKEM1024_SHARED_SECRET_SIZE",
    "SHA256_SIZE",
    "X25519_KEY_SIZE",
    "CryptoError",
    "DecapsulationError",
    "DecryptionError",
    "Ed25519KeyPair",
    "InvalidPublicKeyError",
    "MlKem1024Encapsulation",
    "MlKem1024KeyPair",
    "RandomSource",
    "SeededRandom",
    "SignatureError",
    "SystemRandom",
    "X25519KeyPair",
    "aes256gcm_open",
    "aes256gcm_seal",
    "ed25519_generate",
    "ed25519_keypair_from_private",
    "ed25519_sign",
    "ed25519_verify",
    "hkdf_sha256",
    "hkdf_sha256_expand",
    "hkdf_sha256_extract",
    "mlkem1024_decapsulate",
    "mlkem1024_encapsulate",
    "mlkem1024_generate",
    "mlkem1024_keypair_from_seed",
    "x25519_dh",
    "x25519_generate",
    "x25519_keypair_from_private",
]

# Sizes in bytes, fixed by the specs cited beside each.
X25519_KEY_SIZE = 32  # RFC 7748 §5: scalars and u-coordinates are 32 bytes.
ED25519_PRIVATE_KEY_SIZE = 32  # RFC 8032 §5.1.5: the private key is a 32-byte seed.
ED25519_PUBLIC_KEY_SIZE = 32  # RFC 8032 §5.1.5.
ED25519_SIGNATURE_SIZE = 64  # RFC 8032 §5.1.6.
SHA256_SIZE = 32
HKDF_SHA256_MAX_OUTPUT_SIZE = 255 * SHA256_SIZE  # RFC 5869 §2.3: L <= 255*HashLen.
AES256GCM_KEY_SIZE = 32
AES256GCM_NONCE_SIZE = 12  # NIST SP 800-38D §5.2.1.1: 96-bit IVs are the efficient case.
AES256GCM_TAG_SIZE = 16  # Full-length tag; we never truncate.
MLKEM1024_SEED_SIZE = 64  # FIPS 203 §7.1: ML-KEM.KeyGen_internal takes seeds d || z.
MLKEM1024_PUBLIC_KEY_SIZE = 1568  # FIPS 203 §8, Table 3.
MLKEM1024_CIPHERTEXT_SIZE = 1568  # FIPS 203 §8, Table 3.
MLKEM1024_SHARED_SECRET_SIZE = 32  # FIPS 203 §8, Table 3.

_ZERO_DH_OUTPUT = bytes(X25519_KEY_SIZE)
_SEEDED_RANDOM_INFO = b"cryptopass seeded random v1"
_CHACHA20_KEY_SIZE = 32
_CHACHA20_NONCE_SIZE = 16  # cryptography's ChaCha20 takes counter || nonce as 16 bytes.


class CryptoError(Exception):
    """Input from the peer failed a cryptographic check."""


class DecryptionError(CryptoError):
    """AEAD decryption failed (wrong key, tampered data, truncated input); no further detail."""


class SignatureError(CryptoError):
    """A signature did not verify under the given public key and message."""


class InvalidPublicKeyError(CryptoError):
    """A peer's public key is malformed, or yields a low-order (all-zero) shared secret."""


class DecapsulationError(CryptoError):
    """A KEM ciphertext is malformed (wrong length); valid-length forgeries do not raise."""


# --- Randomness -----------------------------------------------------------------------------


@runtime_checkable
class RandomSource(Protocol):
    """The single source of randomness for everything in `crypto`."""

    def bytes(self, n: int) -> builtins.bytes:
        """Return `n` bytes; a real source must be cryptographically secure."""
        ...


class SystemRandom:
    """The operating system's CSPRNG (`secrets.token_bytes`). Use this in production."""

    def bytes(self, n: int) -> builtins.bytes:
        """Return `n` fresh random bytes."""
        _require_non_negative(n)
        return secrets.token_bytes(n)


class SeededRandom:
    """A deterministic stream for tests and vectors. NEVER use in production.

    The stream is the ChaCha20 keystream under key HKDF-SHA256(ikm=seed,
    info="cryptopass seeded random v1") and an all-zero nonce, so successive calls continue
    one stream: `bytes(32) + bytes(32)` equals a fresh instance's `bytes(64)`.
    """

    def __init__(self, seed: builtins.bytes) -> None:
        key = hkdf_sha256(
            salt=b"", input_key_material=seed, info=_SEEDED_RANDOM_INFO, length=_CHACHA20_KEY_SIZE
        )
        cipher = Cipher(algorithms.ChaCha20(key, bytes(_CHACHA20_NONCE_SIZE)), mode=None)
        self._keystream = cipher.encryptor()

    def bytes(self, n: int) -> builtins.bytes:
        """Return the next `n` bytes of the stream."""
        _require_non_negative(n)
        return self._keystream.update(bytes(n))


def _require_non_negative(n: int) -> None:
    if n < 0:
        raise ValueError(f"cannot produce a negative number of bytes ({n})")


def _require_size(name: str, value: bytes, size: int) -> None:
    """Refuse our own misuse: a key we hold must have its fixed size."""
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")


# --- X25519 (RFC 7748) ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, repr=False)
class X25519KeyPair:
    """An X25519 key pair as raw bytes."""

    private_key: bytes
    """The 32-byte scalar, as given (clamping happens inside X25519, RFC 7748 §5)."""
    public_key: bytes
    """The 32-byte u-coordinate X25519(private_key, 9)."""

    def __repr__(self) -> str:
        return f"X25519KeyPair(public_key={self.public_key.hex()}, private_key=<redacted>)"


def x25519_keypair_from_private(private_key: bytes) -> X25519KeyPair:
    """Derive the key pair for a 32-byte private value.

    Raises:
        ValueError: `private_key` is not 32 bytes.
    """
    _require_size("X25519 private key", private_key, X25519_KEY_SIZE)
    public_key = X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()
    return X25519KeyPair(private_key=bytes(private_key), public_key=public_key)


def x25519_generate(random: RandomSource) -> X25519KeyPair:
    """Generate a key pair from 32 bytes of `random`."""
    return x25519_keypair_from_private(random.bytes(X25519_KEY_SIZE))


def x25519_dh(private_key: bytes, peer_public_key: bytes) -> bytes:
    """Compute the 32-byte X25519 shared secret.

    Raises:
        ValueError: `private_key` is not 32 bytes.
        InvalidPublicKeyError: `peer_public_key` is not 32 bytes, or is a low-order point
            giving the all-zero output that RFC 7748 §6.1 says to check for and refuse.
    """
    _require_size("X25519 private key", private_key, X25519_KEY_SIZE)
    if len(peer_public_key) != X25519_KEY_SIZE:
        raise InvalidPublicKeyError(
            f"X25519 public key must be {X25519_KEY_SIZE} bytes, got {len(peer_public_key)}"
        )
    private = X25519PrivateKey.from_private_bytes(private_key)
    try:
        shared_secret = private.exchange(X25519PublicKey.from_public_bytes(peer_public_key))
    except ValueError as error:
        # OpenSSL already refuses the all-zero output; translate it once, here.
        raise InvalidPublicKeyError("X25519 shared secret is all zero") from error
    # Belt and braces should a backend ever stop refusing it.
    if hmac.compare_digest(shared_secret, _ZERO_DH_OUTPUT):
        raise InvalidPublicKeyError("X25519 shared secret is all zero")
    return shared_secret


# --- Ed25519 (RFC 8032) ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, repr=False)
class Ed25519KeyPair:
    """An Ed25519 key pair as raw bytes."""

    private_key: bytes
    """The 32-byte seed (RFC 8032 §5.1.5)."""
    public_key: bytes
    """The 32-byte encoded point A."""

    def __repr__(self) -> str:
        return f"Ed25519KeyPair(public_key={self.public_key.hex()}, private_key=<redacted>)"


def ed25519_keypair_from_private(private_key: bytes) -> Ed25519KeyPair:
    """Derive the key pair for a 32-byte seed.

    Raises:
        ValueError: `private_key` is not 32 bytes.
    """
    _require_size("Ed25519 private key", private_key, ED25519_PRIVATE_KEY_SIZE)
    public_key = Ed25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()
    return Ed25519KeyPair(private_key=bytes(private_key), public_key=public_key)


def ed25519_generate(random: RandomSource) -> Ed25519KeyPair:
    """Generate a key pair from 32 bytes of `random`."""
    return ed25519_keypair_from_private(random.bytes(ED25519_PRIVATE_KEY_SIZE))


def ed25519_sign(private_key: bytes, message: bytes) -> bytes:
    """Return the 64-byte signature of `message` (deterministic, RFC 8032 §5.1.6).

    Raises:
        ValueError: `private_key` is not 32 bytes.
    """
    _require_size("Ed25519 private key", private_key, ED25519_PRIVATE_KEY_SIZE)
    return Ed25519PrivateKey.from_private_bytes(private_key).sign(message)


def ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Check `signature` over `message`; return only if it is valid.

    Raises:
        SignatureError: the signature does not verify, or the key or signature is malformed.
    """
    if len(public_key) != ED25519_PUBLIC_KEY_SIZE or len(signature) != ED25519_SIGNATURE_SIZE:
        raise SignatureError("malformed Ed25519 public key or signature")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError) as error:
        raise SignatureError("Ed25519 signature does not verify") from error


# --- HKDF-SHA256 (RFC 5869) -----------------------------------------------------------------


def hkdf_sha256_extract(*, salt: bytes, input_key_material: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 §2.2): return the 32-byte pseudorandom key.

    An empty `salt` means HashLen zero bytes, as the RFC specifies.
    """
    return HKDF.extract(hashes.SHA256(), salt, input_key_material)


def hkdf_sha256_expand(*, pseudorandom_key: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 §2.3): return `length` bytes of output keying material.

    Raises:
        ValueError: `pseudorandom_key` is shorter than 32 bytes, or `length` is not in
            1..8160 (255 * HashLen).
    """
    if len(pseudorandom_key) < SHA256_SIZE:
        raise ValueError(f"HKDF pseudorandom key must be at least {SHA256_SIZE} bytes")
    if not 0 < length <= HKDF_SHA256_MAX_OUTPUT_SIZE:
        raise ValueError(f"HKDF-SHA256 output length must be 1..{HKDF_SHA256_MAX_OUTPUT_SIZE}")
    return HKDFExpand(hashes.SHA256(), length, info).derive(pseudorandom_key)


def hkdf_sha256(*, salt: bytes, input_key_material: bytes, info: bytes, length: int) -> bytes:
    """HKDF (RFC 5869 §2): extract then expand.

    Raises:
        ValueError: `length` is not in 1..8160.
    """
    pseudorandom_key = hkdf_sha256_extract(salt=salt, input_key_material=input_key_material)
    return hkdf_sha256_expand(pseudorandom_key=pseudorandom_key, info=info, length=length)


# --- AES-256-GCM (NIST SP 800-38D) ----------------------------------------------------------


def aes256gcm_seal(*, key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """Encrypt and authenticate; return ciphertext || 16-byte tag.

    A (key, nonce) pair must never be used twice: callers derive a fresh key or nonce per
    message.

    Raises:
        ValueError: `key` is not 32 bytes or `nonce` is not 12 bytes.
    """
    _require_size("AES-256-GCM key", key, AES256GCM_KEY_SIZE)
    _require_size("AES-256-GCM nonce", nonce, AES256GCM_NONCE_SIZE)
    return AESGCM(key).encrypt(nonce, plaintext, associated_data)


def aes256gcm_open(*, key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """Check and decrypt ciphertext || tag; return the plaintext.

    Every failure that the input can cause (wrong key, wrong nonce, tampered or truncated
    ciphertext, tag or associated data) raises the same `DecryptionError`, so a caller cannot
    leak which check failed.

    Raises:
        ValueError: `key` is not 32 bytes (our own misuse, not the peer's).
        DecryptionError: anything else.
    """
    _require_size("AES-256-GCM key", key, AES256GCM_KEY_SIZE)
    if len(nonce) != AES256GCM_NONCE_SIZE or len(ciphertext) < AES256GCM_TAG_SIZE:
        raise DecryptionError("AES-256-GCM decryption failed")
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, associated_data)
    except (InvalidTag, ValueError) as error:
        raise DecryptionError("AES-256-GCM decryption failed") from error


# --- ML-KEM-1024 (FIPS 203) -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, repr=False)
class MlKem1024KeyPair:
    """An ML-KEM-1024 key pair: the private key is kept as its 64-byte seed."""

    seed: bytes
    """The 64-byte seed d || z (FIPS 203 §7.1), from which the decapsulation key is rebuilt."""
    public_key: bytes
    """The 1568-byte encapsulation key."""

    def __repr__(self) -> str:
        return f"MlKem1024KeyPair(public_key=<{len(self.public_key)} bytes>, seed=<redacted>)"


@dataclass(frozen=True, kw_only=True, repr=False)
class MlKem1024Encapsulation:
    """The result of encapsulating to a public key."""

    shared_secret: bytes
    """The 32-byte shared secret; keep it, never send it."""
    ciphertext: bytes
    """The 1568-byte ciphertext to send to the key's owner."""

    def __repr__(self) -> str:
        return "MlKem1024Encapsulation(ciphertext=..., shared_secret=<redacted>)"


def mlkem1024_keypair_from_seed(seed: bytes) -> MlKem1024KeyPair:
    """Derive the key pair for a 64-byte seed (deterministic, FIPS 203 §6.1).

    Raises:
        ValueError: `seed` is not 64 bytes.
    """
    _require_size("ML-KEM-1024 seed", seed, MLKEM1024_SEED_SIZE)
    public_key = MLKEM1024PrivateKey.from_seed_bytes(seed).public_key().public_bytes_raw()
    return MlKem1024KeyPair(seed=bytes(seed), public_key=public_key)


def mlkem1024_generate(random: RandomSource) -> MlKem1024KeyPair:
    """Generate a key pair from 64 bytes of `random`."""
    return mlkem1024_keypair_from_seed(random.bytes(MLKEM1024_SEED_SIZE))


def mlkem1024_encapsulate(peer_public_key: bytes) -> MlKem1024Encapsulation:
    """Encapsulate a fresh shared secret to `peer_public_key`.

    The encapsulation randomness comes from `cryptography` (OpenSSL's CSPRNG), not from a
    `RandomSource`: the library offers no derandomised encapsulation.

    Raises:
        InvalidPublicKeyError: the key is not 1568 bytes or fails the FIPS 203 §7.2
            modulus check.
    """
    if len(peer_public_key) != MLKEM1024_PUBLIC_KEY_SIZE:
        raise InvalidPublicKeyError(
            f"ML-KEM-1024 public key must be {MLKEM1024_PUBLIC_KEY_SIZE} bytes, "
            f"got {len(peer_public_key)}"
        )
    try:
        public_key = MLKEM1024PublicKey.from_public_bytes(peer_public_key)
    except ValueError as error:
        raise InvalidPublicKeyError("ML-KEM-1024 public key is malformed") from error
    shared_secret, ciphertext = public_key.encapsulate()
    return MlKem1024Encapsulation(shared_secret=shared_secret, ciphertext=ciphertext)


def mlkem1024_decapsulate(seed: bytes, ciphertext: bytes) -> bytes:
    """Recover the 32-byte shared secret from `ciphertext`.

    A well-formed but forged or tampered ciphertext does NOT raise: ML-KEM's implicit rejection
    (FIPS 203 §6.3) returns an unrelated pseudorandom secret, and the mismatch surfaces later
    as an AEAD failure.

    Raises:
        ValueError: `seed` is not 64 bytes.
        DecapsulationError: `ciphertext` is not 1568 bytes.
    """
    _require_size("ML-KEM-1024 seed", seed, MLKEM1024_SEED_SIZE)
    if len(ciphertext) != MLKEM1024_CIPHERTEXT_SIZE:
        raise DecapsulationError(
            f"ML-KEM-1024 ciphertext must be {MLKEM1024_CIPHERTEXT_SIZE} bytes, "
            f"got {len(ciphertext)}"
        )
    try:
        return MLKEM1024PrivateKey.from_seed_bytes(seed).decapsulate(ciphertext)
    except ValueError as error:
        raise DecapsulationError("ML-KEM-1024 ciphertext is malformed") from error
