"""Media sessions of calls: grants, joins, and forwarding QUIC datagrams between participants.

A call lives in this relay process's memory only: its id, who was invited, and for each joined
connection its tag and its rate buckets. A media datagram (``wire.call_frames.pack_media``) is
looked up by its connection and tag, checked against the sender's limits, and handed at once to
every other participant's connection with the tag rewritten to theirs; nothing is stored,
reordered or retransmitted, and whatever cannot leave now is dropped and counted.

Everything here runs in the relay's trio thread; ``media`` is the hot path and does no I/O.
PROTOCOL.md "Calls" is the contract; docs/CLUSTER.md "Calls" says where a call lives.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog
import trio

from relay.metrics import RelayMetrics
from relay.reachability import user_reachable
from storage.interfaces.directory import Directory, OrganisationPolicy
from storage.interfaces.rate_limits import RateLimits
from wire.call_frames import (
    CALL_ID_SIZE,
    MAX_CALL_DATAGRAM_PAYLOAD,
    MAX_CALL_PARTICIPANTS,
    MAX_CALL_TAG,
    CallElsewhere,
    CallEnded,
    CallJoin,
    CallJoined,
    CallLeave,
    CallLeft,
    CallMembers,
    CallOpen,
    CallOpened,
    pack_media,
    unpack_media,
)
from wire.codec import encode_frame
from wire.frames import Error, ErrorCode

__all__ = [
    "CALL_BURST_BYTES",
    "CALL_BURST_DATAGRAMS",
    "CALL_BYTES_PER_S",
    "CALL_DATAGRAMS_PER_S",
    "CALL_IDLE_TIMEOUT_S",
    "CALL_JOINS_PER_MINUTE",
    "CALL_MAX_DURATION_S",
    "CALL_OPENS_PER_MINUTE",
    "CALL_OPEN_PERIOD_MS",
    "CALL_SWEEP_INTERVAL_S",
    "MAX_CALLS_PER_CONNECTION",
    "MAX_OPEN_CALLS",
    "CallParticipant",
    "CallRoutes",
    "CallService",
    "CallStore",
]

log = structlog.get_logger("relay.calls")

CALL_DATAGRAMS_PER_S = 200
"""Media datagrams one participant may send per second, sustained: video at 30 frames/s split
into a few datagrams each, or audio at 50 packets/s, with room for both at once."""
CALL_BURST_DATAGRAMS = 50
"""Datagrams one participant may send back to back (a key frame split into many)."""
CALL_BYTES_PER_S = 200_000
"""Payload bytes one participant may send per second: 30 frames/s of 1,000 bytes is 30 000,
a high-quality video stream several times that."""
CALL_BURST_BYTES = 50_000
"""Payload bytes one participant may send back to back."""
CALL_IDLE_TIMEOUT_S = 30.0
"""A call in which nobody sent media for this long ends (CALL_ENDED "idle"): a call that was
never answered, or whose participants vanished without a close."""
CALL_MAX_DURATION_S = 4 * 60 * 60.0
"""The longest call (CALL_ENDED "too_long"): bounds what one grant lets a client hold."""
CALL_SWEEP_INTERVAL_S = 1.0
"""How often idle and overlong calls are looked for."""
MAX_CALLS_PER_CONNECTION = 4
"""Calls one connection may take part in at once (a call and a few it is switching between)."""
CALL_OPENS_PER_MINUTE = 30
"""CALL_OPENs one device may make per minute (a store-shared bucket, like look-ups): each one
reads the directory for up to 7 invitees, and a person places a call or two a minute."""
CALL_OPEN_PERIOD_MS = 60_000
"""The period over which CALL_OPENS_PER_MINUTE refill."""
CALL_JOINS_PER_MINUTE = 60
"""CALL_JOINs one connection may make per minute, in bursts of as many (in memory, before any
look-up): a device joins a call or two; a loop of made-up ids would cost a cluster a store
read each."""
MAX_OPEN_CALLS = 10_000
"""Calls one relay process holds at once, all devices together: bounds its memory."""


class CallParticipant(Protocol):
    """A connection as calls see it (relay/session.py's DeviceSession)."""

    @property
    def device(self) -> tuple[str, int] | None:
        """(user id, device id) once authenticated."""

    @property
    def organisation_id(self) -> int | None:
        """The device's organisation once authenticated."""

    @property
    def connected(self) -> bool:
        """False once the connection ended (it joins nothing more)."""

    def push(self, data: bytes) -> None:
        """Write an encoded push frame on the connection's push stream."""

    def send_datagram(self, data: bytes) -> bool:
        """Queue one QUIC DATAGRAM; False if it was dropped."""


class CallStore(Directory, OrganisationPolicy, RateLimits, Protocol):
    """What calls need of the store: the directory, the organisations' policy and the rate
    limits' buckets."""


class CallRoutes(Protocol):
    """Where the calls of a cluster live (relay/call_routes.py): the node holding a call
    publishes it, the others answer CALL_ELSEWHERE with its address."""

    async def publish(self, call_id: bytes, invited: frozenset[str]) -> None:
        """Record that this node holds ``call_id`` for the ``invited`` users."""

    async def find(self, call_id: bytes, user_id: str) -> str | None:
        """The address of the node holding ``call_id`` if ``user_id`` was invited to it."""

    async def forget(self, call_id: bytes) -> None:
        """The call ended here."""


class _Bucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved."""

    __slots__ = ("_burst", "_rate", "_tokens", "_updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate, self._burst = rate, burst
        self._tokens, self._updated = burst, now

    def take(self, cost: float, now: float) -> bool:
        tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if tokens < cost:
            self._tokens = tokens
            return False
        self._tokens = tokens - cost
        return True


@dataclass(eq=False, slots=True)
class _Member:
    connection: CallParticipant
    call: _Call
    tag: int
    datagrams: _Bucket
    payload_bytes: _Bucket


@dataclass(eq=False, slots=True)
class _Call:
    call_id: bytes
    invited: frozenset[str]
    opened_at: float
    last_media: float
    members: dict[CallParticipant, _Member] = field(default_factory=dict)


def _error(code: ErrorCode, reason: str) -> bytes:
    return encode_frame(Error(code=code, reason=reason))


_UNKNOWN = "no such call"
"""One answer for a wrong id, an ended call and a call one was not invited to."""


class CallService:
    """Every call of this relay process."""

    def __init__(self, *, store: CallStore, metrics: RelayMetrics, now_ms: Callable[[], int],
                 clock: Callable[[], float] = trio.current_time, enabled: bool = True,
                 routes: CallRoutes | None = None) -> None:
        self._store = store
        self._now_ms = now_ms
        self._metrics = metrics
        self.clock = clock
        """Seconds, for rates and timeouts (tests replace it to move time)."""
        self.enabled = enabled
        self.routes = routes
        self._calls: dict[bytes, _Call] = {}
        self._members: dict[CallParticipant, dict[int, _Member]] = {}
        self._next_tag: dict[CallParticipant, int] = {}
        self._joins: dict[CallParticipant, _Bucket] = {}  # CALL_JOINS_PER_MINUTE
        self._ended_routes: list[bytes] = []

    @property
    def open_calls(self) -> int:
        return len(self._calls)

    # -- requests ----------------------------------------------------------------

    async def open(self, connection: CallParticipant, frame: CallOpen) -> bytes:
        """Answer CALL_OPEN: grant a session if the device may message every invitee."""
        device, organisation_id = connection.device, connection.organisation_id
        if device is None:
            return _error(ErrorCode.UNEXPECTED_FRAME, "CallOpen needs authentication")
        if not self.enabled:
            return _calls_unavailable()
        if (refusal := self._over_capacity(connection)) is not None:
            return refusal
        if not await self._store.take_tokens(
                key=f"call_open {device[0]} {device[1]}", cost=1,
                capacity=CALL_OPENS_PER_MINUTE, period_ms=CALL_OPEN_PERIOD_MS,
                now=self._now_ms()):
            self._metrics.calls["open", "rate_limited"] += 1
            return _error(ErrorCode.RATE_LIMITED, f"at most {CALL_OPENS_PER_MINUTE} calls "
                                                  "opened a minute; retry later")
        for user_id in frame.invitees:
            if not await user_reachable(self._store, from_organisation_id=organisation_id,
                                        user_id=user_id):
                self._metrics.calls["open", "unknown_recipient"] += 1
                return _error(ErrorCode.UNKNOWN_RECIPIENT, "no such recipient")
        if not connection.connected:  # the connection ended while the store answered
            return b""
        now = self.clock()
        call_id = secrets.token_bytes(CALL_ID_SIZE)
        invited = frozenset((*frame.invitees, device[0]))
        call = _Call(call_id=call_id, invited=invited, opened_at=now, last_media=now)
        if self.routes is not None:
            await self.routes.publish(call_id, invited)
        # Checked again: other requests of this connection may have joined calls meanwhile.
        if not connection.connected or (refusal := self._over_capacity(connection)) is not None:
            await self._unpublish(call_id)
            return b"" if not connection.connected else refusal
        self._calls[call_id] = call
        self._metrics.calls_open = len(self._calls)
        member = self._add(call, connection, now)
        self._metrics.calls["open", "ok"] += 1
        log.info("call_opened", participants_invited=len(invited))
        return encode_frame(CallOpened(call_id=call_id, tag=member.tag))

    def _over_capacity(self, connection: CallParticipant) -> bytes | None:
        """The refusal of a CALL_OPEN over MAX_CALLS_PER_CONNECTION or MAX_OPEN_CALLS."""
        if len(self._members.get(connection, ())) >= MAX_CALLS_PER_CONNECTION:
            self._metrics.calls["open", "rate_limited"] += 1
            return _error(ErrorCode.RATE_LIMITED, f"at most {MAX_CALLS_PER_CONNECTION} calls "
                                                  "at once per connection")
        if len(self._calls) >= MAX_OPEN_CALLS:
            self._metrics.calls["open", "rate_limited"] += 1
            return _error(ErrorCode.RATE_LIMITED, "this relay holds all the calls it can")
        return None

    async def join(self, connection: CallParticipant, frame: CallJoin) -> bytes:
        """Answer CALL_JOIN: only a device of an invited user may join, while there is room."""
        device = connection.device
        if device is None:
            return _error(ErrorCode.UNEXPECTED_FRAME, "CallJoin needs authentication")
        if not self.enabled:
            return _calls_unavailable()
        if not connection.connected:  # ended before this request's task ran
            return b""
        now = self.clock()
        joins = self._joins.get(connection)
        if joins is None:
            joins = self._joins[connection] = _Bucket(CALL_JOINS_PER_MINUTE / 60,
                                                      CALL_JOINS_PER_MINUTE, now)
        if not joins.take(1, now):
            self._metrics.calls["join", "rate_limited"] += 1
            return _error(ErrorCode.RATE_LIMITED, f"at most {CALL_JOINS_PER_MINUTE} call joins "
                                                  "a minute; retry later")
        call = self._calls.get(frame.call_id)
        if call is None or device[0] not in call.invited:
            address = (None if call is not None or self.routes is None
                       else await self.routes.find(frame.call_id, device[0]))
            if address is not None:
                self._metrics.calls["join", "elsewhere"] += 1
                return encode_frame(CallElsewhere(call_id=frame.call_id, address=address))
            self._metrics.calls["join", "unknown"] += 1
            return _error(ErrorCode.CALL_UNKNOWN, _UNKNOWN)
        if not connection.connected:
            return b""
        existing = call.members.get(connection)
        if existing is not None:
            return encode_frame(CallJoined(tag=existing.tag, participants=len(call.members)))
        if len(call.members) >= MAX_CALL_PARTICIPANTS:
            self._metrics.calls["join", "full"] += 1
            return _error(ErrorCode.CALL_FULL,
                          f"the call already holds {MAX_CALL_PARTICIPANTS} devices")
        if len(self._members.get(connection, ())) >= MAX_CALLS_PER_CONNECTION:
            self._metrics.calls["join", "rate_limited"] += 1
            return _error(ErrorCode.RATE_LIMITED, f"at most {MAX_CALLS_PER_CONNECTION} calls "
                                                  "at once per connection")
        member = self._add(call, connection, self.clock())
        self._metrics.calls["join", "ok"] += 1
        self._tell_members(call, but=connection)
        return encode_frame(CallJoined(tag=member.tag, participants=len(call.members)))

    def leave(self, connection: CallParticipant, frame: CallLeave) -> bytes:
        """Answer CALL_LEAVE (also for a call this connection is not in: nothing to undo)."""
        call = self._calls.get(frame.call_id)
        if call is not None and connection in call.members:
            self._remove(call, connection)
            self._metrics.calls["leave", "ok"] += 1
        return encode_frame(CallLeft())

    def disconnect(self, connection: CallParticipant) -> None:
        """The connection ended: it leaves every call it joined."""
        for member in list(self._members.get(connection, {}).values()):
            self._remove(member.call, connection)
        self._members.pop(connection, None)
        self._next_tag.pop(connection, None)
        self._joins.pop(connection, None)

    # -- media -------------------------------------------------------------------

    def media(self, connection: CallParticipant, datagram: bytes) -> None:
        """Forward one received media datagram to the other participants of its call."""
        metrics = self._metrics
        unpacked = unpack_media(datagram)
        members = self._members.get(connection)
        member = None if unpacked is None or members is None else members.get(unpacked[0])
        if member is None or unpacked is None:
            metrics.call_datagrams_dropped["unknown_tag"] += 1
            return
        payload = unpacked[1]
        size = len(payload)
        if size > MAX_CALL_DATAGRAM_PAYLOAD:
            metrics.call_datagrams_dropped["too_large"] += 1
            return
        now = self.clock()
        if not (member.datagrams.take(1, now) and member.payload_bytes.take(size, now)):
            metrics.call_datagrams_dropped["rate_limited"] += 1
            return
        metrics.call_datagrams_received += 1
        metrics.call_bytes_received += size
        call = member.call
        call.last_media = now
        for other in call.members.values():
            if other is member:
                continue
            if other.connection.send_datagram(pack_media(other.tag, payload)):
                metrics.call_datagrams_forwarded += 1
                metrics.call_bytes_forwarded += size
            else:
                metrics.call_datagrams_dropped["congested"] += 1

    # -- ending ------------------------------------------------------------------

    def expire(self, now: float) -> int:
        """End the calls idle for CALL_IDLE_TIMEOUT_S or older than CALL_MAX_DURATION_S."""
        ended = 0
        for call in list(self._calls.values()):
            if now - call.opened_at >= CALL_MAX_DURATION_S:
                self._end(call, "too_long")
            elif now - call.last_media >= CALL_IDLE_TIMEOUT_S:
                self._end(call, "idle")
            else:
                continue
            ended += 1
        return ended

    def end_all(self, reason: str = "shutdown") -> None:
        for call in list(self._calls.values()):
            self._end(call, reason)

    async def run(self) -> None:
        """Look for idle and overlong calls every CALL_SWEEP_INTERVAL_S, until cancelled;
        forget the routes of the calls that ended."""
        while True:
            await trio.sleep(CALL_SWEEP_INTERVAL_S)
            self.expire(self.clock())
            await self.forget_ended_routes()

    # -- internals ---------------------------------------------------------------

    def _add(self, call: _Call, connection: CallParticipant, now: float) -> _Member:
        tag = self._next_tag.get(connection, 0)
        self._next_tag[connection] = (tag + 1) % (MAX_CALL_TAG + 1)
        member = _Member(connection=connection, call=call, tag=tag,
                         datagrams=_Bucket(CALL_DATAGRAMS_PER_S, CALL_BURST_DATAGRAMS, now),
                         payload_bytes=_Bucket(CALL_BYTES_PER_S, CALL_BURST_BYTES, now))
        call.members[connection] = member
        self._members.setdefault(connection, {})[tag] = member
        return member

    def _detach(self, call: _Call, connection: CallParticipant) -> None:
        member = call.members.pop(connection, None)
        tags = self._members.get(connection)
        if member is not None and tags is not None:
            tags.pop(member.tag, None)
            if not tags:
                del self._members[connection]

    def _remove(self, call: _Call, connection: CallParticipant) -> None:
        self._detach(call, connection)
        if len(call.members) <= 1:
            self._end(call, "alone")
        else:
            self._tell_members(call)

    def _end(self, call: _Call, reason: str) -> None:
        if self._calls.pop(call.call_id, None) is None:
            return
        self._metrics.calls_open = len(self._calls)
        log.info("call_ended", reason=reason, participants=len(call.members))
        ended = encode_frame(CallEnded(call_id=call.call_id, reason=reason))
        for connection in list(call.members):
            self._detach(call, connection)
            connection.push(ended)
        self._metrics.calls["end", reason] += 1
        if self.routes is not None:
            self._ended_routes.append(call.call_id)  # forgotten by the next sweep

    def _tell_members(self, call: _Call, *, but: CallParticipant | None = None) -> None:
        """CALL_MEMBERS to every participant (``but`` the one told in its CALL_JOINED)."""
        members = encode_frame(CallMembers(call_id=call.call_id,
                                           participants=len(call.members)))
        for connection in call.members:
            if connection is not but:
                connection.push(members)

    async def forget_ended_routes(self) -> None:
        """Remove the cluster routes of the calls that ended (the sweep does it each second;
        a stopping relay once more, for the calls its stop ended)."""
        ended, self._ended_routes = self._ended_routes, []
        for call_id in ended:
            await self._unpublish(call_id)

    async def _unpublish(self, call_id: bytes) -> None:
        if self.routes is not None:
            try:
                await self.routes.forget(call_id)
            except Exception:  # the route expires by itself; the call is over here anyway
                log.warning("call_route_not_forgotten")


def _calls_unavailable() -> bytes:
    return _error(ErrorCode.CALLS_UNAVAILABLE,
                  "this relay runs several worker processes and carries no calls")
