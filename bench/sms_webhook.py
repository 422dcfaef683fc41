"""The bench's SMS webhook: receives the codes the relay sends through its ``http`` gateway.

The relay (``sms_gateway = "http"``, enrolment/sms.py ``HttpGateway``) POSTs
``{"to", "body", "sent_at"}`` as JSON with ``Authorization: Bearer <sms_http_token>``
to ``sms_http_url``. Served with Starlette on Hypercorn's trio worker, inside the
bench's trio run, as the relay serves its own HTTP endpoints: both are already
dependencies, and Hypercorn handles keep-alive, HTTP/1.1 framing and limits that a
hand-written server would have to get right.
"""

from __future__ import annotations

import hmac
import json
import logging

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.enrol_devices import CODE_PATTERN
from transport.addresses import parse_host_port

__all__ = ["CODE_WAIT_SECONDS", "MAX_BODY_BYTES", "SMS_WEBHOOK_PATH", "SmsInbox",
           "serve_sms_webhook", "sms_webhook_app"]

SMS_WEBHOOK_PATH = "/sms"
"""Path the relay's ``sms_http_url`` must name."""

CODE_WAIT_SECONDS = 30.0
"""How long an enrolment waits for its SMS: the relay's gateway retries for a few
seconds, so a longer silence means the relay is not pointed at this webhook."""

MAX_BODY_BYTES = 16 * 1024
"""An SMS request is a few hundred bytes; anything far larger is not from the relay."""


class SmsInbox:
    """Codes received for the numbers the bench is enrolling; others are ignored
    (a shared test relay may be enrolling real users meanwhile)."""

    def __init__(self) -> None:
        self._expected: set[str] = set()
        self._codes: dict[str, str] = {}
        self._changed = trio.Event()
        self.received = 0
        """Codes accepted for an expected number."""
        self.refused = 0
        """Requests refused for a wrong or missing token."""

    def expect(self, phone: str) -> None:
        """Keep the next code sent to ``phone`` (call before asking the relay to send it)."""
        self._expected.add(phone)

    def refuse(self) -> None:
        """A request came without the token: waiting enrolments fail now, not at timeout."""
        self.refused += 1
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def receive(self, phone: str, body: str) -> None:
        match = CODE_PATTERN.search(body)
        if phone not in self._expected or match is None:
            return
        self._codes[phone] = match.group(1)
        self.received += 1
        self._wake()

    async def code_for(self, phone: str) -> str:
        with trio.fail_after(CODE_WAIT_SECONDS):
            while phone not in self._codes:
                if self.refused:
                    raise PermissionError("the relay's SMS gateway sent a wrong token: give "
                                          "the bench its sms_http_token with --sms-token")
                await self._changed.wait()
        self._expected.discard(phone)
        return self._codes.pop(phone)


def _bearer(request: Request) -> bytes:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip().encode() if scheme.lower() == "bearer" else b""


def sms_webhook_app(inbox: SmsInbox, token: str) -> Starlette:
    """``POST /sms``: 204 when accepted, 401 without the token, 422 for a malformed body."""
    expected = token.encode()

    async def receive_sms(request: Request) -> Response:
        # Constant time: the token is the only thing keeping strangers from feeding codes.
        if not hmac.compare_digest(_bearer(request), expected):
            inbox.refuse()
            return JSONResponse({"error": "unauthenticated"}, status_code=401)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": "too_large"}, status_code=422)
        try:
            message = _parse(body)
        except ValueError as error:
            return JSONResponse({"error": "invalid_request", "message": str(error)},
                                status_code=422)
        inbox.receive(*message)
        return Response(status_code=204)

    return Starlette(routes=[Route(SMS_WEBHOOK_PATH, receive_sms, methods=["POST"])])


def _parse(body: bytes) -> tuple[str, str]:
    try:
        message = json.loads(body)
    except ValueError as error:
        raise ValueError("the body is not JSON") from error
    if not isinstance(message, dict):
        raise ValueError("expected a JSON object")
    phone, text = message.get("to"), message.get("body")
    if not isinstance(phone, str) or not isinstance(text, str):
        raise ValueError("expected string fields to and body")
    return phone, text


async def serve_sms_webhook(address: str, inbox: SmsInbox, token: str, *,
                            task_status: trio.TaskStatus[tuple[str, int]]
                            = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the webhook on ``address`` (HOST:PORT, plain HTTP) until cancelled.

    Reports the bound (host, port) through ``task_status`` (port 0 picks a free one).
    """
    host, port = parse_host_port(address)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None  # request bodies carry numbers and codes; lines add nothing
    config.errorlog = logging.getLogger("bench.sms_webhook")
    config.graceful_timeout = 0.5
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(hypercorn_serve,
                                               sms_webhook_app(inbox, token), config)
        bound_host, _, bound_port = binds[0].rpartition("://")[2].rpartition(":")
        task_status.started((bound_host.strip("[]"), int(bound_port)))
