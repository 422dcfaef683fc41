"""Prometheus metrics of one relay, read from the counters it already keeps.

The relay counts in plain fields (``RelayMetrics``, the SMS dispatcher's
outcomes, the endpoint's connections) at the points where things happen; this
module turns them into Prometheus families when scraped, in a registry of its
own (never the process-global one, so two relays in one test process do not
collide). No label carries a user, device, phone number or organisation: only
bounded sets of outcomes and operations.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from cryptography import x509
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from relay.context import RelayContext
from relay.metrics import LatencyHistogram, RelayMetrics

if TYPE_CHECKING:
    from enrolment.sms import SmsOutcomes

__all__ = ["ADMIN_OUTCOMES", "CALL_DROP_REASONS", "PUSH_FAMILIES", "RelayCollector",
           "relay_registry"]

ADMIN_OUTCOMES = ("ok", "client_error", "server_error")
"""The outcomes of admin responses, each exported (0 until it happens) so rates exist."""

PUSH_FAMILIES = (
    ("scheduled", "cryptopass_push_wakeups_scheduled",
     "Wake-ups made due for devices that were away when an envelope was committed."),
    ("coalesced", "cryptopass_pushes_coalesced",
     "Envelopes for an away device already woken within the interval: no further push."),
    ("sent", "cryptopass_pushes_sent", "Wake-up pushes the push service accepted."),
    ("retried", "cryptopass_pushes_retried",
     "Wake-up pushes to be tried again later (5xx, 429, network failure)."),
    ("failed", "cryptopass_pushes_failed",
     "Wake-up pushes refused for good, or given up after too many retries."),
    ("removed", "cryptopass_push_targets_removed",
     "Push targets deleted because their push service said they are gone."),
)
"""(outcome in ``RelayMetrics.pushes``, family, help): one counter family per outcome, labelled
by provider."""


class RelayCollector(Collector):
    """Reads a relay's counters at scrape time."""

    def __init__(self, context: RelayContext, sms_outcomes: SmsOutcomes) -> None:
        self._context = context
        self._sms_outcomes = sms_outcomes

    def collect(self) -> Iterator[Metric]:
        context = self._context
        metrics = context.metrics
        endpoint = context.endpoint
        yield _counter("cryptopass_connections_opened", "QUIC connections accepted.",
                       metrics.connections_opened)
        yield _gauge("cryptopass_connections_open", "QUIC connections open now.",
                     len(endpoint.links) if endpoint is not None else 0)
        yield _gauge("cryptopass_devices_connected", "Authenticated device connections now.",
                     len(context.sessions))
        buffers = context.buffers
        yield _gauge("cryptopass_buffered_bytes", "Bytes held in incomplete frames now.",
                     buffers.used)
        yield _gauge("cryptopass_buffered_bytes_unauthenticated",
                     "Bytes held in incomplete frames of unauthenticated connections now.",
                     buffers.used_unauthenticated)
        yield _counter("cryptopass_buffer_refusals",
                       "Frames refused because a buffer budget was spent.", buffers.refusals)
        yield _counter("cryptopass_connections_refused",
                       "Handshakes refused because their address had too many connections.",
                       endpoint.connections_refused if endpoint is not None else 0)
        sends = CounterMetricFamily("cryptopass_sends", "Send requests by outcome.",
                                    labels=["outcome"])
        for outcome, count in sorted(metrics.send_outcomes().items()):
            sends.add_metric([outcome], count)
        yield sends
        yield from _fan_out_metrics(metrics)
        yield _counter("cryptopass_envelopes_delivered",
                       "Envelopes pushed to connected devices.", metrics.delivered)
        yield _counter("cryptopass_envelopes_acknowledged",
                       "Envelopes acknowledged by their device (and deleted).",
                       metrics.acknowledged)
        yield _counter("cryptopass_envelopes_expired",
                       "Envelopes deleted unacknowledged after their TTL.", metrics.expired)
        limited = CounterMetricFamily("cryptopass_rate_limited",
                                      "Requests refused by a rate limit.", labels=["operation"])
        limited.add_metric(["lookup"], metrics.rate_limited)
        limited.add_metric(["enrolment"], sum(
            count for (_, outcome), count in metrics.enrolment.items()
            if outcome == "rate_limited"))
        limited.add_metric(["link_open"], metrics.linking["open", "rate_limited"])
        limited.add_metric(["device_list"], metrics.device_lists["rate_limited"])
        yield limited
        enrolment = CounterMetricFamily("cryptopass_enrolment",
                                        "Enrolment requests by step and outcome.",
                                        labels=["step", "outcome"])
        for (step, outcome), count in sorted(metrics.enrolment.items()):
            enrolment.add_metric([step, outcome], count)
        yield enrolment
        linking = CounterMetricFamily("cryptopass_link_channels",
                                      "Link channel requests by operation and outcome.",
                                      labels=["operation", "outcome"])
        for (operation, outcome), count in sorted(metrics.linking.items()):
            linking.add_metric([operation, outcome], count)
        yield linking
        device_lists = CounterMetricFamily("cryptopass_device_list_publishes",
                                           "Device list publications by outcome.",
                                           labels=["outcome"])
        for outcome, count in sorted(metrics.device_lists.items()):
            device_lists.add_metric([outcome], count)
        yield device_lists
        yield from _blob_families(metrics)
        yield _sealed_family(metrics)
        yield _counter("cryptopass_revoked_device_connections",
                       "Connections closed because their device was revoked by a "
                       "re-enrolment or a published device list.", metrics.revoked_devices)
        sms = CounterMetricFamily("cryptopass_sms", "SMS by outcome.", labels=["outcome"])
        for outcome in ("sent", "failed", "dropped"):
            sms.add_metric([outcome], getattr(self._sms_outcomes, outcome))
        yield sms
        yield _gauge("cryptopass_commit_queue_depth",
                     "Sends submitted to storage and not yet committed.",
                     context.pipeline.pending)
        yield _counter("cryptopass_storage_commits",
                       "Storage write transactions (group commits).", context.store.commit_count)
        yield _gauge("cryptopass_max_queue_depth",
                     "Envelopes one device may hold before sends to it are refused (QUEUE_FULL).",
                     context.settings.max_queue_depth)
        yield from self._pushes()
        yield from self._health()
        yield from _calls(metrics)
        admin = CounterMetricFamily("cryptopass_admin_requests",
                                    "Admin console and API responses by outcome.",
                                    labels=["outcome"])
        for outcome in ADMIN_OUTCOMES:
            admin.add_metric([outcome], metrics.admin_requests[outcome])
        yield admin
        yield _histogram("cryptopass_delivery_latency_seconds",
                         "From acceptance to push to the recipient device.",
                         metrics.delivery_latency)
        yield _histogram("cryptopass_storage_commit_latency_seconds",
                         "From submitting a send to its durable commit.",
                         metrics.commit_latency)

    def _pushes(self) -> Iterator[Metric]:
        """Wake-up pushes by outcome and provider (relay/wakeups.py), and the registrations."""
        metrics = self._context.metrics
        for outcome, name, documentation in PUSH_FAMILIES:
            family = CounterMetricFamily(name, documentation, labels=["provider"])
            for (counted, provider), count in sorted(metrics.pushes.items()):
                if counted == outcome:
                    family.add_metric([provider], count)
            yield family
        targets = CounterMetricFamily("cryptopass_push_target_requests",
                                      "PUSH_SET and PUSH_CLEAR requests by outcome.",
                                      labels=["outcome", "provider"])
        for (outcome, provider), count in sorted(metrics.push_targets.items()):
            targets.add_metric([outcome, provider], count)
        yield targets
        yield _histogram("cryptopass_push_delay_seconds",
                         "From the commit of an envelope for an away device to its wake-up "
                         "push.", metrics.push_delay)

    def _health(self) -> Iterator[Metric]:
        """What the alerts watch: certificate expiry, store and LISTEN connection state, read
        from memory (no I/O at scrape time)."""
        context = self._context
        configuration = context.endpoint.configuration if context.endpoint is not None else None
        certificate = configuration.certificate if configuration is not None else None
        expiry = GaugeMetricFamily(
            "cryptopass_certificate_expiry_timestamp_seconds",
            "When the TLS certificate served to new connections expires (notAfter, Unix time).")
        if isinstance(certificate, x509.Certificate):
            expiry.add_metric([], certificate.not_valid_after_utc.timestamp())
        yield expiry
        yield _gauge("cryptopass_deepest_queue_depth",
                     "Envelopes queued for the device with the most, at the last sweep.",
                     context.metrics.deepest_queue)
        yield _gauge("cryptopass_store_up",
                     "1 if the store answered its last check (sweep or readiness probe), else 0.",
                     1 if context.metrics.store_up else 0)
        # Only a cluster node has a LISTEN connection: a single node exports the family
        # without a sample, so "== 0" alerts never fire there.
        listening = GaugeMetricFamily(
            "cryptopass_cluster_listening",
            "1 while this cluster node's LISTEN connection to PostgreSQL is up, else 0.")
        notifications = CounterMetricFamily(
            "cryptopass_cluster_notifications",
            "Notifications (wake-ups, take-overs, revocations) heard from other nodes.")
        reconnections = CounterMetricFamily(
            "cryptopass_cluster_listen_reconnections",
            "Times this cluster node got its lost LISTEN connection back.")
        if context.cluster is not None:
            listening.add_metric([], 1 if context.cluster.listening.is_set() else 0)
            notifications.add_metric([], context.cluster.notifications)
            reconnections.add_metric([], context.cluster.listen_reconnections)
        yield listening
        yield notifications
        yield reconnections


CALL_DROP_REASONS = ("unknown_tag", "too_large", "rate_limited", "congested")
"""Why a media datagram is dropped (relay/calls.py), each exported (0 until it happens)."""


def _calls(metrics: RelayMetrics) -> Iterator[Metric]:
    """Calls and their media (relay/calls.py): what `cryptopass-bench calls` reads too."""
    yield _gauge("cryptopass_calls_open", "Calls this relay process holds now.",
                 metrics.calls_open)
    requests = CounterMetricFamily("cryptopass_call_requests",
                                   "Call requests and call ends by operation and outcome.",
                                   labels=["operation", "outcome"])
    for (operation, outcome), count in sorted(metrics.calls.items()):
        requests.add_metric([operation, outcome], count)
    yield requests
    yield _counter("cryptopass_call_datagrams_received",
                   "Media datagrams accepted from call participants.",
                   metrics.call_datagrams_received)
    yield _counter("cryptopass_call_datagrams_forwarded",
                   "Media datagrams handed to another participant's connection.",
                   metrics.call_datagrams_forwarded)
    yield _counter("cryptopass_call_bytes_forwarded",
                   "Payload bytes of the media datagrams forwarded.",
                   metrics.call_bytes_forwarded)
    dropped = CounterMetricFamily("cryptopass_call_datagrams_dropped",
                                  "Media datagrams dropped, by reason.", labels=["reason"])
    for reason in CALL_DROP_REASONS:
        dropped.add_metric([reason], metrics.call_datagrams_dropped[reason])
    yield dropped


def relay_registry(context: RelayContext, sms_outcomes: SmsOutcomes) -> CollectorRegistry:
    """A registry of its own holding the relay's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(context, sms_outcomes))
    return registry


def _sealed_family(metrics: RelayMetrics) -> Metric:
    """Sealed sender requests by outcome, with no ids (relay/sealed.py)."""
    sealed = CounterMetricFamily("cryptopass_sealed_sender",
                                 "Sealed sender requests by outcome (sealed sends accepted, "
                                 "duplicate or refused by reason; certificates; tokens).",
                                 labels=["outcome"])
    for outcome, count in sorted(metrics.sealed.items()):
        sealed.add_metric([outcome], count)
    return sealed


def _blob_families(metrics: RelayMetrics) -> Iterator[Metric]:
    """Files: created, bytes each way, refusals by reason (relay/blobs.py)."""
    yield _counter("cryptopass_blobs_created", "Files (blobs) created by BLOB_CREATE.",
                   metrics.blobs_created)
    yield _counter("cryptopass_blob_bytes_uploaded",
                   "Blob bytes appended to the store by uploads.", metrics.blob_bytes_uploaded)
    yield _counter("cryptopass_blob_bytes_downloaded",
                   "Blob bytes written to download streams.", metrics.blob_bytes_downloaded)
    refusals = CounterMetricFamily("cryptopass_blob_refusals", "Refused blob requests by reason.",
                                   labels=["reason"])
    for reason, count in sorted(metrics.blob_refusals.items()):
        refusals.add_metric([reason], count)
    yield refusals


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _histogram(name: str, documentation: str,
               histogram: LatencyHistogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=histogram.cumulative(),
                                 sum_value=histogram.total)


def _fan_out_metrics(metrics: RelayMetrics) -> Iterator[Metric]:
    """MULTI_SENDs by outcome, and the envelopes they fanned out (relay/fanout.py)."""
    multi_sends = CounterMetricFamily("cryptopass_multi_sends",
                                      "MULTI_SEND requests by outcome (each also a send).",
                                      labels=["outcome"])
    for outcome, count in sorted(metrics.multi_sends.items()):
        multi_sends.add_metric([outcome], count)
    yield multi_sends
    yield _counter("cryptopass_envelopes_fanned_out",
                   "Envelopes queued by accepted MULTI_SENDs, one per recipient device.",
                   metrics.fanned_out)
