"""Errors a peer's message can cause in a session, beyond the primitives' own.

All are `CryptoError`s (the remote side's fault); none leaves any state changed.
"""

from __future__ import annotations

from crypto.primitives import CryptoError

__all__ = [
    "DuplicateMessageError",
    "IdentityMismatchError",
    "MalformedMessageError",
    "NoSessionError",
    "TooManySkippedMessagesError",
    "UnknownPrekeyError",
    "UntrustedIdentityError",
]


class MalformedMessageError(CryptoError):
    """The bytes are not a message of a format version we read (the reason says which part)."""


class DuplicateMessageError(CryptoError):
    """The message's key was already used or dropped: a duplicate, a replay, or too old."""


class TooManySkippedMessagesError(CryptoError):
    """The message claims a position too far ahead of the last one received (see
    `crypto.ratchet.MAX_SKIPPED_MESSAGES_PER_CHAIN`)."""


class UnknownPrekeyError(CryptoError):
    """An initial message names a prekey this device no longer (or never) had."""


class NoSessionError(CryptoError):
    """No session exists with the given devices; fetch their bundles and start one."""

    def __init__(self, addresses: object) -> None:
        super().__init__(f"no session with {addresses}")
        self.addresses = addresses


class UntrustedIdentityError(CryptoError):
    """We have no trusted identity key for a device, or its bundle or session has another key:
    nothing is sent to it until the client calls `DeviceCrypto.trust_identity` with the key
    its account's signed device list gives."""

    def __init__(self, address: object) -> None:
        super().__init__(f"no trusted identity key for {address} matches; trust its key first")
        self.address = address


class IdentityMismatchError(CryptoError):
    """A message claims an identity key other than the one the sender's signed device list
    (and the relay) give for the sending device: refused, nothing changed."""

    def __init__(self, address: object) -> None:
        super().__init__(f"the message's identity key is not the listed key of {address}")
        self.address = address
