"""A call's media session as the app sees it: ``CallHandle``, made by ``RelayClient.open_call``
and ``RelayClient.join_call`` (client/connection.py).

The handle sends and receives opaque payloads (SFrame ciphertexts, client/calls.py) as QUIC
DATAGRAMs tagged for the call (PROTOCOL.md "Calls"). Datagrams are unreliable by design: one
the connection cannot take now is dropped and counted, never queued; a full receive buffer
drops the newest. Nothing here blocks the endpoint's event handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from transport.quic import QuicLink
from wire.call_frames import MAX_CALL_DATAGRAM_PAYLOAD, pack_media
from wire.frames import ErrorCode, LocalProtocolError

__all__ = ["CALL_RECEIVE_BUFFER", "CallElsewhereError", "CallEndedError", "CallHandle"]

CALL_RECEIVE_BUFFER = 256
"""Received payloads a handle holds for a reader that is behind: five seconds of audio at
50 packets/s; more are dropped (``CallHandle.dropped_received``), since late media is useless."""


class CallEndedError(Exception):
    """The call is over for this device: the relay said CALL_ENDED (``reason``: "alone",
    "idle", "too_long", "shutdown"), this device left ("left"), or the connection ended
    ("disconnected")."""

    def __init__(self, call_id: bytes, reason: str) -> None:
        super().__init__(f"call ended: {reason}")
        self.call_id = call_id
        self.reason = reason


class CallElsewhereError(Exception):
    """CALL_ELSEWHERE: the call lives on another node of the relay's cluster. Connect to
    ``address`` ("host:port"; that connection takes over from this one) and join again
    (docs/CLUSTER.md "Calls")."""

    def __init__(self, call_id: bytes, address: str) -> None:
        super().__init__(f"the call is held by the relay node at {address}")
        self.call_id = call_id
        self.address = address


class CallHandle:
    """One joined call on one connection."""

    def __init__(self, *, call_id: bytes, tag: int, link: QuicLink,
                 leave: Callable[[CallHandle], Awaitable[None]]) -> None:
        self.call_id = call_id
        """The call's 16-byte id (what the offer carries)."""
        self.tag = tag
        """This connection's tag for the call."""
        self.participants = 1
        """Devices in the call, as the relay last said (CALL_MEMBERS)."""
        self.members_changed = trio.Event()
        """Set (and replaced) whenever ``participants`` changes."""
        self.ended = trio.Event()
        """Set once the call is over for this device; ``end_reason`` says why."""
        self.end_reason: str | None = None
        self.sent = 0
        """Payloads handed to the connection."""
        self.dropped_sent = 0
        """Payloads the connection could not take (congestion): dropped."""
        self.dropped_received = 0
        """Payloads received while CALL_RECEIVE_BUFFER were waiting: dropped."""
        self._link = link
        self._leave = leave
        self._received_in, self._received_out = trio.open_memory_channel[bytes](
            CALL_RECEIVE_BUFFER)

    def send(self, payload: bytes) -> None:
        """Send one payload to the other participants now; never blocks.

        The relay drops what is over its rate limits; a payload the connection cannot take now
        is dropped here (``dropped_sent``). Sending on an ended call does nothing.

        Raises:
            LocalProtocolError: PAYLOAD_TOO_LARGE for more than MAX_CALL_DATAGRAM_PAYLOAD.
        """
        if len(payload) > MAX_CALL_DATAGRAM_PAYLOAD:
            raise LocalProtocolError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"a media payload holds at most {MAX_CALL_DATAGRAM_PAYLOAD} bytes")
        if self.ended.is_set():
            return
        if self._link.send_datagram(pack_media(self.tag, payload)):
            self.sent += 1
        else:
            self.dropped_sent += 1

    async def receive(self) -> bytes:
        """The next payload another participant sent (what is buffered first).

        Raises:
            CallEndedError: the call is over and nothing is left to read.
        """
        try:
            return self._received_out.receive_nowait()
        except trio.WouldBlock:
            pass
        except trio.EndOfChannel:
            raise self._ended_error() from None
        try:
            return await self._received_out.receive()
        except trio.EndOfChannel:
            raise self._ended_error() from None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Every payload until the call ends (then the iteration stops)."""
        while True:
            try:
                yield await self.receive()
            except CallEndedError:
                return

    async def leave(self) -> None:
        """Leave the call (the relay ends it for the last one left); then it is over here."""
        if not self.ended.is_set():
            await self._leave(self)
        self.end("left")

    # -- called by RelayClient, in the endpoint's event handler --------------------------

    def deliver(self, payload: bytes) -> None:
        if self.ended.is_set():
            return
        try:
            self._received_in.send_nowait(payload)
        except trio.WouldBlock:
            self.dropped_received += 1

    def members(self, participants: int) -> None:
        self.participants = participants
        changed, self.members_changed = self.members_changed, trio.Event()
        changed.set()

    def end(self, reason: str) -> None:
        if self.ended.is_set():
            return
        self.end_reason = reason
        self.ended.set()
        self._received_in.close()

    def _ended_error(self) -> CallEndedError:
        return CallEndedError(self.call_id, self.end_reason or "ended")
