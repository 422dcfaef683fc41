"""The numbers of the protocol: frame types and error codes, with the blocks reserved for later.

Sans-IO: enumerations only. ``docs/PROTOCOL.md`` "Frame types" and "Error codes" are the same
tables; a new feature takes its numbers from its reserved block below and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "ERROR_CODE_RANGE",
    "PUSH_RANGE",
    "REQUEST_RANGE",
    "RESERVED_BLOCKS",
    "RESPONSE_RANGE",
    "ErrorCode",
    "FeatureBlock",
    "FrameType",
]

REQUEST_RANGE = range(1, 64)  # frame types a client sends on its own bidirectional streams
RESPONSE_RANGE = range(64, 128)  # frame types the relay answers with, on the request's stream
PUSH_RANGE = range(128, 192)  # frame types the relay pushes on its unidirectional streams
ERROR_CODE_RANGE = range(0, 256)  # error codes, grouped by tens; QUIC close codes are the same


class FrameType(IntEnum):
    """Second element of every frame. Ranges: 1-63 requests, 64-127 responses, 128-191 pushes.

    Each feature under construction owns a block of every range (``RESERVED_BLOCKS``); the other
    unassigned numbers are kept for the core protocol.
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
    PUBLISH_DEVICE_LIST = 16
    LINK_OPEN = 17
    LINK_POST = 18
    LINK_FETCH = 19
    BLOB_CREATE = 24
    BLOB_UPLOAD = 25
    BLOB_STATUS = 26
    BLOB_DOWNLOAD = 27
    MULTI_SEND = 32
    SEALED_MULTI_SEND = 33
    CALL_OPEN = 40
    CALL_JOIN = 41
    CALL_LEAVE = 42
    GET_SENDER_KEYS = 48
    GET_SENDER_CERTIFICATE = 49
    SET_DELIVERY_TOKEN = 50
    SEALED_SEND = 51
    PUSH_SET = 56
    PUSH_CLEAR = 57
    PUSH_GET = 58
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
    DEVICE_LIST_PUBLISHED = 80
    LINK_OPENED = 81
    LINK_POSTED = 82
    LINK_MESSAGES = 83
    BLOB_CREATED = 88
    BLOB_UPLOADED = 89
    BLOB_STATE = 90
    BLOB_DATA = 91
    MULTI_SEND_ACCEPTED = 96
    SEALED_MULTI_SEND_ACCEPTED = 97
    CALL_OPENED = 104
    CALL_JOINED = 105
    CALL_LEFT = 106
    CALL_ELSEWHERE = 107
    SENDER_KEYS = 112
    SENDER_CERTIFICATE = 113
    DELIVERY_TOKEN_SET = 114
    SEALED_SEND_ACCEPTED = 115
    PUSH_TARGET_SET = 120
    PUSH_CLEARED = 121
    PUSH_TARGET = 122
    ERROR = 127
    DELIVER = 128
    QUEUE_EMPTY = 129
    PREKEYS_LOW = 130
    CALL_MEMBERS = 148
    CALL_ENDED = 149


class ErrorCode(IntEnum):
    """Stable error numbers, sent in ERROR frames and used as QUIC application close codes.

    Grouped by tens: framing 1-9, authentication 10-19, enrolment and requests 20-29,
    delivery 30-39, organisation 40-49, server and connection 50-59, prekeys 60-69,
    accounts and linking 70-79, attachments 80-89, calls 100-109, sealed sender 110-119,
    wake-up pushes 120-129.
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
    STALE_DEVICE_LIST = 70  # a published device list's version is not above the stored one
    INVALID_DEVICE_LIST = 71  # malformed, badly signed, another account's, or drops its publisher
    LINK_CHANNEL_UNKNOWN = 72  # no such link channel: unknown, expired, exhausted or not yours
    BLOB_UNKNOWN = 80  # no such blob: unknown, wrong, expired, incomplete or not yours
    BLOB_TOO_LARGE = 81  # the blob's size exceeds the relay's maximum (or its bytes its size)
    BLOB_QUOTA_EXCEEDED = 82  # the organisation's blobs would exceed its quota; nothing stored
    BLOB_OFFSET_MISMATCH = 83  # an upload's offset is not what the relay holds; ask BLOB_STATUS
    CALL_UNKNOWN = 100  # no such call: unknown, ended, or not one this device was invited to
    CALL_FULL = 101  # the call already holds MAX_CALL_PARTICIPANTS devices
    CALLS_UNAVAILABLE = 102  # this relay carries no calls (it runs several worker processes)
    DELIVERY_TOKEN_REFUSED = 110  # a sealed send's token is bad, rotated or absent, or no such
    # recipient: one answer for all, so that it tells no prober who exists
    PUSH_PROVIDER_UNAVAILABLE = 120  # this relay has no such push provider configured
    INVALID_PUSH_TARGET = 121  # the provider refused the target (the reason says why)

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


@dataclass(frozen=True, kw_only=True, slots=True)
class FeatureBlock:
    """The numbers one feature may assign, so that features built side by side never collide.

    A feature assigns its frame types and error codes only inside its block, and moves them from
    here into ``FrameType`` and ``ErrorCode`` as it defines them (``docs/PROTOCOL.md``, "Reserved
    numbers", shows the same table).
    """

    feature: str
    """What the block is for, as the feature's issue names it."""
    requests: range
    """Request frame types (within REQUEST_RANGE)."""
    responses: range
    """Response frame types (within RESPONSE_RANGE)."""
    pushes: range
    """Push frame types (within PUSH_RANGE)."""
    errors: range
    """Error codes (within ERROR_CODE_RANGE): a group of ten."""


RESERVED_BLOCKS: tuple[FeatureBlock, ...] = (
    # Linked devices assigned requests 16-19, responses 80-83 and errors 70-72 (issue 13).
    FeatureBlock(feature="linked devices", requests=range(20, 24), responses=range(84, 88),
                 pushes=range(136, 140), errors=range(73, 80)),
    # Attachments assigned requests 24-27, responses 88-91 and errors 80-83 (issue 18).
    FeatureBlock(feature="attachments", requests=range(28, 32), responses=range(92, 96),
                 pushes=range(140, 144), errors=range(84, 90)),
    # Groups assigned requests 32-33 and responses 96-97 (issue 19).
    FeatureBlock(feature="groups (multi-recipient sends)", requests=range(34, 40),
                 responses=range(98, 104), pushes=range(144, 148), errors=range(90, 100)),
    # Calls assigned requests 40-42, responses 104-107, pushes 148-149 and errors 100-102
    # (issue 20).
    FeatureBlock(feature="calls", requests=range(43, 48), responses=range(108, 112),
                 pushes=range(150, 152), errors=range(103, 110)),
    # Sealed sender assigned requests 48-51, responses 112-115 and error 110 (issue 21).
    FeatureBlock(feature="sealed sender", requests=range(52, 56), responses=range(116, 120),
                 pushes=range(152, 156), errors=range(111, 120)),
    # Wake-up pushes assigned requests 56-58, responses 120-122 and errors 120-121 (issue 22).
    FeatureBlock(feature="wake-up pushes", requests=range(59, 60), responses=range(123, 124),
                 pushes=range(156, 160), errors=range(122, 130)),
)
"""Blocks reserved for the features being built; the core keeps 12-15, 75-79 and 131-135."""
