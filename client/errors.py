"""What a request to the relay can fail with, and the check of an answer's kind.

Three kinds of failure, each the fault of one party:

* `RelayError`: the relay refused the request with an ERROR frame (QUEUE_FULL,
  MISMATCHED_DEVICES, AUTHENTICATION_FAILED, ...): a normal answer, often worth handling.
* `ConnectionClosed`: the connection ended (the relay closed it, an idle timeout, a network
  failure); nothing more can be asked on it. Two kinds of it end a connection that never
  opened: `RelayUnreachable` (no answer to the QUIC handshake in time: nothing listens at
  the address, or packets are dropped) and `HandshakeFailed` (the handshake was refused,
  often because the relay's certificate is not trusted: the CA file given is not the relay's,
  or none was given for a self-signed relay). With several relay addresses to fail over
  across, `NoRelayReached` says that none of them opened, and why for each.
* `CertificateFileError`: the CA certificate file to trust is missing or holds no
  certificate; raised before anything is sent.
* `wire.errors.RemoteProtocolError`: the relay broke the protocol: garbage on a stream, an
  answer of the wrong kind (`expect_answer`), a stream ended or reset with requests
  unanswered. A client never trusts the relay's input, so this is an exception, never an
  ``assert``: it holds under ``python -O`` too.

`client.connection` re-exports `RelayError` and `ConnectionClosed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from wire.frames import Error, ErrorCode, Frame, RemoteProtocolError

__all__ = ["CERTIFICATE_ALERTS", "CertificateFileError", "ConnectionClosed", "HandshakeFailed",
           "NoRelayReached", "RelayError", "RelayUnreachable", "expect_answer"]

QUIC_CONNECTION_REFUSED = 0x2
"""QUIC transport error (RFC 9000 §20.1) a relay closes a connection with when it turns it away at
the handshake: too many connections from one address (PROTOCOL.md "Connection budgets")."""

QUIC_CRYPTO_ERROR = 0x100
"""QUIC closes a connection for a TLS alert with this code plus the alert's number (RFC 9001)."""

CERTIFICATE_ALERTS = frozenset({42, 43, 44, 45, 46, 48})
"""TLS alerts that refuse a certificate: bad, unsupported, revoked, expired, unknown, unknown
CA (RFC 8446, section 6)."""

_Answer = TypeVar("_Answer", bound=Frame)


class RelayError(Exception):
    """The relay answered a request with an ERROR frame (``code``, ``reason``, ``error``).

    ``retry_after_ms``: when the relay refused for now (RATE_LIMITED), how many milliseconds
    to wait before asking again; None when it names no time (or predates the field).
    """

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code.name}: {error.reason}")
        self.code = error.code
        self.reason = error.reason
        self.retry_after_ms = error.retry_after_ms
        self.error = error


class ConnectionClosed(Exception):
    """The connection ended; ``code`` is the application error code when there is one."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed ({_code_name(code)}): {reason}")
        self.code = code
        self.reason = reason


class RelayUnreachable(ConnectionClosed):
    """No answer to the QUIC handshake within ``seconds``: nothing listens at ``host:port``, a
    firewall drops the packets, or the relay is overloaded. Nothing was sent."""

    def __init__(self, host: str, port: int, seconds: float) -> None:
        super().__init__(ErrorCode.NO_ERROR,
                         f"no answer from {_address(host, port)} within {seconds:g} s")
        self.host, self.port, self.seconds = host, port, seconds


class HandshakeFailed(ConnectionClosed):
    """The connection closed before its QUIC handshake completed; nothing was sent.

    ``code`` is a QUIC transport error code here (RFC 9000 §20.1: an application code cannot
    close a connection before its handshake). ``tls_alert`` is the TLS alert that refused it,
    if any; ``certificate_refused`` says the alert refused the relay's certificate (it is not
    signed by the CA file given, or, without one, by a CA the system trusts: a relay's
    self-signed certificate is not). ``connection_refused`` says the relay turned the
    connection away (too many connections from this address, or it is stopping): ``reason``
    says which, and when to try again.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        if code == QUIC_CONNECTION_REFUSED:
            name = "CONNECTION_REFUSED"
        elif self.tls_alert is not None:
            name = f"TLS alert {self.tls_alert}"
        else:
            name = f"QUIC error {code}"
        self.args = (f"handshake refused ({name}): {reason}",)

    @property
    def connection_refused(self) -> bool:
        return self.code == QUIC_CONNECTION_REFUSED

    @property
    def tls_alert(self) -> int | None:
        alert = self.code - QUIC_CRYPTO_ERROR
        return alert if 0 <= alert <= 0xFF else None

    @property
    def certificate_refused(self) -> bool:
        return self.tls_alert in CERTIFICATE_ALERTS


class NoRelayReached(ConnectionClosed):
    """None of several relay addresses opened a connection: ``failures`` holds each address
    (host, port) in the order tried and its `RelayUnreachable` or `HandshakeFailed`. Nothing
    was sent."""

    def __init__(self, failures: Sequence[tuple[str, int, ConnectionClosed]]) -> None:
        self.failures = tuple(failures)
        super().__init__(ErrorCode.NO_ERROR, "; ".join(
            f"{_address(host, port)}: {_why(error)}" for host, port, error in self.failures))
        self.args = (f"no relay answered: {self.reason}",)


def _why(error: ConnectionClosed) -> str:
    if isinstance(error, RelayUnreachable):
        return f"no answer within {error.seconds:g} s"
    return str(error)


class CertificateFileError(Exception):
    """The CA certificate file cannot be used: ``missing`` (no such file), or unreadable, or
    it holds no PEM certificate (``problem`` says which)."""

    def __init__(self, path: Path, problem: str, *, missing: bool) -> None:
        super().__init__(f"{problem}: {path}")
        self.path, self.problem, self.missing = path, problem, missing


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


def expect_answer(answer: Frame, expected: type[_Answer]) -> _Answer:
    """``answer``, if it is the kind of frame the request calls for.

    Raises:
        RemoteProtocolError: UNEXPECTED_FRAME, "expected ENROLLED, got LOOKUP_RESULT": the
            relay answered with another kind of frame (an ERROR frame never reaches this
            check: it is a `RelayError`).
    """
    if not isinstance(answer, expected):
        raise RemoteProtocolError(
            ErrorCode.UNEXPECTED_FRAME,
            f"expected {expected.frame_type.name}, got {answer.frame_type.name}")
    return answer
