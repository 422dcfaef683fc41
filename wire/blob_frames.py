"""The frames of attachments: creating, uploading, inspecting and downloading blobs.

A blob is a file's ciphertext, end-to-end encrypted by the sender before it reaches the relay;
the relay sees its size and its bytes, never a key. Sans-IO like :mod:`wire.frames`, whose field
checks (:mod:`wire.checks`) and numbering (:mod:`wire.catalogue`) these frames share;
:mod:`wire.codec` encodes and decodes them like every other frame.

Two of them open a stream whose bytes are then raw (:mod:`wire.protocol`, "raw streams"):
BLOB_UPLOAD (the client's bytes after it are the blob's, until FIN) and BLOB_DATA (the relay's
bytes after it are the blob's, until FIN). PROTOCOL.md "Attachments" is the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from wire.catalogue import ErrorCode, FrameType
from wire.checks import check_bytes, check_int, field_error
from wire.limits import BLOB_ID_SIZE, MAX_BLOB_OFFSET

__all__ = [
    "BLOB_FRAME_CLASSES",
    "BlobCreate",
    "BlobCreated",
    "BlobData",
    "BlobDownload",
    "BlobFrame",
    "BlobRequest",
    "BlobState",
    "BlobStatus",
    "BlobUpload",
    "BlobUploaded",
]


def _check_blob_id(owner: object) -> None:
    check_bytes(owner, "blob_id", BLOB_ID_SIZE, BLOB_ID_SIZE, ErrorCode.MALFORMED_FRAME)


def _check_size(owner: object) -> None:
    # A ciphertext is never empty (each chunk carries its tag), so neither is a blob.
    check_int(owner, "size", 1, MAX_BLOB_OFFSET)


def _check_offset(owner: object, name: str) -> None:
    check_int(owner, name, 0, MAX_BLOB_OFFSET)


# --- Requests (client -> relay) -------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class BlobCreate:
    """Reserve a blob of ``size`` bytes in the device's organisation (its quota counts it)."""

    frame_type: ClassVar[FrameType] = FrameType.BLOB_CREATE
    size: int  #: the ciphertext's exact size in bytes, 1 to the relay's maximum

    def __post_init__(self) -> None:
        _check_size(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class BlobUpload:
    """Open an upload: the first frame of a fresh stream, whose every later byte until FIN is
    the blob's, from ``offset`` on. Only the creating device may upload."""

    frame_type: ClassVar[FrameType] = FrameType.BLOB_UPLOAD
    blob_id: bytes  #: BLOB_ID_SIZE bytes, from BLOB_CREATED
    offset: int  #: the bytes the relay holds already (0, or BLOB_STATE's ``received``)

    def __post_init__(self) -> None:
        _check_blob_id(self)
        _check_offset(self, "offset")


@dataclass(frozen=True, kw_only=True, slots=True)
class BlobStatus:
    """Ask how much of one's own blob the relay holds (to resume an upload)."""

    frame_type: ClassVar[FrameType] = FrameType.BLOB_STATUS
    blob_id: bytes  #: BLOB_ID_SIZE bytes

    def __post_init__(self) -> None:
        _check_blob_id(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class BlobDownload:
    """Read a complete blob from ``offset``: the first and only frame of a fresh stream."""

    frame_type: ClassVar[FrameType] = FrameType.BLOB_DOWNLOAD
    blob_id: bytes  #: BLOB_ID_SIZE bytes, from the end-to-end encrypted message naming the file
    offset: int  #: the first byte wanted (0, or what an interrupted download kept)

    def __post_init__(self) -> None:
        _check_blob_id(self)
        _check_offset(self, "offset")


# --- Responses (relay -> client) ------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class BlobCreated:
    """The blob exists, empty: upload its bytes on a stream of their own."""

    frame_type: ClassVar[FrameType] = FrameType.BLOB_CREATED
    blob_id: bytes  #: BLOB_ID_SIZE random bytes: whoever holds them may download the blob

    def __post_init__(self) -> None:
        _check_blob_id(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class BlobUploaded:
    """The upload's bytes are stored durably (the answer after the client's FIN)."""

    frame_type: ClassVar[FrameType] = FrameType.BLOB_UPLOADED
    received: int  #: the bytes the relay now holds, from the blob's start
    complete: bool  #: whether that is the blob's whole size

    def __post_init__(self) -> None:
        _check_offset(self, "received")
        if type(self.complete) is not bool:
            raise field_error(self, "complete", "a bool")


@dataclass(frozen=True, kw_only=True, slots=True)
class BlobState:
    """How much of the blob the relay holds durably: resume an upload from ``received``."""

    frame_type: ClassVar[FrameType] = FrameType.BLOB_STATE
    size: int  #: the size given to BLOB_CREATE
    received: int  #: 0 to ``size`` bytes held

    def __post_init__(self) -> None:
        _check_size(self)
        check_int(self, "received", 0, self.size)


@dataclass(frozen=True, kw_only=True, slots=True)
class BlobData:
    """A download's header: the stream's later bytes until FIN are the blob's from ``offset``."""

    frame_type: ClassVar[FrameType] = FrameType.BLOB_DATA
    size: int  #: the blob's whole size
    offset: int  #: the first byte that follows (``size - offset`` bytes follow)

    def __post_init__(self) -> None:
        _check_size(self)
        check_int(self, "offset", 0, self.size)


BlobRequest = BlobCreate | BlobUpload | BlobStatus | BlobDownload
"""The requests of attachments."""

BlobFrame = (
    BlobCreate
    | BlobUpload
    | BlobStatus
    | BlobDownload
    | BlobCreated
    | BlobUploaded
    | BlobState
    | BlobData
)

BLOB_FRAME_CLASSES: tuple[type[BlobFrame], ...] = (
    BlobCreate, BlobUpload, BlobStatus, BlobDownload,
    BlobCreated, BlobUploaded, BlobState, BlobData,
)
"""Every frame class of this module, for the codec's catalogue."""
