"""crypto.device: whole conversations between devices, then adversaries and restarts."""

from __future__ import annotations

import msgpack
import pytest

from crypto.device import MAX_PLAINTEXT_SIZE, DeviceAddress, DeviceCrypto
from crypto.device_state import DEVICE_STATE_VERSION
from crypto.errors import (
    DuplicateMessageError,
    IdentityMismatchError,
    MalformedMessageError,
    NoSessionError,
    UnknownPrekeyError,
    UntrustedIdentityError,
)
from crypto.message_format import (
    MESSAGE_FORMAT_VERSION,
    MessageType,
    PrekeyMessage,
    RatchetMessage,
    decode_message,
    encode_message,
)
from crypto.prekeys import PrekeyBundle
from crypto.primitives import CryptoError, DecryptionError, SeededRandom, SignatureError
from tests.crypto_support import (
    ALICE,
    ALICE_PHONE_2,
    BOB,
    bundle_of,
    connect,
    connected_pair,
    introduce,
    new_device,
    receive,
    send,
)


def test_a_conversation_in_both_directions() -> None:
    alice, bob = connected_pair()
    for round_number in range(4):
        for index in range(3):
            text = f"alice {round_number}.{index}".encode()
            assert receive(bob, alice, send(alice, BOB, text)) == text
        text = f"bob {round_number}".encode()
        assert receive(alice, bob, send(bob, ALICE, text)) == text


def test_initiator_sends_prekey_messages_until_the_first_reply() -> None:
    alice, bob = connected_pair()
    first, second = send(alice, BOB, b"1"), send(alice, BOB, b"2")
    assert isinstance(decode_message(first), PrekeyMessage)
    assert isinstance(decode_message(second), PrekeyMessage)
    # The second arrives first: it alone sets the session up; the first then still opens.
    assert receive(bob, alice, second) == b"2"
    assert receive(bob, alice, first) == b"1"
    receive(alice, bob, send(bob, ALICE, b"reply"))
    assert isinstance(decode_message(send(alice, BOB, b"3")), RatchetMessage)


def test_out_of_order_across_ratchet_steps() -> None:
    alice, bob = connected_pair()
    receive(bob, alice, send(alice, BOB, b"hello"))
    held_back = [send(bob, ALICE, f"b{index}".encode()) for index in range(3)]
    receive(alice, bob, held_back[0])
    receive(bob, alice, send(alice, BOB, b"a-new-chain"))
    newest = send(bob, ALICE, b"b-new-chain")
    assert receive(alice, bob, newest) == b"b-new-chain"
    assert receive(alice, bob, held_back[2]) == b"b2"
    assert receive(alice, bob, held_back[1]) == b"b1"


def test_duplicates_and_replays_are_refused_and_change_nothing() -> None:
    alice, bob = connected_pair()
    first = send(alice, BOB, b"first")
    receive(bob, alice, first)
    saved = bob.to_bytes()
    with pytest.raises(DuplicateMessageError):
        receive(bob, alice, first)  # A replayed initial message: same session, key used.
    assert bob.to_bytes() == saved
    reply = send(bob, ALICE, b"reply")
    receive(alice, bob, reply)
    saved = alice.to_bytes()
    with pytest.raises(DuplicateMessageError):
        receive(alice, bob, reply)
    assert alice.to_bytes() == saved
    message = send(alice, BOB, b"second")
    receive(bob, alice, message)
    saved = bob.to_bytes()
    with pytest.raises(DuplicateMessageError):
        receive(bob, alice, message)
    assert bob.to_bytes() == saved


def test_tampered_and_truncated_messages_are_refused_and_change_nothing() -> None:
    alice, bob = connected_pair()
    receive(bob, alice, send(alice, BOB, b"hi"))
    receive(alice, bob, send(bob, ALICE, b"hi"))
    message = send(alice, BOB, b"tamper with me")
    saved = bob.to_bytes()
    for index in range(len(message)):
        tampered = bytearray(message)
        tampered[index] ^= 0x04
        with pytest.raises(CryptoError):
            receive(bob, alice, bytes(tampered))
    for length in range(len(message)):
        with pytest.raises(CryptoError):
            receive(bob, alice, message[:length])
    assert bob.to_bytes() == saved
    assert receive(bob, alice, message) == b"tamper with me"


def test_a_tampered_initial_message_consumes_no_prekey() -> None:
    alice, bob = connected_pair()
    message = send(alice, BOB, b"hi")
    saved = bob.to_bytes()
    tampered = message[:-1] + bytes([message[-1] ^ 1])
    with pytest.raises(DecryptionError):
        receive(bob, alice, tampered)
    assert bob.to_bytes() == saved
    assert receive(bob, alice, message) == b"hi"


def test_an_initial_message_stripped_of_its_pqxdh_header_does_not_open() -> None:
    """The PQXDH header is in the associated data: the bare ratchet message inside an initial
    message is not a valid ratchet message, even for a recipient that has the session."""
    alice, bob = connected_pair()
    first, second = send(alice, BOB, b"1"), send(alice, BOB, b"2")
    receive(bob, alice, first)
    inner = decode_message(second)
    assert isinstance(inner, PrekeyMessage)
    saved = bob.to_bytes()
    with pytest.raises(DecryptionError):
        receive(bob, alice, encode_message(inner.message))
    assert bob.to_bytes() == saved
    assert receive(bob, alice, second) == b"2"


def test_a_session_survives_a_restart_of_both_devices() -> None:
    alice, bob = connected_pair()
    receive(bob, alice, send(alice, BOB, b"before"))
    in_flight = send(bob, ALICE, b"in flight")
    alice = DeviceCrypto.from_bytes(alice.to_bytes(), SeededRandom(b"alice again"))
    bob = DeviceCrypto.from_bytes(bob.to_bytes(), SeededRandom(b"bob again"))
    assert (alice.address, bob.address) == (ALICE, BOB)
    assert receive(alice, bob, in_flight) == b"in flight"
    assert receive(bob, alice, send(alice, BOB, b"after")) == b"after"


def test_one_time_prekeys_are_deleted_after_use_and_a_replay_then_fails() -> None:
    alice, bob = connected_pair()
    initial = send(alice, BOB, b"hi")
    receive(bob, alice, initial)
    bob.forget_device(ALICE)  # Without the session, only the prekeys could open it again.
    with pytest.raises(UnknownPrekeyError):
        receive(bob, alice, initial)


def test_a_replay_of_a_last_resort_initial_message_is_refused() -> None:
    alice, bob = new_device(b"alice", ALICE), new_device(b"bob", BOB)
    connect(alice, bob, one_time=False, kem_one_time=False)
    initial = send(alice, BOB, b"hi")
    receive(bob, alice, initial)
    bob.forget_device(ALICE)
    saved = bob.to_bytes()
    with pytest.raises(UnknownPrekeyError, match="replayed"):
        receive(bob, alice, initial)
    assert bob.to_bytes() == saved


def test_every_bundle_signature_is_checked() -> None:
    alice, bob = new_device(b"alice", ALICE), new_device(b"bob", BOB)
    good = bundle_of(bob)
    other = new_device(b"mallory", DeviceAddress("mallory", 1))
    forged_bundles = [
        PrekeyBundle(identity_key=other.identity_key, signed_prekey=good.signed_prekey,
                     kem_prekey=good.kem_prekey, one_time_prekey=good.one_time_prekey),
        PrekeyBundle(identity_key=good.identity_key, signed_prekey=other.signed_prekey(),
                     kem_prekey=good.kem_prekey),
        PrekeyBundle(identity_key=good.identity_key, signed_prekey=good.signed_prekey,
                     kem_prekey=other.kem_last_resort_prekey()),
    ]
    for forged in forged_bundles:
        alice.trust_identity(BOB, forged.identity_key)  # Even a trusted key needs signatures.
        saved = alice.to_bytes()
        with pytest.raises(SignatureError):
            alice.start_session(BOB, forged)
        assert not alice.has_session(BOB)
        assert alice.to_bytes() == saved


def test_sending_needs_a_key_the_client_trusted_first() -> None:
    alice, bob = new_device(b"alice", ALICE), new_device(b"bob", BOB)
    bundle = bundle_of(bob)
    saved = alice.to_bytes()
    with pytest.raises(UntrustedIdentityError):
        alice.start_session(BOB, bundle)  # No key trusted for Bob yet.
    alice.trust_identity(BOB, new_device(b"impostor", BOB).identity_key)
    with pytest.raises(UntrustedIdentityError):
        alice.start_session(BOB, bundle)  # The bundle's key is not the trusted one.
    assert not alice.has_session(BOB)
    alice.trust_identity(BOB, bob.identity_key)
    alice.start_session(BOB, bundle)
    record = alice.identity_of(BOB)
    assert record is not None and record.identity_key == bob.identity_key
    assert receive(bob, alice, send(alice, BOB, b"hi")) == b"hi"
    assert saved != alice.to_bytes()


def test_receiving_records_no_identity_and_a_reply_needs_trust() -> None:
    alice, bob = new_device(b"alice", ALICE), new_device(b"bob", BOB)
    connect(alice, bob)
    assert receive(bob, alice, send(alice, BOB, b"hi")) == b"hi"
    assert bob.identity_of(ALICE) is None
    assert bob.has_session(ALICE)
    with pytest.raises(UntrustedIdentityError):
        bob.encrypt(b"reply", [ALICE])
    bob.trust_identity(ALICE, alice.identity_key)  # The client checked Alice's device list.
    assert bob.has_session(ALICE)  # Trusting the key the session already has keeps it.
    assert receive(alice, bob, send(bob, ALICE, b"reply")) == b"reply"


def test_an_initial_message_under_another_identity_key_is_refused() -> None:
    alice, bob = connected_pair()
    initial = send(alice, BOB, b"hi")
    saved = bob.to_bytes()
    unlisted_key = new_device(b"not on alice's list", ALICE).identity_key
    with pytest.raises(IdentityMismatchError):
        bob.decrypt(ALICE, initial, expected_identity_key=unlisted_key)
    assert bob.to_bytes() == saved
    assert receive(bob, alice, initial) == b"hi"


def test_a_ratchet_message_opens_only_with_a_session_under_the_expected_key() -> None:
    alice, bob = connected_pair()
    receive(bob, alice, send(alice, BOB, b"hi"))
    receive(alice, bob, send(bob, ALICE, b"hi"))
    message = send(alice, BOB, b"ratchet")
    assert isinstance(decode_message(message), RatchetMessage)
    saved = bob.to_bytes()
    unlisted_key = new_device(b"not on alice's list", ALICE).identity_key
    with pytest.raises(IdentityMismatchError):
        bob.decrypt(ALICE, message, expected_identity_key=unlisted_key)
    assert bob.to_bytes() == saved
    assert receive(bob, alice, message) == b"ratchet"


def test_a_relay_that_names_another_sender_makes_the_message_fail() -> None:
    """Both addresses are in the associated data: a message delivered under another sender's
    name (even with that message's own identity key) does not open, initial or not."""
    alice, bob = connected_pair()
    mallory = DeviceAddress("mallory", 1)
    initial = send(alice, BOB, b"hi")
    saved = bob.to_bytes()
    for claimed in (mallory, ALICE_PHONE_2):
        with pytest.raises(DecryptionError):
            bob.decrypt(claimed, initial, expected_identity_key=alice.identity_key)
    assert bob.to_bytes() == saved
    receive(bob, alice, initial)
    # A ratchet message under another name: that name has no session with Alice's key.
    receive(alice, bob, send(bob, ALICE, b"reply"))
    bob.trust_identity(mallory, alice.identity_key)
    with pytest.raises(NoSessionError):
        bob.decrypt(mallory, send(alice, BOB, b"x"), expected_identity_key=alice.identity_key)


def test_a_message_for_another_device_of_the_recipient_does_not_open() -> None:
    alice, bob = connected_pair()
    initial = send(alice, BOB, b"for bob/1")
    copied_bob = DeviceCrypto.from_bytes(bob.to_bytes(), SeededRandom(b"copy"))
    state = msgpack.unpackb(copied_bob.to_bytes(), strict_map_key=False)
    state["address"] = ["bob", 2]  # The same keys under another address.
    other_bob = DeviceCrypto.from_bytes(msgpack.packb(state), SeededRandom(b"other"))
    with pytest.raises(DecryptionError):
        receive(other_bob, alice, initial)
    assert receive(bob, alice, initial) == b"for bob/1"


def test_encrypt_refuses_a_session_under_a_key_no_longer_trusted() -> None:
    alice, bob = connected_pair()
    receive(bob, alice, send(alice, BOB, b"hi"))
    receive(alice, bob, send(bob, ALICE, b"hi"))
    new_alice = new_device(b"alice, new key", ALICE)  # Alice's account now lists this key.
    connect(new_alice, bob)
    receive(bob, new_alice, send(new_alice, BOB, b"new key"))
    saved = bob.to_bytes()
    with pytest.raises(UntrustedIdentityError):
        bob.encrypt(b"to which key?", [ALICE])  # Bob still trusts the old key.
    assert bob.to_bytes() == saved
    bob.trust_identity(ALICE, new_alice.identity_key)
    assert receive(new_alice, bob, send(bob, ALICE, b"ok")) == b"ok"
    with pytest.raises(IdentityMismatchError):  # The old key's sessions are gone.
        receive(bob, alice, send(alice, BOB, b"old key"))


def test_simultaneous_initiation_converges() -> None:
    alice, bob = new_device(b"alice", ALICE), new_device(b"bob", BOB)
    introduce(alice, bob)
    connect(alice, bob)
    connect(bob, alice)
    from_alice, from_bob = send(alice, BOB, b"a1"), send(bob, ALICE, b"b1")
    assert receive(bob, alice, from_alice) == b"a1"
    assert receive(alice, bob, from_bob) == b"b1"
    for index in range(3):
        text = f"round {index}".encode()
        assert receive(bob, alice, send(alice, BOB, text)) == text
        assert receive(alice, bob, send(bob, ALICE, text)) == text


def test_encrypt_addresses_every_device_or_names_those_without_a_session() -> None:
    alice, bob = connected_pair()
    alice_phone_2 = new_device(b"alice 2", ALICE_PHONE_2)
    introduce(alice, alice_phone_2)
    with pytest.raises(NoSessionError) as refused:
        alice.encrypt(b"to everyone", [BOB, ALICE_PHONE_2])
    assert refused.value.addresses == [ALICE_PHONE_2]
    connect(alice, alice_phone_2)
    ciphertexts = alice.encrypt(b"to everyone", [BOB, ALICE_PHONE_2])
    assert set(ciphertexts) == {BOB, ALICE_PHONE_2}
    assert receive(bob, alice, ciphertexts[BOB]) == b"to everyone"
    assert receive(alice_phone_2, alice, ciphertexts[ALICE_PHONE_2]) == b"to everyone"


def test_message_sizes_hide_the_exact_length() -> None:
    alice, bob = connected_pair()
    receive(bob, alice, send(alice, BOB, b"x"))
    receive(alice, bob, send(bob, ALICE, b"x"))
    assert len(send(alice, BOB, b"")) == len(send(alice, BOB, b"y" * 159))
    assert len(send(alice, BOB, b"y" * 160)) > len(send(alice, BOB, b"y" * 159))


def test_bad_input_from_the_caller_is_refused_and_changes_nothing() -> None:
    alice, _bob = connected_pair()
    saved = alice.to_bytes()
    with pytest.raises(ValueError, match="plaintext"):
        alice.encrypt(b"x" * (MAX_PLAINTEXT_SIZE + 1), [BOB])
    with pytest.raises(ValueError, match="recipient"):
        alice.encrypt(b"x", [DeviceAddress("u", index) for index in range(1, 40)])
    with pytest.raises(ValueError, match="32 bytes"):
        alice.trust_identity(BOB, b"short")
    assert alice.to_bytes() == saved
    assert len(send(alice, BOB, b"x" * MAX_PLAINTEXT_SIZE)) <= 98_304
    for user_id, device_id in (("", 1), ("u", -1), ("u", 2**32), ("\ud800", 1)):
        with pytest.raises(ValueError):
            DeviceAddress(user_id, device_id)


def test_a_message_without_a_session_or_garbage_is_refused() -> None:
    alice, bob = connected_pair()
    receive(bob, alice, send(alice, BOB, b"x"))
    reply = send(bob, ALICE, b"y")
    stranger = new_device(b"stranger", DeviceAddress("stranger", 1))
    with pytest.raises(NoSessionError):
        receive(stranger, bob, reply)
    assert reply[0] == MESSAGE_FORMAT_VERSION == 2
    with pytest.raises(MalformedMessageError, match="version 1"):
        receive(stranger, bob, b"\x01" + reply[1:])  # The format before issue 13.
    with pytest.raises(MalformedMessageError, match="type"):
        receive(stranger, bob, bytes([MESSAGE_FORMAT_VERSION, 7]) + reply[2:])
    assert reply[1] == MessageType.RATCHET


def test_saved_state_is_versioned_and_corruption_is_refused() -> None:
    alice, _bob = connected_pair()
    snapshot = msgpack.unpackb(alice.to_bytes(), strict_map_key=False)
    assert snapshot["version"] == DEVICE_STATE_VERSION == 2
    snapshot["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        DeviceCrypto.from_bytes(msgpack.packb(snapshot), SeededRandom(b"r"))
    snapshot["version"] = 1
    with pytest.raises(ValueError, match=r"predates account identities.*enrolled again"):
        DeviceCrypto.from_bytes(msgpack.packb(snapshot), SeededRandom(b"r"))
    with pytest.raises(ValueError, match=r"corrupt|msgpack|version"):
        DeviceCrypto.from_bytes(alice.to_bytes()[:-5], SeededRandom(b"r"))
    snapshot["version"] = 2
    assert DeviceCrypto.from_bytes(msgpack.packb(snapshot), SeededRandom(b"r")).to_bytes() \
        == alice.to_bytes()
    for field in ("sessions", "address", "prekeys"):
        broken = dict(snapshot)
        del broken[field]
        with pytest.raises(ValueError, match="corrupt"):
            DeviceCrypto.from_bytes(msgpack.packb(broken), SeededRandom(b"r"))
