"""crypto.ratchet and crypto.pqxdh below the device API: agreement, skip caps, state copies."""

from __future__ import annotations

import pytest

from crypto import pqxdh, ratchet
from crypto.errors import DuplicateMessageError, MalformedMessageError, TooManySkippedMessagesError
from crypto.identity import identity_dh_keypair, identity_dh_public_key
from crypto.prekeys import LocalPrekeys, PrekeyBundle
from crypto.primitives import (
    DecryptionError,
    InvalidPublicKeyError,
    SeededRandom,
    ed25519_generate,
    x25519_dh,
)

AD = b"associated data"
NOW_MS = 1_767_225_600_000


def test_identity_conversion_gives_one_x25519_key_pair() -> None:
    random = SeededRandom(b"identity")
    alice, bob = ed25519_generate(random), ed25519_generate(random)
    alice_dh, bob_dh = identity_dh_keypair(alice), identity_dh_keypair(bob)
    assert alice_dh.public_key == identity_dh_public_key(alice.public_key)
    assert x25519_dh(alice_dh.private_key, identity_dh_public_key(bob.public_key)) == \
        x25519_dh(bob_dh.private_key, identity_dh_public_key(alice.public_key))
    for bad_key in (bytes(32), bytes(31), b"\x01" + bytes(31)):  # identity point, short, small order
        with pytest.raises(InvalidPublicKeyError):
            identity_dh_public_key(bad_key)


@pytest.mark.parametrize("with_one_time_prekey", [True, False])
def test_both_sides_of_pqxdh_agree(with_one_time_prekey: bool) -> None:
    random = SeededRandom(b"pqxdh")
    alice, bob = ed25519_generate(random), ed25519_generate(random)
    prekeys = LocalPrekeys()
    prekeys.rotate(random, NOW_MS)
    signed = prekeys.current_signed_prekey(bob)
    kem = prekeys.generate_kem_one_time_prekeys(bob, 1, random)[0]
    one_time = prekeys.generate_one_time_prekeys(1, random)[0] if with_one_time_prekey else None
    bundle = PrekeyBundle(identity_key=bob.public_key, signed_prekey=signed, kem_prekey=kem,
                          one_time_prekey=one_time)
    agreement = pqxdh.initiate(identity=alice, bundle=bundle, random=random)
    header = agreement.header
    assert (header.one_time_prekey_id is not None) == with_one_time_prekey
    signed_pair = prekeys.signed_prekey_pair(header.signed_prekey_id)
    kem_seed = prekeys.kem_seed(header.kem_prekey_id)
    assert signed_pair is not None and kem_seed is not None
    one_time_private = (None if header.one_time_prekey_id is None
                        else prekeys.one_time_private_key(header.one_time_prekey_id))
    secret = pqxdh.respond(identity=bob, header=header, signed_prekey=signed_pair,
                           kem_seed=kem_seed, one_time_private_key=one_time_private)
    assert secret == agreement.shared_secret
    # Leaving out the one-time key, or using another KEM key, gives another secret.
    prekeys.rotate(random, NOW_MS)
    other_kem_seed = prekeys.kem_seed(prekeys.current_kem_last_resort(bob).key_id)
    assert other_kem_seed is not None
    assert pqxdh.respond(identity=bob, header=header, signed_prekey=signed_pair,
                         kem_seed=other_kem_seed, one_time_private_key=one_time_private) != secret
    assert "shared_secret=<redacted>" in repr(agreement)


def pair() -> tuple[ratchet.RatchetState, ratchet.RatchetState]:
    random = SeededRandom(b"ratchet")
    bob_ratchet = LocalPrekeys()
    bob_ratchet.rotate(random, NOW_MS)
    bob_pair = bob_ratchet.signed_prekey_pair(max(bob_ratchet.signed))
    assert bob_pair is not None
    secret = b"\x07" * 32
    return (ratchet.initialise_initiator(secret, bob_pair.public_key, random),
            ratchet.initialise_responder(secret, bob_pair))


def test_a_responder_cannot_send_first() -> None:
    _alice, bob = pair()
    with pytest.raises(ValueError, match="responder"):
        ratchet.encrypt(bob, b"x", AD)


def test_skipping_more_than_the_cap_is_refused_and_the_cap_itself_is_allowed() -> None:
    alice, bob = pair()
    random = SeededRandom(b"r")
    messages = [ratchet.encrypt(alice, b"m", AD)
                for _ in range(ratchet.MAX_SKIPPED_MESSAGES_PER_CHAIN + 2)]
    header, ciphertext = messages[-1]
    with pytest.raises(TooManySkippedMessagesError):
        ratchet.decrypt(bob, header, ciphertext, AD, random)
    header, ciphertext = messages[-2]
    new_bob, plaintext = ratchet.decrypt(bob, header, ciphertext, AD, random)
    assert plaintext == b"m"
    assert len(new_bob.skipped_keys) == ratchet.MAX_SKIPPED_MESSAGES_PER_CHAIN
    assert bob.skipped_keys == {}  # The input state was not touched.
    header, ciphertext = messages[0]
    newer_bob, _ = ratchet.decrypt(new_bob, header, ciphertext, AD, random)
    with pytest.raises(DuplicateMessageError):
        ratchet.decrypt(newer_bob, header, ciphertext, AD, random)


def test_stored_skipped_keys_are_capped_oldest_first() -> None:
    alice, bob = pair()
    random = SeededRandom(b"r")
    stored = 0
    oldest = None
    while stored <= ratchet.MAX_STORED_SKIPPED_KEYS:
        skipped = [ratchet.encrypt(alice, b"m", AD) for _ in range(1000)]
        oldest = oldest or skipped[0]
        header, ciphertext = ratchet.encrypt(alice, b"last", AD)
        bob, _ = ratchet.decrypt(bob, header, ciphertext, AD, random)
        stored += len(skipped)
        # A new sending chain for Alice: Bob replies and Alice receives.
        header, ciphertext = ratchet.encrypt(bob, b"reply", AD)
        alice, _ = ratchet.decrypt(alice, header, ciphertext, AD, random)
    assert len(bob.skipped_keys) == ratchet.MAX_STORED_SKIPPED_KEYS
    assert oldest is not None
    # Its key is gone, and its chain is no longer the current one: it can only fail the AEAD.
    with pytest.raises(DecryptionError):
        ratchet.decrypt(bob, oldest[0], oldest[1], AD, random)


def test_state_round_trips_and_headers_are_checked() -> None:
    alice, bob = pair()
    header, ciphertext = ratchet.encrypt(alice, b"m", AD)
    restored = ratchet.RatchetState.from_state(bob.to_state())
    _, plaintext = ratchet.decrypt(restored, header, ciphertext, AD, SeededRandom(b"r"))
    assert plaintext == b"m"
    assert ratchet.RatchetHeader.decode(header.encode()) == header
    with pytest.raises(MalformedMessageError):
        ratchet.RatchetHeader.decode(header.encode()[:-1])
    assert "private" not in repr(alice) and alice.root_key.hex() not in repr(alice)
