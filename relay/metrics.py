"""The relay's own counters and latency histograms, kept in plain fields where things happen.

Sessions, the commit pipeline and the delivery pumps count here; :mod:`relay.telemetry` turns
these counters into Prometheus families when scraped. Nothing here does I/O.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from storage.base import Envelope, SendOutcome, SendStatus
from storage.fanout_records import MultiSendOutcome

__all__ = [
    "DELIVERY_LATENCY_BUCKETS",
    "PUSH_DELAY_BUCKETS",
    "STORAGE_LATENCY_BUCKETS",
    "LatencyHistogram",
    "RelayMetrics",
]

DELIVERY_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
                            3600.0, 86_400.0)
"""Seconds from acceptance to push: milliseconds for an online recipient, up to
days for one that was offline (the envelope waited in its queue)."""

STORAGE_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                           1.0, 2.5)
"""Seconds from submitting a send to its commit (group commit, one fsync per batch)."""

PUSH_DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
"""Seconds from the commit of the first envelope a wake-up announces to the push service's
acceptance: under a second normally, minutes or an hour when a service asked to retry later."""


@dataclass
class LatencyHistogram:
    """A cumulative histogram in seconds, cheap enough to observe on every message."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """(upper bound, observations at or below it), as Prometheus wants them."""
        running, rows = 0, []
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            rows.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return rows


@dataclass
class RelayMetrics:
    """Counters read by tests, benchmarks and the Prometheus export (relay/telemetry.py)."""

    accepted: int = 0
    duplicates: int = 0
    refused: int = 0
    acknowledged: int = 0
    expired: int = 0
    rate_limited: int = 0
    delivered: int = 0
    connections_opened: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    """Refused sends by reason (a SendStatus name, or "error")."""
    enrolment: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(step, outcome) -> requests; e.g. ("verify", "verification_failed")."""
    linking: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(operation, outcome) -> link channel requests; e.g. ("open", "ok"),
    ("post", "exhausted"), ("fetch", "empty") (relay/linking.py)."""
    device_lists: Counter[str] = field(default_factory=Counter)
    """Outcome -> PUBLISH_DEVICE_LIST requests; e.g. "published", "stale_version"."""
    blobs_created: int = 0
    """Files (blobs) created by BLOB_CREATE."""
    blob_bytes_uploaded: int = 0
    """Blob bytes appended to the store (uploads)."""
    blob_bytes_downloaded: int = 0
    """Blob bytes written to download streams."""
    blob_refusals: Counter[str] = field(default_factory=Counter)
    """Refused blob requests by reason: "too_large", "quota_exceeded", "unknown",
    "offset_mismatch", "rate_limited", "bad_offset", "too_many_streams"."""
    revoked_devices: int = 0
    """Device connections closed because their device was revoked by a re-enrolment or a
    published device list."""
    store_up: bool = True
    deepest_queue: int = 0
    """The deepest device queue at the last sweep (``Store.deepest_queue``)."""
    """Whether the store answered its last check: the sweeper's last pass (every
    ``sweep_interval_s``) or the last /readyz probe. A scrape reads it without touching the
    store."""
    admin_requests: Counter[str] = field(default_factory=Counter)
    """Admin console and API responses by outcome: "ok" (2xx, 3xx), "client_error" (4xx),
    "server_error" (5xx) (relay/admin_http.py)."""
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(operation, outcome) -> call requests and ends; e.g. ("open", "ok"), ("join",
    "unknown"), ("end", "idle") (relay/calls.py)."""
    calls_open: int = 0
    """Calls this relay process holds now (set by relay/calls.py)."""
    call_datagrams_received: int = 0
    """Media datagrams accepted from participants (within their call's limits)."""
    call_bytes_received: int = 0
    """Their payload bytes."""
    call_datagrams_forwarded: int = 0
    """Media datagrams handed to another participant's connection."""
    call_bytes_forwarded: int = 0
    """Their payload bytes."""
    call_datagrams_dropped: Counter[str] = field(default_factory=Counter)
    """Reason -> media datagrams dropped: "unknown_tag" (not a call this connection joined),
    "too_large", "rate_limited" (over the sender's limits), "congested" (the receiver's
    connection could take no more now)."""
    delivery_latency: LatencyHistogram = field(
        default_factory=lambda: LatencyHistogram(DELIVERY_LATENCY_BUCKETS))
    commit_latency: LatencyHistogram = field(
        default_factory=lambda: LatencyHistogram(STORAGE_LATENCY_BUCKETS))
    pushes: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(outcome, provider) -> wake-ups (relay/wakeups.py): "scheduled", "coalesced" (a device
    already woken within the interval), "sent", "retried", "failed" (given up) and "removed"
    (the provider said the target is gone: it was deleted)."""
    push_targets: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(outcome, provider) -> PUSH_SET and PUSH_CLEAR requests (relay/push_registry.py): "set",
    "cleared" (provider ""), "rate_limited", "provider_unavailable", "invalid_target"."""
    multi_sends: Counter[str] = field(default_factory=Counter)
    """MULTI_SEND requests by outcome ("accepted", "duplicate", a refusal's SendStatus name,
    "rate_limited", "error"); each also counts once among the sends."""
    fanned_out: int = 0
    """Envelopes queued by accepted MULTI_SENDs, one per recipient device."""
    sealed: Counter[str] = field(default_factory=Counter)
    """Sealed sender's requests by outcome, never by user (relay/sealed.py): sealed sends
    "accepted", "duplicate", "token_refused" (bad, rotated or absent token, or no such
    recipient), "rate_limited", "mismatched_devices", "queue_full", "error"; and
    "certificate_issued", "token_set", "organisation_mode"."""
    push_delay: LatencyHistogram = field(
        default_factory=lambda: LatencyHistogram(PUSH_DELAY_BUCKETS))
    """From the commit of the first envelope a wake-up announces to its push."""

    def count_send(self, outcome: SendOutcome | MultiSendOutcome | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self.refused += 1
            self.refusals["error"] += 1
        elif outcome.status is SendStatus.ACCEPTED:
            self.accepted += 1
        elif outcome.status is SendStatus.DUPLICATE:
            self.duplicates += 1
        else:
            self.refused += 1
            self.refusals[outcome.status.name.lower()] += 1

    def count_multi_send(self, outcome: MultiSendOutcome | BaseException | None) -> None:
        """Count a MULTI_SEND's outcome (None: refused by the send budget, before the store)
        as a send, and the envelopes it fanned out."""
        self.multi_sends["rate_limited" if outcome is None else "error"
                         if isinstance(outcome, BaseException)
                         else outcome.status.name.lower()] += 1
        if outcome is None:
            self.refused += 1
            self.refusals["rate_limited"] += 1
            return
        self.count_send(outcome)
        if not isinstance(outcome, BaseException):
            self.fanned_out += len(outcome.envelopes)

    def send_outcomes(self) -> dict[str, int]:
        """Sends by outcome: accepted, duplicate, and each refusal reason."""
        return {"accepted": self.accepted, "duplicate": self.duplicates, **self.refusals}

    def count_delivered(self, envelopes: Sequence[Envelope], now_ms: int) -> None:
        self.delivered += len(envelopes)
        for envelope in envelopes:
            self.delivery_latency.observe(max(0, now_ms - envelope.accepted_at) / 1000)
