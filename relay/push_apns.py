"""Apple Push Notification service: a background wake-up over HTTP/2 with token authentication.

Each request carries ``authorization: bearer JWT``, an ES256 token signed with the team's .p8
key (``kid`` the key id, ``iss`` the team id, ``iat`` now). Apple refuses a token older than an
hour and one replaced more often than every 20 minutes, so one token is kept for
``APNS_TOKEN_REFRESH_S``. The payload ``{"aps": {"content-available": 1}}`` shows nothing: the
app wakes in the background, connects and drains its queue. ``apns-priority`` is 10 for an
urgent wake-up (a call offer), 5 otherwise.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from relay.push_http import (
    PushAnswer,
    PushConfigError,
    new_push_client,
    outcome_for_status,
    post_bounded,
)
from relay.push_providers import PushOutcome, PushResult, PushTarget

__all__ = ["APNS_PAYLOAD", "APNS_TOKEN_REFRESH_S", "ApnsProvider", "load_apns_key"]

APNS_TOKEN_REFRESH_S = 45 * 60
"""A provider token's use: Apple wants it renewed within 60 minutes and no sooner than 20."""
APNS_PAYLOAD = json.dumps({"aps": {"content-available": 1}}, separators=(",", ":")).encode()
"""A background notification: nothing to show, no sender, no count."""
MAX_KEY_FILE_BYTES = 16 * 1024
_DEVICE_TOKEN = re.compile(r"[0-9a-fA-F]{64,200}")
"""Device tokens are hexadecimal, 32 bytes today; Apple says they may grow."""
_GONE_REASONS = frozenset({"Unregistered", "BadDeviceToken"})
_TOKEN_REASONS = frozenset({"ExpiredProviderToken", "InvalidProviderToken"})


def load_apns_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The .p8 token-signing key.

    Raises:
        PushConfigError: unreadable, or not a P-256 private key.
    """
    where = f"push_apns_key_file {path}"
    try:
        with path.open("rb") as file:
            data = file.read(MAX_KEY_FILE_BYTES + 1)
        key = load_pem_private_key(data, password=None)
    except OSError as error:
        raise PushConfigError(f"{where}: cannot read it: {error.strerror}") from None
    except (ValueError, TypeError):
        raise PushConfigError(f"{where}: not a PEM private key (the .p8 file from Apple)"
                              ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise PushConfigError(f"{where}: not a P-256 key (the .p8 file from Apple)")
    return key


class ApnsProvider:
    """Sends background wake-ups to APNs over HTTP/2."""

    def __init__(self, *, key: ec.EllipticCurvePrivateKey, key_id: str, team_id: str,
                 topic: str, host: str, timeout_s: float, ttl_s: int,
                 now: Callable[[], float] = time.time, verify: ssl.SSLContext | bool = True,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._key, self._key_id, self._team_id = key, key_id, team_id
        self._topic = topic
        self._host = host.rstrip("/")
        self._ttl_s = ttl_s
        self._now = now
        self._deadline_s = 2 * timeout_s
        self._client = new_push_client(timeout_s=timeout_s, http2=True, verify=verify,
                                       transport=transport)
        self._token: str | None = None
        self._token_issued = 0.0

    @property
    def name(self) -> str:
        return "apns"

    def check_target(self, target: PushTarget) -> str | None:
        if not _DEVICE_TOKEN.fullmatch(target.token):
            return "an APNs device token (hexadecimal) is expected"
        if target.p256dh is not None or target.auth is not None:
            return "an APNs target carries no Web Push keys"
        return None

    def _provider_token(self) -> str:
        now = self._now()
        if self._token is None or now - self._token_issued >= APNS_TOKEN_REFRESH_S:
            self._token = jwt.encode({"iss": self._team_id, "iat": int(now)}, self._key,
                                     algorithm="ES256", headers={"kid": self._key_id})
            self._token_issued = now
        return self._token

    async def send(self, target: PushTarget, *, urgent: bool) -> PushOutcome:
        if self.check_target(target) is not None:
            return PushOutcome(result=PushResult.FAILED, detail="apns token refused")
        headers = {"authorization": f"bearer {self._provider_token()}",
                   "apns-push-type": "background", "apns-priority": "10" if urgent else "5",
                   "apns-topic": self._topic,
                   "apns-expiration": str(int(self._now()) + self._ttl_s),
                   "content-type": "application/json"}
        answer = await post_bounded(self._client, f"{self._host}/3/device/{target.token.lower()}",
                                    content=APNS_PAYLOAD, headers=headers,
                                    deadline_s=self._deadline_s, detail="apns")
        if not isinstance(answer, PushAnswer):
            return answer
        reason = _reason(answer)
        status = answer.status
        if reason in _GONE_REASONS:
            return PushOutcome(result=PushResult.GONE, detail=f"apns {status} {reason}")
        if reason in _TOKEN_REASONS:
            self._token = None  # sign a new one for the retry
            return PushOutcome(result=PushResult.RETRY, detail=f"apns {status} {reason}")
        outcome = outcome_for_status(status, answer.headers, detail="apns", now=self._now)
        if outcome.result is PushResult.GONE and status == 404:
            # APNs answers 404 for a wrong path, never for a device (that is 410 or 400).
            return PushOutcome(result=PushResult.FAILED, detail=f"apns 404 {reason or ''}")
        return outcome

    async def aclose(self) -> None:
        await self._client.aclose()


def _reason(answer: PushAnswer) -> str | None:
    """APNs' ``reason`` of an error answer (``{"reason": "BadDeviceToken"}``)."""
    if answer.status < 400:
        return None
    try:
        reason = answer.json().get("reason")
    except AttributeError:
        return None
    return reason if isinstance(reason, str) and reason.isalnum() else None
