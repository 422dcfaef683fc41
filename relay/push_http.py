"""What the HTTP push providers share: one bounded client each, and how an answer maps to an
outcome (``relay.push_providers.PushResult``).

Every provider's ``send`` turns whatever happens into a ``PushOutcome``: a service's status, a
timeout or a refused connection never escapes as an exception into the wake-up scheduler. No
redirect is ever followed (a push service has no reason to send one, and following it would let
an endpoint send the relay's request anywhere).
"""

from __future__ import annotations

import email.utils
import json
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from relay.push_providers import PushOutcome, PushResult

__all__ = [
    "MAX_ANSWER_BYTES",
    "MAX_RETRY_AFTER_S",
    "PUSH_MAX_CONNECTIONS",
    "PUSH_MAX_KEEPALIVE",
    "PushAnswer",
    "PushConfigError",
    "network_failure",
    "new_push_client",
    "outcome_for_status",
    "parse_retry_after",
    "post_bounded",
]

PUSH_MAX_CONNECTIONS = 20
"""Connections one provider keeps open at most: wake-ups are tiny, and the scheduler sends a
few at a time; a bound keeps a burst of wake-ups from opening hundreds of sockets."""
PUSH_MAX_KEEPALIVE = 10
"""Idle connections kept for the next wake-up (one push service host needs one or two)."""
# httpx logs each request's URL at INFO, httpcore its headers at DEBUG: a Web Push endpoint is a
# capability, an APNs path holds the device token, a header the credentials. Whatever logging an
# operator sets up, those lines never reach it.
for _library in ("httpx", "httpcore"):
    logging.getLogger(_library).setLevel(logging.WARNING)

MAX_ANSWER_BYTES = 64 * 1024
"""Of a push service's answer, only this much is read (its error JSON is a few hundred bytes):
an endpoint that answers without end cannot fill the relay's memory."""
MAX_RETRY_AFTER_S = 24 * 3600.0
"""A longer ``Retry-After`` is capped: a wake-up a day late is no wake-up at all."""


class PushConfigError(ValueError):
    """A push provider's settings or credentials cannot be used; names the setting and file,
    never their content."""


@dataclass(frozen=True, slots=True)
class PushAnswer:
    """A push service's answer: its status, headers, and the start of its body."""

    status: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or None when it is not."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


async def post_bounded(client: httpx.AsyncClient, url: str, *, deadline_s: float,
                       detail: str, **request: Any) -> PushAnswer | PushOutcome:
    """POST, and read at most ``MAX_ANSWER_BYTES`` of the answer, all within ``deadline_s``
    (httpx's timeouts bound each read, not the whole: a service trickling bytes would hold a
    wake-up for ever). No answer: a RETRY outcome naming the kind of failure."""
    with trio.move_on_after(deadline_s):
        try:
            async with client.stream("POST", url, **request) as response:
                body = bytearray()
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) >= MAX_ANSWER_BYTES:
                        break
                return PushAnswer(status=response.status_code, headers=response.headers,
                                  body=bytes(body[:MAX_ANSWER_BYTES]))
        except httpx.HTTPError as error:
            return network_failure(error, detail=detail)
    return PushOutcome(result=PushResult.RETRY, detail=f"{detail} timeout")


def new_push_client(*, timeout_s: float, http2: bool = False,
                    verify: ssl.SSLContext | bool = True,
                    transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The one client a provider shares between its sends: short timeouts, a bounded pool,
    no redirects, no proxy from the environment (a push goes straight to its service)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s),
        limits=httpx.Limits(max_connections=PUSH_MAX_CONNECTIONS,
                            max_keepalive_connections=PUSH_MAX_KEEPALIVE),
        follow_redirects=False, http2=http2, verify=verify, trust_env=False,
        # Answers are read raw and bounded (``post_bounded``): no compression to inflate.
        headers={"Accept-Encoding": "identity"}, transport=transport)


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time
                      ) -> float | None:
    """``Retry-After`` in seconds from now: delay-seconds or an HTTP date (RFC 9110 10.2.3);
    None when absent or unreadable; capped at ``MAX_RETRY_AFTER_S``, never negative."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:  # an HTTP date is always GMT
        return None
    return min(max(moment.timestamp() - now(), 0.0), MAX_RETRY_AFTER_S)


def outcome_for_status(status: int, headers: Mapping[str, str], *, detail: str,
                       now: Callable[[], float] = time.time) -> PushOutcome:
    """The outcome of an HTTP answer, for the statuses every push service shares: 2xx sent,
    404/410 gone, 429/5xx retry (honouring ``Retry-After``), anything else failed."""
    if 200 <= status < 300:
        return PushOutcome(result=PushResult.SENT, detail=f"{detail} {status}")
    if status in (404, 410):
        return PushOutcome(result=PushResult.GONE, detail=f"{detail} {status}")
    if status == 429 or status >= 500:
        return PushOutcome(result=PushResult.RETRY, detail=f"{detail} {status}",
                           retry_after_s=parse_retry_after(headers.get("retry-after"), now=now))
    return PushOutcome(result=PushResult.FAILED, detail=f"{detail} {status}")


def network_failure(error: httpx.HTTPError, *, detail: str) -> PushOutcome:
    """A request that got no answer (timeout, refused, reset, TLS): retried later. The detail
    names the kind of failure only, never the URL (it may be a device's endpoint)."""
    kind = "timeout" if isinstance(error, httpx.TimeoutException) else "network"
    return PushOutcome(result=PushResult.RETRY, detail=f"{detail} {kind}")
