"""Sending SMS: the message, the gateways, and the asynchronous dispatcher.

Enrolment never waits for a gateway: it submits to ``SmsDispatcher``, whose
worker tasks deliver in the background. That keeps the answer to a
start-enrolment request independent (in content and in timing) of whether an
SMS was sent, and keeps a slow gateway from slowing enrolment down.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import httpx
import structlog
import trio

from wire.phone import mask_phone

__all__ = [
    "DEFAULT_QUEUE_CAPACITY",
    "DEFAULT_WORKERS",
    "HttpGateway",
    "OutboxGateway",
    "SmsDeliveryError",
    "SmsDispatcher",
    "SmsGateway",
    "SmsMessage",
    "SmsOutcomes",
    "utc_timestamp",
]

DEFAULT_QUEUE_CAPACITY = 1024
"""Messages waiting for a worker; beyond this a burst is dropped rather than buffered without
bound (each one is a few hundred bytes, and an unanswered code can simply be requested again)."""

DEFAULT_WORKERS = 4
"""Concurrent deliveries: one message in its retry backoff must not hold up the others."""

HTTP_TIMEOUT_S = 10.0
"""Seconds for each HTTP attempt (connect, write, read) before it counts as a network error."""

OUTBOX_FILE_MODE = 0o600
"""The outbox holds live codes: only the relay's user may read it."""

_log = structlog.get_logger("enrolment.sms")


def utc_timestamp(now: int) -> str:
    """ISO-8601 UTC timestamp (millisecond precision) for ``now`` in ms since the epoch."""
    moment = datetime.fromtimestamp(now / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, kw_only=True, slots=True)
class SmsMessage:
    to: str
    """Recipient, E.164."""
    body: str
    """Text of the SMS (contains the code: never log it)."""
    sent_at: str
    """When enrolment submitted it, ISO-8601 UTC (``2025-01-31T12:00:00.000Z``)."""

    def as_json_object(self) -> dict[str, str]:
        """The three fields every gateway transmits."""
        return {"to": self.to, "body": self.body, "sent_at": self.sent_at}


class SmsDeliveryError(Exception):
    """A gateway could not deliver a message. The message never contains the number or body."""


class SmsGateway(Protocol):
    async def send(self, message: SmsMessage) -> None:
        """Deliver ``message`` or raise SmsDeliveryError."""
        ...


class OutboxGateway:
    """Appends each message as one JSON line to a file (development and tests).

    The relay uses ``DATA_DIR/sms-outbox.jsonl``. Lines are written with one
    ``write`` on a file opened with O_APPEND, so concurrent senders never
    interleave inside a line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    async def send(self, message: SmsMessage) -> None:
        line = json.dumps(message.as_json_object(), ensure_ascii=False) + "\n"
        # File I/O blocks; keep it off the trio thread.
        await trio.to_thread.run_sync(self._append, line.encode("utf-8"))

    def _append(self, data: bytes) -> None:
        try:
            descriptor = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, OUTBOX_FILE_MODE
            )
        except OSError as error:
            raise SmsDeliveryError(f"cannot open the SMS outbox: {error.strerror}") from error
        try:
            # os.open's mode only applies on creation: tighten a file created before.
            os.fchmod(descriptor, OUTBOX_FILE_MODE)
            written = 0
            while written < len(data):
                written += os.write(descriptor, data[written:])
        except OSError as error:
            raise SmsDeliveryError(f"cannot write the SMS outbox: {error.strerror}") from error
        finally:
            os.close(descriptor)


def _is_retryable_status(status_code: int) -> bool:
    # 5xx: the gateway's own trouble; 429: it asked us to slow down. Any other
    # 4xx means our request is wrong and would fail the same way again.
    return status_code >= 500 or status_code == 429


class HttpGateway:
    """POSTs ``{"to", "body", "sent_at"}`` as JSON to an SMS provider, with retries.

    Network errors, 5xx and 429 are retried with exponential backoff
    (``backoff_base_s * 2**n``); other non-2xx answers fail at once. Call
    ``aclose()`` (or use ``async with``) to release the connection pool.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        max_attempts: int = 4,
        backoff_base_s: float = 0.5,
        sleep: Callable[[float], Awaitable[None]] = trio.sleep,
        timeout_s: float = HTTP_TIMEOUT_S,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.url = url
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self._sleep = sleep
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            follow_redirects=False,
        )

    async def __aenter__(self) -> HttpGateway:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, message: SmsMessage) -> None:
        payload = message.as_json_object()
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = await self._client.post(self.url, json=payload)
            except httpx.TransportError as error:
                # The exception text may carry the URL, never the number or body.
                failure = f"network error: {type(error).__name__}"
            else:
                if response.is_success:
                    return
                failure = f"gateway answered HTTP {response.status_code}"
                if not _is_retryable_status(response.status_code):
                    raise SmsDeliveryError(failure)
            if attempt == self.max_attempts:
                raise SmsDeliveryError(f"{failure} (gave up after {attempt} attempts)")
            await self._sleep(self.backoff_base_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


@dataclass(slots=True)
class SmsOutcomes:
    """Counters of what the dispatcher did, for metrics and tests."""

    sent: int = 0
    failed: int = 0
    dropped: int = 0


class SmsDispatcher:
    """Delivers submitted messages in the background through a gateway.

    Start ``run`` in the relay's nursery (``await nursery.start(dispatcher.run)``).
    ``submit`` never blocks: when the queue is full the message is dropped and
    counted, because enrolment must not wait for the gateway.
    """

    def __init__(
        self,
        gateway: SmsGateway,
        *,
        capacity: int = DEFAULT_QUEUE_CAPACITY,
        workers: int = DEFAULT_WORKERS,
        on_sent: Callable[[SmsMessage], None] | None = None,
        on_failed: Callable[[SmsMessage], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.gateway = gateway
        self.workers = workers
        self.on_sent = on_sent
        self.on_failed = on_failed
        self.outcomes = SmsOutcomes()
        self._send_channel, self._receive_channel = trio.open_memory_channel[SmsMessage](capacity)

    def submit(self, message: SmsMessage) -> None:
        """Queue ``message`` for delivery without waiting; drop it if the queue is full."""
        try:
            self._send_channel.send_nowait(message)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.outcomes.dropped += 1
            _log.warning("sms_dropped", to=mask_phone(message.to), reason="queue full or closed")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver queued messages until cancelled."""
        async with trio.open_nursery() as nursery:
            for _ in range(self.workers):
                nursery.start_soon(self._work)
            task_status.started()

    async def _work(self) -> None:
        async for message in self._receive_channel:
            await self._deliver(message)

    async def _deliver(self, message: SmsMessage) -> None:
        masked = mask_phone(message.to)
        try:
            await self.gateway.send(message)
        except SmsDeliveryError as error:
            self.outcomes.failed += 1
            _log.warning("sms_failed", to=masked, error=str(error))
            if self.on_failed is not None:
                self.on_failed(message)
            return
        self.outcomes.sent += 1
        _log.info("sms_sent", to=masked)
        if self.on_sent is not None:
            self.on_sent(message)
