"""Web Push (RFC 8030): an encrypted wake-up POSTed to the endpoint a device registered.

- The payload ``WAKE_PAYLOAD`` is encrypted to the subscription's P-256 key and auth secret
  (RFC 8291, ``aes128gcm`` content coding, by ``http_ece``): the push service relays bytes it
  cannot read, and only the device can check that they came from someone holding its keys.
- Each request carries a VAPID token (RFC 8292): an ES256 JWT for the endpoint's origin,
  signed with the relay's VAPID key, and the key's public half (``k=``).
- ``Urgency: high`` for an urgent envelope (a call offer), ``normal`` otherwise; ``TTL`` is
  ``push_ttl_s``.

**Endpoints are chosen by clients, so they are checked (``check_endpoint``)**: https on port
443, on a host whose name ends with one of ``push_webpush_allowed_hosts``; never an IP literal,
user info, or anything that would make the relay request its own machine, its network or a
cloud metadata address. The one exception, for development and tests, is
``push_webpush_allow_loopback_http``: a loopback address, over http or https, on any port.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import ssl
import time
import urllib.parse
from collections.abc import Callable

import http_ece
import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relay.push_http import PushAnswer, new_push_client, outcome_for_status, post_bounded
from relay.push_providers import PushOutcome, PushResult, PushTarget

__all__ = [
    "AUTH_SECRET_BYTES",
    "MAX_ENDPOINT_CHARS",
    "P256DH_BYTES",
    "VAPID_TOKEN_LIFETIME_S",
    "WAKE_PAYLOAD",
    "WebPushProvider",
    "check_endpoint",
    "vapid_public_key_b64",
]

WAKE_PAYLOAD = b'{"v":1,"wake":true}'
"""All a wake-up says, before encryption: no sender, no size, no count, the same every time."""
MAX_ENDPOINT_CHARS = 1024
"""An endpoint URL's length at most (the services' own are under 500 characters)."""
P256DH_BYTES = 65
"""The subscription's public key: an uncompressed P-256 point (RFC 8291 section 3.1)."""
AUTH_SECRET_BYTES = 16
"""The subscription's authentication secret (RFC 8291 section 3.2)."""
VAPID_TOKEN_LIFETIME_S = 12 * 3600
"""A VAPID JWT's ``exp`` from now; RFC 8292 section 2 allows at most 24 hours."""
_HOST_NAME = re.compile(r"(?=.{1,253}$)([a-z0-9-]{1,63}\.)*[a-z0-9-]{1,63}")
_LOOPBACK_NAMES = frozenset({"localhost"})


def vapid_public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    """The VAPID public key as browsers take it (``applicationServerKey``): base64url, no pad."""
    raw = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(endpoint: str, *, allowed_hosts: tuple[str, ...],
                   allow_loopback_http: bool) -> str | None:
    """Why the relay must not POST to ``endpoint``, or None when it may."""
    if len(endpoint) > MAX_ENDPOINT_CHARS:
        return f"the endpoint is longer than {MAX_ENDPOINT_CHARS} characters"
    if not endpoint.isascii() or any(character.isspace() or ord(character) < 32
                                     for character in endpoint):
        return "the endpoint must be a plain ASCII URL"
    try:
        parts = urllib.parse.urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return "the endpoint is not a valid URL"
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme not in ("https", "http") or not host:
        return "the endpoint must be an https:// URL"
    if "@" in parts.netloc:
        return "the endpoint must not carry user information"
    if allow_loopback_http and _is_loopback(host):
        return None  # development only (push_webpush_allow_loopback_http)
    if parts.scheme != "https":
        return "the endpoint must be an https:// URL"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return "the endpoint must name a push service's host, not an IP address"
    if not _HOST_NAME.fullmatch(host):
        return "the endpoint's host is not a valid host name"
    if port not in (None, 443):
        return "the endpoint must use the https port, 443"
    if not any(host == allowed or host.endswith("." + allowed) for allowed in allowed_hosts):
        return "the endpoint's host is not a push service this relay allows"
    return None


class WebPushProvider:
    """Sends encrypted, VAPID-signed wake-ups to Web Push endpoints (RFC 8030/8291/8292)."""

    def __init__(self, *, vapid_key: ec.EllipticCurvePrivateKey, subject: str,
                 allowed_hosts: tuple[str, ...], allow_loopback_http: bool = False,
                 timeout_s: float, ttl_s: int, now: Callable[[], float] = time.time,
                 verify: ssl.SSLContext | bool = True,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._key = vapid_key
        self._public = vapid_public_key_b64(vapid_key)
        self._subject = subject
        self._allowed_hosts = allowed_hosts
        self._allow_loopback_http = allow_loopback_http
        self._ttl_s = ttl_s
        self._now = now
        self._deadline_s = 2 * timeout_s
        self._client = new_push_client(timeout_s=timeout_s, verify=verify, transport=transport)

    @property
    def name(self) -> str:
        return "webpush"

    def check_target(self, target: PushTarget) -> str | None:
        problem = check_endpoint(target.token, allowed_hosts=self._allowed_hosts,
                                 allow_loopback_http=self._allow_loopback_http)
        if problem is not None:
            return problem
        if target.p256dh is None or target.auth is None:
            return "a Web Push target needs the subscription's public key and auth secret"
        if len(target.auth) != AUTH_SECRET_BYTES:
            return f"the auth secret must be {AUTH_SECRET_BYTES} bytes"
        if len(target.p256dh) != P256DH_BYTES:
            return f"the public key must be an uncompressed P-256 point of {P256DH_BYTES} bytes"
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), target.p256dh)
        except ValueError:
            return "the public key is not a point of P-256"
        return None

    def _vapid_header(self, endpoint: str) -> str:
        parts = urllib.parse.urlsplit(endpoint)
        claims = {"aud": f"{parts.scheme}://{parts.netloc}",
                  "exp": int(self._now()) + VAPID_TOKEN_LIFETIME_S, "sub": self._subject}
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"typ": "JWT"})
        return f"vapid t={token}, k={self._public}"

    async def send(self, target: PushTarget, *, urgent: bool) -> PushOutcome:
        # A target is checked when registered; checking again costs nothing and keeps a target
        # stored before a setting was tightened from being fetched.
        if self.check_target(target) is not None:
            return PushOutcome(result=PushResult.FAILED, detail="webpush endpoint refused")
        body = http_ece.encrypt(WAKE_PAYLOAD, salt=os.urandom(16),
                                private_key=ec.generate_private_key(ec.SECP256R1()),
                                dh=target.p256dh, auth_secret=target.auth, version="aes128gcm")
        headers = {"TTL": str(self._ttl_s), "Urgency": "high" if urgent else "normal",
                   "Content-Encoding": "aes128gcm", "Content-Type": "application/octet-stream",
                   "Authorization": self._vapid_header(target.token)}
        answer = await post_bounded(self._client, target.token, content=body, headers=headers,
                                    deadline_s=self._deadline_s, detail="webpush")
        if not isinstance(answer, PushAnswer):
            return answer
        return outcome_for_status(answer.status, answer.headers, detail="webpush",
                                  now=self._now)

    async def aclose(self) -> None:
        await self._client.aclose()
