"""Signed and last-resort prekeys rotate (docs/CRYPTO.md, "PQXDH"): forward secrecy for
sessions started without a one-time key, once the retired secret is deleted after its grace."""

from __future__ import annotations

import pytest

from crypto.device import DeviceCrypto
from crypto.device_state import decode_device_state
from crypto.errors import UnknownPrekeyError
from crypto.prekeys import (
    MAX_RETAINED_ROTATED_PREKEYS,
    PREKEY_GRACE_MS,
    PREKEY_ROTATION_INTERVAL_MS,
)
from crypto.primitives import SeededRandom
from tests.crypto_support import ALICE, BOB, NOW_MS, bundle_of, connect, new_device, receive, send

DAY_MS = 24 * 60 * 60 * 1000


def test_the_interval_and_grace_are_a_week_and_the_relay_retention_plus_a_day() -> None:
    assert PREKEY_ROTATION_INTERVAL_MS == 7 * DAY_MS
    assert PREKEY_GRACE_MS == 31 * DAY_MS


def test_rotation_happens_when_due_and_not_before() -> None:
    bob = new_device(b"bob", BOB)
    signed, last_resort = bob.signed_prekey(), bob.kem_last_resort_prekey()
    saved = bob.to_bytes()
    assert not bob.rotate_due_prekeys(NOW_MS + PREKEY_ROTATION_INTERVAL_MS - 1)
    assert (bob.signed_prekey(), bob.kem_last_resort_prekey()) == (signed, last_resort)
    assert bob.to_bytes() == saved
    # Saved and restored, the device still knows when its keys were made.
    bob = DeviceCrypto.from_bytes(saved, SeededRandom(b"bob again"))
    assert bob.rotate_due_prekeys(NOW_MS + PREKEY_ROTATION_INTERVAL_MS)
    new_signed, new_last_resort = bob.signed_prekey(), bob.kem_last_resort_prekey()
    assert new_signed.key_id > signed.key_id and new_signed.public_key != signed.public_key
    assert new_last_resort.key_id > last_resort.key_id
    assert new_last_resort.public_key != last_resort.public_key
    assert not bob.rotate_due_prekeys(NOW_MS + 2 * PREKEY_ROTATION_INTERVAL_MS - 1)
    # The new keys are signed and work.
    alice = new_device(b"alice", ALICE)
    connect(alice, bob, one_time=False, kem_one_time=False)
    assert receive(bob, alice, send(alice, BOB, b"new keys")) == b"new keys"


@pytest.mark.parametrize("one_time", [False, True])
def test_a_message_to_the_old_signed_prekey_opens_within_the_grace_and_not_after(
        one_time: bool) -> None:
    alice, bob = new_device(b"alice", ALICE), new_device(b"bob", BOB)
    connect(alice, bob, one_time=one_time, kem_one_time=one_time)  # Bundle fetched now...
    queued = send(alice, BOB, b"queued at the relay")
    replaced_at = NOW_MS + PREKEY_ROTATION_INTERVAL_MS
    assert bob.rotate_due_prekeys(replaced_at)  # ...and Bob rotates before it arrives.
    at_end_of_grace = DeviceCrypto.from_bytes(bob.to_bytes(), SeededRandom(b"1"))
    at_end_of_grace.rotate_due_prekeys(replaced_at + PREKEY_GRACE_MS)
    assert receive(at_end_of_grace, alice, queued) == b"queued at the relay"
    after_grace = DeviceCrypto.from_bytes(bob.to_bytes(), SeededRandom(b"2"))
    after_grace.rotate_due_prekeys(replaced_at + PREKEY_GRACE_MS + 1)
    saved = after_grace.to_bytes()
    with pytest.raises(UnknownPrekeyError):
        receive(after_grace, alice, queued)
    assert after_grace.to_bytes() == saved


def test_retired_keys_are_deleted_only_after_their_grace() -> None:
    bob = new_device(b"bob", BOB)
    first = bob.signed_prekey().key_id
    now = NOW_MS
    kept_for = 0
    while first in decode_device_state(bob.to_bytes()).prekeys.signed:
        now += DAY_MS
        bob.rotate_due_prekeys(now)
        kept_for += DAY_MS
    # Replaced after 7 days, deleted on the first call more than 31 days after that.
    assert kept_for == PREKEY_ROTATION_INTERVAL_MS + PREKEY_GRACE_MS + DAY_MS
    prekeys = decode_device_state(bob.to_bytes()).prekeys
    assert len(prekeys.signed) == len(prekeys.kem_last_resort) == 5


def test_a_clock_that_goes_back_rotates_once_and_cannot_grow_the_state() -> None:
    bob = new_device(b"bob", BOB)
    assert bob.rotate_due_prekeys(NOW_MS - 1)  # The keys' age is unknown: rotate.
    assert not bob.rotate_due_prekeys(NOW_MS - 1)
    for step in range(2, 40):  # A clock that keeps going back: nothing ever expires.
        bob.rotate_due_prekeys(NOW_MS - step)
    prekeys = decode_device_state(bob.to_bytes()).prekeys
    assert len(prekeys.signed) == len(prekeys.kem_last_resort) == MAX_RETAINED_ROTATED_PREKEYS
    assert max(prekeys.signed) == bob.signed_prekey().key_id
    # A clock that jumps far ahead deletes every retired key at once.
    assert bob.rotate_due_prekeys(NOW_MS + 10 * 365 * DAY_MS)
    bob.rotate_due_prekeys(NOW_MS + 10 * 365 * DAY_MS + PREKEY_GRACE_MS + 1)
    prekeys = decode_device_state(bob.to_bytes()).prekeys
    assert len(prekeys.signed) == len(prekeys.kem_last_resort) <= 2


def test_one_time_prekeys_do_not_expire_with_rotation() -> None:
    alice, bob = new_device(b"alice", ALICE), new_device(b"bob", BOB)
    bundle = bundle_of(bob)
    for month in range(1, 4):
        bob.rotate_due_prekeys(NOW_MS + month * 30 * DAY_MS)
    prekeys = decode_device_state(bob.to_bytes()).prekeys
    assert bundle.one_time_prekey is not None
    assert bundle.one_time_prekey.key_id in prekeys.one_time
    assert bundle.kem_prekey.key_id in prekeys.kem_one_time
    # The bundle's signed prekey is gone, though: a session from it cannot start.
    alice.trust_identity(BOB, bob.identity_key)
    alice.start_session(BOB, bundle)
    with pytest.raises(UnknownPrekeyError):
        receive(bob, alice, send(alice, BOB, b"too late"))
