"""Relay settings, with their defaults and units."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from enrolment.limits import ENROL_STARTS_PER_ADDRESS, ENROL_VERIFIES_PER_ADDRESS
from relay.limits import SEND_BYTES_PER_MINUTE, SENDER_QUEUE_SHARE_PERCENT, SENDS_PER_MINUTE
from transport.quic import MAX_CONNECTIONS_PER_ADDRESS

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_ENVELOPE_TTL_MS",
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_QUEUE_DEPTH",
    "MAX_WORKERS",
    "RelaySettings",
]

DEFAULT_DATA_DIR = Path("cryptopass-data")
DEFAULT_LISTEN = "127.0.0.1:4433"

DEFAULT_ENVELOPE_TTL_MS = 30 * 24 * 3600 * 1000
"""An envelope not acknowledged within 30 days is deleted (the device is likely gone)."""

DEFAULT_MAX_QUEUE_DEPTH = 10_000
"""Envelopes one device may hold before sends to it are refused with QUEUE_FULL
(never dropped): bounds the storage one absent device can consume."""

MAX_WORKERS = 64
"""Worker processes per relay (``workers``). The index fits the first byte of a
connection id with room to spare; more processes than cores only add contention,
and each is a cluster node with up to 8 PostgreSQL connections."""


@dataclass(frozen=True, kw_only=True)
class RelaySettings:
    data_dir: Path = DEFAULT_DATA_DIR
    """Holds relay.db, tls/, sms-outbox.jsonl and the control socket."""
    listen_host: str = "127.0.0.1"
    listen_port: int = 4433
    """UDP port for QUIC (0: any free port)."""
    cert: Path | None = None
    key: Path | None = None
    """TLS certificate chain and key (PEM); a development pair is generated if unset."""
    envelope_ttl_ms: int = DEFAULT_ENVELOPE_TTL_MS
    max_queue_depth: int = DEFAULT_MAX_QUEUE_DEPTH
    sends_per_minute: int = SENDS_PER_MINUTE
    """SENDs one device may make per minute, in bursts of as many (beyond: RATE_LIMITED)."""
    send_bytes_per_minute: int = SEND_BYTES_PER_MINUTE
    """Ciphertext bytes one device may send per minute, every payload counted."""
    sender_queue_share_percent: int = SENDER_QUEUE_SHARE_PERCENT
    """Percent of each device's queue (``max_queue_depth``) one sender user may hold, at least
    100 envelopes (beyond: QUEUE_FULL for that sender's SENDs); 100 turns the share off."""
    idle_timeout_s: float = 60.0
    """A connection silent this long is closed (clients keep alive with PINGs)."""
    retry: bool = True
    """Validate client addresses with QUIC Retry before keeping any state."""
    connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS
    """Connections one client address (IPv4 address, IPv6 /64) may hold at once, per relay
    process; more are refused at the handshake (CONNECTION_REFUSED)."""
    sweep_interval_s: float = 60.0
    """Seconds between expiry sweeps."""
    sms_gateway: Literal["outbox", "http"] = "outbox"
    sms_http_url: str | None = None
    sms_http_token: str | None = None
    enrolment_secret_file: Path | None = None
    """The enrolment secret's file (relay/enrolment_secret.py); None is
    ``data_dir/enrolment.secret``. Every node of a cluster reads the same secret."""
    enrol_starts_per_address: int = ENROL_STARTS_PER_ADDRESS
    """ENROL_STARTs one source address may make per hour (beyond: RATE_LIMITED)."""
    enrol_verifies_per_address: int = ENROL_VERIFIES_PER_ADDRESS
    """ENROL_VERIFYs one source address may make per hour (beyond: RATE_LIMITED)."""
    store: str | None = None
    """Store URL: ``sqlite:///PATH`` or ``postgresql://...`` (several nodes); None is
    SQLite in ``data_dir`` (``relay.db``). See ``storage.store_url``."""
    node_name: str | None = None
    """This node's name in a PostgreSQL cluster, unique among live nodes; None is
    the host name."""
    metrics_listen: str | None = None
    """TCP HOST:PORT serving /metrics, /healthz and /readyz (an internal address); off if unset."""
    admin_listen: str | None = None
    """TCP HOST:PORT serving the admin console and API over HTTPS (relay.admin_http);
    off if unset."""
    call_address: str | None = None
    """HOST:PORT devices reach this node at, told to devices joining one of its calls from
    another node of a PostgreSQL cluster (CALL_ELSEWHERE); None is the listening address, the
    host name standing in for a wildcard (docs/CLUSTER.md "Calls")."""
    workers: int = 1
    """Relay processes sharing the UDP port (SO_REUSEPORT), each a node of the
    PostgreSQL cluster; more than 1 needs a PostgreSQL store (relay/supervisor.py)."""
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

