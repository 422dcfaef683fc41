"""The Cryptopass wire vocabulary: limits, frame types, error codes and one dataclass per frame.

Sans-IO: nothing here touches a socket, the clock or the random source. The byte codec
(``encode_frame``, ``decode_body``, ``FrameDecoder``) lives in :mod:`relay.frame_codec` and is
re-exported here, so ``from relay.frames import ...`` reaches every public name.
``docs/PROTOCOL.md`` is the contract this module implements.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, Union

if TYPE_CHECKING:
    from relay.frame_codec import FrameDecoder, decode_body, encode_frame
    from relay.prekey_frames import PrekeyFrame

__all__ = [
    "ALPN",
    "IDENTITY_KEY_SIZE",
    "LENGTH_PREFIX_SIZE",
    "MAX_ACK_IDS",
    "MAX_CIPHERTEXT_SIZE",
    "MAX_CLIENT_MESSAGE_ID",
    "MAX_DEVICES_PER_SEND",
    "MAX_DEVICES_PER_USER",
    "MAX_DEVICE_ID",
    "MAX_ENVELOPE_ID",
    "MAX_FRAME_SIZE",
    "MAX_LOOKUP_PHONES",
    "MAX_PHONE_LENGTH",
    "MAX_REASON_LENGTH",
    "MAX_TIMESTAMP_MS",
    "MAX_USER_ID_LENGTH",
    "NONCE_SIZE",
    "PROTOCOL_VERSION",
    "SIGNATURE_SIZE",
    "VERIFICATION_CODE_LENGTH",
    "Ack",
    "Acked",
    "Authenticate",
    "Authenticated",
    "Challenge",
    "Deliver",
    "DirectoryEntry",
    "EnrolStart",
    "EnrolStarted",
    "EnrolVerify",
    "Enrolled",
    "Error",
    "ErrorCode",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "Hello",
    "LocalProtocolError",
    "Lookup",
    "LookupResult",
    "ProtocolError",
    "QueueEmpty",
    "RemoteProtocolError",
    "Send",
    "SendAccepted",
    "auth_transcript",
    "decode_body",
    "encode_frame",
]

# --- Limits (docs/PROTOCOL.md "Limits" is the same table) ---------------------------------------
PROTOCOL_VERSION = 1  # first element of every frame; bumped only for incompatible changes
ALPN = "cryptopass/1"  # TLS ALPN token; names the major version so old peers fail at handshake
LENGTH_PREFIX_SIZE = 4  # bytes of big-endian unsigned length before each frame's msgpack body
MAX_FRAME_SIZE = 2 * 1024 * 1024  # bytes of msgpack after the prefix: a full SEND fits
MAX_CIPHERTEXT_SIZE = 96 * 1024  # bytes per device ciphertext: text messages; files go elsewhere
MAX_DEVICES_PER_SEND = 16  # payload entries in one SEND, equal to the devices a user may hold
MAX_DEVICES_PER_USER = MAX_DEVICES_PER_SEND  # device ids in a directory entry: a SEND covers all
MAX_LOOKUP_PHONES = 32  # phone numbers per LOOKUP: bounds the directory work of one request
MAX_ACK_IDS = 1024  # envelope ids per ACK: one drained backlog page, bounds one transaction
MAX_REASON_LENGTH = 256  # characters of an ERROR reason: for humans and logs, not for parsing
MAX_PHONE_LENGTH = 32  # characters of a phone number: E.164 is 16 at most, room for typos to fail
MAX_USER_ID_LENGTH = 64  # characters of an opaque user id assigned by the relay
NONCE_SIZE = 32  # bytes of the server's authentication challenge: 256 bits, never reused
IDENTITY_KEY_SIZE = 32  # bytes of an Ed25519 public key (RFC 8032 section 5.1.5)
SIGNATURE_SIZE = 64  # bytes of an Ed25519 signature (RFC 8032 section 5.1.6)
VERIFICATION_CODE_LENGTH = 6  # ASCII digits of an SMS enrolment code
MAX_CLIENT_MESSAGE_ID = 2**63 - 1  # client-chosen idempotency key: fits a signed 64-bit column
MAX_ENVELOPE_ID = 2**63 - 1  # relay-assigned envelope id: fits a signed 64-bit column
MAX_DEVICE_ID = 2**31 - 1  # device ids start at 1: fits a signed 32-bit column
MAX_TIMESTAMP_MS = 2**63 - 1  # milliseconds since the Unix epoch: fits a signed 64-bit column


class FrameType(IntEnum):
    """Second element of every frame. Ranges: 1-63 requests, 64-127 responses, 128-191 pushes.

    The unassigned numbers of each range are reserved for later frames (see PROTOCOL.md "Future").
    """

    ENROL_START = 1
    ENROL_VERIFY = 2
    HELLO = 3
    AUTHENTICATE = 4
    LOOKUP = 5
    SEND = 6
    ACK = 7
    UPLOAD_PREKEYS = 8
    FETCH_BUNDLE = 9
    GET_PREKEY_COUNTS = 10
    LIST_DEVICES = 11
    ENROL_STARTED = 64
    ENROLLED = 65
    CHALLENGE = 66
    AUTHENTICATED = 67
    LOOKUP_RESULT = 68
    SEND_ACCEPTED = 69
    ACKED = 70
    PREKEYS_UPLOADED = 71
    BUNDLE = 72
    PREKEY_COUNTS = 73
    DEVICE_LIST = 74
    ERROR = 127
    DELIVER = 128
    QUEUE_EMPTY = 129
    PREKEYS_LOW = 130


class ErrorCode(IntEnum):
    """Stable error numbers, sent in ERROR frames and used as QUIC application close codes.

    Grouped by tens: framing 1-9, authentication 10-19, enrolment and requests 20-29,
    delivery 30-39, organisation 40-49, server and connection 50-59, prekeys 60-69.
    """

    NO_ERROR = 0  # normal close
    MALFORMED_FRAME = 1  # undecodable msgpack, or a field missing, ill-typed or out of its limit
    FRAME_TOO_LARGE = 2  # the length prefix exceeds MAX_FRAME_SIZE
    UNSUPPORTED_VERSION = 3  # the frame's version is not PROTOCOL_VERSION
    UNKNOWN_FRAME_TYPE = 4  # the frame type number is not assigned
    UNEXPECTED_FRAME = 5  # the frame is not allowed in the connection's state or on this stream
    TRUNCATED_FRAME = 6  # the stream ended in the middle of a frame
    AUTHENTICATION_FAILED = 10  # unknown device, or the challenge signature did not verify
    DEVICE_REVOKED = 11  # the device or its user was deleted
    INVALID_PHONE_NUMBER = 20  # the number does not parse as E.164
    RATE_LIMITED = 21  # too many requests of this kind; retry later
    VERIFICATION_FAILED = 22  # wrong, expired or exhausted enrolment code
    TOO_MANY_DEVICES = 23  # the user already holds MAX_DEVICES_PER_USER devices
    INVALID_REQUEST = 24  # well-formed but refused (e.g. a number not declared by any organisation)
    UNKNOWN_RECIPIENT = 30  # no such user, or not reachable from the sender's organisation
    MISMATCHED_DEVICES = 31  # a SEND did not address exactly the recipient's current devices
    QUEUE_FULL = 32  # a recipient device queue is full; nothing was stored, retry later
    PAYLOAD_TOO_LARGE = 33  # a ciphertext exceeds MAX_CIPHERTEXT_SIZE
    ORGANISATION_SUSPENDED = 40  # the user's organisation is suspended or terminated
    INTERNAL_ERROR = 50  # the relay failed; retry later (also: an unrecognised code received)
    GOING_AWAY = 51  # the relay is shutting down; reconnect, possibly to another node
    REPLACED = 52  # a newer connection of the same device took over
    IDLE_TIMEOUT = 53  # no activity for the idle timeout
    INVALID_PREKEY_SIGNATURE = 60  # an uploaded prekey's signature does not verify; nothing stored
    PREKEY_POOL_FULL = 61  # the upload would overfill a one-time prekey pool; nothing stored

    @classmethod
    def from_wire(cls, value: int) -> ErrorCode:
        """Map a received number to a code; numbers this version does not know -> INTERNAL_ERROR.

        A newer relay may add codes; an older client treats them like an internal error
        (retry with back-off), the same way HTTP clients treat an unknown status as its class.
        """
        try:
            return cls(value)
        except ValueError:
            return cls.INTERNAL_ERROR


# --- Errors ---------------------------------------------------------------------------------------
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


# --- Field validation (shared by every frame's __post_init__) -------------------------------------
def _fail(owner: object, name: str, expected: str, code: ErrorCode) -> LocalProtocolError:
    return LocalProtocolError(code, f"{type(owner).__name__}.{name} must be {expected}")


def _check_int(owner: object, name: str, minimum: int, maximum: int) -> None:
    value = getattr(owner, name)
    # bool is an int subclass; True must never pass as device 1.
    if type(value) is not int or not minimum <= value <= maximum:
        raise _fail(owner, name, f"an int in [{minimum}, {maximum}]", ErrorCode.MALFORMED_FRAME)


def _check_str(owner: object, name: str, max_length: int, min_length: int = 1) -> None:
    value = getattr(owner, name)
    if type(value) is not str or not min_length <= len(value) <= max_length:
        expected = f"a str of {min_length} to {max_length} characters"
        raise _fail(owner, name, expected, ErrorCode.MALFORMED_FRAME)


def _check_bytes(
    owner: object, name: str, min_size: int, max_size: int, too_large: ErrorCode
) -> None:
    value = getattr(owner, name)
    if type(value) is not bytes or len(value) < min_size:
        raise _fail(owner, name, f"bytes of {min_size} to {max_size}", ErrorCode.MALFORMED_FRAME)
    if len(value) > max_size:
        raise _fail(owner, name, f"at most {max_size} bytes", too_large)


def _check_int_tuple(
    owner: object, name: str, *, min_items: int, max_items: int, minimum: int, maximum: int
) -> None:
    values = getattr(owner, name)
    if (
        type(values) is not tuple
        or not min_items <= len(values) <= max_items
        or any(type(value) is not int or not minimum <= value <= maximum for value in values)
    ):
        expected = f"{min_items} to {max_items} ints in [{minimum}, {maximum}]"
        raise _fail(owner, name, expected, ErrorCode.MALFORMED_FRAME)


def _check_str_tuple(owner: object, name: str, min_items: int, max_items: int, length: int) -> None:
    values = getattr(owner, name)
    if (
        type(values) is not tuple
        or not min_items <= len(values) <= max_items
        or any(type(value) is not str or not 1 <= len(value) <= length for value in values)
    ):
        expected = f"{min_items} to {max_items} strs of 1 to {length} characters"
        raise _fail(owner, name, expected, ErrorCode.MALFORMED_FRAME)


# --- Requests (client -> relay) -------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class EnrolStart:
    """Ask the relay to text an enrolment code to a phone number."""

    frame_type: ClassVar[FrameType] = FrameType.ENROL_START
    phone: str  #: the number to enrol, E.164 (``+`` then digits)

    def __post_init__(self) -> None:
        _check_str(self, "phone", MAX_PHONE_LENGTH)


@dataclass(frozen=True, kw_only=True, slots=True)
class EnrolVerify:
    """Prove possession of the number and register this device's identity key."""

    frame_type: ClassVar[FrameType] = FrameType.ENROL_VERIFY
    phone: str  #: the number given in ENROL_START
    code: str  #: the VERIFICATION_CODE_LENGTH digits received by SMS
    identity_key: bytes  #: the device's Ed25519 public key

    def __post_init__(self) -> None:
        _check_str(self, "phone", MAX_PHONE_LENGTH)
        code = self.code
        if type(code) is not str or len(code) != VERIFICATION_CODE_LENGTH or not _digits(code):
            expected = f"{VERIFICATION_CODE_LENGTH} ASCII digits"
            raise _fail(self, "code", expected, ErrorCode.MALFORMED_FRAME)
        _check_bytes(
            self, "identity_key", IDENTITY_KEY_SIZE, IDENTITY_KEY_SIZE, ErrorCode.MALFORMED_FRAME
        )


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


@dataclass(frozen=True, kw_only=True, slots=True)
class Hello:
    """Claim a device identity; the relay answers with a CHALLENGE."""

    frame_type: ClassVar[FrameType] = FrameType.HELLO
    user_id: str  #: the user id returned by ENROLLED
    device_id: int  #: the device id returned by ENROLLED

    def __post_init__(self) -> None:
        _check_str(self, "user_id", MAX_USER_ID_LENGTH)
        _check_int(self, "device_id", 1, MAX_DEVICE_ID)


@dataclass(frozen=True, kw_only=True, slots=True)
class Authenticate:
    """Answer the CHALLENGE: an Ed25519 signature over ``auth_transcript``."""

    frame_type: ClassVar[FrameType] = FrameType.AUTHENTICATE
    signature: bytes  #: SIGNATURE_SIZE bytes, made with the device identity key

    def __post_init__(self) -> None:
        _check_bytes(self, "signature", SIGNATURE_SIZE, SIGNATURE_SIZE, ErrorCode.MALFORMED_FRAME)


@dataclass(frozen=True, kw_only=True, slots=True)
class Lookup:
    """Find which phone numbers belong to reachable, enrolled users."""

    frame_type: ClassVar[FrameType] = FrameType.LOOKUP
    phones: tuple[str, ...]  #: 1 to MAX_LOOKUP_PHONES numbers, E.164

    def __post_init__(self) -> None:
        _check_str_tuple(self, "phones", 1, MAX_LOOKUP_PHONES, MAX_PHONE_LENGTH)


@dataclass(frozen=True, kw_only=True, slots=True)
class Send:
    """One message to one user: a ciphertext for each of the recipient's current devices."""

    frame_type: ClassVar[FrameType] = FrameType.SEND
    recipient_user_id: str  #: the recipient user
    client_message_id: int  #: idempotency key, unique per sending device
    payloads: Mapping[int, bytes]  #: recipient device id -> ciphertext for that device

    def __post_init__(self) -> None:
        _check_str(self, "recipient_user_id", MAX_USER_ID_LENGTH)
        _check_int(self, "client_message_id", 0, MAX_CLIENT_MESSAGE_ID)
        payloads = self.payloads
        if not isinstance(payloads, Mapping) or not 1 <= len(payloads) <= MAX_DEVICES_PER_SEND:
            expected = f"a map of 1 to {MAX_DEVICES_PER_SEND} device ids to ciphertexts"
            raise _fail(self, "payloads", expected, ErrorCode.MALFORMED_FRAME)
        for device_id, ciphertext in payloads.items():
            if type(device_id) is not int or not 1 <= device_id <= MAX_DEVICE_ID:
                expected = f"keyed by device ids in [1, {MAX_DEVICE_ID}]"
                raise _fail(self, "payloads", expected, ErrorCode.MALFORMED_FRAME)
            if type(ciphertext) is not bytes or not ciphertext:
                raise _fail(self, "payloads", "non-empty bytes values", ErrorCode.MALFORMED_FRAME)
            if len(ciphertext) > MAX_CIPHERTEXT_SIZE:
                expected = f"ciphertexts of at most {MAX_CIPHERTEXT_SIZE} bytes"
                raise _fail(self, "payloads", expected, ErrorCode.PAYLOAD_TOO_LARGE)
        if type(payloads) is not MappingProxyType:
            # Frozen means frozen: keep a private read-only copy, not the caller's dict.
            object.__setattr__(self, "payloads", MappingProxyType(dict(payloads)))


@dataclass(frozen=True, kw_only=True, slots=True)
class Ack:
    """Delete delivered envelopes from this device's queue."""

    frame_type: ClassVar[FrameType] = FrameType.ACK
    envelope_ids: tuple[int, ...]  #: 1 to MAX_ACK_IDS ids from DELIVER frames
    answer: bool = True  #: false: the relay sends no ACKED for this one (PROTOCOL.md)

    def __post_init__(self) -> None:
        if type(self.answer) is not bool:
            raise _fail(self, "answer", "a bool", ErrorCode.MALFORMED_FRAME)
        _check_int_tuple(
            self,
            "envelope_ids",
            min_items=1,
            max_items=MAX_ACK_IDS,
            minimum=0,
            maximum=MAX_ENVELOPE_ID,
        )


# --- Responses (relay -> client, on the request's stream) -----------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class EnrolStarted:
    """A code was sent if the number may enrol; the answer is the same either way."""

    frame_type: ClassVar[FrameType] = FrameType.ENROL_STARTED


@dataclass(frozen=True, kw_only=True, slots=True)
class Enrolled:
    """The device is registered; these are its credentials for HELLO."""

    frame_type: ClassVar[FrameType] = FrameType.ENROLLED
    user_id: str  #: the user the number belongs to
    device_id: int  #: the new device's id within that user

    def __post_init__(self) -> None:
        _check_str(self, "user_id", MAX_USER_ID_LENGTH)
        _check_int(self, "device_id", 1, MAX_DEVICE_ID)


@dataclass(frozen=True, kw_only=True, slots=True)
class Challenge:
    """The single-use nonce the device must sign (see ``auth_transcript``)."""

    frame_type: ClassVar[FrameType] = FrameType.CHALLENGE
    nonce: bytes  #: NONCE_SIZE random bytes chosen by the relay for this connection

    def __post_init__(self) -> None:
        _check_bytes(self, "nonce", NONCE_SIZE, NONCE_SIZE, ErrorCode.MALFORMED_FRAME)


@dataclass(frozen=True, kw_only=True, slots=True)
class Authenticated:
    """The connection now acts for the device named in HELLO."""

    frame_type: ClassVar[FrameType] = FrameType.AUTHENTICATED


@dataclass(frozen=True, kw_only=True, slots=True)
class DirectoryEntry:
    """One found user inside LOOKUP_RESULT (a nested value, not a frame)."""

    phone: str  #: the number as it was looked up
    user_id: str  #: the user holding that number
    device_ids: tuple[int, ...]  #: that user's current devices, the keys a SEND must cover

    def __post_init__(self) -> None:
        _check_str(self, "phone", MAX_PHONE_LENGTH)
        _check_str(self, "user_id", MAX_USER_ID_LENGTH)
        _check_int_tuple(
            self,
            "device_ids",
            min_items=0,
            max_items=MAX_DEVICES_PER_USER,
            minimum=1,
            maximum=MAX_DEVICE_ID,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class LookupResult:
    """The found subset of a LOOKUP; unknown or unreachable numbers are simply absent."""

    frame_type: ClassVar[FrameType] = FrameType.LOOKUP_RESULT
    entries: tuple[DirectoryEntry, ...]  #: 0 to MAX_LOOKUP_PHONES entries

    def __post_init__(self) -> None:
        entries = self.entries
        if (
            type(entries) is not tuple
            or len(entries) > MAX_LOOKUP_PHONES
            or any(type(entry) is not DirectoryEntry for entry in entries)
        ):
            expected = f"at most {MAX_LOOKUP_PHONES} directory entries"
            raise _fail(self, "entries", expected, ErrorCode.MALFORMED_FRAME)


@dataclass(frozen=True, kw_only=True, slots=True)
class SendAccepted:
    """The SEND is durably queued for every addressed device."""

    frame_type: ClassVar[FrameType] = FrameType.SEND_ACCEPTED
    duplicate: bool  #: true when this client_message_id had already been accepted

    def __post_init__(self) -> None:
        if type(self.duplicate) is not bool:
            raise _fail(self, "duplicate", "a bool", ErrorCode.MALFORMED_FRAME)


@dataclass(frozen=True, kw_only=True, slots=True)
class Acked:
    """The ACK was applied."""

    frame_type: ClassVar[FrameType] = FrameType.ACKED
    count: int  #: how many of the acknowledged envelopes were still queued and are now deleted

    def __post_init__(self) -> None:
        _check_int(self, "count", 0, MAX_ACK_IDS)


@dataclass(frozen=True, kw_only=True, slots=True)
class Error:
    """The request failed and changed nothing."""

    frame_type: ClassVar[FrameType] = FrameType.ERROR
    code: ErrorCode  #: what went wrong (unknown numbers decode as INTERNAL_ERROR)
    reason: str  #: a short explanation for humans, at most MAX_REASON_LENGTH characters
    missing_devices: tuple[int, ...] = ()  #: MISMATCHED_DEVICES: current devices not addressed
    extra_devices: tuple[int, ...] = ()  #: MISMATCHED_DEVICES: addressed devices that don't exist
    full_devices: tuple[int, ...] = ()  #: QUEUE_FULL: devices whose queue is full

    def __post_init__(self) -> None:
        if not isinstance(self.code, ErrorCode):
            raise _fail(self, "code", "an ErrorCode", ErrorCode.MALFORMED_FRAME)
        _check_str(self, "reason", MAX_REASON_LENGTH, min_length=0)
        for name in ("missing_devices", "extra_devices", "full_devices"):
            _check_int_tuple(
                self,
                name,
                min_items=0,
                max_items=MAX_DEVICES_PER_SEND,
                minimum=1,
                maximum=MAX_DEVICE_ID,
            )


# --- Pushes (relay -> client, on the relay's unidirectional stream) -------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class Deliver:
    """One queued envelope for this device; delete it with ACK."""

    frame_type: ClassVar[FrameType] = FrameType.DELIVER
    envelope_id: int  #: relay-assigned id, stable across redeliveries: deduplicate and ACK by it
    sender_user_id: str  #: the authenticated sender user
    sender_device_id: int  #: the authenticated sender device
    client_message_id: int  #: the sender's idempotency key
    accepted_at: int  #: when the relay committed the SEND, milliseconds since the Unix epoch
    ciphertext: bytes  #: the opaque payload addressed to this device

    def __post_init__(self) -> None:
        _check_int(self, "envelope_id", 0, MAX_ENVELOPE_ID)
        _check_str(self, "sender_user_id", MAX_USER_ID_LENGTH)
        _check_int(self, "sender_device_id", 1, MAX_DEVICE_ID)
        _check_int(self, "client_message_id", 0, MAX_CLIENT_MESSAGE_ID)
        _check_int(self, "accepted_at", 0, MAX_TIMESTAMP_MS)
        _check_bytes(self, "ciphertext", 1, MAX_CIPHERTEXT_SIZE, ErrorCode.PAYLOAD_TOO_LARGE)


@dataclass(frozen=True, kw_only=True, slots=True)
class QueueEmpty:
    """The backlog queued while the device was away has been delivered; live DELIVERs follow."""

    frame_type: ClassVar[FrameType] = FrameType.QUEUE_EMPTY


# The prekey frames live in relay.prekey_frames, which imports this module; naming them by string
# keeps the union complete for the type checker without an import cycle (nothing isinstance()s it).
Frame = Union[  # typing.Union: "A | 'B'" with a string fails at runtime
    EnrolStart,
    EnrolVerify,
    Hello,
    Authenticate,
    Lookup,
    Send,
    Ack,
    EnrolStarted,
    Enrolled,
    Challenge,
    Authenticated,
    LookupResult,
    SendAccepted,
    Acked,
    Error,
    Deliver,
    QueueEmpty,
    "PrekeyFrame",
]

# --- Authentication transcript --------------------------------------------------------------------
AUTH_TRANSCRIPT_LABEL = b"cryptopass/1 authenticate\x00"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def auth_transcript(*, nonce: bytes, user_id: str, device_id: int) -> bytes:
    """The exact bytes a device signs with its Ed25519 identity key to answer a CHALLENGE.

    Layout (PROTOCOL.md "Authentication"): the label ``b"cryptopass/1 authenticate\\x00"``, then
    three fields, each a 4-byte big-endian length followed by that many bytes: the nonce, the
    user id in UTF-8, and the device id as an 8-byte big-endian unsigned integer.

    Raises:
        LocalProtocolError: a field is outside its limit.
    """
    Challenge(nonce=nonce)
    Hello(user_id=user_id, device_id=device_id)
    fields = (nonce, user_id.encode(), _U64.pack(device_id))
    return AUTH_TRANSCRIPT_LABEL + b"".join(_U32.pack(len(field)) + field for field in fields)


_CODEC_NAMES = frozenset({"FrameDecoder", "decode_body", "encode_frame"})


def __getattr__(name: str) -> object:
    """Re-export the codec (PEP 562): it imports this module, so a plain import would be a cycle."""
    if name not in _CODEC_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from relay import frame_codec  # noqa: PLC0415

    value: object = getattr(frame_codec, name)
    globals()[name] = value  # later lookups are plain module attributes
    return value
