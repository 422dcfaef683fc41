"""A download's raw bytes, from the connection's event handler to the reader of the file.

``RelayClient.download_blob`` (client/connection.py) reads a blob as the relay streams it: the
bytes behind BLOB_DATA arrive in the endpoint's synchronous handler (``feed``) and wait here
until the reader takes them (``take``). Each byte waiting counts as held by the connection
(``QuicLink.hold_received``) until taken, so that the connection's receive window does not slide
past what the reader has not consumed: a slow reader slows the relay down instead of growing
this queue (transport/flow_control.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import trio

__all__ = ["RawChunks"]


class RawChunks:
    """The raw bytes of one download stream, in order, then its end or its failure."""

    def __init__(self, *, hold: Callable[[int], None], release: Callable[[int], None]) -> None:
        self._hold = hold
        self._release = release
        self._chunks: deque[bytes] = deque()
        self._held = 0
        self._arrived = trio.Event()
        self._ended = False
        self._error: BaseException | None = None
        self.received = 0
        """Bytes fed so far."""

    def feed(self, data: bytes) -> None:
        if self._ended or self._error is not None or not data:
            return
        self._chunks.append(data)
        self._held += len(data)
        self.received += len(data)
        self._hold(len(data))
        self._arrived.set()

    def end(self) -> None:
        """The relay finished the stream: every byte has been fed."""
        self._ended = True
        self._arrived.set()

    def fail(self, error: BaseException) -> None:
        """No more bytes will come: ``take`` raises ``error`` once the queue is empty."""
        if self._error is None and not self._ended:
            self._error = error
        self._arrived.set()

    def discard(self) -> None:
        """The reader is gone: drop what waits and give it back to the connection."""
        self._ended = True
        self._chunks.clear()
        if self._held:
            self._release(self._held)
            self._held = 0

    async def take(self) -> bytes | None:
        """The next bytes; None at the end of the stream.

        Raises:
            the error given to ``fail``, once every byte fed before it was taken.
        """
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._ended:
                return None
            self._arrived = trio.Event()
            await self._arrived.wait()
        chunk = self._chunks.popleft()
        self._held -= len(chunk)
        self._release(len(chunk))
        return chunk
