"""Assembles a relay: store, enrolment, QUIC endpoint, delivery, control socket.

``serve()`` owns every task it starts (one nursery) and reports readiness
with ``task_status.started(RunningRelay)``; leaving it closes connections
with GOING_AWAY, lets submitted commits finish and closes the store. It runs
holding the data directory's lock (relay/data_dir.py), its caller's or its own.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog
import trio
from aioquic.quic.configuration import QuicConfiguration
from prometheus_client import CollectorRegistry

from enrolment.limits import EnrolmentLimits
from enrolment.service import EnrolmentService
from enrolment.sms import HttpGateway, OutboxGateway, SmsDispatcher, SmsGateway, SmsMessage
from relay.blobs import BlobService
from relay.call_routes import ClusterCallRoutes, call_address
from relay.calls import CallService
from relay.cluster import cluster_node_for, presence_for
from relay.context import RelayContext
from relay.control import serve_control_socket
from relay.data_dir import DataDirLock, lock_data_dir
from relay.delivery import CommitPipeline
from relay.device_lists import DeviceListService
from relay.enrolment_secret import enrolment_secret_path, load_enrolment_secret
from relay.forwarding import Worker
from relay.linking import LinkChannelService
from relay.prekeys import PrekeyService
from relay.push_factory import build_providers, close_providers
from relay.push_providers import PushProvider
from relay.push_registry import PushRegistry
from relay.sealed import SealedService, check_cluster_keys
from relay.sender_certificates import load_keyring, sender_key_directory
from relay.session import DeviceSession
from relay.settings import RelaySettings
from relay.telemetry import relay_registry
from relay.tls import ensure_development_certificate
from relay.wakeups import WakeupScheduler, lease_for
from storage.base import Store
from storage.store_url import open_store, parse_store_url
from transport.quic import DATAGRAM_FRAME_SIZE, QuicEndpoint, QuicLink, open_udp_socket
from wire.frames import ALPN, ErrorCode
from wire.limits import MAX_CONCURRENT_STREAMS

__all__ = ["RunningRelay", "serve"]

log = structlog.get_logger("relay.server")

SWEEP_BATCH = 10_000
"""Expired envelopes deleted per sweeper transaction (keeps each write short)."""

ENROLMENT_SWEEP_BATCH = 1_000
"""Expired codes, and sends and guess windows too old to count, deleted per sweeper
transaction (of each kind): rows that ENROL_STARTs for made-up numbers leave behind."""

SHUTDOWN_GRACE_SECONDS = 2.0
"""How long closing connections may take to reach clients on shutdown."""

RECEIVE_WINDOW_BYTES = 1024 * 1024
"""Bytes a client may send on a connection beyond what the relay has taken out of its receive
buffers (QUIC MAX_DATA, slid rather than doubled: transport/flow_control.py), so at most what
one connection holds out of order. It is also the most in flight per round trip: 10 MiB/s at
100 ms, plenty for messages of at most 2 MiB."""


@dataclass
class RunningRelay:
    """Handed to ``serve``'s caller once the relay listens."""

    address: tuple[str, int]
    cert_path: Path
    context: RelayContext
    endpoint: QuicEndpoint
    stop: Callable[[], None]
    stopped: trio.Event
    """Set once ``serve`` has returned: the store is closed and the data directory free."""


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _sms_gateway(settings: RelaySettings) -> SmsGateway:
    if settings.sms_gateway == "http":
        assert settings.sms_http_url is not None and settings.sms_http_token is not None
        return HttpGateway(settings.sms_http_url, settings.sms_http_token)
    return OutboxGateway(settings.data_dir / "sms-outbox.jsonl")


def _quic_configuration(settings: RelaySettings, cert: Path, key: Path) -> QuicConfiguration:
    configuration = QuicConfiguration(
        is_client=False, alpn_protocols=[ALPN], idle_timeout=settings.idle_timeout_s,
        max_datagram_frame_size=DATAGRAM_FRAME_SIZE,  # call media (relay/calls.py)
        max_stream_data=4 * 1024 * 1024, max_data=RECEIVE_WINDOW_BYTES)
    configuration.load_cert_chain(str(cert), str(key))
    return configuration


async def serve(settings: RelaySettings, *,
                task_status: trio.TaskStatus[RunningRelay] = trio.TASK_STATUS_IGNORED,
                now_ms: Callable[[], int] = wall_clock_ms,
                on_sms_sent: Callable[[SmsMessage], None] | None = None,
                worker: Worker | None = None,
                data_dir_lock: DataDirLock | None = None,
                push_providers: Mapping[str, PushProvider] | None = None) -> None:
    """Run a relay until cancelled or until ``RunningRelay.stop()`` is called.

    Args:
        settings: where to listen and keep data, limits.
        task_status: receives the ``RunningRelay`` once it listens.
        now_ms: wall clock in milliseconds (tests move it to expire things).
        on_sms_sent: called after each SMS leaves through the gateway.
        worker: run as one of several worker processes sharing the UDP port
            (relay/supervisor.py): its socket and connection-id routing.
        data_dir_lock: the data directory's lock, held by the caller; without it,
            ``serve`` takes the lock itself and lets go of it when it returns.
        push_providers: the wake-up push providers by name (tests pass their own); None
            builds those ``settings`` configure (``relay.push_factory``).

    Raises:
        DataDirectoryInUse: without ``data_dir_lock``, another relay holds the directory.
        PushConfigError: a configured push provider's key or credentials cannot be used.
    """
    stopped = trio.Event()
    built_providers = None
    try:
        if push_providers is None:
            push_providers = built_providers = build_providers(settings, settings.data_dir)
        if data_dir_lock is not None:
            await _serve_holding(settings, data_dir_lock, stopped, task_status=task_status,
                                 now_ms=now_ms, on_sms_sent=on_sms_sent, worker=worker,
                                 push_providers=push_providers)
            return
        with lock_data_dir(settings.data_dir, purpose="serve") as own_lock:
            await _serve_holding(settings, own_lock, stopped, task_status=task_status,
                                 now_ms=now_ms, on_sms_sent=on_sms_sent, worker=worker,
                                 push_providers=push_providers)
    finally:
        if built_providers is not None:
            with trio.CancelScope(shield=True):
                await close_providers(built_providers)
        stopped.set()


async def _serve_holding(settings: RelaySettings, data_dir_lock: DataDirLock,
                         stopped: trio.Event, *, task_status: trio.TaskStatus[RunningRelay],
                         now_ms: Callable[[], int],
                         on_sms_sent: Callable[[SmsMessage], None] | None,
                         worker: Worker | None,
                         push_providers: Mapping[str, PushProvider]) -> None:
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    cert, key = settings.cert, settings.key
    if cert is None or key is None:
        cert, key, generated = ensure_development_certificate(
            data_dir / "tls", now=datetime.datetime.now(datetime.UTC))
        if generated:
            log.warning("development_certificate_generated", path=str(cert))
    configuration = _quic_configuration(settings, cert, key)
    sock = (worker.udp_socket if worker is not None
            else open_udp_socket(settings.listen_host, settings.listen_port))
    stop_requested = trio.Event()
    try:
        location = parse_store_url(settings.store, data_dir=data_dir)
        log.info("store_opening", store=location.describe())
        async with open_store(location,
                              commit_gather_s=settings.commit_gather_us / 1e6) as store:
            gateway = _sms_gateway(settings)
            dispatcher = SmsDispatcher(gateway, on_sent=on_sms_sent)
            secret = await load_enrolment_secret(
                store, enrolment_secret_path(data_dir, settings.enrolment_secret_file),
                cluster=location.postgres_dsn is not None)
            enrolment = EnrolmentService(store, dispatcher, secret=secret, limits=EnrolmentLimits(
                starts_per_address=settings.enrol_starts_per_address,
                verifies_per_address=settings.enrol_verifies_per_address))
            async with trio.open_nursery() as nursery:
                context = await _relay_context(settings, store, enrolment, nursery, now_ms)
                scheduler = _wakeup_services(context, push_providers)

                def on_connection(link: QuicLink) -> DeviceSession:
                    return DeviceSession(context, link)

                endpoint = QuicEndpoint(sock, configuration=configuration,
                                        on_connection=on_connection, retry=settings.retry,
                                        routing=worker.routing if worker is not None else None,
                                        peer_streams=MAX_CONCURRENT_STREAMS,
                                        receive_window=RECEIVE_WINDOW_BYTES,
                                        connections_per_address=settings.connections_per_address)
                context.endpoint = endpoint
                await nursery.start(dispatcher.run)
                nursery.start_soon(context.pipeline.run)
                await _join_cluster(nursery, context, endpoint, location.postgres_dsn)
                await _start_background_work(nursery, context, scheduler)
                await _start_local_services(nursery, context, worker, data_dir_lock)
                await nursery.start(endpoint.run)
                if settings.metrics_listen is not None:
                    from relay.operations_http import serve_operations_http  # noqa: PLC0415

                    context.operations_address = await nursery.start(
                        serve_operations_http, settings.metrics_listen, context,
                        _operations_registry(context, dispatcher, worker))
                if settings.admin_listen is not None:
                    from relay.admin_http import serve_admin_https  # noqa: PLC0415

                    context.admin_address = await nursery.start(
                        serve_admin_https, settings.admin_listen, context, cert, key)
                address = endpoint.local_address
                log.info("relay_listening", host=address[0], port=address[1])
                task_status.started(RunningRelay(address=(address[0], address[1]),
                                                 cert_path=cert, context=context,
                                                 endpoint=endpoint, stop=stop_requested.set,
                                                 stopped=stopped))
                await stop_requested.wait()
                await _close_gracefully(endpoint, context)
                nursery.cancel_scope.cancel()
            if isinstance(gateway, HttpGateway):
                await gateway.aclose()
    finally:
        sock.close()
    log.info("relay_stopped")


async def _join_cluster(nursery: trio.Nursery, context: RelayContext, endpoint: QuicEndpoint,
                        dsn: str | None) -> None:
    """Make this relay a cluster node when its store is shared (PostgreSQL): listening before
    any device can claim, and the calls it opens routed to it from the other nodes."""
    settings, now_ms = context.settings, context.now_ms
    context.cluster = cluster_node_for(
        store=context.store, presence=context.presence, dsn=dsn,
        node_name=settings.node_name, now_ms=now_ms)
    if context.cluster is not None:
        await nursery.start(context.cluster.run)
        context.calls.routes = ClusterCallRoutes(
            context.cluster, now_ms=now_ms,
            address=call_address(settings, endpoint.local_address[1]))


async def _relay_context(settings: RelaySettings, store: Store, enrolment: EnrolmentService,
                         nursery: trio.Nursery, now_ms: Callable[[], int]) -> RelayContext:
    """The context every session shares, with its services (some read the context); the
    sender-certificate keys are read (the first one made) from the data directory."""
    presence = presence_for(store)
    context = RelayContext(settings=settings, store=store, enrolment=enrolment, nursery=nursery,
                           presence=presence, pipeline=CommitPipeline(store, presence),
                           now_ms=now_ms)
    context.prekeys = PrekeyService(context)
    context.device_lists = DeviceListService(context)
    context.linking = LinkChannelService(store, now_ms=now_ms, metrics=context.metrics)
    context.blobs = BlobService(store, settings=settings, metrics=context.metrics, now_ms=now_ms)
    context.calls = CallService(store=store, metrics=context.metrics, now_ms=now_ms)
    key_directory = sender_key_directory(settings.data_dir)
    keyring = await trio.to_thread.run_sync(lambda: load_keyring(key_directory, now_ms=now_ms()))
    # The public key's fingerprint, so that an operator can see every node signs with one key.
    log.info("sender_keys_loaded", signing_key_id=keyring.signing.key_id,
             signing_key_fingerprint=keyring.signing.public_key.hex()[:16],
             published=len(keyring.accepted))
    await check_cluster_keys(store, keyring)
    context.sealed = SealedService(context, keyring, key_directory)
    return context


def _wakeup_services(context: RelayContext,
                     providers: Mapping[str, PushProvider]) -> WakeupScheduler:
    """The wake-up scheduler and the push target requests, set on ``context``."""
    store = context.store
    sessions = context.sessions
    scheduler = WakeupScheduler(
        store=store, providers=providers, metrics=context.metrics, now_ms=context.now_ms,
        is_connected=sessions.__contains__,
        shared_store=store.cluster_wakeups() is not None,
        lease_s=lease_for(context.settings.push_timeout_s))
    context.wakeups = scheduler
    context.push = PushRegistry(store=store, providers=providers, changes=scheduler,
                                metrics=context.metrics, now_ms=context.now_ms)
    return scheduler


async def _start_background_work(nursery: trio.Nursery, context: RelayContext,
                                 scheduler: WakeupScheduler) -> None:
    """The sweeper, and the wake-up scheduler (which first recovers what a stop left)."""
    nursery.start_soon(_sweep, context)
    await nursery.start(scheduler.run)


async def _start_local_services(nursery: trio.Nursery, context: RelayContext,
                                worker: Worker | None, data_dir_lock: DataDirLock) -> None:
    """The control socket (one per data directory, served under its lock: worker 0
    serves it) and, in a worker, the datagrams other workers forward to it; the calls'
    sweeper."""
    # Worker processes share one UDP port, and a call's participants may land on different
    # ones: such a relay refuses calls (docs/CLUSTER.md "Calls").
    context.calls.enabled = worker is None
    nursery.start_soon(context.calls.run)
    if worker is None or worker.index == 0:
        await nursery.start(serve_control_socket, data_dir_lock, context)
    if worker is not None:
        assert context.endpoint is not None
        await nursery.start(worker.routing.run, context.endpoint)


def _operations_registry(context: RelayContext, dispatcher: SmsDispatcher,
                         worker: Worker | None) -> CollectorRegistry:
    registry = relay_registry(context, dispatcher.outcomes)
    if worker is not None:
        registry.register(worker.routing.collector())
    return registry


async def _close_gracefully(endpoint: QuicEndpoint, context: RelayContext) -> None:
    """Stop accepting; tell every client to go elsewhere; let the close frames leave."""
    endpoint.stop_accepting()
    context.calls.end_all("shutdown")
    with trio.move_on_after(SHUTDOWN_GRACE_SECONDS):  # so that no node sends joiners here
        await context.calls.forget_ended_routes()
    links = endpoint.links
    for link in links:
        link.close(int(ErrorCode.GOING_AWAY), "relay shutting down")
    with trio.move_on_after(SHUTDOWN_GRACE_SECONDS):
        for link in links:
            await link.closed.wait()


async def _sweep(context: RelayContext) -> None:
    """Delete expired envelopes now and then (they are already never delivered), and the
    enrolment rows that can no longer count.

    Each pass is also the store's reachability check (``cryptopass_store_up``): a failed pass
    is logged and tried again after ``sweep_interval_s``, so an unreachable PostgreSQL shows on
    the node's metrics instead of taking the node down.
    """
    while True:
        try:
            deleted = await context.store.expire(now=context.now_ms(), limit=SWEEP_BATCH)
            context.metrics.expired += deleted
            if deleted:
                log.info("envelopes_expired", count=deleted)
            forgotten = await context.enrolment.forget_old_records(context.now_ms(),
                                                                   limit=ENROLMENT_SWEEP_BATCH)
            context.metrics.deepest_queue = await context.store.deepest_queue()
        except Exception as error:  # any store failure: unreachable until a pass succeeds
            context.metrics.store_up = False
            log.error("store_sweep_failed", error=type(error).__name__)
            await trio.sleep(context.settings.sweep_interval_s)
            continue
        context.metrics.store_up = True
        if forgotten:
            log.info("enrolment_records_forgotten", count=forgotten)
        if deleted < SWEEP_BATCH and forgotten < ENROLMENT_SWEEP_BATCH:
            await trio.sleep(context.settings.sweep_interval_s)
