"""What every session and service of one relay shares: the ``RelayContext``.

Sessions (relay/session.py), the prekey service (relay/prekeys.py), the device-list and
link-channel services (relay/device_lists.py, relay/linking.py), the control socket and the HTTP
servers import this module; it imports none of them. They meet it through the small protocols
below, which say what the context needs of a live session and of each service.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from enrolment.service import EnrolmentService
from relay.calls import CallService
from relay.cluster import ClusterNode
from relay.delivery import CommitPipeline, Presence
from relay.last_seen import LastSeen
from relay.metrics import RelayMetrics
from relay.sealed_limits import SealedConnection, TokenBuckets
from relay.send_budgets import SendBudgets
from relay.settings import RelaySettings
from storage.base import Envelope, Store
from transport.quic import QuicEndpoint
from wire.account_frames import LinkFetch, LinkPost, PublishDeviceList
from wire.blob_frames import BlobCreate, BlobDownload, BlobStatus, BlobUpload
from wire.buffers import BufferPool
from wire.catalogue import ErrorCode
from wire.prekey_frames import PrekeyRequest
from wire.push_frames import PushRequest
from wire.sealed_frames import GetSenderCertificate, GetSenderKeys, SealedSend, SetDeliveryToken

__all__ = ["BlobRequests", "DeviceListRequests", "LinkRequests", "LiveSession", "PrekeyRequests",
           "PushRequests", "RelayContext", "RequestDevice", "SealedRequests", "UploadSource",
           "WakeupNotes"]


class LiveSession(Protocol):
    """A device's connection as the rest of the relay sees it."""

    @property
    def device(self) -> tuple[str, int] | None:
        """(user id, device id) once authenticated; None before."""

    @property
    def organisation_id(self) -> int | None:
        """The device's organisation once authenticated; None before."""

    def push(self, data: bytes) -> None:
        """Write an encoded push frame on the device's push stream."""

    def close(self, code: ErrorCode, reason: str) -> None:
        """Close the connection now with an application error code."""


class PrekeyRequests(Protocol):
    """Answers the prekey requests of an authenticated device (relay/prekeys.py)."""

    async def handle(self, device: tuple[str, int], frame: PrekeyRequest) -> bytes:
        """Answer one request with an encoded frame."""


class DeviceListRequests(Protocol):
    """Answers PUBLISH_DEVICE_LIST of an authenticated device (relay/device_lists.py)."""

    async def publish(self, device: tuple[str, int], frame: PublishDeviceList,
                      address: str = "") -> bytes:
        """Answer one request (from network ``address``) with an encoded frame."""


class LinkRequests(Protocol):
    """Answers the link-channel requests (relay/linking.py). ``approver_user_id`` is the
    authenticated connection's user, None for an unauthenticated one (the new device)."""

    async def open(self, peer_host: str) -> bytes:
        """Answer LINK_OPEN from the connection's source address."""

    async def post(self, approver_user_id: str | None, frame: LinkPost) -> bytes:
        """Answer LINK_POST."""

    async def fetch(self, approver_user_id: str | None, frame: LinkFetch) -> bytes:
        """Answer LINK_FETCH (a long poll)."""


class PushRequests(Protocol):
    """Answers PUSH_SET, PUSH_CLEAR and PUSH_GET of an authenticated device
    (relay/push_registry.py)."""

    async def handle(self, device: tuple[str, int], frame: PushRequest) -> bytes:
        """Answer one request with an encoded frame."""


class SealedRequests(Protocol):
    """Answers sealed sender's requests (relay/sealed.py)."""

    per_token: TokenBuckets
    """Sealed sends per delivery token (SEALED_MULTI_SEND's too: relay/sealed_fanout.py)."""
    per_recipient: TokenBuckets
    """Sealed sends per recipient user (SEALED_MULTI_SEND's too)."""

    async def handle(self, device: tuple[str, int] | None,
                     frame: GetSenderKeys | GetSenderCertificate | SetDeliveryToken) -> bytes:
        """Answer one request of the keys, a certificate or a token registration."""

    async def send(self, frame: SealedSend, *, connection: SealedConnection,
                   organisation_id: int | None) -> bytes:
        """Authorise, limit and commit one sealed send."""


class WakeupNotes(Protocol):
    """What the wake-up scheduler (relay/wakeups.py) is told, synchronously, never blocking."""

    def note_committed(self, envelopes: Iterable[Envelope], *, urgent: bool) -> None:
        """Envelopes were committed: their devices not connected here may need waking."""

    def device_connected(self, device: tuple[str, int]) -> None:
        """A device authenticated on this node."""

    def device_disconnected(self, device: tuple[str, int]) -> None:
        """A device's connection to this node ended."""


class RequestDevice(Protocol):
    """The authenticated device a blob request comes from (relay.session.AuthenticatedDevice)."""

    @property
    def user_id(self) -> str: ...

    @property
    def device_id(self) -> int: ...

    @property
    def organisation_id(self) -> int: ...


class UploadSource(Protocol):
    """An upload stream's raw bytes as the blob service takes them (relay.blobs.RawIntake)."""

    @property
    def closed(self) -> bool:
        """The upload was reset or failed: no answer is wanted."""

    async def take(self, limit: int, *, at_least: int = 1) -> bytes | None:
        """At most ``limit`` next bytes, and at least ``at_least`` unless the stream ended;
        None once the stream ended."""

    def release(self, size: int) -> None:
        """``size`` bytes taken are stored: the connection may receive as many more."""


class BlobRequests(Protocol):
    """Answers the blob requests of an authenticated device (relay/blobs.py)."""

    async def create(self, device: RequestDevice, frame: BlobCreate) -> bytes:
        """Answer BLOB_CREATE."""

    async def status(self, device: RequestDevice, frame: BlobStatus) -> bytes:
        """Answer BLOB_STATUS."""

    async def upload(self, device: RequestDevice, frame: BlobUpload,
                     intake: UploadSource) -> bytes:
        """Store the upload's bytes as they come; the answer (b"": none wanted)."""

    async def download(self, frame: BlobDownload, *, answer: Callable[[bytes, bool], None],
                       write: Callable[[bytes], None],
                       wait_room: Callable[[int], Awaitable[None]]) -> None:
        """Answer BLOB_DOWNLOAD and write the blob's bytes as the stream drains."""


@dataclass
class RelayContext:
    """What every session shares."""

    settings: RelaySettings
    store: Store
    enrolment: EnrolmentService
    nursery: trio.Nursery
    presence: Presence
    pipeline: CommitPipeline
    now_ms: Callable[[], int]
    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    buffers: BufferPool = field(default_factory=BufferPool)
    """Bytes of incomplete frames all connections hold together (wire/buffers.py)."""
    sessions: dict[tuple[str, int], LiveSession] = field(default_factory=dict)
    endpoint: QuicEndpoint | None = None
    operations_address: tuple[str, int] | None = None
    """Where /metrics, /healthz and /readyz are served (None: not served)."""
    admin_address: tuple[str, int] | None = None
    """Where the admin console and API are served over HTTPS (None: not served)."""
    cluster: ClusterNode | None = None
    """This node's presence and wake-ups when several nodes share PostgreSQL."""
    prekeys: PrekeyRequests = field(init=False)
    """The prekey service (relay/prekeys.py); ``serve`` sets it, since it reads this context."""
    device_lists: DeviceListRequests = field(init=False)
    """The device-list service (relay/device_lists.py); ``serve`` sets it."""
    linking: LinkRequests = field(init=False)
    """The link-channel service (relay/linking.py); ``serve`` sets it."""
    push: PushRequests | None = None
    """The push target requests (relay/push_registry.py); ``serve`` sets it (None: the
    requests are refused as unavailable)."""
    wakeups: WakeupNotes | None = None
    """The wake-up scheduler (relay/wakeups.py); ``serve`` sets it."""
    blobs: BlobRequests = field(init=False)
    """The blob service (relay/blobs.py); ``serve`` sets it."""
    calls: CallService = field(init=False)
    """The media sessions of calls (relay/calls.py); ``serve`` sets it."""
    sealed: SealedRequests = field(init=False)
    """Sealed sender (relay/sealed.py); ``serve`` sets it."""
    send_budgets: SendBudgets = field(init=False)
    """Each sender device's SENDs and bytes per minute (``settings``), checked before a SEND
    is submitted (relay/send_budgets.py)."""

    last_seen: LastSeen = field(init=False)
    """The day each device last authenticated, written once a day (relay/last_seen.py)."""

    def __post_init__(self) -> None:
        self.last_seen = LastSeen(self.store, self.now_ms)
        self.send_budgets = SendBudgets(messages=self.settings.sends_per_minute,
                                        payload_bytes=self.settings.send_bytes_per_minute)

    async def endpoint_drained(self) -> None:
        """Wait until everything written so far has left (or at least one scheduling round)."""
        await trio.lowlevel.checkpoint()
        if self.endpoint is not None:
            await self.endpoint.drain()

    def attach(self, session: LiveSession) -> None:
        """Register an authenticated session; an older one of the same device is closed.

        Raises:
            ValueError: the session is not authenticated (a bug of the caller's).
        """
        device = session.device
        if device is None:
            raise ValueError("only an authenticated session can be attached")
        previous = self.sessions.get(device)
        self.sessions[device] = session
        if self.wakeups is not None:
            self.wakeups.device_connected(device)
        if previous is not None and previous is not session:
            previous.close(ErrorCode.REPLACED, "a newer connection of this device took over")

    def detach(self, session: LiveSession) -> None:
        """Forget ``session`` if it is still the one registered for its device."""
        if session.device is not None and self.sessions.get(session.device) is session:
            del self.sessions[session.device]
            if self.wakeups is not None:
                self.wakeups.device_disconnected(session.device)

    def revoke_user(self, user_id: str, code: ErrorCode = ErrorCode.DEVICE_REVOKED,
                    reason: str = "this device was revoked") -> int:
        """Close every live connection of the user at once; returns how many."""
        doomed = [session for (owner, _), session in self.sessions.items() if owner == user_id]
        for session in doomed:
            session.close(code, reason)
        return len(doomed)

    def revoke_devices(self, user_id: str, device_ids: Iterable[int], reason: str,
                       code: ErrorCode = ErrorCode.DEVICE_REVOKED) -> int:
        """Close the live connections of these devices of the user at once; returns how many.

        Only this node's: the other nodes of a cluster close theirs when the revoking
        transaction notifies them (storage's revocation notifications).
        """
        doomed = [session for device_id in device_ids
                  if (session := self.sessions.get((user_id, device_id))) is not None]
        for session in doomed:
            session.close(code, reason)
        return len(doomed)
