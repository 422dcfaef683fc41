"""Replay of initial messages that consumed no one-time prekey (docs/CRYPTO.md, "PQXDH").

The review built 1,000 sessions, which flushed the old global FIFO of remembered base keys, and
then had an old initial message accepted again. Now base keys are remembered per (signed
prekey, last-resort KEM key) pair for as long as those keys live, with no eviction; a full pair
refuses further initial messages and makes rotation due.
"""

from __future__ import annotations

import msgpack
import pytest

from crypto import base_key_memory
from crypto.device_state import decode_device_state
from crypto.errors import UnknownPrekeyError
from crypto.message_format import PrekeyMessage, decode_message
from crypto.prekeys import (
    MAX_RETAINED_ROTATED_PREKEYS,
    PREKEY_ROTATION_INTERVAL_MS,
    PrekeyBundle,
)
from tests.crypto_support import (
    ALICE,
    BOB,
    NOW_MS,
    bundle_of,
    connect,
    new_device,
    receive,
    send,
)

OTHER_SESSIONS = 2_000


def test_an_old_initial_message_is_refused_after_2000_other_sessions_on_the_same_pair() -> None:
    alice, bob = new_device(b"alice", ALICE), new_device(b"bob", BOB)
    reusable = bundle_of(bob, one_time=False, kem_one_time=False)
    alice.trust_identity(BOB, bob.identity_key)
    alice.start_session(BOB, reusable)
    old_initial = send(alice, BOB, b"old")
    assert receive(bob, alice, old_initial) == b"old"
    for index in range(OTHER_SESSIONS):
        alice.start_session(BOB, reusable)  # A new base key each time, the same pair.
        text = f"session {index}".encode()
        assert receive(bob, alice, send(alice, BOB, text)) == text
    pair = (reusable.signed_prekey.key_id, reusable.kem_prekey.key_id)
    memory = decode_device_state(bob.to_bytes()).prekeys.used_base_keys
    assert len(memory.used[pair]) == OTHER_SESSIONS + 1
    header = decode_message(old_initial)
    assert isinstance(header, PrekeyMessage)
    assert all(session.base_key != header.prekey_header.base_key
               for session in decode_device_state(bob.to_bytes()).sessions[ALICE])
    saved = bob.to_bytes()
    with pytest.raises(UnknownPrekeyError, match="replayed"):
        receive(bob, alice, old_initial)
    assert bob.to_bytes() == saved
    assert not bob.rotate_due_prekeys(NOW_MS + 1)  # 2,001 keys are far from the cap.


def test_a_full_pair_refuses_initial_messages_and_makes_rotation_due(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base_key_memory, "MAX_BASE_KEYS_PER_PREKEY_PAIR", 3)
    alice, bob = new_device(b"alice", ALICE), new_device(b"bob", BOB)
    alice.trust_identity(BOB, bob.identity_key)
    for index in range(3):
        connect(alice, bob, one_time=False, kem_one_time=False)
        receive(bob, alice, send(alice, BOB, f"{index}".encode()))
    connect(alice, bob, one_time=False, kem_one_time=False)
    fourth = send(alice, BOB, b"one too many")
    saved = bob.to_bytes()
    with pytest.raises(UnknownPrekeyError, match="no more"):
        receive(bob, alice, fourth)
    assert bob.to_bytes() == saved
    # A session that consumes a one-time key needs no memory: it still opens.
    connect(alice, bob, one_time=True, kem_one_time=False)
    assert receive(bob, alice, send(alice, BOB, b"one-time")) == b"one-time"
    # The current pair is full: rotation is due at once, not in a week.
    old_signed_prekey = bob.signed_prekey()
    assert bob.rotate_due_prekeys(NOW_MS + 1)
    assert bob.signed_prekey().key_id > old_signed_prekey.key_id
    connect(alice, bob, one_time=False, kem_one_time=False)
    assert receive(bob, alice, send(alice, BOB, b"new pair")) == b"new pair"
    assert not bob.rotate_due_prekeys(NOW_MS + 2)


def test_a_pair_set_lives_exactly_as_long_as_its_keys() -> None:
    alice, bob = new_device(b"alice", ALICE), new_device(b"bob", BOB)
    alice.trust_identity(BOB, bob.identity_key)
    connect(alice, bob, one_time=False, kem_one_time=False)
    receive(bob, alice, send(alice, BOB, b"first pair"))
    first_pair = (bob.signed_prekey().key_id, bob.kem_last_resort_prekey().key_id)
    later = NOW_MS
    while True:
        later += PREKEY_ROTATION_INTERVAL_MS
        bob.rotate_due_prekeys(later)
        prekeys = decode_device_state(bob.to_bytes()).prekeys
        if first_pair[0] not in prekeys.signed:
            break
        assert first_pair in prekeys.used_base_keys.used  # Kept while the keys are.
    assert prekeys.used_base_keys.used == {}  # Gone with them.
    assert len(prekeys.signed) <= MAX_RETAINED_ROTATED_PREKEYS


def test_prekeys_of_non_consecutive_rotations_are_never_paired() -> None:
    """A bundle holds a signed prekey and a last-resort key of the same rotation, or of two
    consecutive ones while the relay catches up; other pairs would only grow the memory."""
    alice, bob = new_device(b"alice", ALICE), new_device(b"bob", BOB)
    old = bundle_of(bob, one_time=False, kem_one_time=False)
    bob.rotate_due_prekeys(NOW_MS + PREKEY_ROTATION_INTERVAL_MS)
    bob.rotate_due_prekeys(NOW_MS + 2 * PREKEY_ROTATION_INTERVAL_MS)
    newest = bundle_of(bob, one_time=False, kem_one_time=False)
    alice.trust_identity(BOB, bob.identity_key)
    for signed_prekey, kem_prekey, accepted in (
            (old.signed_prekey, newest.kem_prekey, False),
            (newest.signed_prekey, old.kem_prekey, False),
            (old.signed_prekey, old.kem_prekey, True)):
        alice.start_session(BOB, PrekeyBundle(identity_key=old.identity_key,
                                              signed_prekey=signed_prekey, kem_prekey=kem_prekey))
        message = send(alice, BOB, b"mixed")
        if accepted:
            assert receive(bob, alice, message) == b"mixed"
        else:
            with pytest.raises(UnknownPrekeyError, match="never published together"):
                receive(bob, alice, message)
    state = msgpack.unpackb(bob.to_bytes(), strict_map_key=False)
    assert len(state["prekeys"]["used_base_keys"]) == 1
