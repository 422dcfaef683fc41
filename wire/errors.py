"""Protocol errors, saying whose fault they are: ours (local) or the peer's (remote)."""

from __future__ import annotations

from wire.catalogue import ErrorCode
from wire.limits import MAX_REASON_LENGTH

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """A violation of the Cryptopass protocol. Abstract: raise one of the two subclasses.

    Attributes:
        code: the wire error code to send in an ERROR frame or a QUIC close.
        reason: a short human-readable explanation (no secrets, no phone numbers).
        retry_after_ms: for a refusal the peer may retry (RATE_LIMITED), how long it should wait,
            in milliseconds: the ERROR frame's ``retry_after_ms``; None when there is no such time.
    """

    def __init__(self, code: ErrorCode, reason: str, *, retry_after_ms: int | None = None) -> None:
        if type(self) is ProtocolError:
            raise TypeError("instantiate LocalProtocolError or RemoteProtocolError")
        super().__init__(code, reason)
        self.code = code
        self.reason = reason[:MAX_REASON_LENGTH]
        self.retry_after_ms = retry_after_ms

    def __str__(self) -> str:
        return f"{self.code.name}: {self.reason}"


class LocalProtocolError(ProtocolError):
    """We misused the API: built an invalid frame or called a method in the wrong state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""
