"""An initial message's base key has exactly one accepted encoding (docs/CRYPTO.md, "PQXDH").

X25519 ignores bit 255 of a u-coordinate, and a clamped scalar (a multiple of 8) kills any
component in the 8-torsion subgroup, so a base key EK_A has 16 encodings that give the same
DH outputs: the u-coordinates of EK_A + T for the 8 points T of order dividing 8, each with
bit 255 clear or set. The review replayed one genuine initial message under the 15 others and
each was accepted as a new session. Now non-canonical encodings are refused outright and the
whole PQXDH header is in the associated data, so the 7 canonical re-encodings fail the AEAD.

The re-encodings are computed here with pure-Python Edwards arithmetic (RFC 7748 §4.1 and
RFC 8032 §5.1), and checked to be real: distinct, and giving the same X25519 output.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from crypto import pqxdh
from crypto.device import DeviceCrypto
from crypto.errors import UnknownPrekeyError
from crypto.primitives import CryptoError, DecryptionError, InvalidPublicKeyError, SeededRandom
from tests.crypto_support import (
    ALICE,
    BASE_KEY_OFFSET,
    BOB,
    connect,
    new_device,
    receive,
    send,
)

P = 2**255 - 19
ORDER = 2**252 + 27742317777372353535851937790883648493  # RFC 8032 §5.1: L, the prime order.
D = -121665 * pow(121666, -1, P) % P  # Edwards25519: -x^2 + y^2 = 1 + d x^2 y^2
SQRT_MINUS_ONE = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1)

Point = tuple[int, int]


def add(first: Point, second: Point) -> Point:
    (x1, y1), (x2, y2) = first, second
    cross = D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * pow(1 + cross, -1, P) % P,
            (y1 * y2 + x1 * x2) * pow(1 - cross, -1, P) % P)


def multiply(scalar: int, point: Point) -> Point:
    result = IDENTITY
    while scalar:
        if scalar & 1:
            result = add(result, point)
        point = add(point, point)
        scalar >>= 1
    return result


def point_with_y(y: int) -> Point | None:
    """The Edwards point with this y (either x), or None if there is none (RFC 8032 §5.1.3)."""
    x_squared = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    x = pow(x_squared, (P + 3) // 8, P)
    if x * x % P != x_squared:
        x = x * SQRT_MINUS_ONE % P
    return (x, y) if x * x % P == x_squared else None


def torsion_subgroup() -> list[Point]:
    """The 8 points of order dividing 8: the multiples of L·Q for a Q whose L·Q has order 8."""
    for y in range(2, 1000):
        point = point_with_y(y)
        if point is None:
            continue
        generator = multiply(ORDER, point)
        if multiply(4, generator) != IDENTITY:
            return [multiply(index, generator) for index in range(8)]
    raise AssertionError("no point of order 8 found")


def u_of(point: Point) -> int:
    return (1 + point[1]) * pow(1 - point[1], -1, P) % P  # RFC 7748 §4.1: u = (1+y)/(1-y)


def reencodings(base_key: bytes) -> list[bytes]:
    """The 15 other encodings of `base_key` that X25519 treats as the same public key."""
    u = int.from_bytes(base_key, "little")
    point = point_with_y((u - 1) * pow(u + 1, -1, P) % P)
    assert point is not None, "a genuine public key is on the curve"
    encodings = []
    for torsion_point in torsion_subgroup():
        shifted = u_of(add(point, torsion_point))
        encodings.append(shifted.to_bytes(32, "little"))
        encodings.append((shifted + 2**255).to_bytes(32, "little"))
    encodings.remove(base_key)
    return encodings


def x25519(private_key: bytes, public_key: bytes) -> bytes:
    """Raw X25519 (no all-zero check of our own), to show that the encodings are equivalent."""
    return X25519PrivateKey.from_private_bytes(private_key).exchange(
        X25519PublicKey.from_public_bytes(public_key))


def with_base_key(message: bytes, base_key: bytes) -> bytes:
    return message[:BASE_KEY_OFFSET] + base_key + message[BASE_KEY_OFFSET + 32:]


def initial_message(*, reusable_only: bool) -> tuple[DeviceCrypto, DeviceCrypto, bytes]:
    alice, bob = new_device(b"alice", ALICE), new_device(b"bob", BOB)
    connect(alice, bob, one_time=not reusable_only, kem_one_time=not reusable_only)
    return alice, bob, send(alice, BOB, b"genuine")


def test_the_fifteen_reencodings_are_real() -> None:
    _alice, _bob, message = initial_message(reusable_only=True)
    base_key = message[BASE_KEY_OFFSET:BASE_KEY_OFFSET + 32]
    others = reencodings(base_key)
    assert len(others) == 15
    assert len({base_key, *others}) == 16
    assert sum(other[31] >= 0x80 for other in others) == 8
    for seed in (b"one", b"two", b"three"):
        scalar = SeededRandom(seed).bytes(32)  # X25519 clamps it: a multiple of 8.
        expected = x25519(scalar, base_key)
        assert all(x25519(scalar, other) == expected for other in others)


@pytest.mark.parametrize("reusable_only", [True, False])
def test_every_reencoding_of_the_base_key_is_refused_before_and_after_the_genuine_one(
        reusable_only: bool) -> None:
    alice, bob, message = initial_message(reusable_only=reusable_only)
    base_key = message[BASE_KEY_OFFSET:BASE_KEY_OFFSET + 32]
    others = reencodings(base_key)

    def refuse_all(canonical_error: type[CryptoError]) -> None:
        saved = bob.to_bytes()
        for other in others:
            expected_error = InvalidPublicKeyError if other[31] & 0x80 else canonical_error
            with pytest.raises(expected_error):
                receive(bob, alice, with_base_key(message, other))
            assert bob.to_bytes() == saved

    refuse_all(DecryptionError)  # The header is in the associated data.
    assert receive(bob, alice, message) == b"genuine"
    bob.forget_device(ALICE)  # Only the prekeys and the replay memory guard it now.
    # Once the one-time keys are gone, a message naming them is refused before the AEAD.
    refuse_all(DecryptionError if reusable_only else UnknownPrekeyError)
    with pytest.raises(UnknownPrekeyError):
        receive(bob, alice, message)


SMALL_ORDER_U = [0, 1, 325606250916557431795983626356110631294008115727848805560023387167927233504,
                 39382357235489614581723060781553021112529911719440698176882885853963445705823,
                 P - 1, P, P + 1]


def test_small_order_and_unreduced_base_keys_are_refused() -> None:
    alice, bob, message = initial_message(reusable_only=True)
    bad_keys = []
    for u in SMALL_ORDER_U:
        for encoding in (u, u + 2**255):
            key = encoding.to_bytes(32, "little")
            with pytest.raises(ValueError):  # Small order: X25519 gives all zeros.
                x25519(SeededRandom(b"any").bytes(32), key)
            bad_keys.append(key)
    bad_keys.append((P + 5).to_bytes(32, "little"))  # Unreduced, not small order.
    saved = bob.to_bytes()
    for key in bad_keys:
        with pytest.raises(InvalidPublicKeyError):
            pqxdh.check_base_key(key)
        with pytest.raises(InvalidPublicKeyError):
            receive(bob, alice, with_base_key(message, key))
        assert bob.to_bytes() == saved
    for key in (bytes(31), bytes(33)):
        with pytest.raises(InvalidPublicKeyError):
            pqxdh.check_base_key(key)
    pqxdh.check_base_key(message[BASE_KEY_OFFSET:BASE_KEY_OFFSET + 32])
    assert receive(bob, alice, message) == b"genuine"
