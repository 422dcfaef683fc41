"""Wake-up pushes on the client: the profile's push target, and a Web Push endpoint of its own.

A phone's system does not keep the app's connection open; the relay wakes the device through a
push service instead (docs/PUSH.md). This module keeps what the device registered:

- ``push.json`` in the profile (0600, written by ``client.profile_files``): the provider, the
  token or endpoint, and for Web Push the subscription's **private** P-256 key and auth secret.
  As a browser does, the client makes the subscription's keys itself; the relay gets only the
  public key and the auth secret, encrypts each wake-up to them (RFC 8291), and the push
  service in between relays bytes it cannot read.
- ``PushEndpoint``: a Web Push endpoint served by the client itself (Starlette on Hypercorn,
  under trio), for ``cryptopass receive --push-wait``: the relay POSTs the encrypted wake-up
  straight to it. Its URL carries a random path secret; a request is a wake-up only if it
  decrypts with the subscription's keys to the relay's wake marker.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import http_ece
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from client.profile_files import write_private
from transport.addresses import parse_host_port

__all__ = [
    "MAX_PUSH_BODY_BYTES",
    "PUSH_FILE",
    "PUSH_STATE_VERSION",
    "PushEndpoint",
    "PushState",
    "PushSubscription",
    "WakeError",
    "decrypt_wake",
    "forget_push_state",
    "load_push_state",
    "new_outbox_token",
    "open_push_endpoint",
    "save_push_state",
]

PUSH_FILE = "push.json"
PUSH_STATE_VERSION = 1
MAX_PUSH_BODY_BYTES = 4096
"""A Web Push message's size at most (RFC 8030 section 7.2: services accept 4096 bytes); the
relay's wake-up is about 120."""
AUTH_SECRET_BYTES = 16
_WAKE = {"v": 1, "wake": True}
"""The relay's wake marker once decrypted (relay/push_webpush.py ``WAKE_PAYLOAD``)."""


class WakeError(Exception):
    """A request to the endpoint is not a wake-up of this subscription."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class PushSubscription:
    """A Web Push subscription's keys, as a browser keeps them."""

    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    """The 16-byte authentication secret (RFC 8291 section 3.2)."""

    @classmethod
    def new(cls) -> PushSubscription:
        return cls(ec.generate_private_key(ec.SECP256R1()), secrets.token_bytes(AUTH_SECRET_BYTES))

    @property
    def p256dh(self) -> bytes:
        """The public key the relay encrypts to: 65 bytes, uncompressed."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)

    def __repr__(self) -> str:  # never the private key, even in a traceback
        return "PushSubscription(...)"


@dataclass(frozen=True)
class PushState:
    """What this device registered with its relay."""

    provider: str
    token: str
    """The outbox id, the platform's device token, or the Web Push endpoint URL."""
    subscription: PushSubscription | None = None
    """Web Push only."""


def new_outbox_token() -> str:
    """A random id for the ``outbox`` provider: it names this device in ``push-outbox.jsonl``
    without naming its account or number."""
    return secrets.token_urlsafe(24)


def save_push_state(directory: Path, state: PushState) -> None:
    raw: dict[str, object] = {"version": PUSH_STATE_VERSION, "provider": state.provider,
                              "token": state.token}
    if state.subscription is not None:
        private = state.subscription.private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        raw["private_key"] = _b64(private)
        raw["auth"] = _b64(state.subscription.auth)
    write_private(directory / PUSH_FILE, json.dumps(raw, indent=2).encode())


def load_push_state(directory: Path) -> PushState | None:
    """The saved target, or None; ValueError if the file is damaged."""
    path = directory / PUSH_FILE
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise ValueError(f"{path} is damaged: {error}") from error
    if not isinstance(raw, dict) or raw.get("version") != PUSH_STATE_VERSION:
        raise ValueError(f"{path} is damaged or of another version")
    subscription = None
    if "private_key" in raw:
        key = serialization.load_der_private_key(_unb64(raw["private_key"]), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} is damaged: its key is not a P-256 key")
        subscription = PushSubscription(key, _unb64(raw["auth"]))
    return PushState(provider=str(raw["provider"]), token=str(raw["token"]),
                     subscription=subscription)


def forget_push_state(directory: Path) -> None:
    (directory / PUSH_FILE).unlink(missing_ok=True)


def decrypt_wake(body: bytes, subscription: PushSubscription) -> None:
    """Check that ``body`` is a wake-up encrypted to ``subscription`` (RFC 8291, aes128gcm).

    Raises:
        WakeError: too large, not decryptable with the subscription's keys, or not a wake.
    """
    if len(body) > MAX_PUSH_BODY_BYTES:
        raise WakeError("the push is larger than a Web Push message may be")
    try:
        payload = http_ece.decrypt(body, private_key=subscription.private_key,
                                   auth_secret=subscription.auth, version="aes128gcm")
    except Exception as error:  # http_ece raises its own, cryptography's and struct's errors
        raise WakeError("the push does not decrypt with this subscription's keys") from error
    try:
        wake = json.loads(payload)
    except ValueError as error:
        raise WakeError("the push is not a wake-up") from error
    if wake != _WAKE:
        raise WakeError("the push is not a wake-up")


class PushEndpoint:
    """A Web Push endpoint of this client's own; see ``open_push_endpoint``."""

    def __init__(self, subscription: PushSubscription) -> None:
        self.subscription = subscription
        self.url = ""
        self.address = ""
        """HOST:PORT it listens on."""
        self.wakes = 0
        """Wake-ups received so far."""
        self.refused = 0
        """Requests that were not wake-ups of this subscription."""
        self._path_secret = secrets.token_urlsafe(16)
        self._changed = trio.Event()

    async def wait(self, wakes: int) -> None:
        """Return once at least ``wakes`` wake-ups arrived in all."""
        while self.wakes < wakes:
            await self._changed.wait()
            self._changed = trio.Event()

    async def _receive(self, request: Request) -> Response:
        if not hmac.compare_digest(request.path_params["secret"].encode(),
                                   self._path_secret.encode()):
            return Response(status_code=404)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_PUSH_BODY_BYTES:
                self.refused += 1
                return Response(status_code=413)
        try:
            decrypt_wake(bytes(body), self.subscription)
        except WakeError:
            self.refused += 1
            return Response(status_code=400)
        self.wakes += 1
        self._changed.set()
        return Response(status_code=201)


@asynccontextmanager
async def open_push_endpoint(listen: str, subscription: PushSubscription | None = None
                             ) -> AsyncIterator[PushEndpoint]:
    """Serve a Web Push endpoint on ``listen`` (HOST:PORT, port 0 for any) while the block runs.

    Raises:
        ValueError: ``listen`` is not HOST:PORT.
    """
    host, port = parse_host_port(listen)
    endpoint = PushEndpoint(subscription or PushSubscription.new())
    app = Starlette(routes=[Route("/push/{secret}", endpoint._receive, methods=["POST"])])
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None  # the request line holds the path secret
    config.errorlog = logging.getLogger("client.push")
    config.graceful_timeout = 0.2
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(hypercorn_serve, app, config)
        bound = binds[0].rpartition("://")[2]
        endpoint.address = bound
        endpoint.url = f"http://{bound}/push/{endpoint._path_secret}"
        try:
            yield endpoint
        finally:
            nursery.cancel_scope.cancel()
