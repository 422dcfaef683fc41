"""Blobs on the relay: creating them, streaming uploads into the store and downloads out of it.

A blob is a file's ciphertext (PROTOCOL.md "Attachments"); the relay sees its size and bytes,
never a key. The policy:

* BLOB_CREATE: an authenticated device, at most BLOB_CREATES_PER_HOUR a device, a size within
  ``blob_max_bytes`` (BLOB_TOO_LARGE), its organisation within
  ``blob_quota_per_organisation_bytes`` (BLOB_QUOTA_EXCEEDED; the store checks the quota in the
  transaction that creates the blob, on every node). The blob lives ``blob_ttl_ms``.
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

Logs name outcomes and sizes only: never a blob id (a capability) or a byte of a blob.
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog
import trio

from relay.context import BlobRequests, RequestDevice, UploadSource
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
from transport.quic import QuicLink
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
    "MAX_BLOB_STREAMS_PER_CONNECTION",
    "RETRY_AFTER_STREAM_MS",
    "BlobService",
    "BlobServiceStore",
    "ConnectionBlobs",
    "RawIntake",
    "unknown_blob",
]

log = structlog.get_logger("relay.blobs")

BLOB_CREATES_PER_HOUR = 120
"""BLOB_CREATEs one device may make per hour (two a minute on average, bursts of 120): a
person sharing an album, not a script churning blob rows; the quota bounds the bytes."""

BLOB_CREATE_PERIOD_MS = 60 * 60 * 1000
"""The period over which BLOB_CREATES_PER_HOUR refill (one hour)."""

MAX_BLOB_STREAMS_PER_CONNECTION = 4
"""Uploads and downloads one connection may run at once (beyond: RATE_LIMITED): each holds a
store piece and a task; a client sends files one after another, a few at most side by side."""

RETRY_AFTER_STREAM_MS = 1000
"""retry_after_ms of a transfer refused for MAX_BLOB_STREAMS_PER_CONNECTION: a piece of another
transfer completes within round trips; the client retries once one has finished anyway."""

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
    return _error(ErrorCode.BLOB_UNKNOWN, _UNKNOWN_BLOB)


def _error(code: ErrorCode, reason: str, *, retry_after_ms: int | None = None) -> bytes:
    return encode_frame(Error(code=code, reason=reason, retry_after_ms=retry_after_ms))


class RawIntake:
    """The raw bytes of one upload stream, on their way from the connection's event handler
    (``feed``, synchronous) to the upload task (``take``).

    Every byte fed counts as held by the connection (``hold``) until the task, having appended
    it, gives it back (``release``); bytes fed once the intake is closed are dropped at once.
    """

    def __init__(self, *, hold: Callable[[int], None], release: Callable[[int], None]) -> None:
        self._hold = hold
        self._release = release
        self._chunks: deque[bytes] = deque()
        self._held = 0
        self._arrived = trio.Event()
        self.ended = False
        """The client finished the stream (FIN): every byte has been fed."""
        self.closed = False
        """The upload is over (answered, failed or reset): nothing more is kept."""

    @property
    def held(self) -> int:
        """Bytes fed and not yet released."""
        return self._held

    def feed(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self._chunks.append(data)
        self._held += len(data)
        self._hold(len(data))
        self._arrived.set()

    def end(self) -> None:
        self.ended = True
        self._arrived.set()

    def close(self) -> None:
        """Drop what waits and give it back; later bytes are dropped as they come."""
        self.closed = True
        self._chunks.clear()
        self.release(self._held)
        self._arrived.set()

    def release(self, size: int) -> None:
        """``size`` bytes taken are stored (or dropped): the connection may receive more."""
        size = min(size, self._held)
        if size:
            self._held -= size
            self._release(size)

    async def take(self, limit: int) -> bytes | None:
        """The next bytes, at most ``limit`` (joined from what arrived); None once the stream
        ended (or the intake closed) with nothing left. Release them once stored."""
        while not self._chunks:
            if self.ended or self.closed:
                return None
            self._arrived = trio.Event()
            await self._arrived.wait()
        pieces: list[bytes] = []
        size = 0
        chunks = self._chunks
        while chunks and size < limit:
            chunk = chunks.popleft()
            if size + len(chunk) > limit:
                cut = limit - size
                chunks.appendleft(chunk[cut:])
                chunk = chunk[:cut]
            pieces.append(chunk)
            size += len(chunk)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


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
            return _error(ErrorCode.BLOB_TOO_LARGE,
                          f"the file is {frame.size} bytes encrypted; this relay takes files of "
                          f"at most {settings.blob_max_bytes} bytes")
        now = self._now_ms()
        if not await self._store.take_tokens(
                key=f"blob create {device.user_id} {device.device_id}", cost=1,
                capacity=BLOB_CREATES_PER_HOUR, period_ms=BLOB_CREATE_PERIOD_MS, now=now):
            metrics.blob_refusals["rate_limited"] += 1
            metrics.rate_limited += 1
            return _error(ErrorCode.RATE_LIMITED,
                          f"too many files from this device (at most {BLOB_CREATES_PER_HOUR} "
                          f"an hour); retry later",
                          retry_after_ms=BLOB_CREATE_PERIOD_MS // BLOB_CREATES_PER_HOUR)
        quota = settings.blob_quota_per_organisation_bytes
        try:
            blob_id = await self._store.create_blob(
                organisation_id=device.organisation_id, user_id=device.user_id,
                device_id=device.device_id, size=frame.size, quota_bytes=quota, now_ms=now,
                expires_ms=now + settings.blob_ttl_ms)
        except BlobQuotaExceeded:
            metrics.blob_refusals["quota_exceeded"] += 1
            return _error(ErrorCode.BLOB_QUOTA_EXCEEDED,
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
        while (piece := await intake.take(BLOB_PIECE_BYTES)) is not None:
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
                return _error(ErrorCode.BLOB_TOO_LARGE,
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
            answer(_error(ErrorCode.INVALID_REQUEST,
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
    return _error(ErrorCode.BLOB_OFFSET_MISMATCH,
                  f"the relay holds {received} bytes of this file: upload from offset "
                  f"{received} (BLOB_STATUS tells it too)")


class ConnectionBlobs:
    """One connection's blob streams: their intakes, how many run, and their ends.

    An upload or download stream carries one request and raw bytes, so it is answered outside
    the session's per-stream answer slots: this class writes its answer and ends our side (once,
    whatever happens first: the answer, a refusal, the stream's failure or reset), and forgets
    the stream once both sides have ended. Its tasks are the session's request tasks (``spawn``),
    cancelled with the connection.
    """

    def __init__(self, *, service: BlobRequests, link: QuicLink, metrics: RelayMetrics,
                 spawn: Callable[[Callable[[], Awaitable[None]]], trio.CancelScope]) -> None:
        self._service = service
        self._link = link
        self._metrics = metrics
        self._spawn = spawn
        self._ours_ended: dict[int, bool] = {}
        """Blob streams -> whether our side has ended."""
        self._peer_ended: set[int] = set()
        self._written: set[int] = set()
        """Download streams whose BLOB_DATA left: they end by FIN or reset, never an ERROR."""
        self._intakes: dict[int, RawIntake] = {}
        self._scopes: dict[int, trio.CancelScope] = {}
        self._running = 0
        """Uploads and downloads running (MAX_BLOB_STREAMS_PER_CONNECTION)."""

    @property
    def running(self) -> int:
        """Uploads and downloads running now."""
        return self._running

    def owns(self, stream_id: int) -> bool:
        """Whether ``stream_id`` is a blob stream this class answers and ends."""
        return stream_id in self._ours_ended

    def upload(self, stream_id: int, device: RequestDevice, frame: BlobUpload) -> None:
        """Start storing a BLOB_UPLOAD stream's bytes."""
        self._ours_ended[stream_id] = False
        if not self._admit(stream_id):
            self._link.stop_stream(stream_id, int(ErrorCode.RATE_LIMITED))
            return
        link = self._link
        intake = RawIntake(hold=link.hold_received, release=link.release_received)
        self._intakes[stream_id] = intake

        async def run() -> None:
            try:
                answer = await self._service.upload(device, frame, intake)
            finally:
                self._intakes.pop(stream_id, None)
                ended, abandoned = intake.ended, intake.closed
                intake.close()
            if abandoned or not answer:
                return  # reset or failed: that path answered
            if not ended:  # refused before the client finished: it need not send the rest
                link.stop_stream(stream_id, int(ErrorCode.NO_ERROR))
            self._end(stream_id, answer)

        self._start(stream_id, run)

    def download(self, stream_id: int, frame: BlobDownload) -> None:
        """Start answering a BLOB_DOWNLOAD with the blob's bytes, as the stream drains."""
        self._ours_ended[stream_id] = False
        if not self._admit(stream_id):
            return
        link = self._link

        def answer(data: bytes, last: bool) -> None:
            if last:
                self._end(stream_id, data)
            else:
                self._written.add(stream_id)
                link.send_stream_data(stream_id, data)

        async def run() -> None:
            await self._service.download(
                frame, answer=answer, write=lambda data: link.send_stream_data(stream_id, data),
                wait_room=lambda size: link.wait_send_room(stream_id, size))
            self._end(stream_id, b"")  # FIN behind the last byte

        self._start(stream_id, run)

    def _admit(self, stream_id: int) -> bool:
        if self._running < MAX_BLOB_STREAMS_PER_CONNECTION:
            return True
        self._metrics.blob_refusals["too_many_streams"] += 1
        self._end(stream_id, _error(
            ErrorCode.RATE_LIMITED,
            f"at most {MAX_BLOB_STREAMS_PER_CONNECTION} uploads and downloads at once per "
            f"connection; retry once one has finished", retry_after_ms=RETRY_AFTER_STREAM_MS))
        return False

    def _start(self, stream_id: int, run: Callable[[], Awaitable[None]]) -> None:
        self._running += 1

        async def guarded() -> None:
            try:
                await run()
            except Exception:
                log.exception("blob_request_failed")
                self._break(stream_id, _error(ErrorCode.INTERNAL_ERROR, "internal error"))
            finally:
                self._running -= 1
                self._scopes.pop(stream_id, None)

        self._scopes[stream_id] = self._spawn(guarded)

    def received(self, stream_id: int, data: bytes) -> None:
        """Raw bytes of a stream (dropped unless an upload is taking them)."""
        intake = self._intakes.get(stream_id)
        if intake is not None:
            intake.feed(data)

    def peer_ended(self, stream_id: int) -> None:
        """The client finished its side of a blob stream."""
        intake = self._intakes.get(stream_id)
        if intake is not None:
            intake.end()
        if self._ours_ended.get(stream_id):
            self._forget(stream_id)
        else:
            self._peer_ended.add(stream_id)

    def failed(self, stream_id: int, error: bytes) -> None:
        """The protocol core failed the stream (it reports nothing more of it)."""
        self._break(stream_id, error)
        self._forget(stream_id)

    def reset(self, stream_id: int) -> None:
        """The client reset its side: what it sent stays stored; our side is reset too."""
        self._cancel(stream_id)
        if self._ours_ended.get(stream_id) is False:
            self._ours_ended[stream_id] = True
            self._link.reset_stream(stream_id, int(ErrorCode.NO_ERROR))
        self._forget(stream_id)

    def stopped(self, stream_id: int) -> None:
        """The client will read nothing more of the stream (STOP_SENDING): stop writing it."""
        self._cancel(stream_id)
        self._ours_ended[stream_id] = True  # aioquic resets our side and drops what we write
        if stream_id in self._peer_ended:
            self._forget(stream_id)

    def close(self) -> None:
        """The connection ended (its tasks are cancelled by the session): drop everything."""
        for intake in self._intakes.values():
            intake.close()
        self._intakes.clear()
        self._ours_ended.clear()
        self._peer_ended.clear()
        self._written.clear()
        self._scopes.clear()

    def _break(self, stream_id: int, error: bytes) -> None:
        """Stop the stream's task; end our side with ``error``, or reset it if a download's
        header already left (an ERROR frame cannot follow raw bytes)."""
        self._cancel(stream_id)
        if self._ours_ended.get(stream_id) is not False:
            return
        if stream_id in self._written:
            self._ours_ended[stream_id] = True
            self._link.reset_stream(stream_id, int(ErrorCode.INTERNAL_ERROR))
            return
        self._end(stream_id, error)

    def _cancel(self, stream_id: int) -> None:
        intake = self._intakes.pop(stream_id, None)
        if intake is not None:
            intake.close()
        scope = self._scopes.pop(stream_id, None)
        if scope is not None:
            scope.cancel()

    def _end(self, stream_id: int, data: bytes) -> None:
        """Write ``data`` and end our side, once."""
        if self._ours_ended.get(stream_id) is not False:
            return
        self._ours_ended[stream_id] = True
        self._link.send_stream_data(stream_id, data, end_stream=True)
        if stream_id in self._peer_ended:
            self._forget(stream_id)

    def _forget(self, stream_id: int) -> None:
        self._ours_ended.pop(stream_id, None)
        self._peer_ended.discard(stream_id)
        self._written.discard(stream_id)
        intake = self._intakes.pop(stream_id, None)
        if intake is not None:
            intake.close()
