"""The frames of calls: asking the relay for a media session, joining, leaving, and its pushes.

Sans-IO like :mod:`wire.frames`, whose field checks (:mod:`wire.checks`) and numbering
(:mod:`wire.catalogue`) these frames share. The media itself never travels in a frame: it rides
QUIC DATAGRAM frames (RFC 9221) of the connection that joined, each one the 4-byte tag from
CALL_OPENED or CALL_JOINED followed by an opaque payload (an SFrame ciphertext);
:func:`pack_media` and :func:`unpack_media` are that layout. PROTOCOL.md "Calls" is the contract.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from wire.catalogue import ErrorCode, FrameType
from wire.checks import check_bytes, check_int, check_str, check_str_tuple, field_error
from wire.limits import MAX_USER_ID_LENGTH

__all__ = [
    "CALL_FRAME_CLASSES",
    "CALL_ID_SIZE",
    "CALL_SIGNAL_TTL_MS",
    "CALL_TAG_SIZE",
    "MAX_CALL_ADDRESS_LENGTH",
    "MAX_CALL_DATAGRAM_PAYLOAD",
    "MAX_CALL_END_REASON_LENGTH",
    "MAX_CALL_INVITEES",
    "MAX_CALL_PARTICIPANTS",
    "MAX_CALL_TAG",
    "CallElsewhere",
    "CallEnded",
    "CallFrame",
    "CallJoin",
    "CallJoined",
    "CallLeave",
    "CallLeft",
    "CallMembers",
    "CallOpen",
    "CallOpened",
    "CallPush",
    "CallRequest",
    "pack_media",
    "unpack_media",
]

CALL_ID_SIZE = 16  # bytes of a call id: 128 random bits, unguessable, like a link channel id
MAX_CALL_PARTICIPANTS = 8  # devices in one call at once: a small group call the relay fans out
MAX_CALL_INVITEES = MAX_CALL_PARTICIPANTS - 1  # users a CALL_OPEN names besides the opener's own
CALL_TAG_SIZE = 4  # bytes of the big-endian tag in front of every media datagram
MAX_CALL_TAG = 2**32 - 1  # the largest tag CALL_TAG_SIZE bytes hold
MAX_CALL_DATAGRAM_PAYLOAD = 1000  # bytes of media after the tag: 30 video frames/s of 1,000 bytes
# fit, and tag + payload + QUIC overhead stay under the ~1,100 bytes aioquic can send in one packet
MAX_CALL_END_REASON_LENGTH = 64  # characters of a CALL_ENDED reason: a word such as "timeout"
MAX_CALL_ADDRESS_LENGTH = 262  # characters of a node address "host:port" (a DNS name is <= 253)
CALL_SIGNAL_TTL_MS = 60_000  # an urgent (call) envelope waits at most a minute for its device:
# an offer older than that is never rung, so the relay drops it rather than deliver it late

_TAG = struct.Struct(">I")


def pack_media(tag: int, payload: bytes) -> bytes:
    """The datagram carrying ``payload`` on the call joined with ``tag``."""
    return _TAG.pack(tag) + payload


def unpack_media(datagram: bytes) -> tuple[int, bytes] | None:
    """(tag, payload) of a media datagram; None for one too short to hold a tag."""
    if len(datagram) < CALL_TAG_SIZE:
        return None
    (tag,) = _TAG.unpack_from(datagram, 0)
    return int(tag), datagram[CALL_TAG_SIZE:]


def _check_call_id(owner: object) -> None:
    check_bytes(owner, "call_id", CALL_ID_SIZE, CALL_ID_SIZE, ErrorCode.MALFORMED_FRAME)


# --- Requests (client -> relay) -------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class CallOpen:
    """Ask for a media session with these users; the asking device joins it at once.

    Granted only if the asker may message every invitee (the organisation policy, as for SEND);
    refused UNKNOWN_RECIPIENT otherwise, exactly as an unknown user is.
    """

    frame_type: ClassVar[FrameType] = FrameType.CALL_OPEN
    invitees: tuple[str, ...]  #: 1 to MAX_CALL_INVITEES distinct user ids

    def __post_init__(self) -> None:
        check_str_tuple(self, "invitees", 1, MAX_CALL_INVITEES, MAX_USER_ID_LENGTH)
        if len(set(self.invitees)) != len(self.invitees):
            raise field_error(self, "invitees", "distinct user ids")


@dataclass(frozen=True, kw_only=True, slots=True)
class CallJoin:
    """Join a call as one of its invited users' devices (or another device of the opener's)."""

    frame_type: ClassVar[FrameType] = FrameType.CALL_JOIN
    call_id: bytes  #: CALL_ID_SIZE bytes, from the caller's end-to-end encrypted offer

    def __post_init__(self) -> None:
        _check_call_id(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class CallLeave:
    """Leave a call this connection joined; the last one to leave ends it."""

    frame_type: ClassVar[FrameType] = FrameType.CALL_LEAVE
    call_id: bytes  #: CALL_ID_SIZE bytes

    def __post_init__(self) -> None:
        _check_call_id(self)


# --- Responses (relay -> client) ------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class CallOpened:
    """The session exists and this connection is its first participant."""

    frame_type: ClassVar[FrameType] = FrameType.CALL_OPENED
    call_id: bytes  #: CALL_ID_SIZE random bytes: put it in the offer
    tag: int  #: this connection's tag for the call, in front of every media datagram

    def __post_init__(self) -> None:
        _check_call_id(self)
        check_int(self, "tag", 0, MAX_CALL_TAG)


@dataclass(frozen=True, kw_only=True, slots=True)
class CallJoined:
    """This connection is a participant now."""

    frame_type: ClassVar[FrameType] = FrameType.CALL_JOINED
    tag: int  #: this connection's tag for the call
    participants: int  #: devices in the call now, this one included: 2 to MAX_CALL_PARTICIPANTS

    def __post_init__(self) -> None:
        check_int(self, "tag", 0, MAX_CALL_TAG)
        check_int(self, "participants", 1, MAX_CALL_PARTICIPANTS)


@dataclass(frozen=True, kw_only=True, slots=True)
class CallLeft:
    """This connection is no longer a participant (also when it was not one)."""

    frame_type: ClassVar[FrameType] = FrameType.CALL_LEFT


@dataclass(frozen=True, kw_only=True, slots=True)
class CallElsewhere:
    """The call is held by another node of this cluster: join it there, on a connection of its
    own to ``address`` (docs/CLUSTER.md "Calls")."""

    frame_type: ClassVar[FrameType] = FrameType.CALL_ELSEWHERE
    call_id: bytes  #: CALL_ID_SIZE bytes, the call asked for
    address: str  #: "host:port" the holding node advertises, at most MAX_CALL_ADDRESS_LENGTH

    def __post_init__(self) -> None:
        _check_call_id(self)
        check_str(self, "address", MAX_CALL_ADDRESS_LENGTH)


# --- Pushes (relay -> client, on the relay's unidirectional stream) -------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class CallMembers:
    """Someone joined or left a call this connection takes part in."""

    frame_type: ClassVar[FrameType] = FrameType.CALL_MEMBERS
    call_id: bytes  #: CALL_ID_SIZE bytes
    participants: int  #: devices in the call now, 1 to MAX_CALL_PARTICIPANTS

    def __post_init__(self) -> None:
        _check_call_id(self)
        check_int(self, "participants", 1, MAX_CALL_PARTICIPANTS)


@dataclass(frozen=True, kw_only=True, slots=True)
class CallEnded:
    """The call is over for this connection; its tag means nothing any more."""

    frame_type: ClassVar[FrameType] = FrameType.CALL_ENDED
    call_id: bytes  #: CALL_ID_SIZE bytes
    reason: str  #: "alone", "idle", "too_long" or "shutdown"; at most MAX_CALL_END_REASON_LENGTH

    def __post_init__(self) -> None:
        _check_call_id(self)
        check_str(self, "reason", MAX_CALL_END_REASON_LENGTH)


CallRequest = CallOpen | CallJoin | CallLeave
"""The requests of calls."""

CallPush = CallMembers | CallEnded
"""The pushes of calls."""

CallFrame = (CallOpen | CallJoin | CallLeave | CallOpened | CallJoined | CallLeft | CallElsewhere
             | CallMembers | CallEnded)

CALL_FRAME_CLASSES: tuple[type[CallFrame], ...] = (
    CallOpen, CallJoin, CallLeave, CallOpened, CallJoined, CallLeft, CallElsewhere, CallMembers,
    CallEnded,
)
"""Every frame class of this module, for the codec's catalogue."""
