"""Every field of an initial message is protected: any change is refused and changes nothing.

For a genuine initial message (with one-time prekeys, or with reusable prekeys only), change
one field (hypothesis picks the field, the byte and the bits) and check that `decrypt` raises
a `CryptoError`, that the recipient's saved state is byte-for-byte unchanged, and that the
genuine message still opens afterwards.
"""

from __future__ import annotations

import functools
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.device import DeviceCrypto
from crypto.primitives import CryptoError, SeededRandom
from tests.crypto_support import (
    ALICE,
    BASE_KEY_OFFSET,
    BOB,
    CIPHERTEXT_OFFSET,
    HAS_ONE_TIME_OFFSET,
    IDENTITY_KEY_OFFSET,
    KEM_CIPHERTEXT_OFFSET,
    KEM_PREKEY_ID_OFFSET,
    MESSAGE_NUMBER_OFFSET,
    ONE_TIME_ID_OFFSET,
    PREVIOUS_CHAIN_LENGTH_OFFSET,
    RATCHET_KEY_OFFSET,
    SIGNED_PREKEY_ID_OFFSET,
    TYPE_OFFSET,
    VERSION_OFFSET,
    connect,
    new_device,
    send,
)

FIELDS = {  # name -> (start, end); None: to the end of the message.
    "version": (VERSION_OFFSET, TYPE_OFFSET),
    "type": (TYPE_OFFSET, IDENTITY_KEY_OFFSET),
    "identity key": (IDENTITY_KEY_OFFSET, BASE_KEY_OFFSET),
    "base key": (BASE_KEY_OFFSET, SIGNED_PREKEY_ID_OFFSET),
    "signed prekey id": (SIGNED_PREKEY_ID_OFFSET, KEM_PREKEY_ID_OFFSET),
    "KEM prekey id": (KEM_PREKEY_ID_OFFSET, HAS_ONE_TIME_OFFSET),
    "one-time flag": (HAS_ONE_TIME_OFFSET, ONE_TIME_ID_OFFSET),
    "one-time id": (ONE_TIME_ID_OFFSET, KEM_CIPHERTEXT_OFFSET),
    "KEM ciphertext": (KEM_CIPHERTEXT_OFFSET, RATCHET_KEY_OFFSET),
    "ratchet key": (RATCHET_KEY_OFFSET, PREVIOUS_CHAIN_LENGTH_OFFSET),
    "PN": (PREVIOUS_CHAIN_LENGTH_OFFSET, MESSAGE_NUMBER_OFFSET),
    "N": (MESSAGE_NUMBER_OFFSET, CIPHERTEXT_OFFSET),
    "ciphertext and tag": (CIPHERTEXT_OFFSET, None),
}


@functools.cache
def genuine(one_time: bool) -> tuple[bytes, bytes, bytes]:
    """(Bob's saved state, Alice's identity key, Alice's initial message to Bob)."""
    alice, bob = new_device(b"alice", ALICE), new_device(b"bob", BOB)
    connect(alice, bob, one_time=one_time, kem_one_time=one_time)
    return bob.to_bytes(), alice.identity_key, send(alice, BOB, b"genuine")


def field_bounds(name: str, message: bytes) -> tuple[int, int]:
    start, end = FIELDS[name]
    return start, len(message) if end is None else end


def check_refused(one_time: bool, offset: int, mask: int) -> None:
    saved, alice_key, message = genuine(one_time)
    bob = DeviceCrypto.from_bytes(saved, SeededRandom(b"bob"))
    tampered = bytearray(message)
    tampered[offset] ^= mask
    with pytest.raises(CryptoError):
        bob.decrypt(ALICE, bytes(tampered), expected_identity_key=alice_key)
    assert bob.to_bytes() == saved
    assert bob.decrypt(ALICE, message, expected_identity_key=alice_key).plaintext == b"genuine"


def test_the_fields_cover_the_message_exactly() -> None:
    _saved, _key, message = genuine(True)
    bounds = [field_bounds(name, message) for name in FIELDS]
    assert bounds[0][0] == 0 and bounds[-1][1] == len(message)
    assert all(end == next_start for (_, end), (next_start, _) in itertools.pairwise(bounds))
    assert all(start < end for start, end in bounds)


@pytest.mark.parametrize("one_time", [True, False])
@pytest.mark.parametrize("name", list(FIELDS))
def test_a_flipped_bit_at_either_end_of_each_field_is_refused(name: str, one_time: bool) -> None:
    _saved, _key, message = genuine(one_time)
    start, end = field_bounds(name, message)
    check_refused(one_time, start, 0x01)
    check_refused(one_time, end - 1, 0x80)


@settings(max_examples=60, deadline=None)
@given(one_time=st.booleans(), name=st.sampled_from(list(FIELDS)), data=st.data(),
       mask=st.one_of(st.sampled_from([1 << bit for bit in range(8)]),
                      st.integers(min_value=1, max_value=255)))
def test_any_change_to_any_field_is_refused_and_changes_nothing(
        one_time: bool, name: str, data: st.DataObject, mask: int) -> None:
    _saved, _key, message = genuine(one_time)
    start, end = field_bounds(name, message)
    offset = data.draw(st.integers(min_value=start, max_value=end - 1), label="offset")
    check_refused(one_time, offset, mask)
