"""What a request to the relay can fail with, and the check of an answer's kind.

Three kinds of failure, each the fault of one party:

* `RelayError`: the relay refused the request with an ERROR frame (QUEUE_FULL,
  MISMATCHED_DEVICES, AUTHENTICATION_FAILED, ...): a normal answer, often worth handling.
* `ConnectionClosed`: the connection ended (the relay closed it, an idle timeout, a network
  failure); nothing more can be asked on it.
* `wire.errors.RemoteProtocolError`: the relay broke the protocol: garbage on a stream, an
  answer of the wrong kind (`expect_answer`), a stream ended or reset with requests
  unanswered. A client never trusts the relay's input, so this is an exception, never an
  ``assert``: it holds under ``python -O`` too.

`client.connection` re-exports `RelayError` and `ConnectionClosed`.
"""

from __future__ import annotations

from typing import TypeVar

from wire.frames import Error, ErrorCode, Frame, RemoteProtocolError

__all__ = ["ConnectionClosed", "RelayError", "expect_answer"]

_Answer = TypeVar("_Answer", bound=Frame)


class RelayError(Exception):
    """The relay answered a request with an ERROR frame (``code``, ``reason``, ``error``)."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code.name}: {error.reason}")
        self.code = error.code
        self.reason = error.reason
        self.error = error


class ConnectionClosed(Exception):
    """The connection ended; ``code`` is the application error code when there is one."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed ({_code_name(code)}): {reason}")
        self.code = code
        self.reason = reason


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
