"""A `RelayClient` with the relay played by the test: no network, no relay process.

``FakeLink`` stands in for the QUIC link (it records what the client writes) and the test
feeds the client the relay's bytes through ``RelayClient.quic_events``, as the endpoint
does: the client's real code path, from stream bytes to the caller's exception.

``python -O -m tests.client_peer_harness`` (or ``main()``) plays every misbehaviour in
``peer_cases`` and prints one JSON line per case: what the caller got. The tests run it with
and without ``-O`` and compare, so no answer to peer input depends on an ``assert``. Nothing
here may rely on ``assert`` either: checks raise ``HarnessError``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import outcome
import trio
import trio.testing
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived, StreamReset
from nacl.signing import SigningKey

from client.connection import RelayClient
from crypto.primitives import SystemRandom, ed25519_generate
from wire.codec import encode_frame
from wire.frames import (
    Acked,
    Challenge,
    Deliver,
    Error,
    ErrorCode,
    Frame,
    LookupResult,
    SendAccepted,
)
from wire.prekey_frames import OneTimePrekey

__all__ = ["FakeLink", "HarnessError", "answered", "fake_client", "main", "peer_cases",
           "relay_says", "terminate"]

PHONE = "+33612345678"
GARBAGE = b"\x00\x00\x00\x01\xc1"  # a frame of one byte that is no msgpack
PUSH_STREAM = 3  # the relay's first unidirectional stream


class HarnessError(Exception):
    """The harness itself saw something it did not expect."""


class FakeLink:
    """Stands in for a `transport.quic.QuicLink`: records writes, opens streams 0, 4, 8..."""

    def __init__(self) -> None:
        self.written: list[tuple[int, bytes, bool]] = []
        self.wrote = trio.Event()
        self.closed_with: tuple[int, str] | None = None
        self._next_stream = 0

    def new_stream(self, *, unidirectional: bool = False) -> int:
        stream_id, self._next_stream = self._next_stream, self._next_stream + 4
        return stream_id

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        self.written.append((stream_id, data, end_stream))
        self.wrote.set()

    def close(self, error_code: int, reason: str = "") -> None:
        self.closed_with = (error_code, reason)

    def ping(self) -> None:
        pass


def fake_client() -> tuple[RelayClient, FakeLink]:
    """A client whose link is a FakeLink (as if connected)."""
    client, link = RelayClient(), FakeLink()
    client._link = link  # type: ignore[assignment]
    return client, link


def relay_says(client: RelayClient, link: FakeLink, stream_id: int, *frames: Frame | bytes,
               end_stream: bool = False) -> None:
    """Feed the client what the relay sent on ``stream_id`` (frames, or raw bytes)."""
    data = b"".join(item if isinstance(item, bytes) else encode_frame(item) for item in frames)
    client.quic_events(link, [StreamDataReceived(data=data, end_stream=end_stream,
                                                 stream_id=stream_id)])


def terminate(client: RelayClient, link: FakeLink, code: ErrorCode, reason: str = "") -> None:
    """The connection ends, as the endpoint reports it."""
    client.quic_events(link, [ConnectionTerminated(
        error_code=int(code), frame_type=None, reason_phrase=reason)])


async def answered(client: RelayClient, link: FakeLink,
                   call: Callable[[], Awaitable[Any]],
                   *answers: Frame | bytes) -> outcome.Outcome[Any]:
    """Run ``call``; answer each request it writes with the next of ``answers`` (a frame,
    or raw bytes; on the request's stream, ending it if the client ended its side);
    return how ``call`` ended."""
    result: outcome.Outcome[Any] | None = None

    async def run() -> None:
        nonlocal result
        result = await outcome.acapture(call)
        link.wrote.set()  # wake the loop below if the call ended before a request

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            link.wrote = trio.Event()
            nursery.start_soon(run)
            for answer in answers:
                await link.wrote.wait()  # the request is written; its answer is awaited
                link.wrote = trio.Event()
                if result is not None:
                    break
                stream_id, _, ended = link.written[-1]
                relay_says(client, link, stream_id, answer, end_stream=ended)
    if result is None:
        raise HarnessError("the call did not finish")
    return result


def _wrong(expected: str) -> Frame:
    """A well-formed answer of another kind than ``expected``."""
    return Acked(count=0) if expected != "ACKED" else LookupResult(entries=())


async def _wrong_answers() -> list[dict[str, Any]]:
    key = SigningKey.generate()
    account = ed25519_generate(SystemRandom())
    calls: list[tuple[str, str, Callable[[RelayClient], Awaitable[Any]], list[Frame]]] = [
        ("enrol_start", "ENROL_STARTED", lambda c: c.enrol_start(PHONE), []),
        ("enrol_verify", "ENROLLED",
         lambda c: c.enrol_verify(PHONE, "123456", bytes(key.verify_key), account), []),
        ("authenticate/hello", "CHALLENGE", lambda c: c.authenticate("u1", 1, key), []),
        ("authenticate/answer", "AUTHENTICATED", lambda c: c.authenticate("u1", 1, key),
         [Challenge(nonce=bytes(32))]),
        ("lookup", "LOOKUP_RESULT", lambda c: c.lookup([PHONE]), []),
        ("upload_prekeys", "PREKEYS_UPLOADED", lambda c: c.upload_prekeys(
            one_time_prekeys=[OneTimePrekey(key_id=1, public_key=bytes(32))]), []),
        ("fetch_bundle", "BUNDLE", lambda c: c.fetch_bundle("u2"), []),
        ("prekey_counts", "PREKEY_COUNTS", lambda c: c.prekey_counts(), []),
        ("list_devices", "DEVICE_LIST", lambda c: c.list_devices(), []),
        ("send", "SEND_ACCEPTED",
         lambda c: c.send("u2", {1: b"ciphertext"}, client_message_id=1), []),
        ("settle", "ACKED", _settle_after_acknowledging, []),
    ]
    results = []
    for name, expected, call, before in calls:
        client, link = fake_client()
        wrong = _wrong(expected)
        got = await answered(client, link, lambda c=client, f=call: f(c), *before, wrong)
        results.append({"case": f"wrong answer to {name}", **_describe(got),
                        "expected": f"expected {expected}, got {wrong.frame_type.name}"})
    return results


async def _settle_after_acknowledging(client: RelayClient) -> None:
    client.acknowledge(7)  # no nursery: it waits for settle, which sends it quietly first
    await client.settle()


async def _garbage_answer() -> dict[str, Any]:
    client, link = fake_client()
    got = await answered(client, link, lambda: client.lookup([PHONE]), GARBAGE)
    return {"case": "garbage for an answer", **_describe(got)}


async def _stream_ended_unanswered() -> list[dict[str, Any]]:
    """Two pipelined sends; the relay refuses the first with an ERROR that failed the
    stream, then ends the stream: the second was dropped unanswered."""
    client, link = fake_client()
    got: dict[int, outcome.Outcome[Any]] = {}

    async def send(number: int) -> None:
        got[number] = await outcome.acapture(
            client.send, "u2", {1: b"x"}, client_message_id=number)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, 1)
            await link.wrote.wait()
            link.wrote = trio.Event()
            nursery.start_soon(send, 2)
            await link.wrote.wait()
            relay_says(client, link, 0, Error(code=ErrorCode.MALFORMED_FRAME, reason="bad"),
                       end_stream=True)
        # The next send opens a new stream, which the relay answers.
        link.wrote = trio.Event()
        third = await answered(client, link, lambda: client.send(
            "u2", {1: b"y"}, client_message_id=3), SendAccepted(duplicate=False))
    return [{"case": "first of two sends on a failed stream", **_describe(got[1])},
            {"case": "second of two sends on a failed stream", **_describe(got[2])},
            {"case": "a send after the stream ended", **_describe(third),
             "stream": link.written[-1][0]}]


async def _stream_reset() -> dict[str, Any]:
    client, link = fake_client()
    result: list[outcome.Outcome[Any]] = []

    async def run() -> None:
        result.append(await outcome.acapture(client.prekey_counts))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await link.wrote.wait()
            client.quic_events(link, [StreamReset(error_code=7,
                                                  stream_id=link.written[-1][0])])
    return {"case": "a request stream reset", **_describe(result[0])}


async def _bad_push(name: str, data: bytes) -> dict[str, Any]:
    """A delivery, then ``data`` on the push stream: the reader gets the delivery, then
    ConnectionClosed, and the client closed the connection with the error's code."""
    client, link = fake_client()
    first = Deliver(envelope_id=1, sender_user_id="u2", sender_device_id=1,
                    client_message_id=1, accepted_at=1, ciphertext=b"c")
    relay_says(client, link, PUSH_STREAM, first)
    received: list[Any] = []

    async def read() -> None:
        async for delivery in client.deliveries():
            received.append(delivery.envelope_id)

    with trio.fail_after(10):
        got = await outcome.acapture(_read_until_closed, client, link, read, data)
    return {"case": name, **_describe(got), "received": received,
            "closed_with": ErrorCode(link.closed_with[0]).name if link.closed_with else None}


async def _read_until_closed(client: RelayClient, link: FakeLink,
                             read: Callable[[], Awaitable[None]], data: bytes) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        relay_says(client, link, PUSH_STREAM, data)


def _describe(result: outcome.Outcome[Any]) -> dict[str, Any]:
    """What a caller got: the exception's type, code and reason; or 'returned'."""
    if isinstance(result, outcome.Value):
        return {"got": "returned"}
    error: BaseException = result.error
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    code = getattr(error, "code", None)
    return {"got": type(error).__name__,
            "code": ErrorCode(code).name if code is not None else None,
            "reason": getattr(error, "reason", str(error))}


async def peer_cases() -> list[dict[str, Any]]:
    """Every misbehaviour of the relay the client must turn into a typed error."""
    cases = await _wrong_answers()
    cases.append(await _garbage_answer())
    cases.extend(await _stream_ended_unanswered())
    cases.append(await _stream_reset())
    cases.append(await _bad_push("garbage on the push stream", GARBAGE))
    cases.append(await _bad_push("an answer on the push stream",
                                 encode_frame(SendAccepted(duplicate=False))))
    return cases


def main() -> None:
    """Print ``{"optimize": sys.flags.optimize}``, then one JSON line per case."""
    print(json.dumps({"optimize": sys.flags.optimize}))
    for case in trio.run(peer_cases):
        print(json.dumps(case))


if __name__ == "__main__":
    main()
