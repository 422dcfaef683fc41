"""Firebase Cloud Messaging, HTTP v1 API: a data-only wake-up to an Android device's token.

Authentication is OAuth 2.0 for a service account: the relay signs a JWT (RS256) with the
account's private key, exchanges it at the credentials' ``token_uri`` for an access token, and
keeps that token until shortly before it expires. The message is data-only (no notification
for the system to show) with ``{"wake": "1"}``: the app wakes, connects and drains its queue.
An urgent wake-up asks for ``android.priority: HIGH``, which may wake a dozing phone.

The credentials file is read once at start; nothing of it (nor the access token) is logged.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from relay.push_http import (
    PushAnswer,
    PushConfigError,
    new_push_client,
    outcome_for_status,
    post_bounded,
)
from relay.push_providers import PushOutcome, PushResult, PushTarget

__all__ = [
    "ACCESS_TOKEN_MARGIN_S",
    "FCM_SCOPE",
    "MAX_FCM_TOKEN_CHARS",
    "FcmCredentials",
    "FcmProvider",
    "load_fcm_credentials",
]

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
ASSERTION_LIFETIME_S = 3600
"""The signed assertion's lifetime; Google accepts at most one hour."""
ACCESS_TOKEN_MARGIN_S = 300
"""An access token is replaced this long before it expires, so a send never races its end."""
MAX_FCM_TOKEN_CHARS = 4096
"""A registration token's length at most (they are about 160 characters today)."""
MAX_CREDENTIALS_BYTES = 64 * 1024
"""A service-account key file is about 2 KiB."""
_FCM_TOKEN = re.compile(r"[A-Za-z0-9_:\-]+")
_GONE_CODES = frozenset({"UNREGISTERED", "NOT_FOUND"})


@dataclass(frozen=True, kw_only=True, slots=True)
class FcmCredentials:
    project_id: str
    client_email: str
    token_uri: str
    private_key: rsa.RSAPrivateKey
    private_key_id: str | None = None

    def __repr__(self) -> str:  # never show the key, even in a traceback
        return f"FcmCredentials(project_id={self.project_id!r})"


def load_fcm_credentials(path: Path) -> FcmCredentials:
    """Read a service account's JSON key file.

    Raises:
        PushConfigError: unreadable, not a service-account key, or not an RSA key.
    """
    where = f"push_fcm_credentials_file {path}"
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CREDENTIALS_BYTES + 1)
        raw = json.loads(data)
    except OSError as error:
        raise PushConfigError(f"{where}: cannot read it: {error.strerror}") from None
    except ValueError:
        raise PushConfigError(f"{where}: not a JSON file") from None
    if len(data) > MAX_CREDENTIALS_BYTES or not isinstance(raw, dict):
        raise PushConfigError(f"{where}: not a service-account key file")
    missing = [name for name in ("project_id", "client_email", "token_uri", "private_key")
               if not isinstance(raw.get(name), str) or not raw[name]]
    if missing:
        raise PushConfigError(f"{where}: lacks {', '.join(missing)} (a service account's key "
                              "file from the Firebase console is expected)")
    try:
        key = load_pem_private_key(raw["private_key"].encode(), password=None)
    except (ValueError, TypeError):
        raise PushConfigError(f"{where}: its private_key is not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PushConfigError(f"{where}: its private_key is not an RSA key")
    key_id = raw.get("private_key_id")
    return FcmCredentials(project_id=raw["project_id"], client_email=raw["client_email"],
                          token_uri=raw["token_uri"], private_key=key,
                          private_key_id=key_id if isinstance(key_id, str) else None)


class FcmProvider:
    """Sends data-only wake-ups through the FCM HTTP v1 API."""

    def __init__(self, *, credentials: FcmCredentials, base_url: str, timeout_s: float,
                 ttl_s: int, now: Callable[[], float] = time.time,
                 verify: ssl.SSLContext | bool = True,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._credentials = credentials
        self._send_url = (f"{base_url.rstrip('/')}/v1/projects/"
                          f"{credentials.project_id}/messages:send")
        self._ttl_s = ttl_s
        self._now = now
        self._deadline_s = 2 * timeout_s
        self._client = new_push_client(timeout_s=timeout_s, verify=verify, transport=transport)
        self._access_token: str | None = None
        self._access_token_until = 0.0
        self._token_lock = trio.Lock()

    @property
    def name(self) -> str:
        return "fcm"

    def check_target(self, target: PushTarget) -> str | None:
        if len(target.token) > MAX_FCM_TOKEN_CHARS or not _FCM_TOKEN.fullmatch(target.token):
            return "an FCM registration token is expected"
        if target.p256dh is not None or target.auth is not None:
            return "an FCM target carries no Web Push keys"
        return None

    def _assertion(self) -> str:
        issued = int(self._now())
        claims = {"iss": self._credentials.client_email, "scope": FCM_SCOPE,
                  "aud": self._credentials.token_uri, "iat": issued,
                  "exp": issued + ASSERTION_LIFETIME_S}
        headers = ({"kid": self._credentials.private_key_id}
                   if self._credentials.private_key_id else None)
        return jwt.encode(claims, self._credentials.private_key, algorithm="RS256",
                          headers=headers)

    async def _bearer(self) -> str | PushOutcome:
        """A valid access token, minted when needed (one request at a time), or the outcome
        to report when the token endpoint does not give one."""
        async with self._token_lock:
            if self._access_token is not None and self._now() < self._access_token_until:
                return self._access_token
            form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                    "assertion": self._assertion()}
            answer = await post_bounded(self._client, self._credentials.token_uri, data=form,
                                        deadline_s=self._deadline_s, detail="fcm token")
            if not isinstance(answer, PushAnswer):
                return answer
            if answer.status != 200:
                return outcome_for_status(answer.status, answer.headers, detail="fcm token",
                                          now=self._now)
            try:
                granted = answer.json()
                token = granted["access_token"]
                lifetime = float(granted.get("expires_in", 3600))
            except (ValueError, KeyError, TypeError, AttributeError):
                return PushOutcome(result=PushResult.RETRY, detail="fcm token unreadable")
            if not isinstance(token, str) or not token:
                return PushOutcome(result=PushResult.RETRY, detail="fcm token unreadable")
            self._access_token = token
            self._access_token_until = self._now() + lifetime - ACCESS_TOKEN_MARGIN_S
            return token

    def _message(self, target: PushTarget, *, urgent: bool) -> dict[str, Any]:
        return {"message": {"token": target.token, "data": {"wake": "1"},
                            "android": {"priority": "HIGH" if urgent else "NORMAL",
                                        "ttl": f"{self._ttl_s}s"}}}

    async def send(self, target: PushTarget, *, urgent: bool) -> PushOutcome:
        bearer = await self._bearer()
        if isinstance(bearer, PushOutcome):
            if bearer.result is PushResult.GONE:  # the token endpoint's 404 is not the device's
                return PushOutcome(result=PushResult.FAILED, detail=bearer.detail)
            return bearer
        answer = await post_bounded(self._client, self._send_url,
                                    json=self._message(target, urgent=urgent),
                                    headers={"Authorization": f"Bearer {bearer}"},
                                    deadline_s=self._deadline_s, detail="fcm")
        if not isinstance(answer, PushAnswer):
            return answer
        status = answer.status
        if status == 401:  # the access token was revoked or expired early: mint a new one
            self._access_token = None
            return PushOutcome(result=PushResult.RETRY, detail="fcm 401")
        if _error_code(answer) in _GONE_CODES:
            return PushOutcome(result=PushResult.GONE, detail=f"fcm {status} unregistered")
        return outcome_for_status(status, answer.headers, detail="fcm", now=self._now)

    async def aclose(self) -> None:
        await self._client.aclose()


def _error_code(answer: PushAnswer) -> str | None:
    """FCM's own error code (``UNREGISTERED``...) from an error answer, if there is one."""
    if answer.status < 400:
        return None
    try:
        error = answer.json()["error"]
    except (KeyError, TypeError):
        return None
    if not isinstance(error, dict):
        return None
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and isinstance(detail.get("errorCode"), str):
            return str(detail["errorCode"])
    status = error.get("status")
    return status if isinstance(status, str) else None
