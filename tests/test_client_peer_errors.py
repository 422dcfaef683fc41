"""The client never trusts the relay's input, and hands pushes over through memory channels.

* Every misbehaviour of the relay (an answer of the wrong kind, garbage, a stream ended or
  reset with requests unanswered, a broken push stream) reaches the caller as a typed error
  (``RemoteProtocolError``, ``ConnectionClosed``), never an ``AssertionError``, and the same
  under ``python -O`` (tests/client_peer_harness.py plays the relay, without a network).
* Against a real QUIC peer that answers wrongly, the library raises the typed error and the
  ``cryptopass`` command reports it in one line.
* Pushes reach readers in order; readers waiting when the connection closes get
  ``ConnectionClosed``, after whatever was already received.
"""

from __future__ import annotations

import datetime
import json
import sys
import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

from client.connection import ConnectionClosed, RelayClient, connect_relay
from relay.tls import ensure_development_certificate
from tests.client_peer_harness import (
    PUSH_STREAM,
    FakeLink,
    answered,
    fake_client,
    peer_cases,
    relay_says,
    terminate,
)
from transport.quic import QuicEndpoint, QuicLink, open_udp_socket
from wire.codec import encode_frame
from wire.errors import RemoteProtocolError
from wire.frames import ALPN, Acked, Deliver, ErrorCode, LookupResult, QueueEmpty
from wire.prekey_frames import PrekeysLow
from wire.protocol import PUSH_FRAME_TYPES, PushReceived

ROOT = Path(__file__).resolve().parent.parent
WAIT_SECONDS = 10
"""Bound on every wait: nothing here should take more than milliseconds."""


def deliver(envelope_id: int) -> Deliver:
    return Deliver(envelope_id=envelope_id, sender_user_id="u2", sender_device_id=1,
                   client_message_id=envelope_id, accepted_at=1, ciphertext=b"c%d" % envelope_id)


# --- peer input: typed errors, with and without -O ------------------------------------------------
def _unexpected(reason: str) -> dict[str, Any]:
    return {"got": "RemoteProtocolError", "code": "UNEXPECTED_FRAME", "reason": reason}


EXPECTED = {
    **{f"wrong answer to {name}": _unexpected(f"expected {kind}, got ACKED") for name, kind in [
        ("enrol_start", "ENROL_STARTED"), ("enrol_verify", "ENROLLED"),
        ("authenticate/hello", "CHALLENGE"), ("authenticate/answer", "AUTHENTICATED"),
        ("lookup", "LOOKUP_RESULT"), ("upload_prekeys", "PREKEYS_UPLOADED"),
        ("fetch_bundle", "BUNDLE"), ("prekey_counts", "PREKEY_COUNTS"),
        ("list_devices", "DEVICE_LIST"), ("send", "SEND_ACCEPTED")]},
    "wrong answer to settle": _unexpected("expected ACKED, got LOOKUP_RESULT"),
    "garbage for an answer": {"got": "RemoteProtocolError", "code": "MALFORMED_FRAME"},
    "first of two sends on a failed stream": {"got": "RelayError", "code": "MALFORMED_FRAME"},
    "second of two sends on a failed stream": _unexpected(
        "the relay ended stream 0 with 1 request(s) unanswered"),
    "a send after the stream ended": {"got": "returned", "stream": 4},  # a new send stream
    "a request stream reset": _unexpected("the relay reset stream 0 (code 7)"),
    # The client closes the connection with the error's code; the reader gets what came first.
    "garbage on the push stream": {"got": "ConnectionClosed", "code": "MALFORMED_FRAME",
                                   "received": [1], "closed_with": "MALFORMED_FRAME"},
    "an answer on the push stream": {
        "got": "ConnectionClosed", "code": "UNEXPECTED_FRAME", "received": [1],
        "reason": "SEND_ACCEPTED is not allowed on stream 3", "closed_with": "UNEXPECTED_FRAME"},
}


def check_cases(cases: list[dict[str, Any]]) -> None:
    assert [case["case"] for case in cases] == list(EXPECTED)
    for case in cases:
        expected = EXPECTED[case["case"]]
        assert {key: case.get(key) for key in expected} == expected, case


async def test_every_misbehaviour_of_the_relay_is_a_typed_error() -> None:
    check_cases(await peer_cases())


async def test_the_same_under_python_dash_o() -> None:
    """Asserts removed (-O): every case still ends with the same typed error."""
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-O", "-m", "tests.client_peer_harness"], cwd=ROOT,
            capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    first, *lines = result.stdout.decode().splitlines()
    assert json.loads(first) == {"optimize": 1}  # the asserts really were removed
    optimized = [json.loads(line) for line in lines]
    check_cases(optimized)
    assert optimized == await peer_cases()


def test_push_received_carries_exactly_the_push_frames() -> None:
    """The classes a client dispatches on are the protocol's push frame types."""
    hint = typing.get_type_hints(PushReceived)["frame"]
    assert {cls.frame_type for cls in typing.get_args(hint)} == PUSH_FRAME_TYPES


# --- pushes through memory channels ---------------------------------------------------------------
async def test_pushes_reach_the_reader_in_order_buffered_then_live() -> None:
    client, link = fake_client()
    relay_says(client, link, PUSH_STREAM, *(deliver(n) for n in range(1, 201)), QueueEmpty())
    received: list[Deliver | QueueEmpty] = []
    with trio.fail_after(WAIT_SECONDS):
        async for delivery in client.deliveries():
            received.append(delivery)
            if isinstance(delivery, QueueEmpty):
                break
        assert received == [*(deliver(n) for n in range(1, 201)), QueueEmpty()]

        async def read_live(task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            async for delivery in client.deliveries():
                received.append(delivery)
                if isinstance(delivery, Deliver) and delivery.envelope_id == 203:
                    return

        async with trio.open_nursery() as nursery:
            await nursery.start(read_live)
            await trio.testing.wait_all_tasks_blocked()  # the reader waits on the channel
            for n in (201, 202, 203):
                relay_says(client, link, PUSH_STREAM, deliver(n))
    assert [d.envelope_id for d in received if isinstance(d, Deliver)] == list(range(1, 204))


async def test_readers_waiting_when_the_connection_closes_get_connection_closed() -> None:
    client, link = fake_client()
    failures: dict[str, BaseException] = {}

    async def fails(name: str, call: Any) -> None:
        with pytest.raises(ConnectionClosed) as closed:
            await call()
        failures[name] = closed.value

    async def read_deliveries() -> None:
        async for _ in client.deliveries():
            pass

    with trio.fail_after(WAIT_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fails, "deliveries", read_deliveries)
            nursery.start_soon(fails, "prekeys_low", client.next_prekeys_low)
            nursery.start_soon(fails, "request", client.prekey_counts)
            await trio.testing.wait_all_tasks_blocked()
            terminate(client, link, ErrorCode.REPLACED, "replaced by a newer connection")
    assert set(failures) == {"deliveries", "prekeys_low", "request"}
    for error in failures.values():
        assert isinstance(error, ConnectionClosed)
        assert (error.code, error.reason) == (ErrorCode.REPLACED, "replaced by a newer connection")
    with pytest.raises(ConnectionClosed):
        await client.lookup(["+33612345678"])  # and every request after


async def test_what_arrived_before_the_close_is_still_handed_over() -> None:
    client, link = fake_client()
    low = PrekeysLow(one_time=3, kem_one_time=4)
    relay_says(client, link, PUSH_STREAM, deliver(1), low, deliver(2))
    terminate(client, link, ErrorCode.GOING_AWAY)
    with trio.fail_after(WAIT_SECONDS):
        assert await client.next_prekeys_low() == low
        received = []
        with pytest.raises(ConnectionClosed) as closed:
            async for delivery in client.deliveries():
                received.append(delivery)
        assert received == [deliver(1), deliver(2)]
        assert closed.value.code == ErrorCode.GOING_AWAY
        with pytest.raises(ConnectionClosed):
            await client.next_prekeys_low()


async def test_a_request_on_a_fake_link_is_answered() -> None:
    """The harness itself: a right answer is returned as it is."""
    client, link = fake_client()
    got = await answered(client, link, lambda: client.lookup(["+33612345678"]),
                         LookupResult(entries=()))
    assert got.unwrap() == []
    assert isinstance(link, FakeLink) and link.written[0][2]  # one request, stream ended


# --- a real QUIC peer that answers wrongly -------------------------------------------------------
class AnswersAcked:
    """A 'relay' that answers every request with ACKED."""

    def __init__(self, link: QuicLink) -> None:
        self.link = link

    def quic_events(self, link: QuicLink, batch: list[events.QuicEvent]) -> None:
        for event in batch:
            if isinstance(event, events.StreamDataReceived) and event.end_stream:
                link.send_stream_data(event.stream_id, encode_frame(Acked(count=0)), True)


@asynccontextmanager
async def misbehaving_relay(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """(port, CA certificate) of a QUIC peer speaking ALPN cryptopass/1, wrongly."""
    cert, key, _ = ensure_development_certificate(
        tmp_path / "tls", now=datetime.datetime.now(datetime.UTC))
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    configuration.load_cert_chain(str(cert), str(key))
    sock = open_udp_socket("127.0.0.1", 0)
    try:
        server = QuicEndpoint(sock, configuration=configuration, on_connection=AnswersAcked,
                              retry=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            yield server.local_address[1], cert
            nursery.cancel_scope.cancel()
    finally:
        sock.close()


async def test_a_wrong_answer_over_quic_is_a_remote_protocol_error(tmp_path: Path) -> None:
    async with misbehaving_relay(tmp_path) as (port, cert):
        with trio.fail_after(WAIT_SECONDS):
            async with connect_relay("127.0.0.1", port, ca=cert) as client:
                assert isinstance(client, RelayClient)
                with pytest.raises(RemoteProtocolError) as refused:
                    await client.lookup(["+33612345678"])
                assert refused.value.code is ErrorCode.UNEXPECTED_FRAME
                assert refused.value.reason == "expected LOOKUP_RESULT, got ACKED"
                with pytest.raises(RemoteProtocolError):  # the connection survives it
                    await client.prekey_counts()


async def test_the_cli_reports_a_wrong_answer_in_one_line(tmp_path: Path) -> None:
    cryptopass = Path(sys.executable).parent / "cryptopass"
    async with misbehaving_relay(tmp_path) as (port, cert):
        with trio.fail_after(60):
            result = await trio.run_process(
                [str(cryptopass), "--profile", str(tmp_path / "profile"), "enrol",
                 "+33612345678", "--relay", f"127.0.0.1:{port}", "--ca", str(cert)],
                capture_stdout=True, capture_stderr=True, check=False, stdin=b"")
    assert result.returncode == 1
    assert result.stderr.decode() == (
        "error: the relay broke the protocol: UNEXPECTED_FRAME: "
        "expected ENROL_STARTED, got ACKED\n")
