"""Relay settings, with their defaults and units."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from enrolment.limits import ENROL_STARTS_PER_ADDRESS, ENROL_VERIFIES_PER_ADDRESS
from relay.limits import SEND_BYTES_PER_MINUTE, SENDER_QUEUE_SHARE_PERCENT, SENDS_PER_MINUTE
from transport.quic import MAX_CONNECTIONS_PER_ADDRESS

__all__ = [
    "DEFAULT_BLOB_MAX_BYTES",
    "DEFAULT_BLOB_QUOTA_PER_ORGANISATION_BYTES",
    "DEFAULT_BLOB_TTL_MS",
    "DEFAULT_BLOB_UPLOAD_DEADLINE_MS",
    "DEFAULT_COMMIT_GATHER_US",
    "DEFAULT_DATA_DIR",
    "DEFAULT_ENVELOPE_TTL_MS",
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_QUEUE_DEPTH",
    "DEFAULT_PUSH_APNS_HOST",
    "DEFAULT_PUSH_FCM_BASE_URL",
    "DEFAULT_PUSH_TIMEOUT_S",
    "DEFAULT_PUSH_TTL_S",
    "DEFAULT_PUSH_WEBPUSH_ALLOWED_HOSTS",
    "MAX_COMMIT_GATHER_US",
    "MAX_WORKERS",
    "RelaySettings",
    "allowed_push_hosts",
]

DEFAULT_DATA_DIR = Path("cryptopass-data")
DEFAULT_LISTEN = "127.0.0.1:4433"

DEFAULT_ENVELOPE_TTL_MS = 30 * 24 * 3600 * 1000
"""An envelope not acknowledged within 30 days is deleted (the device is likely gone)."""

DEFAULT_MAX_QUEUE_DEPTH = 10_000
"""Envelopes one device may hold before sends to it are refused with QUEUE_FULL
(never dropped): bounds the storage one absent device can consume."""

DEFAULT_BLOB_MAX_BYTES = 100 * 1024 * 1024
"""The largest file (its ciphertext, in bytes) a device may upload: 100 MiB, a long video;
larger ones are refused with BLOB_TOO_LARGE before anything is stored."""

DEFAULT_BLOB_QUOTA_PER_ORGANISATION_BYTES = 10 * 1024 * 1024 * 1024
"""Bytes of unexpired files one organisation may keep on the relay (10 GiB): beyond, a new file
is refused with BLOB_QUOTA_EXCEEDED until older ones expire."""

DEFAULT_BLOB_TTL_MS = 30 * 24 * 3600 * 1000
"""A file is deleted 30 days after its creation, like an unacknowledged envelope: every
recipient device has had a month to fetch it."""

DEFAULT_BLOB_UPLOAD_DEADLINE_MS = 24 * 3600 * 1000
"""A file whose upload is not complete a day after its creation expires then, and its size no
longer counts against its organisation's quota: an abandoned upload does not hold quota for
the whole ``blob_ttl_ms`` (a device resumes within the day, or sends the file again)."""

MAX_WORKERS = 64
"""Worker processes per relay (``workers``). The index fits the first byte of a
connection id with room to spare; more processes than cores only add contention,
and each is a cluster node with up to 8 PostgreSQL connections."""


DEFAULT_COMMIT_GATHER_US = 1000
"""How long a busy writer gathers writes into one commit (storage/group_commit.py): paced
traffic then shares each fsync among several sends, for at most this much added latency
(docs/BENCHMARKS.md, "Paced traffic")."""
MAX_COMMIT_GATHER_US = 20_000
"""Beyond this, gathering would add more latency than any commit it saves is worth."""


DEFAULT_PUSH_WEBPUSH_ALLOWED_HOSTS = ("fcm.googleapis.com,push.services.mozilla.com,"
                                      "notify.windows.com,push.apple.com")
"""The public Web Push services (Chrome, Firefox, Edge, Safari), matched as host suffixes: the
relay POSTs only to these, whatever endpoint a client registers (a hostile client would
otherwise make the relay request its own admin port or a cloud metadata address)."""
DEFAULT_PUSH_FCM_BASE_URL = "https://fcm.googleapis.com"
DEFAULT_PUSH_APNS_HOST = "https://api.push.apple.com"
DEFAULT_PUSH_TIMEOUT_S = 5.0
"""Seconds for each push request (connect, write, read): a slow push service must not hold a
wake-up; a timeout is retried like a 5xx."""
DEFAULT_PUSH_TTL_S = 24 * 3600
"""How long a push service keeps an undelivered wake-up (Web Push ``TTL``, APNs expiration,
FCM ``ttl``): a phone off for longer connects of itself when switched on, and its queue waits."""


def allowed_push_hosts(text: str) -> tuple[str, ...]:
    """The host suffixes of ``push_webpush_allowed_hosts`` (comma-separated), lower case."""
    return tuple(host.strip().lower().rstrip(".") for host in text.split(",") if host.strip())


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
    blob_max_bytes: int = DEFAULT_BLOB_MAX_BYTES
    """Largest file (ciphertext bytes) a device may upload (beyond: BLOB_TOO_LARGE)."""
    blob_quota_per_organisation_bytes: int = DEFAULT_BLOB_QUOTA_PER_ORGANISATION_BYTES
    """Bytes of unexpired files one organisation may keep (beyond: BLOB_QUOTA_EXCEEDED)."""
    blob_ttl_ms: int = DEFAULT_BLOB_TTL_MS
    """Milliseconds a file is kept after its creation; the expiry sweep deletes it then."""
    blob_upload_deadline_ms: int = DEFAULT_BLOB_UPLOAD_DEADLINE_MS
    """Milliseconds after its creation by which a file's upload must be complete, else it
    expires then (its quota given back)."""
    sweep_interval_s: float = 60.0
    """Seconds between expiry sweeps."""
    commit_gather_us: int = DEFAULT_COMMIT_GATHER_US
    """Microseconds a busy store writer waits for more writes to share its commit (0: never
    waits; at most ``MAX_COMMIT_GATHER_US``). An idle writer commits at once."""
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
    push_timeout_s: float = DEFAULT_PUSH_TIMEOUT_S
    """Seconds for each step of a request to a push service (connect, write, each read), and
    twice that for the whole request, before it counts as a network failure."""
    push_ttl_s: int = DEFAULT_PUSH_TTL_S
    """Seconds a push service keeps an undelivered wake-up."""
    push_webpush_subject: str | None = None
    """Web Push (docs/PUSH.md): the operator's contact, ``mailto:...`` or ``https://...``, sent
    in every VAPID token (RFC 8292); setting it turns the ``webpush`` provider on."""
    push_webpush_vapid_key_file: Path | None = None
    """The VAPID signing key (P-256, PEM); None is ``data_dir/push-vapid.pem``, created on
    first start. Every node of a cluster needs the same file: subscriptions are bound to its
    public key."""
    push_webpush_allowed_hosts: str = DEFAULT_PUSH_WEBPUSH_ALLOWED_HOSTS
    """Comma-separated host suffixes a Web Push endpoint may name (``push.apple.com`` admits
    ``web.push.apple.com``); endpoints are https on port 443 only."""
    push_webpush_allow_loopback_http: bool = False
    """Development only: also accept endpoints on a loopback address (127.0.0.0/8, ::1,
    localhost), over http or https, on any port. Off in production: it lets a client make the
    relay send requests to its own machine."""
    push_fcm_credentials_file: Path | None = None
    """FCM: the Firebase service account's JSON key file; setting it turns ``fcm`` on."""
    push_fcm_base_url: str = DEFAULT_PUSH_FCM_BASE_URL
    """FCM HTTP v1 API's base URL (a test receiver's in tests)."""
    push_apns_key_file: Path | None = None
    """APNs: the token-signing key (.p8, P-256) from Apple; setting it turns ``apns`` on, with
    the three settings below."""
    push_apns_key_id: str | None = None
    """The 10-character id of that key (the JWT's ``kid``)."""
    push_apns_team_id: str | None = None
    """The Apple developer team id (the JWT's ``iss``)."""
    push_apns_topic: str | None = None
    """The app's bundle id (``apns-topic``)."""
    push_apns_host: str = DEFAULT_PUSH_APNS_HOST
    """APNs server URL: production, ``https://api.sandbox.push.apple.com``, or a test's."""
    push_apns_ca_file: Path | None = None
    """Extra CA certificates (PEM) to trust for ``push_apns_host`` (a test server's or a
    private gateway's); None trusts the system's."""
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

