"""Blobs on the relay: creating them, streaming uploads into the store and downloads out of it.

A blob is a file's ciphertext (PROTOCOL.md "Attachments"); the relay sees its size and bytes,
never a key. The policy:

* BLOB_CREATE: an authenticated device, at most BLOB_CREATES_PER_HOUR a device, a size within
  ``blob_max_bytes`` (BLOB_TOO_LARGE), its organisation within
  ``blob_quota_per_organisation_bytes`` (BLOB_QUOTA_EXCEEDED; the store checks the quota in the
  transaction that creates the blob, on every node). The blob lives ``blob_ttl_ms``, or only
  ``blob_upload_deadline_ms`` if its upload is not complete by then.
* BLOB_UPLOAD and BLOB_STATUS: the creating device only; BLOB_DOWNLOAD: any authenticated
  device holding the id, once the blob is complete. Every other case (unknown, wrong, expired,
  incomplete, another device's) is BLOB_UNKNOWN with one reason, decided after one store read:
  an answer never tells that an id exists.

Memory stays flat whatever the size. An upload's bytes go to the store in pieces of at most
BLOB_PIECE_BYTES as they arrive; until appended they count as held by the connection
(``QuicLink.hold_received``), so its QUIC receive window does not slide past them and the
client cannot send faster than the store writes. A download reads pieces of BLOB_PIECE_BYTES
and writes each only once the stream's unacknowledged bytes are at most
DOWNLOAD_SEND_BUFFER_BYTES, so aioquic's send buffer does not grow with the file.

Each connection's upload and download streams (their raw bytes, their ends, how many run) are
``relay.blob_streams``. Logs name outcomes and sizes only: never a blob id (a capability) or a
byte of a blob.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from relay.context import RequestDevice, UploadSource
from relay.metrics import RelayMetrics
from relay.settings import RelaySettings
from storage.base import (
    BlobInfo,
    BlobOffsetMismatch,
    BlobPastSize,
    BlobQuotaExceeded,
    BlobStore,
    NotFound,
    RateLimits,
)
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
from wire.codec import encode_frame
from wire.frames import Error, ErrorCode

__all__ = [
    "BLOB_CREATES_PER_HOUR",
    "BLOB_CREATE_PERIOD_MS",
    "BLOB_PIECE_BYTES",
    "DOWNLOAD_SEND_BUFFER_BYTES",
    "MIN_BLOB_APPEND_BYTES",
    "BlobService",
    "BlobServiceStore",
    "blob_error",
    "unknown_blob",
]

log = structlog.get_logger("relay.blobs")

BLOB_CREATES_PER_HOUR = 120
"""BLOB_CREATEs one device may make per hour (two a minute on average, bursts of 120): a
person sharing an album, not a script churning blob rows; the quota bounds the bytes."""

BLOB_CREATE_PERIOD_MS = 60 * 60 * 1000
"""The period over which BLOB_CREATES_PER_HOUR refill (one hour)."""

MIN_BLOB_APPEND_BYTES = 64 * 1024
"""An upload's bytes wait until this many have arrived (or the stream ended) before they are
appended: each append costs a commit and an fsync (a chunk row on PostgreSQL), so a client
trickling a few bytes per packet pays 64 KiB of its own traffic for each one. The 4 uploads
one connection may run (relay.blob_streams.MAX_BLOB_STREAMS_PER_CONNECTION) together wait for
at most 256 KiB, a quarter of its 1 MiB receive window: waiting never stalls the window."""

BLOB_PIECE_BYTES = 256 * 1024
"""Bytes appended to or read from the store at once (at most the store's 1 MiB): what one
transfer holds in memory beside its QUIC window, and one fsync per piece on an upload."""

DOWNLOAD_SEND_BUFFER_BYTES = 512 * 1024
"""Unacknowledged bytes a download's stream may hold before the next piece is written: two
pieces in flight keep a loopback or LAN path busy without the buffer growing with the file."""

_UNKNOWN_BLOB = "no such file: unknown, expired, not complete or not yours"
"""One reason for every refusal about an id (module docstring)."""


class BlobServiceStore(BlobStore, RateLimits, Protocol):
    """What the blob service needs of the store: the blobs, and the BLOB_CREATE allowance."""


def unknown_blob() -> bytes:
    """The one answer to an id that cannot be used: missing, wrong, expired or not yours."""
    return blob_error(ErrorCode.BLOB_UNKNOWN, _UNKNOWN_BLOB)


def blob_error(code: ErrorCode, reason: str, *, retry_after_ms: int | None = None) -> bytes:
    return encode_frame(Error(code=code, reason=reason, retry_after_ms=retry_after_ms))


class BlobService:
    """Answers the blob requests of authenticated devices (PROTOCOL.md "Attachments")."""

    def __init__(self, store: BlobServiceStore, *, settings: RelaySettings,
                 metrics: RelayMetrics, now_ms: Callable[[], int]) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._now_ms = now_ms

    async def create(self, device: RequestDevice, frame: BlobCreate) -> bytes:
        settings, metrics = self._settings, self._metrics
        if frame.size > settings.blob_max_bytes:
            metrics.blob_refusals["too_large"] += 1
            return blob_error(ErrorCode.BLOB_TOO_LARGE,
                          f"the file is {frame.size} bytes encrypted; this relay takes files of "
                          f"at most {settings.blob_max_bytes} bytes")
        now = self._now_ms()
        if not await self._store.take_tokens(
                key=f"blob create {device.user_id} {device.device_id}", cost=1,
                capacity=BLOB_CREATES_PER_HOUR, period_ms=BLOB_CREATE_PERIOD_MS, now=now):
            metrics.blob_refusals["rate_limited"] += 1
            metrics.rate_limited += 1
            return blob_error(ErrorCode.RATE_LIMITED,
                          f"too many files from this device (at most {BLOB_CREATES_PER_HOUR} "
                          f"an hour); retry later",
                          retry_after_ms=BLOB_CREATE_PERIOD_MS // BLOB_CREATES_PER_HOUR)
        quota = settings.blob_quota_per_organisation_bytes
        try:
            blob_id = await self._store.create_blob(
                organisation_id=device.organisation_id, user_id=device.user_id,
                device_id=device.device_id, size=frame.size, quota_bytes=quota, now_ms=now,
                expires_ms=now + settings.blob_ttl_ms,
                upload_deadline_ms=now + settings.blob_upload_deadline_ms)
        except BlobQuotaExceeded:
            metrics.blob_refusals["quota_exceeded"] += 1
            return blob_error(ErrorCode.BLOB_QUOTA_EXCEEDED,
                          f"your organisation's files would exceed its quota of {quota} bytes; "
                          f"nothing was stored (files expire, or ask your administrator)")
        except NotFound:  # the device's user left its organisation meanwhile
            metrics.blob_refusals["unknown"] += 1
            return unknown_blob()
        metrics.blobs_created += 1
        log.info("blob_created", size=frame.size)
        return encode_frame(BlobCreated(blob_id=blob_id))

    async def _own_blob(self, device: RequestDevice, blob_id: bytes) -> BlobInfo | None:
        """The blob if it exists, unexpired, and ``device`` created it; else None."""
        info = await self._usable(blob_id)
        if info is None or (info.user_id, info.device_id, info.organisation_id) != (
                device.user_id, device.device_id, device.organisation_id):
            return None
        return info

    async def _usable(self, blob_id: bytes) -> BlobInfo | None:
        now = self._now_ms()
        info = await self._store.blob_info(blob_id, now)
        if info is None or info.expires_ms <= now or not hmac.compare_digest(info.blob_id,
                                                                              blob_id):
            return None
        return info

    async def status(self, device: RequestDevice, frame: BlobStatus) -> bytes:
        info = await self._own_blob(device, frame.blob_id)
        if info is None:
            self._metrics.blob_refusals["unknown"] += 1
            return unknown_blob()
        return encode_frame(BlobState(size=info.size, received=info.received))

    async def upload(self, device: RequestDevice, frame: BlobUpload, intake: UploadSource) -> bytes:
        """Append the stream's bytes in pieces as they arrive; the answer once it ended (or
        the refusal, at once: the caller then stops the stream)."""
        metrics = self._metrics
        info = await self._own_blob(device, frame.blob_id)
        if info is None:
            metrics.blob_refusals["unknown"] += 1
            return unknown_blob()
        if frame.offset != info.received:
            metrics.blob_refusals["offset_mismatch"] += 1
            return _offset_mismatch(info.received)
        received, size = info.received, info.size
        while (piece := await intake.take(BLOB_PIECE_BYTES,
                                               at_least=MIN_BLOB_APPEND_BYTES)) is not None:
            keep = piece[:size - received]
            try:
                if keep:
                    received = await self._store.append_blob(frame.blob_id, received, keep)
                    metrics.blob_bytes_uploaded += len(keep)
            except BlobOffsetMismatch as mismatch:  # another upload of the blob got there first
                metrics.blob_refusals["offset_mismatch"] += 1
                return _offset_mismatch(mismatch.received)
            except (NotFound, BlobPastSize):  # expired and swept, or deleted, meanwhile
                metrics.blob_refusals["unknown"] += 1
                return unknown_blob()
            finally:
                intake.release(len(piece))
            if len(keep) < len(piece):
                metrics.blob_refusals["too_large"] += 1
                return blob_error(ErrorCode.BLOB_TOO_LARGE,
                              f"the upload goes past the file's declared {size} bytes; the "
                              f"{received} bytes within it are kept, nothing past them")
        if intake.closed:
            return b""  # reset or failed: the stream carries no answer
        if received == size:
            log.info("blob_uploaded", size=size)
        return encode_frame(BlobUploaded(received=received, complete=received == size))

    async def download(self, frame: BlobDownload, *, answer: Callable[[bytes, bool], None],
                       write: Callable[[bytes], None],
                       wait_room: Callable[[int], Awaitable[None]]) -> None:
        """Answer with BLOB_DATA (``answer(frame, False)``) and the bytes from the offset, each
        piece written once ``wait_room`` says the stream's buffer has room; or with the refusal
        (``answer(error, True)``). The caller ends the stream once this returns."""
        info = await self._usable(frame.blob_id)
        if info is None or not info.complete:
            self._metrics.blob_refusals["unknown"] += 1
            answer(unknown_blob(), True)
            return
        if frame.offset > info.size:
            self._metrics.blob_refusals["bad_offset"] += 1
            answer(blob_error(ErrorCode.INVALID_REQUEST,
                          f"offset {frame.offset} is past the file's {info.size} bytes"), True)
            return
        answer(encode_frame(BlobData(size=info.size, offset=frame.offset)), False)
        offset = frame.offset
        while offset < info.size:
            await wait_room(DOWNLOAD_SEND_BUFFER_BYTES)
            try:
                piece = await self._store.read_blob(frame.blob_id, offset,
                                                    min(BLOB_PIECE_BYTES, info.size - offset))
            except NotFound:
                piece = b""
            if not piece:  # deleted meanwhile: the stream ends short, the client sees it
                log.info("blob_download_cut", size=info.size)
                return
            write(piece)
            offset += len(piece)
            self._metrics.blob_bytes_downloaded += len(piece)


def _offset_mismatch(received: int) -> bytes:
    return blob_error(ErrorCode.BLOB_OFFSET_MISMATCH,
                  f"the relay holds {received} bytes of this file: upload from offset "
                  f"{received} (BLOB_STATUS tells it too)")
