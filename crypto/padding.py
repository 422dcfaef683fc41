"""Length-hiding padding for message plaintext, applied before AEAD encryption.

Scheme: append one 0x80 byte, then zero bytes up to the next multiple of
`PADDING_BUCKET_SIZE` (160 bytes). A ciphertext then reveals only which 160-byte bucket its
message falls in. Every message gets at least the 0x80 byte, so an empty message pads to
160 bytes, a 159-byte one to 160, and a 160-byte one to 320.

This is Signal's marker and bucket (libsignal-service-java `PushTransportDetails`) with two
deliberate differences: no "-1" length quirk (Signal's left room for a CBC padding byte; GCM
needs none), and a strict `unpad` (Signal's logs and returns malformed input unstripped).

`unpad` accepts only the exact output of `pad` (canonical: one 0x80 marker followed by the
fewest zeros that reach a bucket boundary), so each padded form has exactly one meaning.
It runs on plaintext that has already passed the AEAD check, so its timing reveals nothing
an attacker did not write; a malformed padding means the authenticated peer misbehaved.

The scheme is part of the message wire format; a change to it needs a new message version.
"""

from __future__ import annotations

from crypto.primitives import CryptoError

__all__ = ["PADDING_BUCKET_SIZE", "PaddingError", "pad", "padded_length", "unpad"]

PADDING_BUCKET_SIZE = 160  # Bytes; Signal's bucket, small enough to cost little on short texts.
_PADDING_MARKER = 0x80  # ISO/IEC 7816-4 style: one 0x80 byte, then zeros.


class PaddingError(CryptoError):
    """A decrypted plaintext's padding is malformed (not something `pad` produces)."""


def padded_length(plaintext_length: int) -> int:
    """Return the padded size of a plaintext of `plaintext_length` bytes.

    Raises:
        ValueError: `plaintext_length` is negative.
    """
    if plaintext_length < 0:
        raise ValueError(f"plaintext length cannot be negative ({plaintext_length})")
    buckets = plaintext_length // PADDING_BUCKET_SIZE + 1  # +1: room for the 0x80 marker.
    return buckets * PADDING_BUCKET_SIZE


def pad(plaintext: bytes) -> bytes:
    """Return `plaintext` || 0x80 || zeros, a multiple of `PADDING_BUCKET_SIZE` bytes long."""
    zero_count = padded_length(len(plaintext)) - len(plaintext) - 1
    return plaintext + bytes([_PADDING_MARKER]) + bytes(zero_count)


def unpad(padded: bytes) -> bytes:
    """Strip the padding that `pad` added and return the original plaintext.

    Raises:
        PaddingError: `padded` is empty or not a multiple of the bucket size, has no 0x80
            marker before its trailing zeros, or has more padding than `pad` would add.
    """
    if not padded or len(padded) % PADDING_BUCKET_SIZE != 0:
        raise PaddingError(
            f"padded plaintext must be a non-zero multiple of {PADDING_BUCKET_SIZE} bytes, "
            f"got {len(padded)}"
        )
    without_zeros = padded.rstrip(b"\x00")
    if not without_zeros or without_zeros[-1] != _PADDING_MARKER:
        raise PaddingError("padded plaintext lacks the 0x80 marker before its trailing zeros")
    plaintext = without_zeros[:-1]
    if padded_length(len(plaintext)) != len(padded):
        raise PaddingError(
            f"padding is longer than a {PADDING_BUCKET_SIZE}-byte bucket: not produced by pad"
        )
    return plaintext
