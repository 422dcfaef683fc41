"""Chunked end-to-end encryption of a file (an attachment), streaming in both directions.

Nothing here does I/O: the caller reads the file and feeds it in pieces of any size, and gets
ciphertext back in pieces; the receiver feeds the downloaded bytes and gets plaintext back.
Neither side ever holds more than a chunk and the piece it was given.

Format, version 1 (docs/CRYPTO.md, "Attachments"): a fresh random 32-byte key per file; the
ciphertext is an 8-byte header, then the plaintext cut into chunks of ``chunk_size`` bytes
(the last one shorter, possibly empty), each sealed with AES-256-GCM into ``len + 16`` bytes::

    header = b"CPA" || version (1 byte) || chunk_size (4 bytes, big-endian)
    nonce_i = i (11 bytes, big-endian) || last_i (1 byte: 1 on the last chunk, else 0)
    ad_i = header || i (8 bytes, big-endian) || last_i

This is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár, "Online
Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", CRYPTO 2015): a chunk moved
to another place fails its tag (its index is in the nonce), a stream cut after a chunk fails
(no chunk it kept carried the last flag), and a chunk appended after the last fails (the
former last chunk is then opened as a middle one). Each key seals exactly one file, so the
counter nonces never repeat under a key; the encryption is deterministic for a given key and
plaintext, which lets a sender regenerate the ciphertext from any offset when it resumes an
upload. The SHA-256 digest of the whole ciphertext travels with the key in the end-to-end
encrypted message; the receiver checks it, and the plaintext's size, before handing over.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator

from crypto.primitives import (
    AES256GCM_KEY_SIZE,
    AES256GCM_NONCE_SIZE,
    AES256GCM_TAG_SIZE,
    SHA256_SIZE,
    CryptoError,
    DecryptionError,
    RandomSource,
    aes256gcm_open,
    aes256gcm_seal,
)

__all__ = [
    "ATTACHMENT_DIGEST_SIZE",
    "ATTACHMENT_FORMAT_VERSION",
    "ATTACHMENT_HEADER_SIZE",
    "ATTACHMENT_KEY_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNKS",
    "MAX_CHUNK_SIZE",
    "AttachmentDecryptor",
    "AttachmentEncryptor",
    "AttachmentError",
    "attachment_header",
    "chunk_count",
    "ciphertext_size",
    "decrypt_attachment",
    "encrypt_attachment",
    "new_attachment_key",
]

ATTACHMENT_FORMAT_VERSION = 1
ATTACHMENT_KEY_SIZE = AES256GCM_KEY_SIZE
ATTACHMENT_DIGEST_SIZE = SHA256_SIZE
ATTACHMENT_HEADER_SIZE = 8  # magic (3) + version (1) + chunk size (4)
DEFAULT_CHUNK_SIZE = 64 * 1024
"""Plaintext bytes per chunk: the 16-byte tag costs 0.02 %, and a receiver holds one chunk."""
MAX_CHUNK_SIZE = 1024 * 1024
"""Largest chunk a receiver accepts (bytes): what one chunk may make it buffer."""
MAX_CHUNKS = 2**32
"""Chunks per file: 256 TiB at the default chunk size; the index then fits the AD's 8 bytes
and the nonce's 11 with room to spare."""
_MAGIC = b"CPA"
_INDEX_NONCE_SIZE = AES256GCM_NONCE_SIZE - 1  # the nonce's last byte is the flag
_INDEX_AD_SIZE = 8
_LAST = b"\x01"
_MIDDLE = b"\x00"


class AttachmentError(CryptoError):
    """The ciphertext is not the sender's file: a chunk altered, moved, cut off or added, a
    wrong key, a header or size that is not the one announced, or the digest differs."""


def new_attachment_key(random: RandomSource) -> bytes:
    """A fresh key for one file (never reuse it for another)."""
    return random.bytes(ATTACHMENT_KEY_SIZE)


def _require_chunk_size(chunk_size: int) -> None:
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"the chunk size must be 1 to {MAX_CHUNK_SIZE} bytes, got {chunk_size}")


def chunk_count(plaintext_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """How many chunks a plaintext of this size makes: at least one (an empty file is one
    empty last chunk), and a size that is a multiple of the chunk size ends on a full chunk.

    Raises:
        ValueError: a negative size, a chunk size out of range, or more than MAX_CHUNKS.
    """
    _require_chunk_size(chunk_size)
    if plaintext_size < 0:
        raise ValueError(f"a file cannot have {plaintext_size} bytes")
    count = max(1, -(-plaintext_size // chunk_size))
    if count > MAX_CHUNKS:
        raise ValueError(f"a file of {plaintext_size} bytes needs more than {MAX_CHUNKS} chunks")
    return count


def ciphertext_size(plaintext_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """The exact size of the ciphertext of a plaintext of ``plaintext_size`` bytes (what the
    sender declares to the relay before uploading).

    Raises:
        ValueError: see `chunk_count`.
    """
    chunks = chunk_count(plaintext_size, chunk_size)
    return ATTACHMENT_HEADER_SIZE + plaintext_size + chunks * AES256GCM_TAG_SIZE


def attachment_header(chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytes:
    """The 8 bytes that start every ciphertext of this format version and chunk size."""
    _require_chunk_size(chunk_size)
    return _MAGIC + bytes([ATTACHMENT_FORMAT_VERSION]) + chunk_size.to_bytes(4, "big")


def _nonce_and_ad(header: bytes, index: int, last: bool) -> tuple[bytes, bytes]:
    flag = _LAST if last else _MIDDLE
    return (index.to_bytes(_INDEX_NONCE_SIZE, "big") + flag,
            header + index.to_bytes(_INDEX_AD_SIZE, "big") + flag)


class AttachmentEncryptor:
    """Seals one file: `start`, then `update` with the plaintext in pieces of any size, then
    `finish`; the concatenation of what they return is the ciphertext, and `digest` its
    SHA-256. A chunk is sealed only once the next byte (or `finish`) shows whether it is the
    last, so at most one chunk and the current piece are held."""

    def __init__(self, key: bytes, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        """Raises:
            ValueError: the key is not ATTACHMENT_KEY_SIZE bytes or the chunk size is out of
                range (our misuse).
        """
        if len(key) != ATTACHMENT_KEY_SIZE:
            raise ValueError(f"an attachment key is {ATTACHMENT_KEY_SIZE} bytes")
        self._key = key
        self._chunk_size = chunk_size
        self._header = attachment_header(chunk_size)
        self._pending = bytearray()
        self._index = 0
        self._hash = hashlib.sha256()
        self._started = False
        self._digest: bytes | None = None

    def start(self) -> bytes:
        """The header, the ciphertext's first bytes."""
        if self._started:
            raise ValueError("the encryptor was already started")
        self._started = True
        self._hash.update(self._header)
        return self._header

    def update(self, plaintext: bytes) -> bytes:
        """Seal every chunk that ``plaintext`` completes and that is known not to be the last
        (possibly nothing)."""
        if not self._started or self._digest is not None:
            raise ValueError("update comes between start and finish")
        self._pending += plaintext
        sealed = bytearray()
        offset = 0
        while len(self._pending) - offset > self._chunk_size:
            sealed += self._seal(bytes(self._pending[offset:offset + self._chunk_size]),
                                 last=False)
            offset += self._chunk_size
        del self._pending[:offset]
        return bytes(sealed)

    def finish(self) -> bytes:
        """Seal the last chunk (what remains, possibly empty); `digest` is then known."""
        if not self._started or self._digest is not None:
            raise ValueError("finish comes once, after start")
        sealed = self._seal(bytes(self._pending), last=True)
        self._pending.clear()
        self._digest = self._hash.digest()
        return sealed

    @property
    def digest(self) -> bytes:
        """SHA-256 of the whole ciphertext, header included (after `finish`)."""
        if self._digest is None:
            raise ValueError("the digest is known after finish")
        return self._digest

    def _seal(self, chunk: bytes, *, last: bool) -> bytes:
        if self._index >= MAX_CHUNKS:
            raise ValueError(f"a file has at most {MAX_CHUNKS} chunks")
        nonce, ad = _nonce_and_ad(self._header, self._index, last)
        sealed = aes256gcm_seal(key=self._key, nonce=nonce, plaintext=chunk,
                                associated_data=ad)
        self._index += 1
        self._hash.update(sealed)
        return sealed


class AttachmentDecryptor:
    """Opens one file's ciphertext: `feed` the bytes as they arrive (pieces of any size),
    then `finish`. `feed` returns the plaintext of each chunk that passed its tag and is
    known not to be the last; only `finish` checks that the stream ended on the last chunk,
    that the digest and the size are the announced ones. Until `finish` returns, nothing
    must be handed to the user (keep it in a private temporary file)."""

    def __init__(self, key: bytes, *, digest: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 plaintext_size: int | None = None) -> None:
        """Args:
            key, digest, chunk_size, plaintext_size: as the sender's message announced them
                (``plaintext_size`` None: not checked).

        Raises:
            ValueError: the key or digest has the wrong size, or the chunk size is out of
                range (check the message before).
        """
        if len(key) != ATTACHMENT_KEY_SIZE or len(digest) != ATTACHMENT_DIGEST_SIZE:
            raise ValueError(f"an attachment key and digest are {ATTACHMENT_KEY_SIZE} and "
                             f"{ATTACHMENT_DIGEST_SIZE} bytes")
        self._key = key
        self._expected_digest = digest
        self._chunk_size = chunk_size
        self._sealed_size = chunk_size + AES256GCM_TAG_SIZE
        self._header = attachment_header(chunk_size)
        self._plaintext_size = plaintext_size
        self._pending = bytearray()
        self._header_seen = False
        self._index = 0
        self._opened = 0
        self._hash = hashlib.sha256()
        self._finished = False

    @property
    def ciphertext_offset(self) -> int:
        """Ciphertext bytes accounted for so far (fed, or replayed by `resume`)."""
        header = ATTACHMENT_HEADER_SIZE if self._header_seen else 0
        return header + self._index * self._sealed_size + len(self._pending)

    def resume(self, saved_plaintext: Iterable[bytes]) -> int:
        """Take up a download where an earlier attempt stopped: ``saved_plaintext`` is what
        that attempt's `feed` returned (whole chunks; any partial chunk at its end, and
        anything from the last chunk on, is ignored). The chunks are sealed again (the
        encryption is deterministic per key) so the digest covers them; a saved plaintext
        that is not the sender's then fails the digest at `finish`. Returns the plaintext
        bytes taken (keep only those) and leaves `ciphertext_offset` where the download
        resumes.

        Raises:
            ValueError: called after `feed`.
        """
        if self._header_seen or self._pending:
            raise ValueError("resume comes before any feed")
        self._header_seen = True
        self._hash.update(self._header)
        most = (MAX_CHUNKS if self._plaintext_size is None
                else chunk_count(self._plaintext_size, self._chunk_size) - 1)
        partial = bytearray()
        for piece in saved_plaintext:
            partial += piece
            offset = 0
            while len(partial) - offset >= self._chunk_size and self._index < most:
                self._reseal(bytes(partial[offset:offset + self._chunk_size]))
                offset += self._chunk_size
            del partial[:offset]
            if self._index >= most:
                break
        return self._opened

    def _reseal(self, chunk: bytes) -> None:
        nonce, ad = _nonce_and_ad(self._header, self._index, False)
        self._hash.update(aes256gcm_seal(key=self._key, nonce=nonce, plaintext=chunk,
                                         associated_data=ad))
        self._index += 1
        self._opened += len(chunk)

    def feed(self, ciphertext: bytes) -> bytes:
        """Open every chunk that ``ciphertext`` completes and that is not the last.

        Raises:
            AttachmentError: a chunk fails its tag (altered, moved, wrong key), the header is
                not the announced one, or the stream is longer than the announced size.
        """
        if self._finished:
            raise ValueError("feed comes before finish")
        self._hash.update(ciphertext)
        self._pending += ciphertext
        if not self._header_seen:
            if len(self._pending) < ATTACHMENT_HEADER_SIZE:
                return b""
            if not hmac.compare_digest(bytes(self._pending[:ATTACHMENT_HEADER_SIZE]),
                                       self._header):
                raise AttachmentError("the file's header is not the announced format and "
                                      "chunk size")
            del self._pending[:ATTACHMENT_HEADER_SIZE]
            self._header_seen = True
        opened = bytearray()
        offset = 0
        while len(self._pending) - offset > self._sealed_size:
            opened += self._open(bytes(self._pending[offset:offset + self._sealed_size]),
                                 last=False)
            offset += self._sealed_size
        del self._pending[:offset]
        return bytes(opened)

    def finish(self) -> bytes:
        """Open the last chunk and check the whole: the plaintext it returns completes the
        file, which may now be handed over.

        Raises:
            AttachmentError: the stream was cut (no chunk carried the last flag, or too few
                bytes), extended, altered, opened with a wrong key, or its digest or size is
                not the announced one.
        """
        if self._finished:
            raise ValueError("finish comes once")
        self._finished = True
        if not self._header_seen or len(self._pending) < AES256GCM_TAG_SIZE:
            raise AttachmentError("the file is cut short: its last chunk is missing")
        if not hmac.compare_digest(self._hash.digest(), self._expected_digest):
            raise AttachmentError("the file's digest is not the announced one")
        last = self._open(bytes(self._pending), last=True)
        self._pending.clear()
        if self._plaintext_size is not None and self._opened != self._plaintext_size:
            raise AttachmentError(f"the file has {self._opened} bytes, not the announced "
                                  f"{self._plaintext_size}")
        return last

    def _open(self, sealed: bytes, *, last: bool) -> bytes:
        if self._index >= MAX_CHUNKS:
            raise AttachmentError(f"the file has more than {MAX_CHUNKS} chunks")
        nonce, ad = _nonce_and_ad(self._header, self._index, last)
        try:
            chunk = aes256gcm_open(key=self._key, nonce=nonce, ciphertext=sealed,
                                   associated_data=ad)
        except DecryptionError:
            where = "last chunk" if last else f"chunk {self._index}"
            raise AttachmentError(f"the file's {where} does not decrypt: altered, reordered, "
                                  f"cut, extended, or a wrong key") from None
        self._index += 1
        self._opened += len(chunk)
        if self._plaintext_size is not None and self._opened > self._plaintext_size:
            raise AttachmentError(f"the file is longer than the announced "
                                  f"{self._plaintext_size} bytes")
        return chunk


def encrypt_attachment(key: bytes, plaintext: Iterable[bytes], *,
                       chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
    """The ciphertext of the plaintext pieces, in pieces (never the whole file at once);
    `AttachmentEncryptor` when the caller also needs the digest."""
    encryptor = AttachmentEncryptor(key, chunk_size=chunk_size)
    yield encryptor.start()
    for piece in plaintext:
        sealed = encryptor.update(piece)
        if sealed:
            yield sealed
    yield encryptor.finish()


def decrypt_attachment(key: bytes, digest: bytes, ciphertext: Iterable[bytes], *,
                       chunk_size: int = DEFAULT_CHUNK_SIZE,
                       plaintext_size: int | None = None) -> Iterator[bytes]:
    """The plaintext of the ciphertext pieces, in pieces. The last piece comes only after
    every check passed, and an `AttachmentError` ends the iteration otherwise: keep what it
    yielded private until it is exhausted."""
    decryptor = AttachmentDecryptor(key, digest=digest, chunk_size=chunk_size,
                                    plaintext_size=plaintext_size)
    for piece in ciphertext:
        opened = decryptor.feed(piece)
        if opened:
            yield opened
    yield decryptor.finish()
