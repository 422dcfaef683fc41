"""SFrame (crypto/sframe.py): RFC 9605's published vectors first, then the adversaries.

The vectors are tests/vectors/sframe_rfc9605.json (its "source" field says where they come
from): RFC 9605 Appendix C.1 (header encoding) and C.5 (key derivation and encryption) for the
AES-GCM cipher suites.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crypto.sframe import (
    REPLAY_WINDOW,
    CipherSuite,
    ReplayedFrameError,
    SFrameError,
    SFrameHeader,
    SFrameReceiver,
    SFrameSender,
    UnknownKeyIdError,
    decode_header,
    derive_key,
    encode_header,
    new_base_key,
    open_frame,
    seal_frame,
)

_VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "sframe_rfc9605.json").read_text())


def test_the_vector_file_covers_both_suites_and_every_header_size() -> None:
    assert {v["cipher_suite"] for v in _VECTORS["sframe"]} == {4, 5}
    assert len(_VECTORS["header"]) == 289  # 17 KIDs x 17 CTRs, 1 to 17 bytes long


@pytest.mark.parametrize("vector", _VECTORS["header"],
                         ids=lambda v: f"kid{v['kid']}-ctr{v['ctr']}")
def test_header_encoding_matches_rfc_9605_c1(vector: dict[str, Any]) -> None:
    header = SFrameHeader(key_id=vector["kid"], counter=vector["ctr"])
    encoded = bytes.fromhex(vector["encoded"])
    assert encode_header(header) == encoded
    # Decoding reads exactly the header, even with ciphertext after it.
    assert decode_header(encoded + b"\xaa" * 20) == (header, len(encoded))


@pytest.mark.parametrize("vector", _VECTORS["sframe"], ids=lambda v: f"suite{v['cipher_suite']}")
def test_key_derivation_and_encryption_match_rfc_9605_c5(vector: dict[str, Any]) -> None:
    suite = CipherSuite(vector["cipher_suite"])
    derived = derive_key(suite, vector["kid"], bytes.fromhex(vector["base_key"]))
    assert derived.key == bytes.fromhex(vector["sframe_key"])
    assert derived.salt == bytes.fromhex(vector["sframe_salt"])
    header = SFrameHeader(key_id=vector["kid"], counter=vector["ctr"])
    metadata = bytes.fromhex(vector["metadata"])
    ciphertext = seal_frame(derived, header, bytes.fromhex(vector["pt"]), metadata)
    assert ciphertext == bytes.fromhex(vector["ct"])
    parsed, size = decode_header(ciphertext)
    assert bytes.fromhex(vector["aad"]) == ciphertext[:size] + metadata
    assert open_frame(derived, parsed, size, ciphertext, metadata) == bytes.fromhex(vector["pt"])


@pytest.mark.parametrize("vector", _VECTORS["sframe"], ids=lambda v: f"suite{v['cipher_suite']}")
def test_a_receiver_opens_the_vector_ciphertext(vector: dict[str, Any]) -> None:
    receiver = SFrameReceiver(CipherSuite(vector["cipher_suite"]))
    receiver.add_key(vector["kid"], bytes.fromhex(vector["base_key"]))
    assert receiver.decrypt(bytes.fromhex(vector["ct"]), bytes.fromhex(vector["metadata"])) == (
        vector["kid"], bytes.fromhex(vector["pt"]))


def _pair(suite: CipherSuite = CipherSuite.AES_128_GCM_SHA256_128,
          key_id: int = 7) -> tuple[SFrameSender, SFrameReceiver]:
    base_key = new_base_key(suite)
    receiver = SFrameReceiver(suite)
    receiver.add_key(key_id, base_key)
    return SFrameSender(suite, key_id, base_key), receiver


@pytest.mark.parametrize("suite", list(CipherSuite))
def test_a_round_trip_never_shows_the_plaintext(suite: CipherSuite) -> None:
    sender, receiver = _pair(suite)
    plaintext = b"synthetic audio frame " * 7
    ciphertexts = [sender.encrypt(plaintext) for _ in range(3)]
    assert len(set(ciphertexts)) == 3  # a fresh counter, hence nonce, per frame
    for ciphertext in ciphertexts:
        assert plaintext[:16] not in ciphertext
        assert receiver.decrypt(ciphertext) == (7, plaintext)


def test_a_replayed_frame_is_refused() -> None:
    sender, receiver = _pair()
    first = sender.encrypt(b"one")
    assert receiver.decrypt(first) == (7, b"one")
    with pytest.raises(ReplayedFrameError):
        receiver.decrypt(first)


def test_frames_out_of_order_within_the_window_are_accepted_once() -> None:
    sender, receiver = _pair()
    frames = [sender.encrypt(bytes([index])) for index in range(10)]
    for index in (9, 3, 0, 8, 5):
        assert receiver.decrypt(frames[index]) == (7, bytes([index]))
    for index in (9, 3, 0):
        with pytest.raises(ReplayedFrameError):
            receiver.decrypt(frames[index])


def test_a_frame_behind_the_window_is_refused() -> None:
    sender, receiver = _pair()
    old = sender.encrypt(b"old")
    for _ in range(REPLAY_WINDOW - 1):
        sender.encrypt(b"skipped")
    receiver.decrypt(sender.encrypt(b"new"))  # counter REPLAY_WINDOW
    with pytest.raises(ReplayedFrameError):
        receiver.decrypt(old)  # counter 0, REPLAY_WINDOW behind


def test_a_forged_frame_does_not_move_the_window() -> None:
    suite = CipherSuite.AES_128_GCM_SHA256_128
    sender, receiver = _pair(suite)
    attacker = SFrameSender(suite, 7, new_base_key(suite))  # same KID, wrong key
    for _ in range(5000):
        attacker.encrypt(b"")
    with pytest.raises(SFrameError):
        receiver.decrypt(attacker.encrypt(b"forged, counter 5000"))
    assert receiver.decrypt(sender.encrypt(b"genuine")) == (7, b"genuine")


@pytest.mark.parametrize("position", [0, 3, -1])
def test_a_flipped_bit_anywhere_is_refused(position: int) -> None:
    sender, receiver = _pair()
    ciphertext = bytearray(sender.encrypt(b"payload of some length"))
    ciphertext[position] ^= 0x01
    with pytest.raises(SFrameError):
        receiver.decrypt(bytes(ciphertext))


def test_metadata_is_authenticated() -> None:
    sender, receiver = _pair()
    ciphertext = sender.encrypt(b"audio", metadata=b"call-1")
    with pytest.raises(SFrameError):
        receiver.decrypt(ciphertext, metadata=b"call-2")
    assert receiver.decrypt(ciphertext, metadata=b"call-1") == (7, b"audio")


def test_an_unknown_or_removed_kid_is_refused() -> None:
    sender, receiver = _pair()
    other, _ = _pair(key_id=8)
    with pytest.raises(UnknownKeyIdError):
        receiver.decrypt(other.encrypt(b"x"))
    receiver.remove_key(7)
    with pytest.raises(UnknownKeyIdError):
        receiver.decrypt(sender.encrypt(b"after the key was dropped"))


def test_a_new_base_key_under_the_same_kid_starts_a_new_window() -> None:
    suite = CipherSuite.AES_128_GCM_SHA256_128
    old_sender, receiver = _pair(suite)
    receiver.decrypt(old_sender.encrypt(b"old key"))
    new_key = new_base_key(suite)
    receiver.add_key(7, new_key)
    with pytest.raises(SFrameError):
        receiver.decrypt(old_sender.encrypt(b"old key, after the re-key"))
    assert receiver.decrypt(SFrameSender(suite, 7, new_key).encrypt(b"new")) == (7, b"new")


@pytest.mark.parametrize("data", [b"", b"\x08", b"\x90\x01", b"\xff" + b"\x00" * 15, b"\x00"])
def test_truncated_input_is_an_sframe_error(data: bytes) -> None:
    _, receiver = _pair(key_id=0)
    with pytest.raises(SFrameError):
        receiver.decrypt(data)


def test_out_of_range_values_are_refused() -> None:
    with pytest.raises(ValueError, match="64-bit"):
        SFrameHeader(key_id=2**64, counter=0)
    with pytest.raises(ValueError, match="64-bit"):
        SFrameHeader(key_id=0, counter=-1)
    with pytest.raises(ValueError, match="empty"):
        derive_key(CipherSuite.AES_128_GCM_SHA256_128, 1, b"")


def test_the_two_suites_derive_different_keys_from_one_base_key() -> None:
    base_key = bytes(range(32))
    keys = {derive_key(suite, 1, base_key).key for suite in CipherSuite}
    kids = {derive_key(CipherSuite.AES_128_GCM_SHA256_128, kid, base_key).key for kid in (1, 2)}
    assert len(keys) == 2 and len(kids) == 2
