"""SMS gateways (outbox file, HTTP against a real loopback server) and the dispatcher."""

from __future__ import annotations

import json
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import structlog.testing
import trio

from enrolment.sms import (
    HttpGateway,
    OutboxGateway,
    SmsDeliveryError,
    SmsDispatcher,
    SmsMessage,
    utc_timestamp,
)

PHONE = "+33612345678"
CODE = "482913"
TOKEN = "test-token-123"


def make_message(to: str = PHONE, code: str = CODE) -> SmsMessage:
    return SmsMessage(
        to=to, body=f"Your Cryptopass code is {code}.", sent_at=utc_timestamp(1_700_000_000_000)
    )


def test_utc_timestamp_is_iso_8601_utc() -> None:
    assert utc_timestamp(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"


# -- outbox -----------------------------------------------------------------------


async def test_outbox_appends_one_json_object_per_line(tmp_path: Path) -> None:
    outbox = tmp_path / "sms-outbox.jsonl"
    gateway = OutboxGateway(outbox)
    await gateway.send(make_message())
    await gateway.send(make_message(to="+16502530000", code="000001"))

    lines = outbox.read_text("utf-8").splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first == {
        "to": PHONE,
        "body": f"Your Cryptopass code is {CODE}.",
        "sent_at": "2023-11-14T22:13:20.000Z",
    }
    assert set(second) == {"to", "body", "sent_at"}
    assert second["to"] == "+16502530000"


async def test_outbox_file_is_private(tmp_path: Path) -> None:
    outbox = tmp_path / "sms-outbox.jsonl"
    await OutboxGateway(outbox).send(make_message())
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o600


async def test_outbox_tightens_an_existing_file(tmp_path: Path) -> None:
    outbox = tmp_path / "sms-outbox.jsonl"
    outbox.write_text("")
    outbox.chmod(0o644)
    await OutboxGateway(outbox).send(make_message())
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o600


async def test_outbox_concurrent_sends_never_interleave(tmp_path: Path) -> None:
    outbox = tmp_path / "sms-outbox.jsonl"
    gateway = OutboxGateway(outbox)
    async with trio.open_nursery() as nursery:
        for index in range(50):
            nursery.start_soon(gateway.send, make_message(code=f"{index:06d}"))
    lines = outbox.read_text("utf-8").splitlines()
    assert len(lines) == 50
    assert all(set(json.loads(line)) == {"to", "body", "sent_at"} for line in lines)


async def test_outbox_failure_is_a_delivery_error(tmp_path: Path) -> None:
    gateway = OutboxGateway(tmp_path / "missing-directory" / "sms-outbox.jsonl")
    with pytest.raises(SmsDeliveryError):
        await gateway.send(make_message())


# -- HTTP gateway against a real loopback server -------------------------------


@dataclass
class RecordedRequest:
    path: str
    authorization: str | None
    content_type: str | None
    body: object


@dataclass
class ScriptedServer:
    """A loopback HTTP server answering statuses from ``script``, then 200."""

    url: str
    script: list[int] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def sms_server() -> Iterator[ScriptedServer]:
    state = ScriptedServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            with state.lock:
                state.requests.append(
                    RecordedRequest(
                        path=self.path,
                        authorization=self.headers.get("Authorization"),
                        content_type=self.headers.get("Content-Type"),
                        body=body,
                    )
                )
                status = state.script.pop(0) if state.script else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1/sms"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class SleepRecorder:
    """Injected in place of trio.sleep: records each backoff and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


async def test_http_gateway_posts_json_with_bearer_token(sms_server: ScriptedServer) -> None:
    async with HttpGateway(sms_server.url, TOKEN) as gateway:
        with trio.fail_after(10):
            await gateway.send(make_message())
    [request] = sms_server.requests
    assert request.path == "/v1/sms"
    assert request.authorization == f"Bearer {TOKEN}"
    assert request.content_type == "application/json"
    assert request.body == {
        "to": PHONE,
        "body": f"Your Cryptopass code is {CODE}.",
        "sent_at": "2023-11-14T22:13:20.000Z",
    }


@pytest.mark.parametrize("status", [503, 500, 429])
async def test_http_gateway_retries_with_exponential_backoff(
    sms_server: ScriptedServer, status: int
) -> None:
    sms_server.script = [status, status, status]
    sleep = SleepRecorder()
    async with HttpGateway(sms_server.url, TOKEN, backoff_base_s=0.5, sleep=sleep) as gateway:
        with trio.fail_after(10):
            await gateway.send(make_message())
    assert len(sms_server.requests) == 4
    assert sleep.delays == [0.5, 1.0, 2.0]
    assert all(request.body == sms_server.requests[0].body for request in sms_server.requests)


async def test_http_gateway_gives_up_after_max_attempts(sms_server: ScriptedServer) -> None:
    sms_server.script = [503] * 10
    sleep = SleepRecorder()
    async with HttpGateway(sms_server.url, TOKEN, max_attempts=3, sleep=sleep) as gateway:
        with trio.fail_after(10), pytest.raises(SmsDeliveryError, match="503") as caught:
            await gateway.send(make_message())
    assert len(sms_server.requests) == 3
    assert len(sleep.delays) == 2  # no pointless wait after the last attempt
    assert PHONE not in str(caught.value)
    assert CODE not in str(caught.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_http_gateway_does_not_retry_client_errors(
    sms_server: ScriptedServer, status: int
) -> None:
    sms_server.script = [status]
    sleep = SleepRecorder()
    async with HttpGateway(sms_server.url, TOKEN, sleep=sleep) as gateway:
        with trio.fail_after(10), pytest.raises(SmsDeliveryError, match=str(status)):
            await gateway.send(make_message())
    assert len(sms_server.requests) == 1
    assert sleep.delays == []


async def test_http_gateway_retries_network_errors() -> None:
    # A port that was just free and has nobody listening: connection refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleep = SleepRecorder()
    url = f"http://127.0.0.1:{port}/v1/sms"
    async with HttpGateway(url, TOKEN, max_attempts=4, backoff_base_s=0.1, sleep=sleep) as gateway:
        with trio.fail_after(10), pytest.raises(SmsDeliveryError, match="network error"):
            await gateway.send(make_message())
    assert sleep.delays == pytest.approx([0.1, 0.2, 0.4])


async def test_http_gateway_with_trio_sleep_and_zero_backoff(sms_server: ScriptedServer) -> None:
    sms_server.script = [503]
    async with HttpGateway(sms_server.url, TOKEN, backoff_base_s=0) as gateway:
        with trio.fail_after(10):
            await gateway.send(make_message())
    assert len(sms_server.requests) == 2


# -- dispatcher ------------------------------------------------------------------


class FailingGateway:
    async def send(self, message: SmsMessage) -> None:
        raise SmsDeliveryError("gateway answered HTTP 503")


async def test_dispatcher_delivers_and_calls_on_sent(tmp_path: Path) -> None:
    outbox = tmp_path / "sms-outbox.jsonl"
    delivered = trio.Event()
    seen: list[SmsMessage] = []

    def on_sent(message: SmsMessage) -> None:
        seen.append(message)
        delivered.set()

    dispatcher = SmsDispatcher(OutboxGateway(outbox), on_sent=on_sent)
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        dispatcher.submit(make_message())
        with trio.fail_after(10):
            await delivered.wait()
        nursery.cancel_scope.cancel()
    assert seen == [make_message()]
    assert dispatcher.outcomes.sent == 1
    assert dispatcher.outcomes.failed == 0
    assert len(outbox.read_text().splitlines()) == 1


async def test_dispatcher_counts_failures() -> None:
    failed = trio.Event()
    dispatcher = SmsDispatcher(FailingGateway(), on_failed=lambda message: failed.set())
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        dispatcher.submit(make_message())
        with trio.fail_after(10):
            await failed.wait()
        nursery.cancel_scope.cancel()
    assert dispatcher.outcomes.failed == 1
    assert dispatcher.outcomes.sent == 0


async def test_dispatcher_submit_never_blocks_and_drops_when_full() -> None:
    # No worker running: the queue fills up and submit still returns at once.
    dispatcher = SmsDispatcher(FailingGateway(), capacity=2)
    with trio.fail_after(1):
        for _ in range(5):
            dispatcher.submit(make_message())
    assert dispatcher.outcomes.dropped == 3


async def test_dispatcher_logs_carry_no_phone_number_or_code(tmp_path: Path) -> None:
    sent = trio.Event()
    failed = trio.Event()
    good = SmsDispatcher(OutboxGateway(tmp_path / "outbox.jsonl"), on_sent=lambda m: sent.set())
    bad = SmsDispatcher(FailingGateway(), capacity=1, on_failed=lambda m: failed.set())
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(good.run)
            await nursery.start(bad.run)
            good.submit(make_message())
            bad.submit(make_message())
            with trio.fail_after(10):
                await sent.wait()
                await failed.wait()
            nursery.cancel_scope.cancel()
        # A drop is logged too: fill the stopped dispatcher's queue.
        bad.submit(make_message())
        bad.submit(make_message())
    events = {entry["event"] for entry in logs}
    assert {"sms_sent", "sms_failed", "sms_dropped"} <= events
    text = repr(logs)
    assert "12345678" not in text.replace("*", "")
    assert "612345678" not in text
    assert CODE not in text
    assert all(entry["to"] == "+33******78" for entry in logs)
