"""The operations HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

A small Starlette app served by Hypercorn's trio worker inside the relay's own
trio process, on ``metrics_listen`` (an internal address: it tells nothing
about users, but it is not for the public either).

* ``/healthz``: 200 while the process's event loop answers (liveness).
* ``/readyz``: 200 when the store answers a read within ``READINESS_TIMEOUT_SECONDS``
  and the QUIC listener accepts connections (and, in a cluster, the node listens for
  other nodes' notifications); 503 otherwise (e.g. while stopping).
* ``/metrics``: Prometheus text format, from the relay's own registry.
"""

from __future__ import annotations

import logging

import structlog
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from relay.context import RelayContext
from storage.base import Directory
from transport.addresses import parse_host_port

__all__ = ["READINESS_TIMEOUT_SECONDS", "operations_app", "serve_operations_http"]

log = structlog.get_logger("relay.operations_http")

READINESS_TIMEOUT_SECONDS = 2.0
"""A store slower than this to answer one read is reported not ready."""

READINESS_PROBE_ORGANISATION = "readiness-probe"
"""Looked up (and never found) to prove the store answers reads."""


def operations_app(context: RelayContext, registry: CollectorRegistry) -> Starlette:
    """The Starlette app serving the three routes for ``context``."""

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        storage = context.metrics.store_up = await _store_answers(context.store)
        checks = {"storage": storage,
                  "listener": context.endpoint is not None and context.endpoint.accepting}
        if context.cluster is not None:
            # Several nodes: without its LISTEN connection this node hears of sends
            # from other nodes only when its devices reconnect (docs/CLUSTER.md).
            checks["cluster_notifications"] = context.cluster.listening.is_set()
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz),
                             Route("/metrics", metrics)])


async def _store_answers(store: Directory) -> bool:
    with trio.move_on_after(READINESS_TIMEOUT_SECONDS):
        try:
            await store.get_organisation(READINESS_PROBE_ORGANISATION)
        except Exception as error:  # any failure means "not ready", never a crash
            log.warning("readiness_store_failed", error=type(error).__name__)
            return False
        return True
    return False


async def serve_operations_http(address: str, context: RelayContext,
                                registry: CollectorRegistry, *,
                                task_status: trio.TaskStatus[tuple[str, int]]
                                = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the operations app on ``address`` (HOST:PORT) until cancelled.

    Reports the bound (host, port) through ``task_status`` (port 0 picks a free one).
    """
    host, port = parse_host_port(address)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None  # scrapes every few seconds would drown the relay's own log
    config.errorlog = logging.getLogger("relay.operations_http")
    config.graceful_timeout = 0.5
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            hypercorn_serve, operations_app(context, registry), config)
        bound_host, _, bound_port = binds[0].rpartition("://")[2].rpartition(":")
        log.info("operations_http_listening", host=bound_host.strip("[]"), port=int(bound_port))
        task_status.started((bound_host.strip("[]"), int(bound_port)))
