"""Sealed envelopes: a ratchet message whose sender only the recipient device can learn.

The relay delivers a sealed envelope to one recipient device without knowing who sent it. In
the manner of Signal's sealed sender v1, the envelope has two layers over the recipient
device's identity key (its Ed25519 key, converted to X25519 as for PQXDH, `crypto.identity`):

1. **The outer layer** hides the sender's identity key. An ephemeral X25519 key E meets the
   recipient's identity key R: ``DH(E, R)`` gives, by HKDF, a chain key and the key that
   encrypts the sender's 32-byte Ed25519 identity key S with AES-256-GCM. Only the holder of
   R's private key can read S; anyone could have written this layer.
2. **The inner layer** proves the sender. ``DH(S, R)`` (static-static), with the chain key and
   the outer ciphertext as HKDF salt, gives the key that encrypts the content: the relay's
   sender certificate for S, the whole ratchet message (PQXDH header included) and a content
   hint. Only the holders of S's or R's private key can write this layer, so once it opens,
   the recipient knows S wrote it; the certificate then must name S (else
   `SealedProblem.SENDER_MISMATCH`), and tells the recipient which user and device S is.

Bytes (docs/CRYPTO.md, "Sealed envelopes")::

    version (1) = 1 | ephemeral public key E (32) | recipient hint (8)
    | outer ciphertext (32 + 16: S under AES-256-GCM) | inner ciphertext (msgpack + 16)

    recipient hint = SHA-256(HINT_LABEL || R)[:8]       (R: the recipient's Ed25519 key)
    outer: chain key (32) || outer key (32) = HKDF-SHA256(salt = OUTER_LABEL || R || E,
               ikm = DH(E, R_x25519), info = OUTER_LABEL, 64)
           AEAD(outer key, nonce 0, S, ad = version || E || hint || R)
    inner: inner key = HKDF-SHA256(salt = chain key || outer ciphertext,
               ikm = DH(S_x25519, R_x25519), info = INNER_LABEL, 32)
           AEAD(inner key, nonce 0, msgpack {"certificate", "message", "hint"},
                ad = version || E || hint || R || outer ciphertext)

Each key encrypts one message only (E is fresh per envelope), so a zero nonce is safe. The
recipient hint names nothing the relay does not know (it routes the envelope to that device):
it lets a device tell an envelope meant for another device (`WRONG_RECIPIENT`) from a tampered
one. Every refusal names one `SealedProblem` (or a `CertificateProblem`); none says more.

Pure: no I/O, no clock (the caller passes the validation time).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

from crypto.identity import identity_dh_keypair, identity_dh_public_key
from crypto.message_format import MAX_MESSAGE_SIZE
from crypto.primitives import (
    AES256GCM_NONCE_SIZE,
    AES256GCM_TAG_SIZE,
    ED25519_PUBLIC_KEY_SIZE,
    X25519_KEY_SIZE,
    CryptoError,
    DecryptionError,
    Ed25519KeyPair,
    InvalidPublicKeyError,
    RandomSource,
    aes256gcm_open,
    aes256gcm_seal,
    hkdf_sha256,
    x25519_dh,
    x25519_generate,
)
from crypto.sender_certificate import (
    MAX_CERTIFICATE_SIZE,
    RelayCertificateKey,
    SenderCertificate,
    verify_sender_certificate,
)

__all__ = [
    "MAX_CONTENT_HINT",
    "MAX_SEALED_ENVELOPE_SIZE",
    "SEALED_VERSION",
    "OpenedEnvelope",
    "SealedProblem",
    "SealedSenderError",
    "check_pinned_sender",
    "open_envelope",
    "seal",
]

SEALED_VERSION = 1
MAX_SEALED_ENVELOPE_SIZE = MAX_MESSAGE_SIZE
"""Bytes of a sealed envelope: the relay's per-device payload limit (98,304, PROTOCOL.md), so
a sealed envelope travels wherever an identified message does."""
MAX_CONTENT_HINT = 255
"""Content hints are one byte (0: none; the client gives them meaning)."""
HINT_LABEL = b"cryptopass sealed sender v1 recipient"
OUTER_LABEL = b"cryptopass sealed sender v1 outer"
INNER_LABEL = b"cryptopass sealed sender v1 inner"
_RECIPIENT_HINT_SIZE = 8
_ZERO_NONCE = bytes(AES256GCM_NONCE_SIZE)
_OUTER_CIPHERTEXT_SIZE = ED25519_PUBLIC_KEY_SIZE + AES256GCM_TAG_SIZE
_HEADER_SIZE = 1 + X25519_KEY_SIZE + _RECIPIENT_HINT_SIZE
_MIN_SIZE = _HEADER_SIZE + _OUTER_CIPHERTEXT_SIZE + AES256GCM_TAG_SIZE


class SealedProblem(enum.Enum):
    """Why a sealed envelope was refused (each refusal names exactly one)."""

    MALFORMED = "the sealed envelope is malformed"
    UNSUPPORTED_VERSION = "the sealed envelope is of a version this client does not read"
    WRONG_RECIPIENT = "the sealed envelope was made for another device"
    OUTER_LAYER = "the sealed envelope's outer layer does not authenticate (tampered)"
    INNER_LAYER = "the sealed envelope's inner layer does not authenticate (tampered)"
    SENDER_MISMATCH = "the sender certificate names another key than the one that sealed"
    NOT_PINNED = "the sender certificate's keys are not the ones pinned for that sender"


class SealedSenderError(CryptoError):
    """A sealed envelope was refused; ``problem`` says why."""

    def __init__(self, problem: SealedProblem) -> None:
        super().__init__(problem.value)
        self.problem = problem


@dataclass(frozen=True, kw_only=True)
class OpenedEnvelope:
    """A sealed envelope whose layers opened and whose certificate verified."""

    certificate: SenderCertificate  #: the sender, as the relay certified it
    message: bytes  #: the inner ratchet message (decrypt it as from the certificate's device)
    content_hint: int  #: the sender's hint (0..255)


def _recipient_hint(recipient_identity_key: bytes) -> bytes:
    return hashlib.sha256(HINT_LABEL + recipient_identity_key).digest()[:_RECIPIENT_HINT_SIZE]


def _outer_keys(secret: bytes, recipient_identity_key: bytes,
                ephemeral_public_key: bytes) -> tuple[bytes, bytes]:
    keys = hkdf_sha256(salt=OUTER_LABEL + recipient_identity_key + ephemeral_public_key,
                       input_key_material=secret, info=OUTER_LABEL, length=64)
    return keys[:32], keys[32:]


def _inner_key(secret: bytes, chain_key: bytes, outer_ciphertext: bytes) -> bytes:
    return hkdf_sha256(salt=chain_key + outer_ciphertext, input_key_material=secret,
                       info=INNER_LABEL, length=32)


def seal(*, message: bytes, certificate: bytes, sender_identity: Ed25519KeyPair,
         recipient_identity_key: bytes, random: RandomSource, content_hint: int = 0) -> bytes:
    """Seal ``message`` (a ratchet message for the recipient device) with the sender's
    ``certificate`` for the device whose Ed25519 identity key is ``recipient_identity_key``.

    Raises:
        ValueError: the hint is out of range, or the envelope would exceed
            `MAX_SEALED_ENVELOPE_SIZE` (our misuse: the message is too large).
        InvalidPublicKeyError: the recipient key is not a usable key.
    """
    if not 0 <= content_hint <= MAX_CONTENT_HINT:
        raise ValueError(f"a content hint is 0..{MAX_CONTENT_HINT}")
    if len(certificate) > MAX_CERTIFICATE_SIZE:
        raise ValueError(f"a sender certificate is at most {MAX_CERTIFICATE_SIZE} bytes")
    recipient_dh_key = identity_dh_public_key(recipient_identity_key)
    ephemeral = x25519_generate(random)
    header = (bytes([SEALED_VERSION]) + ephemeral.public_key
              + _recipient_hint(recipient_identity_key))
    chain_key, outer_key = _outer_keys(x25519_dh(ephemeral.private_key, recipient_dh_key),
                                       recipient_identity_key, ephemeral.public_key)
    outer = aes256gcm_seal(key=outer_key, nonce=_ZERO_NONCE,
                           plaintext=sender_identity.public_key,
                           associated_data=header + recipient_identity_key)
    static_secret = x25519_dh(identity_dh_keypair(sender_identity).private_key,
                              recipient_dh_key)
    content: bytes = msgpack.packb({"certificate": certificate, "message": message,
                                    "hint": content_hint})
    inner = aes256gcm_seal(key=_inner_key(static_secret, chain_key, outer), nonce=_ZERO_NONCE,
                           plaintext=content,
                           associated_data=header + recipient_identity_key + outer)
    envelope = header + outer + inner
    if len(envelope) > MAX_SEALED_ENVELOPE_SIZE:
        raise ValueError(f"a sealed envelope is at most {MAX_SEALED_ENVELOPE_SIZE} bytes")
    return envelope


def open_envelope(data: bytes, *, recipient_identity: Ed25519KeyPair,
                  pinned_relay_keys: Iterable[RelayCertificateKey],
                  now_ms: int) -> OpenedEnvelope:
    """Open a sealed envelope addressed to this device and check its certificate at
    ``now_ms`` (the time the relay accepted the envelope). The caller then checks the
    certificate against the keys it pinned for that sender (`check_pinned_sender`) and
    decrypts the inner message as one from the certificate's device.

    Raises:
        SealedSenderError: MALFORMED, UNSUPPORTED_VERSION, WRONG_RECIPIENT, OUTER_LAYER,
            INNER_LAYER or SENDER_MISMATCH.
        CertificateError: the certificate is malformed, signed by an unknown or retired
            relay key, badly signed, or expired.
    """
    if not isinstance(data, bytes) or len(data) > MAX_SEALED_ENVELOPE_SIZE:
        raise SealedSenderError(SealedProblem.MALFORMED)
    if len(data) >= 1 and data[0] != SEALED_VERSION:
        raise SealedSenderError(SealedProblem.UNSUPPORTED_VERSION)
    if len(data) < _MIN_SIZE:
        raise SealedSenderError(SealedProblem.MALFORMED)
    recipient_identity_key = recipient_identity.public_key
    header = data[:_HEADER_SIZE]
    ephemeral_public_key = header[1:1 + X25519_KEY_SIZE]
    if not hmac.compare_digest(header[1 + X25519_KEY_SIZE:],
                               _recipient_hint(recipient_identity_key)):
        raise SealedSenderError(SealedProblem.WRONG_RECIPIENT)
    outer = data[_HEADER_SIZE:_HEADER_SIZE + _OUTER_CIPHERTEXT_SIZE]
    inner = data[_HEADER_SIZE + _OUTER_CIPHERTEXT_SIZE:]
    own_dh = identity_dh_keypair(recipient_identity)
    try:
        chain_key, outer_key = _outer_keys(x25519_dh(own_dh.private_key, ephemeral_public_key),
                                           recipient_identity_key, ephemeral_public_key)
        sender_identity_key = aes256gcm_open(key=outer_key, nonce=_ZERO_NONCE, ciphertext=outer,
                                             associated_data=header + recipient_identity_key)
    except (InvalidPublicKeyError, DecryptionError) as error:
        raise SealedSenderError(SealedProblem.OUTER_LAYER) from error
    try:
        static_secret = x25519_dh(own_dh.private_key,
                                  identity_dh_public_key(sender_identity_key))
    except InvalidPublicKeyError as error:  # Authentic, so the sealer chose a bad key.
        raise SealedSenderError(SealedProblem.MALFORMED) from error
    try:
        content = aes256gcm_open(key=_inner_key(static_secret, chain_key, outer),
                                 nonce=_ZERO_NONCE, ciphertext=inner,
                                 associated_data=header + recipient_identity_key + outer)
    except DecryptionError as error:
        raise SealedSenderError(SealedProblem.INNER_LAYER) from error
    certificate_bytes, message, hint = _decode_content(content)
    certificate = verify_sender_certificate(certificate_bytes, pinned_relay_keys, now_ms=now_ms)
    if not hmac.compare_digest(certificate.identity_key, sender_identity_key):
        raise SealedSenderError(SealedProblem.SENDER_MISMATCH)
    return OpenedEnvelope(certificate=certificate, message=message, content_hint=hint)


def _decode_content(content: bytes) -> tuple[bytes, bytes, int]:
    try:
        value = msgpack.unpackb(content, raw=False)
    except (ValueError, msgpack.UnpackException) as error:
        raise SealedSenderError(SealedProblem.MALFORMED) from error
    if not isinstance(value, dict) or set(value) != {"certificate", "message", "hint"}:
        raise SealedSenderError(SealedProblem.MALFORMED)
    certificate, message, hint = value["certificate"], value["message"], value["hint"]
    if (not isinstance(certificate, bytes) or not isinstance(message, bytes)
            or not isinstance(hint, int) or isinstance(hint, bool)
            or not 0 <= hint <= MAX_CONTENT_HINT):
        raise SealedSenderError(SealedProblem.MALFORMED)
    return certificate, message, hint


def check_pinned_sender(certificate: SenderCertificate, *, account_key: bytes | None,
                        identity_key: bytes | None) -> None:
    """Check that the certificate's account key and device identity key are the ones this
    device pinned for that sender (its contact's account key, and the key that account's
    signed device list gives for the device). None (nothing pinned) fails too.

    Raises:
        SealedSenderError: NOT_PINNED.
    """
    if (account_key is None or identity_key is None
            or not hmac.compare_digest(certificate.account_key, account_key)
            or not hmac.compare_digest(certificate.identity_key, identity_key)):
        raise SealedSenderError(SealedProblem.NOT_PINNED)
