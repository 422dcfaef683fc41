"""SFrame (RFC 9605): the end-to-end encryption of call media, sans-IO.

A call participant encrypts every media packet with its own sending key, named by a key id
(KID); the receivers hold the participant's base key (sent end to end in the call signalling)
under the same KID. The SFrame ciphertext is ``header || AEAD(plaintext)``, where the header
carries the KID and a per-key counter (CTR) that makes each nonce unique
(https://www.rfc-editor.org/rfc/rfc9605.html, sections 4.3 to 4.4).

Implemented cipher suites: AES_128_GCM_SHA256_128 (0x0004) and AES_256_GCM_SHA512_128 (0x0005)
(section 4.5); the AES-CTR + HMAC suites are not (they exist for tags shorter than media
needs here). The primitives come from ``cryptography``.

The relay that forwards media is untrusted, so a receiver keeps, per KID, a window of the
counters already accepted and refuses a repeat or a counter too far behind (RFC 9605 section
9.3 leaves replay protection to the application). The receiver's state changes only after the
AEAD check passed: a forged packet cannot move the window.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "MAX_COUNTER", "MAX_KEY_ID", "MAX_RECEIVE_KEYS", "REPLAY_WINDOW", "CipherSuite",
    "DerivedKey", "ReplayedFrameError", "SFrameError", "SFrameHeader", "SFrameReceiver",
    "SFrameSender", "UnknownKeyIdError", "decode_header", "derive_key", "encode_header",
    "new_base_key", "open_frame", "seal_frame",
]

MAX_KEY_ID = 2**64 - 1
"""KIDs and counters are 64-bit unsigned integers (section 4.3)."""
MAX_COUNTER = 2**64 - 1
REPLAY_WINDOW = 1024
"""Counters a receiver still accepts behind the highest one seen for a KID: 20 s of audio at
50 packets/s, far more than a relay's reordering; anything older is refused as a replay."""
MAX_RECEIVE_KEYS = 64
"""Keys a receiver holds at once: 8 participants (the relay's limit) each with a current and a
few previous keys during a re-key."""
_KEY_LABEL = b"SFrame 1.0 Secret key "
_SALT_LABEL = b"SFrame 1.0 Secret salt "
_TAG_SIZE = 16


class SFrameError(ValueError):
    """Bytes that are not an SFrame ciphertext we can open: malformed, or the AEAD check failed."""


class UnknownKeyIdError(SFrameError):
    """The ciphertext names a KID this receiver holds no key for."""


class ReplayedFrameError(SFrameError):
    """The counter was already accepted for this KID, or is behind the replay window."""


class CipherSuite(enum.IntEnum):
    """RFC 9605 section 4.5's cipher suites that this module implements."""

    AES_128_GCM_SHA256_128 = 0x0004
    AES_256_GCM_SHA512_128 = 0x0005


_SUITES: dict[CipherSuite, tuple[hashes.HashAlgorithm, int]] = {
    # suite: (HKDF hash, AEAD key size Nk); Nn = 12 and Nt = 16 for both.
    CipherSuite.AES_128_GCM_SHA256_128: (hashes.SHA256(), 16),
    CipherSuite.AES_256_GCM_SHA512_128: (hashes.SHA512(), 32),
}
_NONCE_SIZE = 12


@dataclass(frozen=True, kw_only=True)
class SFrameHeader:
    """The KID and CTR a ciphertext starts with."""

    key_id: int  #: names the sender's key, 0 .. 2^64-1
    counter: int  #: this key's frame counter, 0 .. 2^64-1

    def __post_init__(self) -> None:
        if not 0 <= self.key_id <= MAX_KEY_ID or not 0 <= self.counter <= MAX_COUNTER:
            raise ValueError("an SFrame KID and CTR are 64-bit unsigned integers")


def _field_bits(value: int) -> tuple[int, bytes]:
    """The 4 config bits for one value and the bytes that follow the config byte.

    Section 4.3: a value below 8 sits in the 3 low bits with the extension bit clear; a larger
    one is written in its minimal length (1..8 bytes), the bits holding length - 1.
    """
    if value < 8:
        return value, b""
    length = max(1, (value.bit_length() + 7) // 8)
    return 0x08 | (length - 1), value.to_bytes(length, "big")


def encode_header(header: SFrameHeader) -> bytes:
    """The header's bytes: config byte ``X K K K Y C C C``, then the KID, then the CTR."""
    kid_bits, kid_bytes = _field_bits(header.key_id)
    ctr_bits, ctr_bytes = _field_bits(header.counter)
    return bytes([(kid_bits << 4) | ctr_bits]) + kid_bytes + ctr_bytes


def decode_header(data: bytes) -> tuple[SFrameHeader, int]:
    """Parse a header at the start of ``data``; returns it and its length in bytes.

    Raises:
        SFrameError: the data ends inside the header.
    """
    if not data:
        raise SFrameError("an SFrame ciphertext is empty")
    config = data[0]
    offset = 1
    values: list[int] = []
    for bits in (config >> 4, config & 0x0F):
        if bits & 0x08 == 0:
            values.append(bits)
            continue
        length = (bits & 0x07) + 1
        if len(data) < offset + length:
            raise SFrameError("an SFrame header is cut short")
        values.append(int.from_bytes(data[offset:offset + length], "big"))
        offset += length
    return SFrameHeader(key_id=values[0], counter=values[1]), offset


@dataclass(frozen=True, kw_only=True)
class DerivedKey:
    """The AEAD key and nonce salt derived from one base key for one KID (section 4.4.2)."""

    suite: CipherSuite
    key: bytes = field(repr=False)  #: sframe_key, Nk bytes
    salt: bytes = field(repr=False)  #: sframe_salt, Nn bytes


def derive_key(suite: CipherSuite, key_id: int, base_key: bytes) -> DerivedKey:
    """``sframe_secret = HKDF-Extract("", base_key)``; key and salt are HKDF-Expand of it
    with labels that bind the KID and the cipher suite (section 4.4.2).

    Raises:
        ValueError: an empty base key or a KID out of range.
    """
    if not base_key:
        raise ValueError("an SFrame base key is empty")
    if not 0 <= key_id <= MAX_KEY_ID:
        raise ValueError("an SFrame KID is a 64-bit unsigned integer")
    algorithm, key_size = _SUITES[suite]
    context = key_id.to_bytes(8, "big") + int(suite).to_bytes(2, "big")
    # salt=None is HashLen zero bytes, which HMAC treats exactly as the RFC's empty salt.
    key = HKDF(algorithm, key_size, salt=None, info=_KEY_LABEL + context).derive(base_key)
    salt = HKDF(algorithm, _NONCE_SIZE, salt=None, info=_SALT_LABEL + context).derive(base_key)
    return DerivedKey(suite=suite, key=key, salt=salt)


def _nonce(key: DerivedKey, counter: int) -> bytes:
    """Section 4.4.3: the salt XOR the counter, big-endian over Nn bytes."""
    mask = counter.to_bytes(_NONCE_SIZE, "big")
    return bytes(a ^ b for a, b in zip(key.salt, mask, strict=True))


def seal_frame(key: DerivedKey, header: SFrameHeader, plaintext: bytes,
               metadata: bytes = b"") -> bytes:
    """``header || AES-GCM(key, nonce, aad = header || metadata, plaintext)`` (section 4.4.3).

    The caller guarantees the (key, counter) pair is never used twice; `SFrameSender` does.
    """
    encoded = encode_header(header)
    sealed = AESGCM(key.key).encrypt(_nonce(key, header.counter), plaintext, encoded + metadata)
    return encoded + sealed


def open_frame(key: DerivedKey, header: SFrameHeader, header_size: int, ciphertext: bytes,
               metadata: bytes = b"") -> bytes:
    """Check and decrypt a ciphertext whose header was parsed with `decode_header`.

    Raises:
        SFrameError: the AEAD check failed (wrong key, tampered, or not ours).
    """
    if len(ciphertext) < header_size + _TAG_SIZE:
        raise SFrameError("an SFrame ciphertext is shorter than its tag")
    encoded = ciphertext[:header_size]
    try:
        return AESGCM(key.key).decrypt(_nonce(key, header.counter), ciphertext[header_size:],
                                       encoded + metadata)
    except InvalidTag as error:
        raise SFrameError("an SFrame ciphertext failed its authentication check") from error


def new_base_key(suite: CipherSuite) -> bytes:
    """A fresh random base key as long as the suite's AEAD key."""
    return secrets.token_bytes(_SUITES[suite][1])


class SFrameSender:
    """One participant's sending side: a KID, its derived key, and the next counter."""

    def __init__(self, suite: CipherSuite, key_id: int, base_key: bytes) -> None:
        self.suite = suite
        self.key_id = key_id
        self._key = derive_key(suite, key_id, base_key)
        self._next_counter = 0

    def encrypt(self, plaintext: bytes, metadata: bytes = b"") -> bytes:
        """The next SFrame ciphertext of ``plaintext``.

        Raises:
            SFrameError: the key's counters are spent (2^64 frames): re-key first.
        """
        if self._next_counter > MAX_COUNTER:
            raise SFrameError("this SFrame key's counters are spent; send a new key")
        header = SFrameHeader(key_id=self.key_id, counter=self._next_counter)
        self._next_counter += 1
        return seal_frame(self._key, header, plaintext, metadata)


@dataclass
class _ReceiveKey:
    key: DerivedKey
    highest: int = -1  #: the highest counter accepted, -1 before the first
    seen: int = 0  #: bit i set: counter ``highest - i`` was accepted (i < REPLAY_WINDOW)


class SFrameReceiver:
    """The keys a participant decrypts others' media with, by KID, each with a replay window."""

    def __init__(self, suite: CipherSuite) -> None:
        self.suite = suite
        self._keys: dict[int, _ReceiveKey] = {}

    def add_key(self, key_id: int, base_key: bytes) -> None:
        """Accept media under ``key_id`` from now on (a KID already held keeps its window if
        the base key is the same, and starts afresh if it changed).

        Raises:
            ValueError: MAX_RECEIVE_KEYS keys are already held.
        """
        derived = derive_key(self.suite, key_id, base_key)
        held = self._keys.get(key_id)
        if held is not None and held.key == derived:
            return
        if held is None and len(self._keys) >= MAX_RECEIVE_KEYS:
            raise ValueError(f"an SFrame receiver holds at most {MAX_RECEIVE_KEYS} keys")
        self._keys[key_id] = _ReceiveKey(key=derived)

    def remove_key(self, key_id: int) -> None:
        """Refuse media under ``key_id`` from now on (a participant left, or re-keyed)."""
        self._keys.pop(key_id, None)

    def key_ids(self) -> frozenset[int]:
        """The KIDs held."""
        return frozenset(self._keys)

    def decrypt(self, ciphertext: bytes, metadata: bytes = b"") -> tuple[int, bytes]:
        """Open a ciphertext; returns the sender's KID and the plaintext.

        Raises:
            UnknownKeyIdError: no key for its KID.
            ReplayedFrameError: its counter was accepted before or is behind the window.
            SFrameError: malformed or failed the AEAD check. Nothing changes on any error.
        """
        header, header_size = decode_header(ciphertext)
        held = self._keys.get(header.key_id)
        if held is None:
            raise UnknownKeyIdError("no key for this SFrame KID")
        behind = held.highest - header.counter
        if behind >= REPLAY_WINDOW or (behind >= 0 and held.seen >> behind & 1):
            raise ReplayedFrameError("an SFrame counter was replayed or is too old")
        plaintext = open_frame(held.key, header, header_size, ciphertext, metadata)
        if behind < 0:  # a new highest: slide the window forward
            shift = -behind
            held.seen = ((held.seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            held.highest = header.counter
        else:
            held.seen |= 1 << behind
        return header.key_id, plaintext
