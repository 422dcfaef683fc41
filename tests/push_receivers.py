"""Real HTTP push services on loopback, one per provider, for the push tests and the bench.

Each receiver is a Starlette app served by Hypercorn (the APNs one over TLS with HTTP/2 only),
checks what the real service would check, keeps every request's raw body and headers, and
answers with the next status of its ``answers`` queue (default: the service's success):

- ``WebPushReceiver`` checks the VAPID token's ES256 signature against the relay's public key,
  its ``aud``, ``exp`` and ``sub``, then decrypts the payload with the subscription's private
  key (RFC 8291), as a browser's push service hands it to the browser;
- ``FcmReceiver`` serves a token endpoint that checks the signed assertion (RS256 with the
  service account's key, ``iss``, ``aud``, ``scope``) and a send endpoint that checks the bearer
  token and the message's shape;
- ``ApnsReceiver`` checks the provider token (ES256 with the team's key, ``kid``, ``iss``,
  ``iat`` fresh), the request's HTTP version and headers.

A request that fails a check is answered 400/403 and recorded in ``problems``.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import http_ece
import jwt
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from relay.tls import ensure_development_certificate


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    hang: bool = False
    """Never answer (the client's timeout is what ends the request)."""
    endless: bool = False
    """Answer ``status`` with a body that never ends, as fast as it can."""
    trickle: bool = False
    """Answer ``status`` with a body that never ends, one byte every 50 ms."""


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    http_version: str
    payload: bytes | None = None
    """Web Push: the decrypted payload; FCM: the JSON message; APNs: the JSON body."""


async def _endless(*, trickle: bool) -> AsyncIterator[bytes]:
    while True:
        if trickle:
            # A pace, not a wait: a push service that trickles its answer one byte at a time,
            # which the provider must cut at its deadline (test_push_providers.py).
            await trio.sleep(0.05)
            yield b"x"
        else:
            yield b"x" * 65536


class _Receiver:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.received: list[Received] = []
        self.problems: list[str] = []
        self._arrivals: list[tuple[int, trio.Event]] = []
        self.base_url = ""

    def _record(self, item: Received) -> None:
        self.received.append(item)
        for count, event in self._arrivals:
            if len(self.received) >= count:
                event.set()

    async def wait_for(self, count: int) -> list[Received]:
        """Wait until ``count`` requests arrived in all."""
        if len(self.received) < count:
            event = trio.Event()
            self._arrivals.append((count, event))
            await event.wait()
        return self.received

    async def _answer(self, default: Answer) -> Response:
        answer = self.answers.pop(0) if self.answers else default
        if answer.hang:
            await trio.sleep_forever()
        if answer.endless or answer.trickle:
            return StreamingResponse(_endless(trickle=answer.trickle),
                                     status_code=answer.status, headers=answer.headers)
        if answer.body is not None:
            return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)
        return Response(status_code=answer.status, headers=answer.headers)

    def _refuse(self, problem: str, status: int = 400) -> Response:
        self.problems.append(problem)
        return JSONResponse({"reason": "TestReceiverRefused", "problem": problem},
                            status_code=status)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class WebPushReceiver(_Receiver):
    """A Web Push service and the browser behind it, for subscriptions it makes itself."""

    def __init__(self, vapid_public_key: ec.EllipticCurvePublicKey | None = None) -> None:
        super().__init__()
        self.vapid_public_key = vapid_public_key
        self._subscriptions: dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]] = {}

    def subscribe(self) -> tuple[str, bytes, bytes]:
        """A new subscription: (endpoint URL, p256dh public key, auth secret)."""
        name = secrets.token_urlsafe(12)
        private, auth = ec.generate_private_key(ec.SECP256R1()), secrets.token_bytes(16)
        self._subscriptions[name] = (private, auth)
        public = private.public_key().public_bytes(serialization.Encoding.X962,
                                                   serialization.PublicFormat.UncompressedPoint)
        return f"{self.base_url}/push/{name}", public, auth

    def _check_vapid(self, request: Request) -> str | None:
        scheme, _, parameters = request.headers.get("authorization", "").partition(" ")
        if scheme != "vapid":
            return "no vapid authorization"
        values = dict(part.strip().split("=", 1) for part in parameters.split(","))
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(),
                                                           b64url_decode(values["k"]))
        if self.vapid_public_key is not None and key.public_numbers() != (
                self.vapid_public_key.public_numbers()):
            return "the k= key is not the relay's VAPID key"
        origin = f"{request.url.scheme}://{request.url.netloc}"
        try:
            claims = jwt.decode(values["t"], key, algorithms=["ES256"], audience=origin,
                                options={"require": ["exp", "aud", "sub"]})
        except jwt.InvalidTokenError as error:
            return f"vapid token refused: {error}"
        if claims["exp"] > time.time() + 24 * 3600:
            return "vapid token lives longer than 24 hours"
        if not str(claims["sub"]).startswith(("mailto:", "https:")):
            return "vapid sub is not a contact"
        return None

    async def _push(self, request: Request) -> Response:
        body = await request.body()
        item = Received(path=request.url.path, headers=dict(request.headers), body=body,
                        http_version=request.scope["http_version"])
        subscription = self._subscriptions.get(request.path_params["name"])
        problem = self._check_vapid(request)
        if subscription is None:
            problem = problem or "unknown subscription"
        elif request.headers.get("content-encoding") != "aes128gcm":
            problem = problem or "content-encoding is not aes128gcm"
        elif "ttl" not in request.headers:
            problem = problem or "no TTL header"
        else:
            private, auth = subscription
            try:
                item.payload = http_ece.decrypt(body, private_key=private, auth_secret=auth,
                                                version="aes128gcm")
            except Exception as error:
                problem = problem or f"cannot decrypt: {error!r}"
        self._record(item)
        if problem is not None:
            return self._refuse(problem)
        return await self._answer(Answer(201))

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/push/{name}", self._push, methods=["POST"])])


def service_account(token_uri: str, project_id: str = "cryptopass-test"
                    ) -> tuple[dict[str, str], rsa.RSAPrivateKey]:
    """A service account's JSON key file content, and its key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": project_id,
            "private_key_id": secrets.token_hex(20), "private_key": pem,
            "client_email": f"relay@{project_id}.iam.gserviceaccount.com",
            "token_uri": token_uri}, key


class FcmReceiver(_Receiver):
    """Google's OAuth token endpoint and the FCM HTTP v1 send endpoint."""

    SCOPE = "https://www.googleapis.com/auth/firebase.messaging"

    def __init__(self) -> None:
        super().__init__()
        self.account: dict[str, str] = {}
        self._public_key: rsa.RSAPublicKey | None = None
        self.issued: list[str] = []
        self.token_requests = 0
        self.token_answers: list[Answer] = []

    def make_account(self, project_id: str = "cryptopass-test") -> dict[str, str]:
        self.account, key = service_account(f"{self.base_url}/token", project_id)
        self._public_key = key.public_key()
        return self.account

    async def _token(self, request: Request) -> Response:
        self.token_requests += 1
        # Parsed by hand: Starlette's form() needs python-multipart, which the project lacks.
        form = dict(urllib.parse.parse_qsl((await request.body()).decode()))
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._refuse("wrong grant_type")
        if self._public_key is None:
            raise RuntimeError("make_account() first")
        try:
            claims = jwt.decode(str(form.get("assertion")), self._public_key,
                                algorithms=["RS256"], audience=self.account["token_uri"],
                                issuer=self.account["client_email"],
                                options={"require": ["exp", "iat", "aud", "iss"]})
        except jwt.InvalidTokenError as error:
            return self._refuse(f"assertion refused: {error}")
        header = jwt.get_unverified_header(str(form.get("assertion")))
        if header.get("kid") != self.account["private_key_id"]:
            return self._refuse("assertion kid is not the key's id")
        if claims.get("scope") != self.SCOPE or claims["exp"] - claims["iat"] > 3600:
            return self._refuse("assertion scope or lifetime wrong")
        if self.token_answers:
            answer = self.token_answers.pop(0)
            return JSONResponse(answer.body or {}, status_code=answer.status,
                                headers=answer.headers)
        token = secrets.token_urlsafe(24)
        self.issued.append(token)
        return JSONResponse({"access_token": token, "expires_in": 3599,
                             "token_type": "Bearer"})

    async def _send(self, request: Request) -> Response:
        body = await request.body()
        item = Received(path=request.url.path, headers=dict(request.headers), body=body,
                        http_version=request.scope["http_version"])
        self._record(item)
        bearer = request.headers.get("authorization", "")
        if not bearer.startswith("Bearer ") or bearer[7:] not in self.issued:
            return self._refuse("bearer token not issued here", 401)
        if request.path_params["project"] != self.account["project_id"]:
            return self._refuse("wrong project", 404)
        try:
            message = json.loads(body)["message"]
        except (ValueError, KeyError):
            return self._refuse("not a message")
        item.payload = json.dumps(message).encode()
        if set(message) != {"token", "data", "android"} or "notification" in message:
            return self._refuse(f"not a data-only message: {sorted(message)}")
        if message["android"].get("priority") not in ("NORMAL", "HIGH"):
            return self._refuse("android.priority missing")
        if not all(isinstance(value, str) for value in message["data"].values()):
            return self._refuse("data values must be strings")
        return await self._answer(Answer(200, body={"name": "projects/x/messages/1"}))

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/token", self._token, methods=["POST"]),
            Route("/v1/projects/{project}/messages:send", self._send, methods=["POST"])])


class ApnsReceiver(_Receiver):
    """APNs' HTTP/2 API (TLS, h2 only) with token authentication."""

    def __init__(self, *, key_id: str = "ABCDE12345", team_id: str = "TEAM123456",
                 topic: str = "org.cryptopass.app") -> None:
        super().__init__()
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.key_id, self.team_id, self.topic = key_id, team_id, topic

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def _check(self, request: Request) -> str | None:
        if request.scope["http_version"] != "2":
            return "not HTTP/2"
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme != "bearer":
            return "no bearer provider token"
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, self.key.public_key(), algorithms=["ES256"],
                                options={"require": ["iss", "iat"]})
        except jwt.InvalidTokenError as error:
            return f"provider token refused: {error}"
        if header.get("kid") != self.key_id or claims["iss"] != self.team_id:
            return "wrong kid or iss"
        if not time.time() - 3600 < claims["iat"] <= time.time() + 60:
            return "iat not fresh"
        if request.headers.get("apns-topic") != self.topic:
            return "wrong apns-topic"
        if request.headers.get("apns-push-type") != "background":
            return "apns-push-type is not background"
        if request.headers.get("apns-priority") not in ("5", "10"):
            return "apns-priority missing"
        return None

    async def _device(self, request: Request) -> Response:
        body = await request.body()
        item = Received(path=request.url.path, headers=dict(request.headers), body=body,
                        http_version=request.scope["http_version"], payload=body)
        self._record(item)
        problem = self._check(request)
        if problem is not None:
            return self._refuse(problem, 403)
        if json.loads(body) != {"aps": {"content-available": 1}}:
            return self._refuse("not a background payload")
        return await self._answer(Answer(200, headers={"apns-id": secrets.token_hex(8)}))

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/3/device/{token}", self._device, methods=["POST"])])


def test_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key, _ = ensure_development_certificate(
        directory, now=datetime.datetime.now(datetime.UTC))
    return cert, key


@asynccontextmanager
async def serving(receiver: _Receiver, *, tls_dir: Path | None = None) -> AsyncIterator[str]:
    """Serve ``receiver`` on a free loopback port; yields (and sets) its base URL."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.1
    if tls_dir is not None:
        cert, key = test_certificate(tls_dir)
        config.certfile, config.keyfile = str(cert), str(key)
        config.alpn_protocols = ["h2"]
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(hypercorn_serve, receiver.app(), config)
        port = int(urllib.parse.urlsplit(binds[0]).port or 0)
        receiver.base_url = f"{'https' if tls_dir else 'http'}://127.0.0.1:{port}"
        try:
            yield receiver.base_url
        finally:
            nursery.cancel_scope.cancel()
