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
    """

    def __init__(self, code: ErrorCode, reason: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError("instantiate LocalProtocolError or RemoteProtocolError")
        super().__init__(code, reason)
        self.code = code
        self.reason = reason[:MAX_REASON_LENGTH]

    def __str__(self) -> str:
        return f"{self.code.name}: {self.reason}"


class LocalProtocolError(ProtocolError):
    """We misused the API: built an invalid frame or called a method in the wrong state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""
