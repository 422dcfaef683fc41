"""ML-KEM-1024 interoperability: our wrapper (OpenSSL via `cryptography`) against kyber-py.

kyber-py (https://github.com/GiacomoPope/kyber-py) is an independent, pure-Python FIPS 203
implementation. Agreement in both directions, on keys derived from fixed seeds, shows that
our seed layout (d || z, FIPS 203 §7.1), encapsulation key encoding and decapsulation follow
the standard rather than merely agreeing with themselves.
"""

from __future__ import annotations

import hashlib

import pytest
from kyber_py.ml_kem import ML_KEM_1024

from crypto.primitives import (
    MLKEM1024_CIPHERTEXT_SIZE,
    MLKEM1024_SHARED_SECRET_SIZE,
    mlkem1024_decapsulate,
    mlkem1024_encapsulate,
    mlkem1024_keypair_from_seed,
)

# FIPS 203 §7.1 and Algorithm 17: d, z and the encapsulation message m are 32 bytes each.
SEED_HALF_SIZE = 32
MESSAGE_SIZE = 32
# FIPS 203 §8, Table 2 (ML-KEM-1024: k = 4, d_u = 11): c = c1 || c2 with c1 = 32·d_u·k bytes,
# so tampering at this offset hits the compressed v (c2) rather than the vector u (c1).
CIPHERTEXT_C2_OFFSET = 32 * 11 * 4


def fixed_bytes(label: str, size: int) -> bytes:
    """Return `size` reproducible, unstructured bytes named by `label` (SHAKE-256 of it)."""
    return hashlib.shake_256(f"cryptopass mlkem interop: {label}".encode()).digest(size)


def flip_bit(data: bytes, index: int) -> bytes:
    """Return `data` with the low bit of byte `index` flipped."""
    mutable = bytearray(data)
    mutable[index] ^= 0x01
    return bytes(mutable)


# Two seed pairs: an unstructured one, and one whose halves differ in an obvious way, so a
# swapped d and z could not coincide by accident.
SEEDS = [
    pytest.param(fixed_bytes("d", SEED_HALF_SIZE), fixed_bytes("z", SEED_HALF_SIZE), id="hashed"),
    pytest.param(bytes(SEED_HALF_SIZE), b"\xff" * SEED_HALF_SIZE, id="zeros-and-ones"),
]
FIXED_MESSAGE = fixed_bytes("m", MESSAGE_SIZE)


def their_keys(d: bytes, z: bytes) -> tuple[bytes, bytes]:
    """kyber-py's (encapsulation key, decapsulation key) for the seed d || z (FIPS 203 §7.1)."""
    encapsulation_key, decapsulation_key = ML_KEM_1024.key_derive(d + z)
    return bytes(encapsulation_key), bytes(decapsulation_key)


def their_encapsulation(encapsulation_key: bytes, message: bytes) -> tuple[bytes, bytes]:
    """kyber-py's (shared secret, ciphertext) for a fixed message m.

    ML-KEM.Encaps_internal (FIPS 203 Algorithm 17) is the derandomised encapsulation; kyber-py
    exposes it only under a private name, and it is the one way to fix m without reseeding the
    library's shared, module-level ML_KEM_1024 object.
    """
    shared_secret, ciphertext = ML_KEM_1024._encaps_internal(encapsulation_key, message)
    return bytes(shared_secret), bytes(ciphertext)


def their_decapsulation(decapsulation_key: bytes, ciphertext: bytes) -> bytes:
    """kyber-py's ML-KEM.Decaps (FIPS 203 Algorithm 21)."""
    return bytes(ML_KEM_1024.decaps(decapsulation_key, ciphertext))


@pytest.mark.parametrize(("d", "z"), SEEDS)
def test_both_derive_the_same_encapsulation_key_from_a_seed(d: bytes, z: bytes) -> None:
    their_encapsulation_key, _ = their_keys(d, z)
    assert mlkem1024_keypair_from_seed(d + z).public_key == their_encapsulation_key


@pytest.mark.parametrize(("d", "z"), SEEDS)
def test_we_decapsulate_their_ciphertext(d: bytes, z: bytes) -> None:
    our_key_pair = mlkem1024_keypair_from_seed(d + z)
    their_secret, ciphertext = their_encapsulation(our_key_pair.public_key, FIXED_MESSAGE)
    assert len(ciphertext) == MLKEM1024_CIPHERTEXT_SIZE
    assert len(their_secret) == MLKEM1024_SHARED_SECRET_SIZE
    assert mlkem1024_decapsulate(our_key_pair.seed, ciphertext) == their_secret


@pytest.mark.parametrize(("d", "z"), SEEDS)
def test_they_decapsulate_our_ciphertext(d: bytes, z: bytes) -> None:
    # Our encapsulation draws m from OpenSSL, so the ciphertext differs per run; the claim
    # under test holds for every m: their decapsulation recovers the secret we reported.
    their_encapsulation_key, their_decapsulation_key = their_keys(d, z)
    ours = mlkem1024_encapsulate(their_encapsulation_key)
    assert their_decapsulation(their_decapsulation_key, ours.ciphertext) == ours.shared_secret


@pytest.mark.parametrize(("d", "z"), SEEDS)
@pytest.mark.parametrize(
    "index",
    [
        pytest.param(0, id="first-byte-of-u"),
        pytest.param(CIPHERTEXT_C2_OFFSET, id="first-byte-of-v"),
        pytest.param(MLKEM1024_CIPHERTEXT_SIZE - 1, id="last-byte"),
    ],
)
def test_tampered_ciphertext_gives_the_same_implicit_rejection_secret(
    d: bytes, z: bytes, index: int
) -> None:
    # FIPS 203 Algorithm 18: a ciphertext that does not re-encrypt yields K = J(z || c); both
    # implementations must return that same value, not an error and not the honest secret.
    their_encapsulation_key, their_decapsulation_key = their_keys(d, z)
    honest_secret, ciphertext = their_encapsulation(their_encapsulation_key, FIXED_MESSAGE)
    tampered = flip_bit(ciphertext, index)
    our_rejection = mlkem1024_decapsulate(d + z, tampered)
    assert our_rejection == their_decapsulation(their_decapsulation_key, tampered)
    assert our_rejection != honest_secret
    assert our_rejection == hashlib.shake_256(z + tampered).digest(MLKEM1024_SHARED_SECRET_SIZE)
