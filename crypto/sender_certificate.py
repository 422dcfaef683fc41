"""Sender certificates: the relay's short-lived statement of who a device is, for sealed sender.

A sealed envelope (`crypto.sealed_sender`) hides its sender from the relay, so the recipient
needs another way to learn, and to check, who sent it. The relay signs, for an authenticated
device, a certificate binding the device's user id, device id, Ed25519 identity key and its
account's Ed25519 key, with an expiry and the id of the relay key that signed it. The sender
puts it inside the sealed envelope; the recipient checks it against the relay keys it pinned
at enrolment (`verify_sender_certificate`), then against the keys it pinned for that contact.

Bytes (msgpack): ``[body, signature]`` where ``body`` is the msgpack map ``{"v": 1, "user_id":
str, "device_id": int, "account_key": 32 bytes, "identity_key": 32 bytes, "expires_ms": int,
"key_id": int}`` and ``signature`` is Ed25519 over ``SIGNATURE_LABEL || body`` by the relay key
``key_id``. The label keeps a certificate signature from ever being taken for any other
signature the relay makes.

Rotation with overlap: the client pins several relay keys, each with the time after which it
is no longer accepted (``not_after_ms``). A new key signs from its rotation on; the previous
one stays pinned until the last certificate it signed has expired. A certificate is accepted
when its key is pinned and not past its ``not_after_ms``, its signature verifies, and it has not
expired, all at the validation time the caller gives (the time the relay accepted the envelope).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

from crypto.primitives import (
    ED25519_PUBLIC_KEY_SIZE,
    ED25519_SIGNATURE_SIZE,
    CryptoError,
    SignatureError,
    ed25519_sign,
    ed25519_verify,
)

__all__ = [
    "CERTIFICATE_VERSION",
    "MAX_CERTIFICATE_SIZE",
    "MAX_USER_ID_CHARS",
    "SIGNATURE_LABEL",
    "CertificateError",
    "CertificateProblem",
    "RelayCertificateKey",
    "SenderCertificate",
    "decode_sender_certificate",
    "issue_sender_certificate",
    "verify_sender_certificate",
]

CERTIFICATE_VERSION = 1
SIGNATURE_LABEL = b"cryptopass sender certificate v1\x00"
MAX_CERTIFICATE_SIZE = 512
"""Bytes of an encoded certificate: two 32-byte keys, a 64-byte signature, a user id of at
most `MAX_USER_ID_CHARS` and a few integers come to about 300; refuse anything larger before
decoding."""
MAX_USER_ID_CHARS = 64  # PROTOCOL.md: user ids are at most 64 characters.
_MAX_U32 = 2**32 - 1
_MAX_U63 = 2**63 - 1


class CertificateProblem(enum.Enum):
    """Why a certificate was refused (each refusal names exactly one)."""

    MALFORMED = "the sender certificate is malformed"
    UNKNOWN_KEY = "the sender certificate is signed by a relay key this device has not pinned"
    BAD_SIGNATURE = "the sender certificate's signature does not verify"
    EXPIRED = "the sender certificate has expired"
    KEY_RETIRED = "the relay key that signed the sender certificate is no longer accepted"


class CertificateError(CryptoError):
    """A sender certificate was refused; ``problem`` says why."""

    def __init__(self, problem: CertificateProblem) -> None:
        super().__init__(problem.value)
        self.problem = problem


@dataclass(frozen=True, kw_only=True)
class RelayCertificateKey:
    """A relay key that signs sender certificates, as a client pins it."""

    key_id: int  #: the relay's id for the key (0 .. 2^32-1)
    public_key: bytes  #: its 32-byte Ed25519 public key
    not_after_ms: int  #: accepted until then (ms since the Unix epoch)


@dataclass(frozen=True, kw_only=True)
class SenderCertificate:
    """What a certificate states (its signature is checked by `verify_sender_certificate`)."""

    user_id: str  #: the sending device's user
    device_id: int  #: the sending device
    account_key: bytes  #: the account's Ed25519 key (pinned per contact by the recipient)
    identity_key: bytes  #: the device's Ed25519 identity key (on the account's signed list)
    expires_ms: int  #: not valid from then on, ms since the Unix epoch
    key_id: int  #: the relay key that signed it
    encoded: bytes  #: the certificate's bytes, as received
    body: bytes  #: the signed part
    signature: bytes  #: the relay's Ed25519 signature over SIGNATURE_LABEL || body


def issue_sender_certificate(*, signing_key: bytes, key_id: int, user_id: str, device_id: int,
                             account_key: bytes, identity_key: bytes, expires_ms: int) -> bytes:
    """The relay's side: encode and sign a certificate with its 32-byte Ed25519 seed.

    Raises:
        ValueError: a field is out of range (our misuse).
    """
    _check_fields(user_id=user_id, device_id=device_id, account_key=account_key,
                  identity_key=identity_key, expires_ms=expires_ms, key_id=key_id)
    body: bytes = msgpack.packb({
        "v": CERTIFICATE_VERSION, "user_id": user_id, "device_id": device_id,
        "account_key": account_key, "identity_key": identity_key, "expires_ms": expires_ms,
        "key_id": key_id})
    signature = ed25519_sign(signing_key, SIGNATURE_LABEL + body)
    encoded: bytes = msgpack.packb([body, signature])
    return encoded


def _check_fields(*, user_id: object, device_id: object, account_key: object,
                  identity_key: object, expires_ms: object, key_id: object) -> None:
    if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_USER_ID_CHARS:
        raise ValueError("user_id must be 1..64 characters")
    for name, value, top in (("device_id", device_id, _MAX_U32),
                             ("expires_ms", expires_ms, _MAX_U63), ("key_id", key_id, _MAX_U32)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
            raise ValueError(f"{name} must be an integer in 0..{top}")
    for name, key in (("account_key", account_key), ("identity_key", identity_key)):
        if not isinstance(key, bytes) or len(key) != ED25519_PUBLIC_KEY_SIZE:
            raise ValueError(f"{name} must be {ED25519_PUBLIC_KEY_SIZE} bytes")


def decode_sender_certificate(data: bytes) -> SenderCertificate:
    """Parse a certificate without checking its signature (`verify_sender_certificate` does).

    Raises:
        CertificateError: MALFORMED (too large, not msgpack, another version, a bad field).
    """
    malformed = CertificateError(CertificateProblem.MALFORMED)
    if not isinstance(data, bytes) or len(data) > MAX_CERTIFICATE_SIZE:
        raise malformed
    try:
        outer = msgpack.unpackb(data, raw=False)
        if (not isinstance(outer, list) or len(outer) != 2
                or not all(isinstance(part, bytes) for part in outer)):
            raise malformed
        body, signature = outer
        fields = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as error:
        raise malformed from error
    if (not isinstance(fields, dict) or fields.get("v") != CERTIFICATE_VERSION
            or len(signature) != ED25519_SIGNATURE_SIZE):
        raise malformed
    names = ("user_id", "device_id", "account_key", "identity_key", "expires_ms", "key_id")
    if set(fields) != {"v", *names}:
        raise malformed
    try:
        _check_fields(**{name: fields[name] for name in names})
    except ValueError as error:
        raise malformed from error
    return SenderCertificate(user_id=fields["user_id"], device_id=fields["device_id"],
                             account_key=fields["account_key"],
                             identity_key=fields["identity_key"],
                             expires_ms=fields["expires_ms"], key_id=fields["key_id"],
                             encoded=data, body=body, signature=signature)


def verify_sender_certificate(data: bytes, pinned_keys: Iterable[RelayCertificateKey], *,
                              now_ms: int) -> SenderCertificate:
    """Check a certificate against the pinned relay keys at ``now_ms`` and return it.

    The checks, in order: well formed; signed by a pinned key id; that key not past its
    ``not_after_ms``; the signature verifies under it; the certificate not expired.

    Raises:
        CertificateError: naming the first check that failed.
    """
    certificate = decode_sender_certificate(data)
    key = next((key for key in pinned_keys if key.key_id == certificate.key_id), None)
    if key is None:
        raise CertificateError(CertificateProblem.UNKNOWN_KEY)
    if now_ms > key.not_after_ms:
        raise CertificateError(CertificateProblem.KEY_RETIRED)
    try:
        ed25519_verify(key.public_key, SIGNATURE_LABEL + certificate.body,
                       certificate.signature)
    except SignatureError as error:
        raise CertificateError(CertificateProblem.BAD_SIGNATURE) from error
    if now_ms >= certificate.expires_ms:
        raise CertificateError(CertificateProblem.EXPIRED)
    return certificate
