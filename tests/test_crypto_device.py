"""crypto.device: whole conversations between devices, then adversaries and restarts."""

from __future__ import annotations

import pytest

from crypto.device import (
    MAX_PLAINTEXT_SIZE,
    MAX_REMEMBERED_BASE_KEYS,
    DeviceAddress,
    DeviceCrypto,
)
from crypto.errors import (
    DuplicateMessageError,
    MalformedMessageError,
    NoSessionError,
    UnknownPrekeyError,
    UntrustedIdentityError,
)
from crypto.message_format import PrekeyMessage, RatchetMessage, decode_message
from crypto.prekeys import PrekeyBundle
from crypto.primitives import (
    CryptoError,
    DecryptionError,
    SeededRandom,
    SignatureError,
    ed25519_generate,
)

ALICE = DeviceAddress("alice", 1)
ALICE_PHONE_2 = DeviceAddress("alice", 2)
BOB = DeviceAddress("bob", 1)


def new_device(seed: bytes) -> DeviceCrypto:
    random = SeededRandom(seed)
    return DeviceCrypto.create(ed25519_generate(random), random)


def bundle_of(device: DeviceCrypto, *, one_time: bool = True,
              kem_one_time: bool = True) -> PrekeyBundle:
    """What the relay would hand out for `device` (fresh one-time keys each call)."""
    return PrekeyBundle(
        identity_key=device.identity_key,
        signed_prekey=device.signed_prekey(),
        kem_prekey=(device.generate_kem_one_time_prekeys(1)[0] if kem_one_time
                    else device.kem_last_resort_prekey()),
        one_time_prekey=device.generate_one_time_prekeys(1)[0] if one_time else None,
    )


def connected_pair() -> tuple[DeviceCrypto, DeviceCrypto]:
    """Alice has started a session with Bob; nothing sent yet."""
    alice, bob = new_device(b"alice"), new_device(b"bob")
    alice.start_session(BOB, bundle_of(bob))
    return alice, bob


def send(sender: DeviceCrypto, recipient: DeviceAddress, text: bytes) -> bytes:
    return sender.encrypt(text, [recipient])[recipient]


def test_a_conversation_in_both_directions() -> None:
    alice, bob = connected_pair()
    for round_number in range(4):
        for index in range(3):
            text = f"alice {round_number}.{index}".encode()
            assert bob.decrypt(ALICE, send(alice, BOB, text)).plaintext == text
        text = f"bob {round_number}".encode()
        assert alice.decrypt(BOB, send(bob, ALICE, text)).plaintext == text


def test_initiator_sends_prekey_messages_until_the_first_reply() -> None:
    alice, bob = connected_pair()
    first, second = send(alice, BOB, b"1"), send(alice, BOB, b"2")
    assert isinstance(decode_message(first), PrekeyMessage)
    assert isinstance(decode_message(second), PrekeyMessage)
    # The second arrives first: it alone sets the session up; the first then still opens.
    assert bob.decrypt(ALICE, second).plaintext == b"2"
    assert bob.decrypt(ALICE, first).plaintext == b"1"
    alice.decrypt(BOB, send(bob, ALICE, b"reply"))
    assert isinstance(decode_message(send(alice, BOB, b"3")), RatchetMessage)


def test_out_of_order_across_ratchet_steps() -> None:
    alice, bob = connected_pair()
    bob.decrypt(ALICE, send(alice, BOB, b"hello"))
    held_back = [send(bob, ALICE, f"b{index}".encode()) for index in range(3)]
    alice.decrypt(BOB, held_back[0])
    later = [send(alice, BOB, b"a-new-chain")]
    bob.decrypt(ALICE, later[0])
    newest = send(bob, ALICE, b"b-new-chain")
    assert alice.decrypt(BOB, newest).plaintext == b"b-new-chain"
    assert alice.decrypt(BOB, held_back[2]).plaintext == b"b2"
    assert alice.decrypt(BOB, held_back[1]).plaintext == b"b1"


def test_duplicates_and_replays_are_refused_and_change_nothing() -> None:
    alice, bob = connected_pair()
    first = send(alice, BOB, b"first")
    bob.decrypt(ALICE, first)
    saved = bob.to_bytes()
    with pytest.raises(DuplicateMessageError):
        bob.decrypt(ALICE, first)  # A replayed initial message: same session, key used.
    reply = send(bob, ALICE, b"reply")
    saved = bob.to_bytes()
    alice.decrypt(BOB, reply)
    with pytest.raises(DuplicateMessageError):
        alice.decrypt(BOB, reply)
    message = send(alice, BOB, b"second")
    bob.decrypt(ALICE, message)
    saved = bob.to_bytes()
    with pytest.raises(DuplicateMessageError):
        bob.decrypt(ALICE, message)
    assert bob.to_bytes() == saved


def test_tampered_and_truncated_messages_are_refused_and_change_nothing() -> None:
    alice, bob = connected_pair()
    bob.decrypt(ALICE, send(alice, BOB, b"hi"))
    alice.decrypt(BOB, send(bob, ALICE, b"hi"))
    message = send(alice, BOB, b"tamper with me")
    saved = bob.to_bytes()
    for index in range(len(message)):
        tampered = bytearray(message)
        tampered[index] ^= 0x04
        with pytest.raises(CryptoError):
            bob.decrypt(ALICE, bytes(tampered))
    for length in range(len(message)):
        with pytest.raises(CryptoError):
            bob.decrypt(ALICE, message[:length])
    assert bob.to_bytes() == saved
    assert bob.decrypt(ALICE, message).plaintext == b"tamper with me"


def test_a_tampered_initial_message_consumes_no_prekey() -> None:
    alice, bob = connected_pair()
    message = send(alice, BOB, b"hi")
    saved = bob.to_bytes()
    tampered = message[:-1] + bytes([message[-1] ^ 1])
    with pytest.raises(DecryptionError):
        bob.decrypt(ALICE, tampered)
    assert bob.to_bytes() == saved
    assert bob.decrypt(ALICE, message).plaintext == b"hi"


def test_a_session_survives_a_restart_of_both_devices() -> None:
    alice, bob = connected_pair()
    bob.decrypt(ALICE, send(alice, BOB, b"before"))
    in_flight = send(bob, ALICE, b"in flight")
    alice = DeviceCrypto.from_bytes(alice.to_bytes(), SeededRandom(b"alice again"))
    bob = DeviceCrypto.from_bytes(bob.to_bytes(), SeededRandom(b"bob again"))
    assert alice.decrypt(BOB, in_flight).plaintext == b"in flight"
    assert bob.decrypt(ALICE, send(alice, BOB, b"after")).plaintext == b"after"


def test_one_time_prekeys_are_deleted_after_use_and_a_replay_then_fails() -> None:
    alice, bob = connected_pair()
    initial = send(alice, BOB, b"hi")
    bob.decrypt(ALICE, initial)
    bob.forget_device(ALICE)  # Without the session, only the prekeys could open it again.
    with pytest.raises(UnknownPrekeyError):
        bob.decrypt(ALICE, initial)


def test_a_replay_of_a_last_resort_initial_message_is_refused() -> None:
    alice, bob = new_device(b"alice"), new_device(b"bob")
    alice.start_session(BOB, bundle_of(bob, one_time=False, kem_one_time=False))
    initial = send(alice, BOB, b"hi")
    bob.decrypt(ALICE, initial)
    bob.forget_device(ALICE)
    with pytest.raises(UnknownPrekeyError, match="replayed"):
        bob.decrypt(ALICE, initial)
    assert MAX_REMEMBERED_BASE_KEYS >= 1


def test_every_bundle_signature_is_checked() -> None:
    alice, bob = new_device(b"alice"), new_device(b"bob")
    good = bundle_of(bob)
    other = new_device(b"mallory")
    forged_bundles = [
        PrekeyBundle(identity_key=other.identity_key, signed_prekey=good.signed_prekey,
                     kem_prekey=good.kem_prekey, one_time_prekey=good.one_time_prekey),
        PrekeyBundle(identity_key=good.identity_key, signed_prekey=other.signed_prekey(),
                     kem_prekey=good.kem_prekey),
        PrekeyBundle(identity_key=good.identity_key, signed_prekey=good.signed_prekey,
                     kem_prekey=other.kem_last_resort_prekey()),
    ]
    for forged in forged_bundles:
        with pytest.raises(SignatureError):
            alice.start_session(BOB, forged)
        assert not alice.has_session(BOB)
        assert alice.identity_of(BOB) is None


def test_an_identity_change_is_reported_and_not_trusted_for_sending() -> None:
    alice, bob = connected_pair()
    bob.decrypt(ALICE, send(alice, BOB, b"hi"))
    reinstalled_bob = new_device(b"bob reinstalled")
    # Sending side: a bundle with a new key is refused until the user accepts it.
    new_bundle = bundle_of(reinstalled_bob)
    with pytest.raises(UntrustedIdentityError):
        alice.start_session(BOB, new_bundle)
    # Receiving side: a message from the new key opens, flagged, and sending stays refused.
    reinstalled_bob.start_session(ALICE, bundle_of(alice))
    received = alice.decrypt(BOB, send(reinstalled_bob, ALICE, b"new phone"))
    assert received.identity_changed
    assert received.plaintext == b"new phone"
    record = alice.identity_of(BOB)
    assert record is not None
    assert record.identity_key == reinstalled_bob.identity_key
    assert not record.trusted
    with pytest.raises(UntrustedIdentityError):
        alice.encrypt(b"secret", [BOB])
    alice.trust_identity(BOB, reinstalled_bob.identity_key)
    assert reinstalled_bob.decrypt(ALICE, send(alice, BOB, b"ok")).plaintext == b"ok"


def test_simultaneous_initiation_converges() -> None:
    alice, bob = new_device(b"alice"), new_device(b"bob")
    alice.start_session(BOB, bundle_of(bob))
    bob.start_session(ALICE, bundle_of(alice))
    from_alice, from_bob = send(alice, BOB, b"a1"), send(bob, ALICE, b"b1")
    assert bob.decrypt(ALICE, from_alice).plaintext == b"a1"
    assert alice.decrypt(BOB, from_bob).plaintext == b"b1"
    for index in range(3):
        text = f"round {index}".encode()
        assert bob.decrypt(ALICE, send(alice, BOB, text)).plaintext == text
        assert alice.decrypt(BOB, send(bob, ALICE, text)).plaintext == text


def test_encrypt_addresses_every_device_or_names_those_without_a_session() -> None:
    alice, bob = connected_pair()
    alice_phone_2 = new_device(b"alice 2")
    with pytest.raises(NoSessionError) as refused:
        alice.encrypt(b"to everyone", [BOB, ALICE_PHONE_2])
    assert refused.value.addresses == [ALICE_PHONE_2]
    alice.start_session(ALICE_PHONE_2, bundle_of(alice_phone_2))
    ciphertexts = alice.encrypt(b"to everyone", [BOB, ALICE_PHONE_2])
    assert set(ciphertexts) == {BOB, ALICE_PHONE_2}
    assert bob.decrypt(ALICE, ciphertexts[BOB]).plaintext == b"to everyone"
    assert alice_phone_2.decrypt(ALICE, ciphertexts[ALICE_PHONE_2]).plaintext == b"to everyone"


def test_message_sizes_hide_the_exact_length() -> None:
    alice, bob = connected_pair()
    bob.decrypt(ALICE, send(alice, BOB, b"x"))
    alice.decrypt(BOB, send(bob, ALICE, b"x"))
    assert len(send(alice, BOB, b"")) == len(send(alice, BOB, b"y" * 159))
    assert len(send(alice, BOB, b"y" * 160)) > len(send(alice, BOB, b"y" * 159))


def test_bad_input_from_the_caller_is_refused_and_changes_nothing() -> None:
    alice, _bob = connected_pair()
    saved = alice.to_bytes()
    with pytest.raises(ValueError, match="plaintext"):
        alice.encrypt(b"x" * (MAX_PLAINTEXT_SIZE + 1), [BOB])
    with pytest.raises(ValueError, match="recipient"):
        alice.encrypt(b"x", [DeviceAddress("u", index) for index in range(1, 40)])
    assert alice.to_bytes() == saved
    assert len(send(alice, BOB, b"x" * MAX_PLAINTEXT_SIZE)) <= 98_304


def test_a_message_without_a_session_or_garbage_is_refused() -> None:
    alice, bob = connected_pair()
    bob.decrypt(ALICE, send(alice, BOB, b"x"))
    reply = send(bob, ALICE, b"y")
    stranger = new_device(b"stranger")
    with pytest.raises(NoSessionError):
        stranger.decrypt(BOB, reply)
    with pytest.raises(MalformedMessageError, match="version"):
        stranger.decrypt(BOB, b"\x02" + reply[1:])
    with pytest.raises(MalformedMessageError, match="type"):
        stranger.decrypt(BOB, b"\x01\x07" + reply[2:])


def test_saved_state_is_versioned_and_corruption_is_refused() -> None:
    import msgpack

    alice, _bob = connected_pair()
    snapshot = msgpack.unpackb(alice.to_bytes(), strict_map_key=False)
    snapshot["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        DeviceCrypto.from_bytes(msgpack.packb(snapshot), SeededRandom(b"r"))
    with pytest.raises(ValueError, match=r"corrupt|msgpack|version"):
        DeviceCrypto.from_bytes(alice.to_bytes()[:-5], SeededRandom(b"r"))
    del snapshot["sessions"]
    snapshot["version"] = 1
    with pytest.raises(ValueError, match="corrupt"):
        DeviceCrypto.from_bytes(msgpack.packb(snapshot), SeededRandom(b"r"))
