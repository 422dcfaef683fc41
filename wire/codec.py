"""Frames <-> bytes: the length prefix, the msgpack envelope and its decoding limits.

Every frame on a stream is a 4-byte big-endian length N, then N bytes of msgpack encoding the
array ``[version, frame_type, body]``, where body maps field names to values (PROTOCOL.md
"Framing"). Import these names from :mod:`wire.frames`.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

import msgpack

from wire.account_frames import ACCOUNT_FRAME_CLASSES, AddedDevice
from wire.blob_frames import BLOB_FRAME_CLASSES
from wire.call_frames import CALL_FRAME_CLASSES
from wire.frames import (
    LENGTH_PREFIX_SIZE,
    MAX_ACK_IDS,
    MAX_FRAME_SIZE,
    MAX_REASON_LENGTH,
    PROTOCOL_VERSION,
    Ack,
    Acked,
    Authenticate,
    Authenticated,
    Challenge,
    Deliver,
    DirectoryEntry,
    Enrolled,
    EnrolStart,
    EnrolStarted,
    EnrolVerify,
    Error,
    ErrorCode,
    Frame,
    Hello,
    LocalProtocolError,
    Lookup,
    LookupResult,
    QueueEmpty,
    RemoteProtocolError,
    Send,
    SendAccepted,
)
from wire.group_frames import GROUP_FRAME_CLASSES, MultiSendRecipient, UserDevices
from wire.prekey_frames import (
    PREKEY_FRAME_CLASSES,
    DeviceBundle,
    DeviceInfo,
    KemPrekey,
    OneTimePrekey,
    SignedPrekey,
)
from wire.push_frames import MAX_PUSH_TOKEN_SIZE, PUSH_FRAME_CLASSES
from wire.sealed_frames import SEALED_FRAME_CLASSES, SenderKey

__all__ = ["FrameDecoder", "decode_body", "encode_frame"]

_FRAME_CLASSES: Final[tuple[type[Any], ...]] = (
    EnrolStart, EnrolVerify, Hello, Authenticate, Lookup, Send, Ack,
    EnrolStarted, Enrolled, Challenge, Authenticated, LookupResult, SendAccepted, Acked, Error,
    Deliver, QueueEmpty, *PREKEY_FRAME_CLASSES, *ACCOUNT_FRAME_CLASSES, *PUSH_FRAME_CLASSES,
    *BLOB_FRAME_CLASSES,
    *GROUP_FRAME_CLASSES,
    *CALL_FRAME_CLASSES,
    *SEALED_FRAME_CLASSES,
)  # fmt: skip
_CLASS_BY_TYPE: Final[dict[int, type[Any]]] = {cls.frame_type: cls for cls in _FRAME_CLASSES}
# Values nested inside frames, encoded as maps like frame bodies.
_NESTED_CLASSES: Final[tuple[type[Any], ...]] = (
    DirectoryEntry, SignedPrekey, OneTimePrekey, KemPrekey, DeviceBundle, DeviceInfo,
    AddedDevice, MultiSendRecipient, UserDevices, SenderKey,
)
# Field names in declaration order, computed once: encode_frame runs once per message.
_FIELD_NAMES: Final[dict[type[Any], tuple[str, ...]]] = {
    cls: tuple(field.name for field in dataclasses.fields(cls))
    for cls in (*_FRAME_CLASSES, *_NESTED_CLASSES)
}
# Fields that may be absent on the wire (they have defaults), per class.
_OPTIONAL_FIELDS: Final[dict[type[Any], frozenset[str]]] = {
    cls: frozenset(
        field.name for field in dataclasses.fields(cls) if field.default is not dataclasses.MISSING
    )
    for cls in _FIELD_NAMES
}

# Fields left out of the encoding while they hold their default, so that frames without them
# encode as they did before the field existed (DELIVER without a MULTI_SEND's shared ciphertext,
# ERROR without per-user detail).
_OMITTED_AT_DEFAULT: Final[dict[type[Any], tuple[tuple[str, object], ...]]] = {
    Deliver: (("shared", None),),
    Error: (("users", ()),),
    MultiSendRecipient: (("delivery_token", None),),
}

_U32: Final = struct.Struct(">I")
_MAX_MAP_ENTRIES: Final = 64  # fields in one body, unknown ones included, or SEND payload entries
# Limits for msgpack itself, so a 5-byte header cannot make it allocate gigabytes before our
# field checks run. Ciphertexts are bounded by the frame size here and by MAX_CIPHERTEXT_SIZE in
# Send/Deliver, so that an oversize one is reported as PAYLOAD_TOO_LARGE.
_MAX_BIN_SIZE: Final = MAX_FRAME_SIZE
# The longest str field: an ERROR reason (UTF-8 is <= 4 bytes a char) or a push token (ASCII;
# one byte over, so that a token one too long is reported by the field's name).
_MAX_STR_SIZE: Final = max(4 * MAX_REASON_LENGTH, MAX_PUSH_TOKEN_SIZE + 1)
# One over the longest array field, so that one item too many is reported by the field's name.
_MAX_ARRAY_ITEMS: Final = MAX_ACK_IDS + 1


def _body(value: object) -> dict[str, object]:
    """A frame's or nested value's fields by name, those at an omitted default left out."""
    body = {name: getattr(value, name) for name in _FIELD_NAMES[type(value)]}
    for name, default in _OMITTED_AT_DEFAULT.get(type(value), ()):
        if body[name] == default:
            del body[name]
    return body


def _pack_default(value: object) -> object:
    """msgpack hook for the two non-native values frames hold."""
    if isinstance(value, MappingProxyType):
        return dict(value)
    if type(value) in _NESTED_CLASSES:
        return _body(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame, length prefix included, ready to write on a stream.

    Raises:
        LocalProtocolError: ``frame`` is not a frame, or encodes to more than MAX_FRAME_SIZE.
    """
    names = _FIELD_NAMES.get(type(frame))
    if names is None or type(frame) not in _CLASS_BY_TYPE.values():
        raise LocalProtocolError(
            ErrorCode.MALFORMED_FRAME, f"{type(frame).__name__} is not a frame"
        )
    body = _body(frame)
    packed: bytes = msgpack.packb((PROTOCOL_VERSION, frame.frame_type, body), default=_pack_default)
    if len(packed) > MAX_FRAME_SIZE:
        raise LocalProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"{type(frame).__name__} encodes to {len(packed)} bytes"
        )
    return _U32.pack(len(packed)) + packed


def _decode_entries(value: object) -> object:
    if type(value) is not tuple:
        return value  # LookupResult.__post_init__ names the problem
    return tuple(_build(DirectoryEntry, entry) if type(entry) is dict else entry for entry in value)


def _nested(cls: type[Any]) -> Callable[[object], object]:
    """Decode a map field as ``cls``; anything else is left for the owner's check to name."""
    return lambda value: _build(cls, value) if type(value) is dict else value


def _nested_tuple(cls: type[Any]) -> Callable[[object], object]:
    """Decode an array-of-maps field as a tuple of ``cls``."""
    build = _nested(cls)
    return lambda value: tuple(map(build, value)) if type(value) is tuple else value


def _decode_error_code(value: object) -> object:
    return ErrorCode.from_wire(value) if type(value) is int else value


# Wire shapes that differ from the dataclass field's type; everything else is passed as decoded
# and checked by the dataclass itself, so validation lives in one place.
_CONVERTERS: Final[dict[str, Callable[[object], object]]] = {
    "entries": _decode_entries,
    "code": _decode_error_code,
    "signed_prekey": _nested(SignedPrekey),
    "kem_last_resort_prekey": _nested(KemPrekey),
    "one_time_prekeys": _nested_tuple(OneTimePrekey),
    "kem_one_time_prekeys": _nested_tuple(KemPrekey),
    "one_time_prekey": _nested(OneTimePrekey),
    "kem_prekey": _nested(KemPrekey),
    "bundles": _nested_tuple(DeviceBundle),
    "devices": _nested_tuple(DeviceInfo),
    "added": _nested_tuple(AddedDevice),
    "recipients": _nested_tuple(MultiSendRecipient),
    "users": _nested_tuple(UserDevices),
    "keys": _nested_tuple(SenderKey),
}


def _build(cls: type[Any], body: Mapping[object, object]) -> Any:
    """Construct ``cls`` from a decoded body map; unknown keys are ignored."""
    arguments: dict[str, object] = {}
    for name in _FIELD_NAMES[cls]:
        if name in body:
            value = body[name]
            converter = _CONVERTERS.get(name)
            arguments[name] = value if converter is None else converter(value)
        elif name not in _OPTIONAL_FIELDS[cls]:
            raise RemoteProtocolError(
                ErrorCode.MALFORMED_FRAME, f"{cls.__name__}.{name} is missing"
            )
    try:
        return cls(**arguments)
    except LocalProtocolError as error:  # the peer built it, so it is their fault
        raise RemoteProtocolError(error.code, error.reason) from None


def decode_body(data: bytes | bytearray | memoryview) -> Frame:
    """Decode one frame's msgpack body (the bytes after the length prefix).

    Raises:
        RemoteProtocolError: MALFORMED_FRAME, UNSUPPORTED_VERSION, UNKNOWN_FRAME_TYPE or
            PAYLOAD_TOO_LARGE, with a reason naming the offending field.
    """
    try:
        envelope = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            use_list=False,  # arrays decode as tuples, the type of every sequence field
            max_bin_len=_MAX_BIN_SIZE,
            max_str_len=_MAX_STR_SIZE,
            max_array_len=_MAX_ARRAY_ITEMS,
            max_map_len=_MAX_MAP_ENTRIES,
            max_ext_len=0,  # no extension types in version 1
        )
    except Exception as error:  # msgpack raises ValueError, TypeError, StackError, ExtraData...
        raise RemoteProtocolError(
            ErrorCode.MALFORMED_FRAME, f"undecodable msgpack: {error}"
        ) from None
    if type(envelope) is not tuple or len(envelope) != 3:
        raise RemoteProtocolError(
            ErrorCode.MALFORMED_FRAME, "a frame must be the array [version, frame_type, body]"
        )
    version, frame_type, body = envelope
    if type(version) is not int:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "version must be an int")
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            ErrorCode.UNSUPPORTED_VERSION, f"version {version} is not {PROTOCOL_VERSION}"
        )
    if type(frame_type) is not int:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "frame_type must be an int")
    cls = _CLASS_BY_TYPE.get(frame_type)
    if cls is None:
        raise RemoteProtocolError(
            ErrorCode.UNKNOWN_FRAME_TYPE, f"frame type {frame_type} is not assigned"
        )
    if type(body) is not dict:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, f"{cls.__name__} body must be a map")
    frame: Frame = _build(cls, body)
    return frame


class FrameDecoder:
    """Reassembles the frames of one stream direction from chunks of any size.

    Whole frames are decoded straight from the chunk given to ``feed``; only an incomplete tail
    is copied into the buffer, and consumed bytes are dropped once per ``feed``, so each byte is
    copied at most a bounded number of times whatever the chunking. After an error the decoder
    is poisoned: every later call raises the same error.
    """

    __slots__ = ("_buffer", "_error", "_rest")

    def __init__(self) -> None:
        self._buffer = bytearray()  # the incomplete frame's bytes, prefix included
        self._error: RemoteProtocolError | None = None
        self._rest: bytes | None = None  # set once ``stop_after`` stopped the decoding

    @property
    def stopped(self) -> bool:
        """Whether a frame ``stop_after`` chose ended the framing: the rest is raw bytes."""
        return self._rest is not None

    def take_rest(self) -> bytes:
        """The bytes that followed the stopping frame in the data fed (raw, not frames); each
        byte is handed over once."""
        rest, self._rest = self._rest or b"", b""
        return rest

    @property
    def error(self) -> RemoteProtocolError | None:
        """The error that poisoned this decoder, if any (set even when ``feed`` returned)."""
        return self._error

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buffer)

    @property
    def incomplete_frame_size(self) -> int:
        """What the incomplete frame will hold once complete: its prefix and the length the
        prefix declares (the bytes held while the prefix itself is incomplete; 0 for none).

        A relay counts a frame at this size from its first bytes on, so that a budget refuses
        a frame when it starts rather than when it has grown (PROTOCOL.md "Connection budgets").
        """
        buffer = self._buffer
        if len(buffer) < LENGTH_PREFIX_SIZE:
            return len(buffer)
        (length,) = _U32.unpack_from(buffer, 0)
        return LENGTH_PREFIX_SIZE + int(length)

    def feed(self, data: bytes, *, max_frame_size: int = MAX_FRAME_SIZE,
             limit_after: Callable[[Frame], int] | None = None,
             stop_after: Callable[[Frame], bool] | None = None) -> list[Frame]:
        """Add received bytes; return the frames they complete, in order.

        If garbage follows complete frames in ``data``, those frames are returned and the error
        is raised by the next call; ``error`` reports it at once.

        Args:
            data: the bytes received.
            max_frame_size: the largest frame (after the prefix) accepted, at most
                MAX_FRAME_SIZE; a smaller one bounds what an unauthenticated peer may send.
            limit_after: given each frame decoded, the limit for the frames behind it in
                ``data`` (a frame may lift the limit: AUTHENTICATE); None keeps it.
            stop_after: given each frame decoded, whether the stream's framing ends with it
                (a frame opening a raw stream); the bytes behind it are then kept for
                ``take_rest`` and the decoder is ``stopped``: feeding it again is an error.

        Raises:
            RemoteProtocolError: FRAME_TOO_LARGE as soon as a length prefix exceeds the limit
                (before its body is buffered), or any ``decode_body`` error.
        """
        if self._error is not None:
            raise self._error
        if self._rest is not None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_FRAME,
                                     "the stream's framing ended: its bytes are raw")
        buffer = self._buffer
        if buffer:
            buffer += data
            source: bytes | bytearray = buffer
        else:
            source = data
        frames: list[Frame] = []
        offset = 0
        end_of_data = len(source)
        view = memoryview(source)
        try:
            while end_of_data - offset >= LENGTH_PREFIX_SIZE:
                (length,) = _U32.unpack_from(source, offset)
                if length > max_frame_size:
                    raise RemoteProtocolError(
                        ErrorCode.FRAME_TOO_LARGE,
                        f"frame of {length} bytes exceeds {max_frame_size}",
                    )
                frame_end = offset + LENGTH_PREFIX_SIZE + length
                if frame_end > end_of_data:
                    break
                frame = decode_body(view[offset + LENGTH_PREFIX_SIZE : frame_end])
                frames.append(frame)
                offset = frame_end
                if stop_after is not None and stop_after(frame):
                    self._rest = bytes(view[offset:end_of_data])
                    offset = end_of_data  # consumed: handed over by take_rest
                    break
                if limit_after is not None:
                    max_frame_size = limit_after(frame)
        except RemoteProtocolError as error:
            self._error = error
            self._buffer = bytearray()  # a fresh one: a traceback may still pin the old one
            if not frames:
                raise
            # The frames before the garbage stand; the error comes with the next call.
            return frames
        finally:
            view.release()
        if source is buffer:
            del buffer[:offset]
        elif offset < end_of_data:
            buffer += data[offset:]
        return frames

    def end_of_stream(self) -> None:
        """The peer finished this stream direction.

        Raises:
            RemoteProtocolError: TRUNCATED_FRAME if an incomplete frame is buffered.
        """
        if self._error is not None:
            raise self._error
        if self._buffer:
            self._error = RemoteProtocolError(
                ErrorCode.TRUNCATED_FRAME,
                f"stream ended inside a frame ({len(self._buffer)} bytes buffered)",
            )
            self._buffer = bytearray()  # poisoned: the bytes can never be used
            raise self._error
