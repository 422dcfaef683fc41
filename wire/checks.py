"""Field validation shared by every frame's ``__post_init__``: a bad field names itself.

Each check raises :class:`~wire.errors.LocalProtocolError` (the codec turns it into a remote error
when the peer built the frame).
"""

from __future__ import annotations

from wire.catalogue import ErrorCode
from wire.errors import LocalProtocolError

__all__ = [
    "check_bytes",
    "check_int",
    "check_int_tuple",
    "check_str",
    "check_str_tuple",
    "field_error",
]


def field_error(
    owner: object, name: str, expected: str, code: ErrorCode = ErrorCode.MALFORMED_FRAME
) -> LocalProtocolError:
    """The error for a field of ``owner`` that is not ``expected`` (by default MALFORMED_FRAME)."""
    return LocalProtocolError(code, f"{type(owner).__name__}.{name} must be {expected}")


def check_int(owner: object, name: str, minimum: int, maximum: int) -> None:
    value = getattr(owner, name)
    # bool is an int subclass; True must never pass as device 1.
    if type(value) is not int or not minimum <= value <= maximum:
        raise field_error(owner, name, f"an int in [{minimum}, {maximum}]")


def check_str(owner: object, name: str, max_length: int, min_length: int = 1) -> None:
    value = getattr(owner, name)
    if type(value) is not str or not min_length <= len(value) <= max_length:
        expected = f"a str of {min_length} to {max_length} characters"
        raise field_error(owner, name, expected)


def check_bytes(
    owner: object, name: str, min_size: int, max_size: int, too_large: ErrorCode
) -> None:
    value = getattr(owner, name)
    if type(value) is not bytes or len(value) < min_size:
        raise field_error(owner, name, f"bytes of {min_size} to {max_size}")
    if len(value) > max_size:
        raise field_error(owner, name, f"at most {max_size} bytes", too_large)


def check_int_tuple(
    owner: object, name: str, *, min_items: int, max_items: int, minimum: int, maximum: int
) -> None:
    values = getattr(owner, name)
    if (
        type(values) is not tuple
        or not min_items <= len(values) <= max_items
        or any(type(value) is not int or not minimum <= value <= maximum for value in values)
    ):
        expected = f"{min_items} to {max_items} ints in [{minimum}, {maximum}]"
        raise field_error(owner, name, expected)


def check_str_tuple(owner: object, name: str, min_items: int, max_items: int, length: int) -> None:
    values = getattr(owner, name)
    if (
        type(values) is not tuple
        or not min_items <= len(values) <= max_items
        or any(type(value) is not str or not 1 <= len(value) <= length for value in values)
    ):
        expected = f"{min_items} to {max_items} strs of 1 to {length} characters"
        raise field_error(owner, name, expected)
