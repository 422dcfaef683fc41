"""This relay node's part in a cluster of nodes sharing one PostgreSQL store.

* Presence: on authentication a device is claimed for this node (a row in
  ``presence`` with a lease renewed every ``LEASE_RENEW_INTERVAL_S``); the
  previous holder, if another node, is told to close its connection (REPLACED).
* Wake-ups: one dedicated psycopg connection LISTENs on this node's channel;
  trio waits on its socket (``trio.lowlevel.wait_readable``: psycopg's async
  API needs asyncio). A notification only wakes a pump, which re-reads the
  store after its cursor. After the listening connection is lost and comes
  back, every local pump re-reads (whatever committed meanwhile went unheard).
* Local delivery: ``ClusterPresence`` wakes pumps instead of handing them
  envelopes from memory, because a live envelope from this node could
  overtake an older one committed by another node for the same device (ids
  are commit-ordered per device, so reading the store after the cursor is
  always gap-free).

The SQL lives in ``storage.postgres_presence``. Whether a relay runs as a cluster node is
the store's answer, not its class: ``ClusterCapable.cluster_wakeups`` is None for a store that
serves one node (SQLite) and the store's wake-up side for one several nodes share (PostgreSQL).
"""

from __future__ import annotations

import functools
import secrets
import socket
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

import psycopg
import structlog
import trio
from psycopg import sql
from psycopg_pool import ConnectionPool

from relay.delivery import DeliveryPump, Presence
from storage.base import AccountKeyStore, ClusterCapable, ClusterWakeups, Envelope, PrekeyStore
from storage.postgres_presence import (
    DeviceGone,
    NotificationKind,
    claim_device,
    current_schema,
    forget_node,
    node_channel,
    notify_prekeys_low,
    parse_notification,
    reassert_device,
    release_device,
    renew_leases,
)
from storage.postgres_schema import Connection
from wire.codec import encode_frame
from wire.frames import ErrorCode
from wire.prekey_frames import PrekeysLow

__all__ = [
    "LEASE_MS",
    "LEASE_RENEW_INTERVAL_S",
    "ClusterNode",
    "ClusterPresence",
    "ClusterStore",
    "DeviceGone",
    "HeldSession",
    "cluster_node_for",
    "listen_application_name",
    "presence_for",
]

log = structlog.get_logger("relay.cluster")

T = TypeVar("T")
DeviceKey = tuple[str, int]

LEASE_MS = 30_000
"""A presence row is trusted this long after its last renewal: a dead node's
devices stop being notified on its behalf within 30 s (they reconnect elsewhere
long before, as soon as their connection times out)."""

LEASE_RENEW_INTERVAL_S = 10.0
"""Renewal period: a third of the lease, so one slow or failed renewal loses nothing."""

RECONNECT_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)
"""Waits between attempts to get the listening connection back (then 5 s each)."""

SESSION_TOKEN_BYTES = 16
"""Random bytes naming one claim of a device (hex): a release removes only its own claim,
never the one a newer connection made since."""

PRESENCE_POOL_SIZE = 2
"""Connections for claims, releases and renewals (short transactions)."""

CONNECT_TIMEOUT_S = 10
"""Seconds to wait for PostgreSQL when connecting."""

APPLICATION_NAME_MAX = 63
"""PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes; so do we, visibly."""

REVOKED_REASON = "this device was revoked"
"""The close reason of a revoked device whose notice gives none (deleted by an operator)."""

KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
             "keepalives_count": 3}
"""TCP keepalives on the listening connection: it only ever reads, so without
them a silently dropped connection (PostgreSQL failover) would go unnoticed."""


class HeldSession(Protocol):
    """What the cluster needs from a device session."""

    def close(self, code: ErrorCode, reason: str) -> None: ...

    def push(self, data: bytes) -> None:
        """Write an encoded push frame (PREKEYS_LOW) to the device."""
        ...


class ClusterPresence(Presence):
    """``Presence`` whose pumps always read the store (see module docstring)."""

    def offer(self, envelopes: tuple[Envelope, ...]) -> None:
        self.wake_devices({(envelope.recipient_user_id, envelope.recipient_device_id)
                           for envelope in envelopes})

    def wake_devices(self, devices: Iterable[DeviceKey]) -> None:
        for device in devices:
            pump = self.pump(device)
            if pump is not None:
                pump.wake()

    def pump(self, device: DeviceKey) -> DeliveryPump | None:
        return self._pumps.get(device)

    def wake_all(self) -> None:
        for pump in list(self._pumps.values()):
            pump.wake()


class ClusterStore(ClusterCapable, PrekeyStore, AccountKeyStore, Protocol):
    """What a cluster node needs of its store: the cluster capability, the prekey counts it
    pushes to a device whose pools a claim on another node left low, and the notice saying
    why a device another node revoked was revoked."""


class ClusterNode:
    """Presence, leases and wake-ups for one node. Start with ``run``."""

    def __init__(self, *, dsn: str, node_name: str, wakeups: ClusterWakeups,
                 store: ClusterStore, presence: ClusterPresence,
                 now_ms: Callable[[], int]) -> None:
        """``wakeups`` is the shared store's cluster side (``cluster_wakeups()``): it learns
        this node's channel while the node runs, so its sends do not notify this node."""
        self._dsn = dsn
        self.node_name = node_name
        self._wakeups = wakeups
        self._prekeys: PrekeyStore = store
        self._accounts: AccountKeyStore = store
        self._presence = presence
        self._now_ms = now_ms
        self.channel = ""
        self._pool: ConnectionPool[Connection] | None = None
        self._held: dict[DeviceKey, tuple[str, HeldSession]] = {}
        self._nursery: trio.Nursery | None = None
        self.listening = trio.Event()
        self.notifications = 0
        self.listen_reconnections = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Listen and renew leases until cancelled; forget this node's presence on exit."""
        self._pool = await trio.to_thread.run_sync(self._open_pool)
        try:
            self.channel = await self._in_transaction(_channel_of, self.node_name)
            # Rows left by an earlier run of this node name hold nobody now.
            await self._in_transaction(functools.partial(forget_node, channel=self.channel))
            listener = await self.connect_listener()
            self._wakeups.node_channel = self.channel
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._listen, listener)
                nursery.start_soon(self._renew_leases)
                log.info("cluster_node_ready", node=self.node_name)
                task_status.started()
        finally:
            self._nursery = None  # closed: releases from now on are left to _shut_down
            with trio.CancelScope(shield=True):
                await self._shut_down()

    # -- presence ----------------------------------------------------------------

    async def claim(self, device: DeviceKey, session: HeldSession) -> None:
        """Make ``session`` the device's holder, cluster-wide, before its pump starts.

        Raises:
            DeviceGone: the device was deleted meanwhile; refuse the connection.
        """
        token = secrets.token_hex(SESSION_TOKEN_BYTES)
        previous = await self._in_transaction(functools.partial(
            claim_device, user_id=device[0], device_id=device[1], node_name=self.node_name,
            channel=self.channel, session_token=token,
            expires_at=self._now_ms() + LEASE_MS))
        self._held[device] = (token, session)
        if previous is not None and previous.channel != self.channel:
            log.info("device_taken_over", from_node=previous.node_name)

    def release(self, device: DeviceKey, session: HeldSession) -> None:
        """The session ended: forget its presence (unless a newer one holds the device)."""
        held = self._held.get(device)
        if held is None or held[1] is not session:
            return
        del self._held[device]
        if self._nursery is not None:
            self._nursery.start_soon(self._release, device, held[0])

    def tell_prekeys_low(self, user_id: str, device_ids: list[int]) -> None:
        """Devices whose one-time prekeys a claim here left low, held on other nodes:
        their nodes push PREKEYS_LOW (best effort, as the push itself is)."""
        if self._nursery is not None and device_ids:
            self._nursery.start_soon(self._notify_prekeys_low, user_id, device_ids)

    async def _notify_prekeys_low(self, user_id: str, device_ids: list[int]) -> None:
        try:
            await self._in_transaction(functools.partial(
                notify_prekeys_low, user_id=user_id, device_ids=device_ids,
                now=self._now_ms(), skip_channel=self.channel))
        except psycopg.Error as error:  # the device also checks its counts on connection
            log.warning("prekeys_low_notify_failed", error=type(error).__name__)

    async def _push_prekeys_low(self, device: DeviceKey, session: HeldSession) -> None:
        counts = await self._prekeys.prekey_counts(user_id=device[0], device_id=device[1])
        if self._held.get(device, (None, None))[1] is session:  # still connected here
            session.push(encode_frame(PrekeysLow(
                one_time=counts.one_time, kem_one_time=counts.kem_one_time)))

    async def _close_revoked(self, device: DeviceKey, session: HeldSession) -> None:
        """Close a device another node revoked, with the reason its notice keeps (a new
        enrolment of the number, a published device list) when there is one."""
        reason = REVOKED_REASON
        try:
            notice = await self._accounts.revoked_device(*device)
        except Exception as error:  # the close must happen whatever the read did
            log.warning("revocation_notice_unread", error=type(error).__name__)
        else:
            if notice is not None:
                reason = notice.reason
        session.close(ErrorCode.DEVICE_REVOKED, reason)

    async def _release(self, device: DeviceKey, token: str) -> None:
        try:
            await self._in_transaction(functools.partial(
                release_device, user_id=device[0], device_id=device[1], session_token=token))
        except psycopg.Error as error:  # the lease expires on its own
            log.warning("presence_release_failed", error=type(error).__name__)

    async def _renew_leases(self) -> None:
        while True:
            await trio.sleep(LEASE_RENEW_INTERVAL_S)
            try:
                await self._in_transaction(functools.partial(
                    renew_leases, channel=self.channel, expires_at=self._now_ms() + LEASE_MS))
            except psycopg.Error as error:
                log.warning("lease_renewal_failed", error=type(error).__name__)

    # -- wake-ups ------------------------------------------------------------------

    async def connect_listener(self) -> Connection:
        """Open this node's LISTEN connection (also on every reconnection: a test may wrap it
        to hold a reconnection back)."""
        def connect() -> Connection:
            dsn = psycopg.conninfo.make_conninfo(
                self._dsn, application_name=listen_application_name(self.node_name),
                **KEEPALIVE)
            connection = psycopg.connect(dsn, autocommit=True,
                                         connect_timeout=CONNECT_TIMEOUT_S)
            connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            return connection
        connection = await trio.to_thread.run_sync(connect)
        self.listening.set()
        return connection

    async def _listen(self, connection: Connection) -> None:
        attempt = 0
        while True:
            try:
                await self._receive(connection)
            except psycopg.Error as error:
                log.warning("listen_connection_lost", error=type(error).__name__)
            finally:
                self.listening = trio.Event()
                connection.close()
            while True:
                delay = RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)]
                attempt += 1
                await trio.sleep(delay)
                try:
                    connection = await self.connect_listener()
                except psycopg.Error as error:
                    log.warning("listen_reconnect_failed", error=type(error).__name__)
                    continue
                break
            attempt = 0
            self.listen_reconnections += 1
            log.info("listen_connection_restored")
            await self._reassert_presence()
            # Listening again: anything committed while deaf is now in the
            # store, and anything committed from now on notifies us.
            self._presence.wake_all()

    async def _reassert_presence(self) -> None:
        """Hold our devices again (a failover may have lost rows); close those taken over."""
        for device, (token, session) in list(self._held.items()):
            try:
                still_ours = await self._in_transaction(functools.partial(
                    reassert_device, user_id=device[0], device_id=device[1],
                    node_name=self.node_name, channel=self.channel, session_token=token,
                    expires_at=self._now_ms() + LEASE_MS))
            except psycopg.Error as error:  # the next loss and recovery tries again
                log.warning("presence_reassert_failed", error=type(error).__name__)
                return
            if not still_ours and self._held.get(device) == (token, session):
                del self._held[device]
                session.close(ErrorCode.REPLACED, "this device connected elsewhere meanwhile")

    async def _receive(self, connection: Connection) -> None:
        pgconn = connection.pgconn
        while True:
            await trio.lowlevel.wait_readable(connection.fileno())
            pgconn.consume_input()  # raises OperationalError once the connection is gone
            while (notify := pgconn.notifies()) is not None:
                self.notifications += 1
                self._handle(notify.extra.decode("utf-8", errors="replace"))

    def _handle(self, payload: str) -> None:
        notification = parse_notification(payload)
        if notification is None:
            log.warning("unknown_notification_ignored")
            return
        device = (notification.user_id, notification.device_id)
        if notification.kind is NotificationKind.WAKE:
            self._presence.wake_devices((device,))
            return
        held = self._held.get(device)
        if held is None:
            return
        if notification.kind is NotificationKind.PREKEYS_LOW:
            if self._nursery is not None:
                self._nursery.start_soon(self._push_prekeys_low, device, held[1])
        elif notification.kind is NotificationKind.REVOKED:
            del self._held[device]
            if self._nursery is not None:
                self._nursery.start_soon(self._close_revoked, device, held[1])
            else:
                held[1].close(ErrorCode.DEVICE_REVOKED, REVOKED_REASON)
        elif secrets.compare_digest(held[0], notification.session_token or ""):
            del self._held[device]
            held[1].close(ErrorCode.REPLACED, "this device connected to another relay node")

    # -- plumbing --------------------------------------------------------------------

    def _open_pool(self) -> ConnectionPool[Connection]:
        pool: ConnectionPool[Connection] = ConnectionPool(
            self._dsn, min_size=1, max_size=PRESENCE_POOL_SIZE, open=False,
            name="cluster-presence", kwargs={"connect_timeout": CONNECT_TIMEOUT_S})
        pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        return pool

    async def in_transaction(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work(connection, *args)`` in one transaction of this node's pool, in a
        thread (relay/call_routes.py uses it for the cluster's call routes)."""
        return await self._in_transaction(work, *args)

    async def _in_transaction(self, work: Callable[..., T], *args: Any) -> T:
        pool = self._pool
        assert pool is not None

        def run() -> T:
            with pool.connection(timeout=CONNECT_TIMEOUT_S) as connection, \
                    connection.transaction():
                return work(connection, *args)
        return await trio.to_thread.run_sync(run)

    async def _shut_down(self) -> None:
        self._wakeups.node_channel = None
        pool = self._pool
        if pool is None:
            return
        if self.channel:
            try:
                await self._in_transaction(functools.partial(forget_node,
                                                             channel=self.channel))
            except psycopg.Error as error:  # the leases expire on their own
                log.warning("presence_forget_failed", error=type(error).__name__)
        await trio.to_thread.run_sync(pool.close)


def listen_application_name(node_name: str) -> str:
    """How the listening connection shows in pg_stat_activity (for operators and tests)."""
    return f"cryptopass-listen {node_name}"[:APPLICATION_NAME_MAX]


def _channel_of(connection: Connection, node_name: str) -> str:
    return node_channel(current_schema(connection), node_name)


def presence_for(store: ClusterCapable) -> Presence:
    """The ``Presence`` a relay on ``store`` needs: ``ClusterPresence`` (pumps always read
    the store) if several nodes may share it, the plain one otherwise."""
    return Presence() if store.cluster_wakeups() is None else ClusterPresence()


def cluster_node_for(*, store: ClusterStore, presence: Presence, dsn: str | None,
                     node_name: str | None, now_ms: Callable[[], int]) -> ClusterNode | None:
    """This node's ``ClusterNode`` if several nodes may share ``store`` (PostgreSQL); None if
    it serves one node only (SQLite).

    ``presence`` must come from ``presence_for(store)`` and ``dsn`` name the shared database.
    """
    wakeups = store.cluster_wakeups()
    if wakeups is None:
        return None
    assert isinstance(presence, ClusterPresence) and dsn is not None
    return ClusterNode(dsn=dsn, node_name=node_name or socket.gethostname(), wakeups=wakeups,
                       store=store, presence=presence, now_ms=now_ms)
