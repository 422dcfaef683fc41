"""The admin console and API over HTTPS, inside the relay process (``--admin-listen``).

Served like the operations endpoint (Hypercorn's trio worker in the relay's nursery) but
over TLS with the relay's own certificate: administrators log in and handle personal data
here. Deleting a user, suspending or terminating an organisation closes the live QUIC
connections of the users concerned at once, through ``RelayConnectionCloser``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import structlog
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enrolment.web.app import admin_app
from enrolment.web.service import AdminService
from relay.context import RelayContext
from relay.metrics import RelayMetrics
from transport.addresses import parse_host_port
from wire.frames import ErrorCode

__all__ = ["CountedResponses", "RelayConnectionCloser", "serve_admin_https"]

log = structlog.get_logger("relay.admin_http")


class RelayConnectionCloser:
    """``enrolment.web.service.ConnectionCloser`` over this node's live sessions."""

    def __init__(self, context: RelayContext) -> None:
        self._context = context

    def user_deleted(self, user_id: str) -> int:
        return self._context.revoke_user(user_id, ErrorCode.DEVICE_REVOKED,
                                         "this device was revoked")

    def device_revoked(self, user_id: str, device_id: int) -> int:
        session = self._context.sessions.get((user_id, device_id))
        if session is None:
            return 0
        session.close(ErrorCode.DEVICE_REVOKED, "this device was revoked")
        return 1

    def organisation_suspended(self, user_id: str) -> int:
        return self._context.revoke_user(user_id, ErrorCode.ORGANISATION_SUSPENDED,
                                         "organisation suspended")


class CountedResponses:
    """Counts the admin site's responses by outcome (``RelayMetrics.admin_requests``): a
    burst of client errors is someone guessing passwords or tokens, server errors a bug."""

    def __init__(self, app: ASGIApp, metrics: RelayMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._metrics.admin_requests[_outcome(int(message["status"]))] += 1
            await send(message)

        await self._app(scope, receive, counting_send)


def _outcome(status: int) -> str:
    if status >= 500:
        return "server_error"
    return "client_error" if status >= 400 else "ok"


async def serve_admin_https(address: str, context: RelayContext, cert: Path, key: Path, *,
                            task_status: trio.TaskStatus[tuple[str, int]]
                            = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the admin site on ``address`` (HOST:PORT) over TLS until cancelled.

    Reports the bound (host, port) through ``task_status`` (port 0 picks a free one).
    """
    host, port = parse_host_port(address)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.certfile = str(cert)
    config.keyfile = str(key)
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = None  # request lines would carry phone numbers (they are in the paths)
    config.errorlog = logging.getLogger("relay.admin_http")
    config.graceful_timeout = 0.5
    service = AdminService(context.store, RelayConnectionCloser(context), context.now_ms)
    app = CountedResponses(admin_app(service), context.metrics)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(hypercorn_serve, app, config)
        bound_host, _, bound_port = binds[0].rpartition("://")[2].rpartition(":")
        log.info("admin_https_listening", host=bound_host.strip("[]"), port=int(bound_port))
        task_status.started((bound_host.strip("[]"), int(bound_port)))
