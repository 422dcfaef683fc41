"""Sample frames of attachments, one per type, shared by the codec and state-table tests."""

from __future__ import annotations

from wire.blob_frames import (
    BlobCreate,
    BlobCreated,
    BlobData,
    BlobDownload,
    BlobState,
    BlobStatus,
    BlobUpload,
    BlobUploaded,
)
from wire.frames import Frame, FrameType

BLOB_ID = bytes(range(32))

BLOB_SAMPLE_FRAMES: dict[FrameType, Frame] = {
    FrameType.BLOB_CREATE: BlobCreate(size=5 * 1024 * 1024),
    FrameType.BLOB_UPLOAD: BlobUpload(blob_id=BLOB_ID, offset=0),
    FrameType.BLOB_STATUS: BlobStatus(blob_id=BLOB_ID),
    FrameType.BLOB_DOWNLOAD: BlobDownload(blob_id=BLOB_ID, offset=1024),
    FrameType.BLOB_CREATED: BlobCreated(blob_id=BLOB_ID),
    FrameType.BLOB_UPLOADED: BlobUploaded(received=5 * 1024 * 1024, complete=True),
    FrameType.BLOB_STATE: BlobState(size=5 * 1024 * 1024, received=262_144),
    FrameType.BLOB_DATA: BlobData(size=5 * 1024 * 1024, offset=1024),
}
