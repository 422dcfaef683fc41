"""Link channels: the relay's short-lived mailboxes through which a new device is linked.

A new device, which has no credentials yet, opens a channel (LINK_OPEN) and shows its id in
its link code; the approving device of the account, authenticated, posts to it and fetches
from it; the new device posts and fetches unauthenticated. What travels is end-to-end
encrypted between the two devices (``crypto.provisioning``): the relay sees opaque payloads,
their sizes and their timing only. The first post of an approver binds the channel to its
account (``LinkChannelStore``), so that nobody else who learns the id can read the new device's
answers.

Limits (PROTOCOL.md "Accounts, device lists and linking"): a channel lives
LINK_CHANNEL_TTL_MS; each side posts at most MAX_LINK_POSTS_PER_SIDE payloads of at most
MAX_LINK_PAYLOAD_SIZE bytes; LINK_OPEN is rate-limited per source address and bounded by the
number of open channels. Every refusal about a channel is LINK_CHANNEL_UNKNOWN, whether the
channel is unknown, expired, used up or bound to another account: an answer tells nothing.

LINK_FETCH is a long poll: it answers at once when messages wait, else when one arrives or after
LINK_FETCH_WAIT_MS with whatever there is (possibly nothing). A post on this node rings a local
doorbell that wakes the fetches of that channel's side at once; a post through another node of a
cluster is found by re-reading the store every ``recheck_s``. A fetch is a request task of its
connection, so it is cancelled when the connection ends.

Logs name events and outcomes only: never a payload, a channel id or a phone number.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import structlog
import trio

from relay.limits import LINK_OPEN_PERIOD_MS, LINK_OPENS_PER_ADDRESS, MAX_OPEN_LINK_CHANNELS
from relay.metrics import RelayMetrics
from storage.base import LinkChannelStore, LinkPostResult, RateLimits
from transport.addresses import address_scope
from wire.account_frames import LinkFetch, LinkMessages, LinkOpened, LinkPost, LinkPosted
from wire.codec import encode_frame
from wire.frames import Error, ErrorCode
from wire.limits import (
    LINK_CHANNEL_ID_SIZE,
    LINK_CHANNEL_TTL_MS,
    LINK_FETCH_WAIT_MS,
    MAX_LINK_POSTS_PER_SIDE,
)

__all__ = [
    "LINK_RECHECK_S",
    "ChannelDoorbells",
    "LinkChannelService",
    "LinkServiceStore",
    "address_key",
]

log = structlog.get_logger("relay.linking")

LINK_RECHECK_S = 1.0
"""Seconds between re-reads of the store by a waiting LINK_FETCH: how late a post made through
another node of a cluster may be seen (a post on this node wakes the fetch at once)."""

_UNKNOWN_CHANNEL = "no such link channel, or it expired or is used up; open a new one"
"""One reason for every refusal about a channel (module docstring)."""

"""An IPv6 client owns at least a /64: its addresses share one LINK_OPEN allowance."""

ChannelSide = tuple[bytes, bool]
"""(channel id, to_new_device): one direction of a channel, as the store names it."""


class LinkServiceStore(LinkChannelStore, RateLimits, Protocol):
    """What the link-channel service needs of the store: the channels, and the LINK_OPEN
    allowance per address."""


def address_key(host: str) -> str:
    """The rate-limit key of a peer's address: the IPv4 address, or the IPv6 /64 (an
    IPv4-mapped IPv6 address counts as its IPv4 address)."""
    return address_scope(host)


class ChannelDoorbells:
    """Local wake-ups of the fetches waiting on one side of a channel.

    A fetch listens before it reads the store, so a post that lands between its read and its
    wait still wakes it: ``ring`` sets the event the fetch took before reading. Events exist
    only while some fetch listens.
    """

    def __init__(self) -> None:
        self._events: dict[ChannelSide, trio.Event] = {}
        self._listeners: Counter[ChannelSide] = Counter()

    @contextmanager
    def listening(self, side: ChannelSide) -> Iterator[Callable[[], trio.Event]]:
        """Listen on ``side``; the callable gives the event the next ``ring`` sets (take it
        before each read of the store)."""
        self._listeners[side] += 1
        try:
            yield lambda: self._events.setdefault(side, trio.Event())
        finally:
            self._listeners[side] -= 1
            if not self._listeners[side]:
                del self._listeners[side]
                self._events.pop(side, None)

    def ring(self, side: ChannelSide) -> None:
        """Wake every fetch listening on ``side``."""
        event = self._events.pop(side, None)
        if event is not None:
            event.set()

    @property
    def listened(self) -> int:
        """Channel sides with a fetch listening (for tests: nothing leaks)."""
        return len(self._listeners)


class LinkChannelService:
    """Answers LINK_OPEN, LINK_POST and LINK_FETCH; one per relay node."""

    def __init__(self, store: LinkServiceStore, *, now_ms: Callable[[], int],
                 metrics: RelayMetrics, fetch_wait_s: float = LINK_FETCH_WAIT_MS / 1000,
                 recheck_s: float = LINK_RECHECK_S,
                 max_open: int = MAX_OPEN_LINK_CHANNELS,
                 token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        """``fetch_wait_s``, ``recheck_s`` and ``max_open`` are the protocol's; tests shorten
        or shrink them."""
        self._store = store
        self._now_ms = now_ms
        self._metrics = metrics
        self._fetch_wait_s = fetch_wait_s
        self._recheck_s = recheck_s
        self._max_open = max_open
        self._token_bytes = token_bytes
        self.doorbells = ChannelDoorbells()

    async def open(self, peer_host: str) -> bytes:
        """LINK_OPEN from ``peer_host`` (the connection's source address)."""
        now = self._now_ms()
        if not await self._store.take_tokens(
                key=f"link open {address_key(peer_host)}", cost=1,
                capacity=LINK_OPENS_PER_ADDRESS, period_ms=LINK_OPEN_PERIOD_MS, now=now):
            return self._refuse("open", "rate_limited", ErrorCode.RATE_LIMITED,
                                "too many link channels opened from this address; retry later")
        channel_id = self._token_bytes(LINK_CHANNEL_ID_SIZE)
        expires_at = now + LINK_CHANNEL_TTL_MS
        if not await self._store.open_link_channel(channel_id=channel_id, now=now,
                                                   expires_at=expires_at,
                                                   max_open=self._max_open):
            return self._refuse("open", "full", ErrorCode.RATE_LIMITED,
                                "too many link channels are open; retry later")
        self._count("open", "ok")
        return encode_frame(LinkOpened(channel_id=channel_id, expires_at=expires_at))

    async def post(self, approver_user_id: str | None, frame: LinkPost) -> bytes:
        """LINK_POST: by the approving account ``approver_user_id`` (authenticated), to the
        new device; or, with None, by the new device, to the approver."""
        to_new_device = approver_user_id is not None
        result = await self._store.post_link_message(
            channel_id=frame.channel_id, to_new_device=to_new_device, payload=frame.payload,
            approver_user_id=approver_user_id, now=self._now_ms(),
            max_posts=MAX_LINK_POSTS_PER_SIDE)
        if result is not LinkPostResult.POSTED:
            return self._refuse("post", result.value, ErrorCode.LINK_CHANNEL_UNKNOWN,
                                _UNKNOWN_CHANNEL)
        self.doorbells.ring((frame.channel_id, to_new_device))
        self._count("post", "ok")
        return encode_frame(LinkPosted())

    async def fetch(self, approver_user_id: str | None, frame: LinkFetch) -> bytes:
        """LINK_FETCH: the approving account ``approver_user_id`` reads the new device's
        messages; with None, the new device reads the approver's. Long poll (module
        docstring)."""
        to_new_device = approver_user_id is None
        side = (frame.channel_id, to_new_device)
        deadline = trio.current_time() + self._fetch_wait_s
        with self.doorbells.listening(side) as doorbell:
            while True:
                rung = doorbell()  # before reading: a post from now on sets it
                messages = await self._store.take_link_messages(
                    channel_id=frame.channel_id, to_new_device=to_new_device,
                    approver_user_id=approver_user_id, now=self._now_ms())
                if messages is None:
                    return self._refuse("fetch", "unknown_channel",
                                        ErrorCode.LINK_CHANNEL_UNKNOWN, _UNKNOWN_CHANNEL)
                now = trio.current_time()
                if messages or now >= deadline:
                    self._count("fetch", "messages" if messages else "empty")
                    return encode_frame(LinkMessages(payloads=tuple(messages)))
                with trio.move_on_at(min(deadline, now + self._recheck_s)):
                    await rung.wait()

    def _refuse(self, operation: str, outcome: str, code: ErrorCode, reason: str) -> bytes:
        self._count(operation, outcome)
        log.info("link_refused", operation=operation, outcome=outcome)
        return encode_frame(Error(code=code, reason=reason))

    def _count(self, operation: str, outcome: str) -> None:
        self._metrics.linking[operation, outcome] += 1
