"""The Cryptopass wire vocabulary: one dataclass per frame, and the authentication transcript.

Sans-IO: nothing here touches a socket, the clock or the random source. The limits, numbers and
errors are defined in :mod:`wire.limits`, :mod:`wire.catalogue` and :mod:`wire.errors` and
re-exported here; the byte codec (``encode_frame``, ``decode_body``, ``FrameDecoder``) is
:mod:`wire.codec`, which imports this module.
``docs/PROTOCOL.md`` is the contract this module implements.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

from wire.account_frames import AccountFrame
from wire.blob_frames import BlobFrame
from wire.call_frames import CallFrame
from wire.catalogue import ErrorCode, FrameType
from wire.checks import (
    check_bytes,
    check_int,
    check_int_tuple,
    check_str,
    check_str_tuple,
    field_error,
)
from wire.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from wire.group_frames import MAX_MULTI_SEND_DEVICES, GroupFrame, UserDevices
from wire.limits import (
    ALPN,
    IDENTITY_KEY_SIZE,
    LENGTH_PREFIX_SIZE,
    MAX_ACK_IDS,
    MAX_CIPHERTEXT_SIZE,
    MAX_CLIENT_MESSAGE_ID,
    MAX_DEVICE_ID,
    MAX_DEVICE_LIST_SIZE,
    MAX_DEVICES_PER_SEND,
    MAX_DEVICES_PER_USER,
    MAX_ENVELOPE_ID,
    MAX_FRAME_SIZE,
    MAX_LOOKUP_PHONES,
    MAX_PHONE_LENGTH,
    MAX_REASON_LENGTH,
    MAX_RETRY_AFTER_MS,
    MAX_TIMESTAMP_MS,
    MAX_USER_ID_LENGTH,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    SIGNATURE_SIZE,
    VERIFICATION_CODE_LENGTH,
)
from wire.prekey_frames import PrekeyFrame
from wire.push_frames import PushFrame
from wire.sealed_frames import SealedFrame

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
    "MAX_DEVICE_LIST_SIZE",
    "MAX_ENVELOPE_ID",
    "MAX_FRAME_SIZE",
    "MAX_LOOKUP_PHONES",
    "MAX_PHONE_LENGTH",
    "MAX_REASON_LENGTH",
    "MAX_RETRY_AFTER_MS",
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
]

# --- Limits (docs/PROTOCOL.md "Limits" is the same table) ---------------------------------------

# --- Requests (client -> relay) -------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class EnrolStart:
    """Ask the relay to text an enrolment code to a phone number."""

    frame_type: ClassVar[FrameType] = FrameType.ENROL_START
    phone: str  #: the number to enrol, E.164 (``+`` then digits)

    def __post_init__(self) -> None:
        check_str(self, "phone", MAX_PHONE_LENGTH)


@dataclass(frozen=True, kw_only=True, slots=True)
class EnrolVerify:
    """Prove possession of the number and create a new account with this device as its only one.

    Any earlier devices of the number are revoked (PROTOCOL.md "Accounts, device lists and
    linking").
    """

    frame_type: ClassVar[FrameType] = FrameType.ENROL_VERIFY
    phone: str  #: the number given in ENROL_START
    code: str  #: the VERIFICATION_CODE_LENGTH digits received by SMS
    identity_key: bytes  #: the device's Ed25519 public key
    account_key: bytes  #: the new account's Ed25519 public key
    device_list: bytes  #: version 1, listing only identity_key, signed by account_key

    def __post_init__(self) -> None:
        check_str(self, "phone", MAX_PHONE_LENGTH)
        code = self.code
        if type(code) is not str or len(code) != VERIFICATION_CODE_LENGTH or not _digits(code):
            expected = f"{VERIFICATION_CODE_LENGTH} ASCII digits"
            raise field_error(self, "code", expected)
        check_bytes(
            self, "identity_key", IDENTITY_KEY_SIZE, IDENTITY_KEY_SIZE, ErrorCode.MALFORMED_FRAME
        )
        check_bytes(
            self, "account_key", IDENTITY_KEY_SIZE, IDENTITY_KEY_SIZE, ErrorCode.MALFORMED_FRAME
        )
        check_bytes(self, "device_list", 1, MAX_DEVICE_LIST_SIZE, ErrorCode.MALFORMED_FRAME)


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


@dataclass(frozen=True, kw_only=True, slots=True)
class Hello:
    """Claim a device identity; the relay answers with a CHALLENGE."""

    frame_type: ClassVar[FrameType] = FrameType.HELLO
    user_id: str  #: the user id returned by ENROLLED
    device_id: int  #: the device id returned by ENROLLED

    def __post_init__(self) -> None:
        check_str(self, "user_id", MAX_USER_ID_LENGTH)
        check_int(self, "device_id", 1, MAX_DEVICE_ID)


@dataclass(frozen=True, kw_only=True, slots=True)
class Authenticate:
    """Answer the CHALLENGE: an Ed25519 signature over ``auth_transcript``."""

    frame_type: ClassVar[FrameType] = FrameType.AUTHENTICATE
    signature: bytes  #: SIGNATURE_SIZE bytes, made with the device identity key

    def __post_init__(self) -> None:
        check_bytes(self, "signature", SIGNATURE_SIZE, SIGNATURE_SIZE, ErrorCode.MALFORMED_FRAME)


@dataclass(frozen=True, kw_only=True, slots=True)
class Lookup:
    """Find which phone numbers belong to reachable, enrolled users."""

    frame_type: ClassVar[FrameType] = FrameType.LOOKUP
    phones: tuple[str, ...]  #: 1 to MAX_LOOKUP_PHONES numbers, E.164

    def __post_init__(self) -> None:
        check_str_tuple(self, "phones", 1, MAX_LOOKUP_PHONES, MAX_PHONE_LENGTH)


@dataclass(frozen=True, kw_only=True, slots=True)
class Send:
    """One message to one user: a ciphertext for each of the recipient's current devices."""

    frame_type: ClassVar[FrameType] = FrameType.SEND
    recipient_user_id: str  #: the recipient user
    client_message_id: int  #: idempotency key, unique per sending device
    payloads: Mapping[int, bytes]  #: recipient device id -> ciphertext for that device
    urgent: bool = False  #: wake an absent recipient device at once (a call offer); optional

    def __post_init__(self) -> None:
        check_str(self, "recipient_user_id", MAX_USER_ID_LENGTH)
        check_int(self, "client_message_id", 0, MAX_CLIENT_MESSAGE_ID)
        if type(self.urgent) is not bool:
            raise field_error(self, "urgent", "a bool")
        payloads = self.payloads
        if not isinstance(payloads, Mapping) or not 1 <= len(payloads) <= MAX_DEVICES_PER_SEND:
            expected = f"a map of 1 to {MAX_DEVICES_PER_SEND} device ids to ciphertexts"
            raise field_error(self, "payloads", expected)
        for device_id, ciphertext in payloads.items():
            if type(device_id) is not int or not 1 <= device_id <= MAX_DEVICE_ID:
                expected = f"keyed by device ids in [1, {MAX_DEVICE_ID}]"
                raise field_error(self, "payloads", expected)
            if type(ciphertext) is not bytes or not ciphertext:
                raise field_error(self, "payloads", "non-empty bytes values")
            if len(ciphertext) > MAX_CIPHERTEXT_SIZE:
                expected = f"ciphertexts of at most {MAX_CIPHERTEXT_SIZE} bytes"
                raise field_error(self, "payloads", expected, ErrorCode.PAYLOAD_TOO_LARGE)
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
            raise field_error(self, "answer", "a bool")
        check_int_tuple(
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
        check_str(self, "user_id", MAX_USER_ID_LENGTH)
        check_int(self, "device_id", 1, MAX_DEVICE_ID)


@dataclass(frozen=True, kw_only=True, slots=True)
class Challenge:
    """The single-use nonce the device must sign (see ``auth_transcript``)."""

    frame_type: ClassVar[FrameType] = FrameType.CHALLENGE
    nonce: bytes  #: NONCE_SIZE random bytes chosen by the relay for this connection

    def __post_init__(self) -> None:
        check_bytes(self, "nonce", NONCE_SIZE, NONCE_SIZE, ErrorCode.MALFORMED_FRAME)


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
        check_str(self, "phone", MAX_PHONE_LENGTH)
        check_str(self, "user_id", MAX_USER_ID_LENGTH)
        check_int_tuple(
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
            raise field_error(self, "entries", expected)


@dataclass(frozen=True, kw_only=True, slots=True)
class SendAccepted:
    """The SEND is durably queued for every addressed device."""

    frame_type: ClassVar[FrameType] = FrameType.SEND_ACCEPTED
    duplicate: bool  #: true when this client_message_id had already been accepted

    def __post_init__(self) -> None:
        if type(self.duplicate) is not bool:
            raise field_error(self, "duplicate", "a bool")


@dataclass(frozen=True, kw_only=True, slots=True)
class Acked:
    """The ACK was applied."""

    frame_type: ClassVar[FrameType] = FrameType.ACKED
    count: int  #: how many of the acknowledged envelopes were still queued and are now deleted

    def __post_init__(self) -> None:
        check_int(self, "count", 0, MAX_ACK_IDS)


@dataclass(frozen=True, kw_only=True, slots=True)
class Error:
    """The request failed and changed nothing."""

    frame_type: ClassVar[FrameType] = FrameType.ERROR
    code: ErrorCode  #: what went wrong (unknown numbers decode as INTERNAL_ERROR)
    reason: str  #: a short explanation for humans, at most MAX_REASON_LENGTH characters
    missing_devices: tuple[int, ...] = ()  #: MISMATCHED_DEVICES: current devices not addressed
    extra_devices: tuple[int, ...] = ()  #: MISMATCHED_DEVICES: addressed devices that don't exist
    full_devices: tuple[int, ...] = ()  #: QUEUE_FULL: devices whose queue is full
    #: RATE_LIMITED (and other "later" refusals): milliseconds to wait before trying again; None
    #: when the relay names no time (absent from older relays' frames too)
    retry_after_ms: int | None = None
    #: MULTI_SEND's MISMATCHED_DEVICES and QUEUE_FULL: the devices concerned, per user
    users: tuple[UserDevices, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.code, ErrorCode):
            raise field_error(self, "code", "an ErrorCode")
        check_str(self, "reason", MAX_REASON_LENGTH, min_length=0)
        if self.retry_after_ms is not None:
            check_int(self, "retry_after_ms", 0, MAX_RETRY_AFTER_MS)
        for name in ("missing_devices", "extra_devices", "full_devices"):
            check_int_tuple(
                self,
                name,
                min_items=0,
                max_items=MAX_DEVICES_PER_SEND,
                minimum=1,
                maximum=MAX_DEVICE_ID,
            )
        users = self.users
        if (type(users) is not tuple or len(users) > MAX_MULTI_SEND_DEVICES
                or any(type(user) is not UserDevices for user in users)):
            raise field_error(self, "users", f"at most {MAX_MULTI_SEND_DEVICES} user entries")


# --- Pushes (relay -> client, on the relay's unidirectional stream) -------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class Deliver:
    """One queued envelope for this device; delete it with ACK."""

    frame_type: ClassVar[FrameType] = FrameType.DELIVER
    envelope_id: int  #: relay-assigned id, stable across redeliveries: deduplicate and ACK by it
    client_message_id: int  #: the sender's idempotency key (for a sealed send, one derived from it)
    accepted_at: int  #: when the relay committed the SEND, milliseconds since the Unix epoch
    ciphertext: bytes  #: the opaque payload addressed to this device
    #: a MULTI_SEND's shared ciphertext, the same for every device it went to; absent for a
    #: SEND's envelope (then ``ciphertext`` is the whole message, else this device's key material)
    sender_user_id: str | None = None  #: the authenticated sender user; absent: a sealed envelope
    sender_device_id: int | None = None  #: the authenticated sender device; absent when sealed
    shared: bytes | None = None

    @property
    def sealed(self) -> bool:
        """A sealed envelope: the relay does not know its sender (it is inside the ciphertext)."""
        return self.sender_user_id is None

    def __post_init__(self) -> None:
        check_int(self, "envelope_id", 0, MAX_ENVELOPE_ID)
        if (self.sender_user_id is None) != (self.sender_device_id is None):
            raise field_error(self, "sender_device_id", "present exactly when sender_user_id is")
        if self.sender_user_id is not None:
            check_str(self, "sender_user_id", MAX_USER_ID_LENGTH)
            check_int(self, "sender_device_id", 1, MAX_DEVICE_ID)
        check_int(self, "client_message_id", 0, MAX_CLIENT_MESSAGE_ID)
        check_int(self, "accepted_at", 0, MAX_TIMESTAMP_MS)
        check_bytes(self, "ciphertext", 1, MAX_CIPHERTEXT_SIZE, ErrorCode.PAYLOAD_TOO_LARGE)
        if self.shared is not None:
            check_bytes(self, "shared", 1, MAX_CIPHERTEXT_SIZE, ErrorCode.PAYLOAD_TOO_LARGE)


@dataclass(frozen=True, kw_only=True, slots=True)
class QueueEmpty:
    """The backlog queued while the device was away has been delivered; live DELIVERs follow."""

    frame_type: ClassVar[FrameType] = FrameType.QUEUE_EMPTY


# Every frame of the protocol: the prekey service's, the accounts', the attachments', the
# pushes', the calls' and sealed sender's included.
Frame = (
    EnrolStart
    | EnrolVerify
    | Hello
    | Authenticate
    | Lookup
    | Send
    | Ack
    | EnrolStarted
    | Enrolled
    | Challenge
    | Authenticated
    | LookupResult
    | SendAccepted
    | Acked
    | Error
    | Deliver
    | QueueEmpty
    | PrekeyFrame
    | AccountFrame
    | PushFrame
    | BlobFrame
    | GroupFrame
    | CallFrame
    | SealedFrame
)

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

