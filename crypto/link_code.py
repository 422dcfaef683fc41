"""The link code a new device shows: its relay channel and provisioning key, as typeable text.

The code is the one channel between the two devices that the relay does not carry (a screen
read by a camera or a person), so it carries the new device's whole X25519 provisioning public
key, not a digest of it: the approving device encrypts to exactly that key, and a relay that
substituted its own key on the channel could not open or answer anything (docs/CRYPTO.md,
"Linking a device (provisioning)").

Text form::

    "CPL1-" || base32(version (1 byte, 1) || channel id (16) || public key (32) || checksum (4))

base32 is RFC 4648's upper-case alphabet without padding (85 characters); the checksum is the
first 4 bytes of SHA-256 of everything before it, so a mistyped code is reported as mistyped
instead of starting an exchange with the wrong key. Reading is case-insensitive and ignores
spaces, line breaks and dashes anywhere; anything else wrong raises `LinkCodeError` naming it.

Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from crypto.primitives import X25519_KEY_SIZE

__all__ = [
    "CHANNEL_ID_SIZE",
    "LINK_CODE_PREFIX",
    "LINK_CODE_VERSION",
    "LinkCode",
    "LinkCodeError",
    "decode_link_code",
    "encode_link_code",
]

LINK_CODE_PREFIX = "CPL1-"
LINK_CODE_VERSION = 1
CHANNEL_ID_SIZE = 16
"""Bytes of a relay provisioning channel id: 128 random bits, so a channel cannot be guessed."""
_CHECKSUM_SIZE = 4  # A random typo passes with probability 2^-32.
_PAYLOAD_SIZE = 1 + CHANNEL_ID_SIZE + X25519_KEY_SIZE + _CHECKSUM_SIZE
_BASE32_LENGTH = -(-_PAYLOAD_SIZE * 8 // 5)  # 85 characters, no padding.
_BASE32_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
_IGNORED = frozenset(" \t\r\n-")
_LOOKALIKES = {"0": "the letter O", "1": "the letter I or L", "8": "the letter B"}
"""Digits people type for letters; base32 has no 0, 1, 8 or 9."""


class LinkCodeError(ValueError):
    """The text is not a valid link code: the message says what is wrong, for the user."""


@dataclass(frozen=True, kw_only=True)
class LinkCode:
    """What a link code carries."""

    channel_id: bytes
    """The relay's 16-byte provisioning channel id, where the new device waits."""
    public_key: bytes
    """The new device's 32-byte X25519 provisioning public key."""

    def __post_init__(self) -> None:
        if len(self.channel_id) != CHANNEL_ID_SIZE:
            raise LinkCodeError(f"a channel id is {CHANNEL_ID_SIZE} bytes")
        if len(self.public_key) != X25519_KEY_SIZE:
            raise LinkCodeError(f"a provisioning public key is {X25519_KEY_SIZE} bytes")


def _checksum(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()[:_CHECKSUM_SIZE]


def encode_link_code(channel_id: bytes, public_key: bytes) -> str:
    """Return the text form of a link code (``CPL1-`` then 85 base32 characters).

    Raises:
        LinkCodeError: ``channel_id`` is not 16 bytes or ``public_key`` not 32.
    """
    code = LinkCode(channel_id=channel_id, public_key=public_key)
    body = bytes([LINK_CODE_VERSION]) + code.channel_id + code.public_key
    text = base64.b32encode(body + _checksum(body)).decode("ascii").rstrip("=")
    return LINK_CODE_PREFIX + text


def decode_link_code(text: str) -> LinkCode:
    """Read a link code as a user pasted or typed it.

    Raises:
        LinkCodeError: not a link code, a character that cannot be in one, too short or too
            long, mistyped (the checksum does not match), or another version.
    """
    kept = "".join(character for character in text if character not in _IGNORED)
    for character in kept:
        if not character.isascii():
            raise LinkCodeError(f"a link code has no character {character!r}")
    kept = kept.upper()
    prefix = LINK_CODE_PREFIX.rstrip("-")
    if not kept.startswith(prefix):
        if kept.startswith("CPL") and kept[3:4].isdigit():
            raise LinkCodeError(f"this is a version {kept[3]} link code; this app reads "
                                f"{prefix} codes")
        raise LinkCodeError(f"not a link code: a link code starts with {LINK_CODE_PREFIX}")
    encoded = kept[len(prefix):]
    for character in encoded:
        if character not in _BASE32_ALPHABET:
            hint = _LOOKALIKES.get(character)
            advice = f" (did you mean {hint}?)" if hint else ""
            raise LinkCodeError(f"a link code has no character {character!r}{advice}")
    if len(encoded) != _BASE32_LENGTH:
        raise LinkCodeError(f"a link code has {_BASE32_LENGTH} characters after {prefix}, "
                            f"this one {len(encoded)}: a character is missing or extra")
    try:
        payload = base64.b32decode(encoded + "=" * (-len(encoded) % 8))
    except binascii.Error as error:  # Unreachable after the checks above; kept as a guard.
        raise LinkCodeError("the link code is mistyped") from error
    body, checksum = payload[:-_CHECKSUM_SIZE], payload[-_CHECKSUM_SIZE:]
    canonical = base64.b32encode(payload).decode("ascii").rstrip("=")
    if canonical != encoded or _checksum(body) != checksum:
        raise LinkCodeError("the link code is mistyped: its checksum does not match")
    if body[0] != LINK_CODE_VERSION:
        raise LinkCodeError(f"link code version {body[0]} is not supported "
                            f"(this app reads version {LINK_CODE_VERSION})")
    return LinkCode(channel_id=body[1:1 + CHANNEL_ID_SIZE], public_key=body[1 + CHANNEL_ID_SIZE:])
