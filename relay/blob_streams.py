"""One connection's blob streams: the raw bytes of its uploads on their way to the store, and
the ends of its upload and download streams.

An upload or a download stream carries one request and then raw bytes (PROTOCOL.md
"Attachments"), so the session answers it here rather than through its per-stream answer slots.
``RawIntake`` carries an upload's bytes from the connection's synchronous event handler to the
upload task and counts them as held by the connection until stored (``QuicLink.hold_received``):
the QUIC receive window slides only behind what the store has written. ``ConnectionBlobs`` runs
the transfers as the session's request tasks (cancelled with the connection), at most
MAX_BLOB_STREAMS_PER_CONNECTION at once, and ends each stream's side once, whatever comes first.
The policy (who may do what, the limits) is ``relay.blobs``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import structlog
import trio

from relay.blobs import blob_error
from relay.context import BlobRequests, RequestDevice
from relay.metrics import RelayMetrics
from transport.quic import QuicLink
from wire.blob_frames import BlobDownload, BlobUpload
from wire.frames import ErrorCode

__all__ = ["MAX_BLOB_STREAMS_PER_CONNECTION", "RETRY_AFTER_STREAM_MS", "ConnectionBlobs",
           "RawIntake"]

log = structlog.get_logger("relay.blob_streams")

MAX_BLOB_STREAMS_PER_CONNECTION = 4
"""Uploads and downloads one connection may run at once (beyond: RATE_LIMITED): each holds a
store piece and a task; a client sends files one after another, a few at most side by side."""

RETRY_AFTER_STREAM_MS = 1000
"""retry_after_ms of a transfer refused for MAX_BLOB_STREAMS_PER_CONNECTION: a piece of another
transfer completes within round trips; the client retries once one has finished anyway."""


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
        self._queued = 0
        """Bytes fed and not yet taken."""
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
        self._queued += len(data)
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
        self._queued = 0
        self.release(self._held)
        self._arrived.set()

    def release(self, size: int) -> None:
        """``size`` bytes taken are stored (or dropped): the connection may receive more."""
        size = min(size, self._held)
        if size:
            self._held -= size
            self._release(size)

    async def take(self, limit: int, *, at_least: int = 1) -> bytes | None:
        """The next bytes, at most ``limit`` (joined from what arrived) and, unless the stream
        ended, at least ``at_least``; None once the stream ended (or the intake closed) with
        nothing left. Release them once stored."""
        while self._queued < min(at_least, limit) and not (self.ended or self.closed):
            self._arrived = trio.Event()
            await self._arrived.wait()
        if not self._chunks:
            return None
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
        self._queued -= size
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


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
        self._end(stream_id, blob_error(
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
                self._break(stream_id, blob_error(ErrorCode.INTERNAL_ERROR, "internal error"))
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
