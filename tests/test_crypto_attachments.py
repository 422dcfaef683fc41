"""crypto.attachments: the layout built independently from docs/CRYPTO.md, round trips at every
size boundary, then every way to damage a stream (reorder, cut, extend, alter, wrong key,
wrong digest), then properties over arbitrary sizes and piece boundaries."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.attachments import (
    ATTACHMENT_HEADER_SIZE,
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    AttachmentDecryptor,
    AttachmentEncryptor,
    AttachmentError,
    attachment_header,
    chunk_count,
    ciphertext_size,
    decrypt_attachment,
    encrypt_attachment,
    new_attachment_key,
)
from crypto.primitives import CryptoError, SeededRandom

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SMALL = 16  # a small chunk size, so that "many chunks" stays a few hundred bytes
TAG = 16


def _plaintext(size: int) -> bytes:
    return SeededRandom(size.to_bytes(8, "big")).bytes(size)


def _encrypt(plaintext: bytes, *, chunk_size: int = SMALL, key: bytes = KEY,
             piece: int = 7) -> tuple[bytes, bytes]:
    """The ciphertext and its digest, the plaintext fed in ``piece``-byte pieces."""
    encryptor = AttachmentEncryptor(key, chunk_size=chunk_size)
    out = encryptor.start()
    for start in range(0, len(plaintext), piece):
        out += encryptor.update(plaintext[start:start + piece])
    out += encryptor.finish()
    return out, encryptor.digest


def _decrypt(ciphertext: bytes, digest: bytes, *, chunk_size: int = SMALL, key: bytes = KEY,
             plaintext_size: int | None = None, piece: int = 5) -> bytes:
    pieces = (ciphertext[start:start + piece] for start in range(0, len(ciphertext), piece))
    return b"".join(decrypt_attachment(key, digest, pieces, chunk_size=chunk_size,
                                       plaintext_size=plaintext_size))


def _chunks(ciphertext: bytes, chunk_size: int = SMALL) -> tuple[bytes, list[bytes]]:
    """The header and the sealed chunks of a ciphertext."""
    body = ciphertext[ATTACHMENT_HEADER_SIZE:]
    sealed = chunk_size + TAG
    return (ciphertext[:ATTACHMENT_HEADER_SIZE],
            [body[start:start + sealed] for start in range(0, len(body), sealed)])


def _digest(ciphertext: bytes) -> bytes:
    return hashlib.sha256(ciphertext).digest()


# -- the layout, rebuilt here from the format's description ----------------------------------


def test_the_ciphertext_is_header_then_stream_sealed_chunks() -> None:
    plaintext = b"A" * SMALL + b"B" * SMALL + b"tail"
    header = b"CPA\x01" + SMALL.to_bytes(4, "big")
    expected = header
    pieces = [b"A" * SMALL, b"B" * SMALL, b"tail"]
    for index, piece in enumerate(pieces):
        flag = b"\x01" if index == len(pieces) - 1 else b"\x00"
        nonce = index.to_bytes(11, "big") + flag
        ad = header + index.to_bytes(8, "big") + flag
        expected += AESGCM(KEY).encrypt(nonce, piece, ad)
    ciphertext, digest = _encrypt(plaintext)
    assert attachment_header(SMALL) == header
    assert ciphertext == expected
    assert digest == hashlib.sha256(expected).digest()
    assert len(ciphertext) == ciphertext_size(len(plaintext), SMALL)


def test_the_encryption_is_deterministic_per_key_so_a_sender_can_regenerate_any_offset() -> None:
    plaintext = _plaintext(1000)
    assert _encrypt(plaintext, piece=3) == _encrypt(plaintext, piece=999)
    assert _encrypt(plaintext)[0] != _encrypt(plaintext, key=OTHER_KEY)[0]


def test_fresh_keys_differ_and_have_the_aes_256_size() -> None:
    random = SeededRandom(b"keys")
    first, second = new_attachment_key(random), new_attachment_key(random)
    assert len(first) == len(second) == 32
    assert first != second


@pytest.mark.parametrize(("size", "chunks"), [(0, 1), (1, 1), (SMALL - 1, 1), (SMALL, 1),
                                              (SMALL + 1, 2), (40 * SMALL, 40),
                                              (40 * SMALL + 3, 41)])
def test_chunk_count_and_ciphertext_size(size: int, chunks: int) -> None:
    assert chunk_count(size, SMALL) == chunks
    assert ciphertext_size(size, SMALL) == ATTACHMENT_HEADER_SIZE + size + TAG * chunks
    assert len(_encrypt(_plaintext(size))[0]) == ciphertext_size(size, SMALL)


def test_sizes_out_of_range_are_our_misuse() -> None:
    with pytest.raises(ValueError, match="cannot have"):
        ciphertext_size(-1)
    with pytest.raises(ValueError, match="chunk size"):
        ciphertext_size(10, MAX_CHUNK_SIZE + 1)
    with pytest.raises(ValueError, match="chunk size"):
        AttachmentEncryptor(KEY, chunk_size=0)
    with pytest.raises(ValueError, match="32 bytes"):
        AttachmentEncryptor(KEY[:16])


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 3 * SMALL,
                                  250 * SMALL + 9])
def test_round_trip_at_every_chunk_boundary(size: int) -> None:
    plaintext = _plaintext(size)
    ciphertext, digest = _encrypt(plaintext)
    assert _decrypt(ciphertext, digest, plaintext_size=size) == plaintext


@pytest.mark.parametrize("size", [0, DEFAULT_CHUNK_SIZE - 1, DEFAULT_CHUNK_SIZE,
                                  DEFAULT_CHUNK_SIZE + 1, 5 * DEFAULT_CHUNK_SIZE + 100])
def test_round_trip_at_the_default_chunk_size(size: int) -> None:
    plaintext = _plaintext(size)
    ciphertext = b"".join(encrypt_attachment(KEY, [plaintext[:1000], plaintext[1000:]]))
    assert len(ciphertext) == ciphertext_size(size)
    plain = b"".join(decrypt_attachment(KEY, _digest(ciphertext), [ciphertext],
                                        plaintext_size=size))
    assert plain == plaintext


@settings(max_examples=60, deadline=None)
@given(plaintext=st.binary(max_size=20 * SMALL), chunk_size=st.integers(1, 3 * SMALL),
       encrypt_piece=st.integers(1, 50), decrypt_piece=st.integers(1, 50))
def test_round_trip_for_any_size_chunk_size_and_piece_boundaries(
        plaintext: bytes, chunk_size: int, encrypt_piece: int, decrypt_piece: int) -> None:
    ciphertext, digest = _encrypt(plaintext, chunk_size=chunk_size, piece=encrypt_piece)
    assert len(ciphertext) == ciphertext_size(len(plaintext), chunk_size)
    assert _decrypt(ciphertext, digest, chunk_size=chunk_size, plaintext_size=len(plaintext),
                    piece=decrypt_piece) == plaintext


def test_feed_never_hands_over_the_last_chunk_before_finish() -> None:
    plaintext = _plaintext(3 * SMALL)
    ciphertext, digest = _encrypt(plaintext)
    decryptor = AttachmentDecryptor(KEY, digest=digest, chunk_size=SMALL)
    assert decryptor.feed(ciphertext) == plaintext[:2 * SMALL]
    assert decryptor.finish() == plaintext[2 * SMALL:]


# -- damaged streams -----------------------------------------------------------------------


def _refused(ciphertext: bytes, digest: bytes, *, key: bytes = KEY,
             plaintext_size: int | None = None) -> AttachmentError:
    with pytest.raises(AttachmentError) as caught:
        _decrypt(ciphertext, digest, key=key, plaintext_size=plaintext_size)
    assert isinstance(caught.value, CryptoError)
    return caught.value


PLAINTEXT = _plaintext(5 * SMALL + 3)
CIPHERTEXT, DIGEST = _encrypt(PLAINTEXT)
HEADER, CHUNKS = _chunks(CIPHERTEXT)


def _join(header: bytes, chunks: Iterable[bytes]) -> bytes:
    return header + b"".join(chunks)


def test_six_chunks_to_damage() -> None:
    assert len(CHUNKS) == 6


@pytest.mark.parametrize(("first", "second"), [(0, 1), (2, 3), (4, 5)])
def test_two_chunks_swapped_are_refused(first: int, second: int) -> None:
    chunks = list(CHUNKS)
    chunks[first], chunks[second] = chunks[second], chunks[first]
    damaged = _join(HEADER, chunks)
    _refused(damaged, _digest(damaged))  # even with a digest that matches the damage


@pytest.mark.parametrize("kept", [0, 1, 5])
def test_a_stream_cut_after_a_whole_chunk_is_refused_for_want_of_a_last_chunk(
        kept: int) -> None:
    damaged = _join(HEADER, CHUNKS[:kept])
    error = _refused(damaged, _digest(damaged))  # the digest matches what was kept
    assert "cut" in str(error) or "last chunk" in str(error)


def test_a_stream_cut_inside_a_chunk_is_refused() -> None:
    damaged = CIPHERTEXT[:-5]
    _refused(damaged, _digest(damaged))
    _refused(CIPHERTEXT[:ATTACHMENT_HEADER_SIZE + 3], DIGEST)
    _refused(b"", DIGEST)


def test_a_chunk_appended_after_the_last_is_refused() -> None:
    extra = _encrypt(b"more" * 8)[0][ATTACHMENT_HEADER_SIZE:]  # a valid stream's own chunks
    for added in (CHUNKS[-1], CHUNKS[0], extra):
        damaged = CIPHERTEXT + added
        _refused(damaged, _digest(damaged))


def test_a_longer_file_sealed_with_the_same_key_cannot_pass_for_a_shorter_one() -> None:
    longer, _ = _encrypt(PLAINTEXT + b"x" * SMALL)
    prefix = longer[:len(CIPHERTEXT)]  # same length, same first chunks, no last flag
    _refused(prefix, _digest(prefix))


@pytest.mark.parametrize("position", [0, 3, 7, ATTACHMENT_HEADER_SIZE,
                                      ATTACHMENT_HEADER_SIZE + SMALL + TAG + 2,
                                      len(CIPHERTEXT) - 1])
def test_one_bit_altered_anywhere_is_refused(position: int) -> None:
    damaged = bytearray(CIPHERTEXT)
    damaged[position] ^= 0x01
    _refused(bytes(damaged), _digest(bytes(damaged)))
    _refused(bytes(damaged), DIGEST)


def test_a_wrong_key_is_refused() -> None:
    _refused(CIPHERTEXT, DIGEST, key=OTHER_KEY)


def test_a_digest_that_is_not_the_announced_one_is_refused() -> None:
    error = _refused(CIPHERTEXT, hashlib.sha256(b"another file").digest())
    assert "digest" in str(error)


def test_a_size_that_is_not_the_announced_one_is_refused() -> None:
    _refused(CIPHERTEXT, DIGEST, plaintext_size=len(PLAINTEXT) + 1)
    _refused(CIPHERTEXT, DIGEST, plaintext_size=len(PLAINTEXT) - 1)
    _refused(CIPHERTEXT, DIGEST, plaintext_size=0)


def test_another_chunk_size_in_the_header_is_refused() -> None:
    ciphertext, digest = _encrypt(PLAINTEXT, chunk_size=SMALL + 1)
    with pytest.raises(AttachmentError, match="header"):
        _decrypt(ciphertext, digest, chunk_size=SMALL)


@settings(max_examples=80, deadline=None)
@given(plaintext=st.binary(min_size=1, max_size=8 * SMALL), data=st.data())
def test_any_single_byte_change_is_refused(plaintext: bytes, data: st.DataObject) -> None:
    ciphertext, _ = _encrypt(plaintext)
    position = data.draw(st.integers(0, len(ciphertext) - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = bytearray(ciphertext)
    damaged[position] ^= flip
    with pytest.raises(AttachmentError):
        _decrypt(bytes(damaged), _digest(bytes(damaged)))


# -- resuming a download ---------------------------------------------------------------------


@pytest.mark.parametrize("saved_chunks", [0, 1, 4])
def test_a_download_resumes_from_the_chunks_already_saved(saved_chunks: int) -> None:
    saved = PLAINTEXT[:saved_chunks * SMALL + 3]  # a partial chunk at the end is dropped
    decryptor = AttachmentDecryptor(KEY, digest=DIGEST, chunk_size=SMALL,
                                    plaintext_size=len(PLAINTEXT))
    kept = decryptor.resume([saved[:5], saved[5:]])
    assert kept == saved_chunks * SMALL
    offset = decryptor.ciphertext_offset
    assert offset == ATTACHMENT_HEADER_SIZE + saved_chunks * (SMALL + TAG)
    rest = decryptor.feed(CIPHERTEXT[offset:]) + decryptor.finish()
    assert saved[:kept] + rest == PLAINTEXT


def test_resume_never_takes_the_last_chunk_from_the_saved_plaintext() -> None:
    decryptor = AttachmentDecryptor(KEY, digest=DIGEST, chunk_size=SMALL,
                                    plaintext_size=len(PLAINTEXT))
    assert decryptor.resume([PLAINTEXT + b"garbage"]) == 5 * SMALL
    assert decryptor.feed(CIPHERTEXT[decryptor.ciphertext_offset:]) == b""
    assert decryptor.finish() == PLAINTEXT[5 * SMALL:]


def test_a_saved_plaintext_changed_on_disk_fails_the_digest() -> None:
    saved = bytearray(PLAINTEXT[:2 * SMALL])
    saved[0] ^= 1
    decryptor = AttachmentDecryptor(KEY, digest=DIGEST, chunk_size=SMALL)
    decryptor.resume([bytes(saved)])
    decryptor.feed(CIPHERTEXT[decryptor.ciphertext_offset:])
    with pytest.raises(AttachmentError, match="digest"):
        decryptor.finish()
