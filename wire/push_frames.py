"""The frames of wake-up pushes: a device registers, reads or removes its push target.

Sans-IO like :mod:`wire.frames`, whose field checks (:mod:`wire.checks`) and numbering
(:mod:`wire.catalogue`) these frames share; :mod:`wire.codec` encodes and decodes them like
every other frame. Only the target's shape is checked here; whether this relay serves the
provider, and whether the provider accepts the target (e.g. its endpoint host), is the relay's
answer (PUSH_PROVIDER_UNAVAILABLE, INVALID_PUSH_TARGET). PROTOCOL.md "Wake-up pushes" is the
contract.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from wire.catalogue import ErrorCode, FrameType
from wire.checks import check_bytes, field_error

__all__ = [
    "MAX_PUSH_PROVIDER_LENGTH",
    "MAX_PUSH_TOKEN_SIZE",
    "PUSH_FRAME_CLASSES",
    "PUSH_PROVIDERS",
    "WEBPUSH_AUTH_SIZE",
    "WEBPUSH_P256DH_SIZE",
    "WEBPUSH_PROVIDER",
    "PushClear",
    "PushCleared",
    "PushFrame",
    "PushGet",
    "PushRequest",
    "PushSet",
    "PushTargetSet",
    "RegisteredPushTarget",
]

MAX_PUSH_PROVIDER_LENGTH = 16  # ASCII characters of a provider name: "webpush" and its kin
MAX_PUSH_TOKEN_SIZE = 2048  # bytes of a push endpoint URL or device token: a Web Push endpoint
# is a URL of a few hundred bytes, an FCM token ~160, an APNs token 64 hex digits; room to spare
WEBPUSH_P256DH_SIZE = 65  # bytes of the subscription's public key: an uncompressed P-256 point
WEBPUSH_AUTH_SIZE = 16  # bytes of the subscription's authentication secret (RFC 8291 section 3.2)
WEBPUSH_PROVIDER = "webpush"
PUSH_PROVIDERS = ("webpush", "fcm", "apns", "outbox")
"""The provider names of version 1; a relay serves those its operator configured."""

# Tokens travel into URLs and HTTP/2 paths and headers: printable ASCII without spaces only, so
# that no target can smuggle a line break or a path separator the provider did not expect.
_TOKEN = re.compile(r"[\x21-\x7e]+")


def _check_provider(owner: object, name: str) -> None:
    value = getattr(owner, name)
    if type(value) is not str or value not in PUSH_PROVIDERS:
        raise field_error(owner, name, f"one of {', '.join(PUSH_PROVIDERS)}")


def _check_token(owner: object, name: str) -> None:
    value = getattr(owner, name)
    if (type(value) is not str or not 1 <= len(value) <= MAX_PUSH_TOKEN_SIZE
            or _TOKEN.fullmatch(value) is None):
        raise field_error(owner, name,
                          f"1 to {MAX_PUSH_TOKEN_SIZE} printable ASCII characters, no spaces")


# --- Requests (client -> relay) -------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class PushSet:
    """Register this device's push target, replacing any earlier one.

    A Web Push target carries the subscription's key and secret (RFC 8291), the others none.
    """

    frame_type: ClassVar[FrameType] = FrameType.PUSH_SET
    provider: str  #: one of PUSH_PROVIDERS
    token: str  #: the endpoint URL (webpush) or the device token: 1 to MAX_PUSH_TOKEN_SIZE bytes
    p256dh: bytes | None = None  #: webpush only: WEBPUSH_P256DH_SIZE bytes, uncompressed P-256
    auth: bytes | None = None  #: webpush only: WEBPUSH_AUTH_SIZE bytes

    def __post_init__(self) -> None:
        _check_provider(self, "provider")
        _check_token(self, "token")
        if self.provider == WEBPUSH_PROVIDER:
            check_bytes(self, "p256dh", WEBPUSH_P256DH_SIZE, WEBPUSH_P256DH_SIZE,
                        ErrorCode.MALFORMED_FRAME)
            if self.p256dh is not None and self.p256dh[0] != 0x04:  # SEC 1 section 2.3.3
                raise field_error(self, "p256dh", "an uncompressed point (first byte 0x04)")
            check_bytes(self, "auth", WEBPUSH_AUTH_SIZE, WEBPUSH_AUTH_SIZE,
                        ErrorCode.MALFORMED_FRAME)
        else:
            for name in ("p256dh", "auth"):
                if getattr(self, name) is not None:
                    raise field_error(self, name, f"absent for provider {self.provider}")


@dataclass(frozen=True, kw_only=True, slots=True)
class PushClear:
    """Remove this device's push target: it is woken no more."""

    frame_type: ClassVar[FrameType] = FrameType.PUSH_CLEAR


@dataclass(frozen=True, kw_only=True, slots=True)
class PushGet:
    """Ask which push target this device has registered."""

    frame_type: ClassVar[FrameType] = FrameType.PUSH_GET


# --- Responses (relay -> client) ------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class PushTargetSet:
    """The target is stored; it replaced any earlier one."""

    frame_type: ClassVar[FrameType] = FrameType.PUSH_TARGET_SET


@dataclass(frozen=True, kw_only=True, slots=True)
class PushCleared:
    """The device has no push target now (whether or not it had one)."""

    frame_type: ClassVar[FrameType] = FrameType.PUSH_CLEARED


@dataclass(frozen=True, kw_only=True, slots=True)
class RegisteredPushTarget:
    """The device's own registered target; both fields None when it has none.

    The subscription's key and secret are not sent back: the device holds them.
    """

    frame_type: ClassVar[FrameType] = FrameType.PUSH_TARGET
    provider: str | None = None  #: one of PUSH_PROVIDERS, or None
    token: str | None = None  #: the registered endpoint or token, or None

    def __post_init__(self) -> None:
        if (self.provider is None) != (self.token is None):
            raise field_error(self, "token", "present exactly when provider is")
        if self.provider is not None:
            _check_provider(self, "provider")
            _check_token(self, "token")


PushRequest = PushSet | PushClear | PushGet
"""The requests of wake-up pushes."""

PushFrame = PushSet | PushClear | PushGet | PushTargetSet | PushCleared | RegisteredPushTarget

PUSH_FRAME_CLASSES: tuple[type[PushFrame], ...] = (
    PushSet, PushClear, PushGet, PushTargetSet, PushCleared, RegisteredPushTarget,
)
"""Every frame class of this module, for the codec's catalogue."""
