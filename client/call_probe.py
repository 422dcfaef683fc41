"""A synthetic audio stream for a call, and what its echo shows (``cryptopass call``).

The caller sends PROBE_RATE packets a second of PROBE_PACKET_BYTES bytes, like 20 ms Opus
frames; each plaintext holds its sequence number and the caller's send time, then filler. The
callee (``cryptopass receive --follow --accept-calls``) decrypts each packet and sends the same
plaintext back encrypted under its own key. The caller then knows, per packet, whether it came
back and after how long: loss, the round trip, and the interarrival jitter of RFC 3550
section 6.4.1 (over round-trip transit times, so no clock needs to be shared). The one-way
delay estimate is half the median round trip.
"""

from __future__ import annotations

import contextlib
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from client.call_media import CallElsewhereError, CallEndedError
from client.calls import Call, CallManager
from client.errors import HandshakeFailed, RelayError, RelayUnreachable

__all__ = [
    "ANSWER_TIMEOUT_SECONDS",
    "ECHO_GRACE_SECONDS",
    "PROBE_FILLER",
    "PROBE_PACKET_BYTES",
    "PROBE_RATE",
    "CallNotAnswered",
    "ProbeStats",
    "answer_and_echo",
    "echo_media",
    "probe_call",
    "probe_packet",
    "run_probe",
]

PROBE_RATE = 50
"""Packets a second: one 20 ms audio frame each."""
PROBE_PACKET_BYTES = 160
"""Plaintext bytes a packet: a 64 kbit/s Opus frame of 20 ms."""
ECHO_GRACE_SECONDS = 1.0
"""How long the caller still waits for echoes after its last packet: later ones count lost."""
ANSWER_TIMEOUT_SECONDS = 30.0
"""How long ``cryptopass call`` rings before giving up (the offer lives CALL_SIGNAL_TTL_MS)."""
PROBE_FILLER = b"cryptopass synthetic audio frame "
"""What fills each probe plaintext after its header (a test looks for it in relayed bytes)."""
_HEADER = struct.Struct(">IQ")  # sequence number, send time in ns of the caller's clock


def probe_packet(sequence: int, sent_ns: int) -> bytes:
    """The plaintext of probe packet ``sequence`` sent at ``sent_ns``."""
    header = _HEADER.pack(sequence, sent_ns)
    filler = PROBE_FILLER * (PROBE_PACKET_BYTES // len(PROBE_FILLER) + 1)
    return header + filler[:PROBE_PACKET_BYTES - len(header)]


@dataclass
class ProbeStats:
    """Echoes received for one probe run, per echoing participant (KID)."""

    sent: int = 0
    round_trips_ns: list[int] = field(default_factory=list)
    received: dict[int, set[int]] = field(default_factory=dict)  #: KID -> sequences back
    jitter_ns: float = 0.0
    _last: dict[int, tuple[int, int]] = field(default_factory=dict)  # KID -> (sent, arrived)

    def echoed(self, key_id: int, plaintext: bytes, arrived_ns: int) -> None:
        """Count one echo (a duplicate or a malformed plaintext is ignored)."""
        if len(plaintext) < _HEADER.size:
            return
        sequence, sent_ns = _HEADER.unpack_from(plaintext)
        seen = self.received.setdefault(key_id, set())
        if sequence >= self.sent or sequence in seen:
            return
        seen.add(sequence)
        self.round_trips_ns.append(arrived_ns - sent_ns)
        previous = self._last.get(key_id)
        if previous is not None:  # RFC 3550 6.4.1: J += (|D| - J) / 16
            difference = (arrived_ns - previous[1]) - (sent_ns - previous[0])
            self.jitter_ns += (abs(difference) - self.jitter_ns) / 16
        self._last[key_id] = (sent_ns, arrived_ns)

    def result(self, *, peers: int) -> dict[str, Any]:
        """The JSON object ``cryptopass call`` prints."""
        received = sum(len(sequences) for sequences in self.received.values())
        expected = self.sent * max(peers, 1)
        ordered = sorted(self.round_trips_ns)
        median = ordered[len(ordered) // 2] if ordered else math.nan
        return {
            "packets_sent": self.sent, "packets_received": received, "peers": peers,
            "loss": round(1 - received / expected, 4) if expected else 0.0,
            "jitter_ms": round(self.jitter_ns / 1e6, 3),
            "round_trip_p50_ms": round(median / 1e6, 3) if ordered else None,
            "one_way_delay_ms": round(median / 2e6, 3) if ordered else None,
        }


def _now_ns() -> int:
    return int(trio.current_time() * 1e9)


async def run_probe(call: Call, seconds: float) -> ProbeStats:
    """Send the synthetic stream on ``call`` for ``seconds`` and collect its echoes (until
    ECHO_GRACE_SECONDS after the last packet, or the call ends)."""
    stats = ProbeStats()
    packets = max(1, round(seconds * PROBE_RATE))

    async def collect() -> None:
        with contextlib.suppress(CallEndedError):
            while True:
                key_id, plaintext = await call.receive_media()
                stats.echoed(key_id, plaintext, _now_ns())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_ended, call, nursery.cancel_scope)
        nursery.start_soon(collect)
        start = trio.current_time()
        for sequence in range(packets):
            await trio.sleep_until(start + sequence / PROBE_RATE)
            call.send_media(probe_packet(sequence, _now_ns()))
            stats.sent += 1
        await trio.sleep(ECHO_GRACE_SECONDS)
        nursery.cancel_scope.cancel()
    return stats


async def _until_ended(call: Call, scope: trio.CancelScope) -> None:
    await call.ended.wait()
    scope.cancel()


async def _until_caller_left(call: Call, scope: trio.CancelScope) -> None:
    """In a group call, the caller leaving ends the echo (the others would go on)."""
    if call.caller is None:
        return
    while call.caller not in call.peers:  # its key may arrive after the answer
        await call.peers_changed.wait()
    while call.caller in call.peers:
        await call.peers_changed.wait()
    scope.cancel()


async def echo_media(call: Call) -> int:
    """Send every packet of the caller back under this device's key until the call ends or
    the caller leaves it; returns the packets echoed. Packets from other participants of a
    group call are not echoed (each would echo the others' echoes)."""
    echoed = 0
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_ended, call, scope)
            nursery.start_soon(_until_caller_left, call, scope)
            with contextlib.suppress(CallEndedError):
                while True:
                    key_id, plaintext = await call.receive_media()
                    if call.caller is None or call.peers.get(call.caller) == key_id:
                        call.send_media(plaintext)
                        echoed += 1
            scope.cancel()
    return echoed


class CallNotAnswered(Exception):
    """Nobody answered in time, or the callee is busy."""


async def probe_call(manager: CallManager, phones: list[str], seconds: float, *,
                     answer_timeout: float = ANSWER_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Place a call to ``phones``, wait until every callee answered, send the synthetic
    stream for ``seconds``, hang up, and return `ProbeStats.result` (``manager.run`` and a
    reader of the messenger's deliveries must be running).

    Raises:
        CallNotAnswered: no callee answered within ``answer_timeout`` s, or one is busy.
    """
    call = await manager.place_call(phones)
    try:
        with trio.move_on_after(answer_timeout):
            await _answered_or_busy(call, len(phones))
        if call.busy.is_set() and not call.peers:
            raise CallNotAnswered(f"{', '.join(phones)} is busy in another call")
        if not call.peers:
            raise CallNotAnswered(f"no answer from {', '.join(phones)} within "
                                  f"{answer_timeout:g} s")
        stats = await run_probe(call, seconds)
    finally:
        await manager.hang_up(call)
    return {"to": phones} | stats.result(peers=len(call.peers)) | {
        "undecryptable": call.undecryptable, "unknown_key": call.unknown_key}


async def _answered_or_busy(call: Call, count: int) -> None:
    async with trio.open_nursery() as nursery:
        async def busy() -> None:
            await call.busy.wait()
            if count == 1:
                nursery.cancel_scope.cancel()
        nursery.start_soon(busy)
        await call.wait_for_peers(count)
        nursery.cancel_scope.cancel()


async def answer_and_echo(manager: CallManager,
                          report: Callable[[dict[str, Any]], None]) -> None:
    """Answer every call that rings, one at a time, echo its media until it ends, then
    leave it; ``report`` gets one line when a call is answered and one when it ends."""
    async for incoming in manager.incoming:
        if incoming.stopped.is_set():
            continue  # answered elsewhere, or the caller hung up, before we got to it
        try:
            call = await manager.answer(incoming)
        except RelayError as error:  # the call ended before we joined (CALL_UNKNOWN)
            report({"call": "missed", "from": incoming.caller_phone, "reason": error.code.name})
            continue
        except CallElsewhereError:  # sent on by the node it was sent to: not followed twice
            report({"call": "missed", "from": incoming.caller_phone, "reason": "CALL_ELSEWHERE"})
            continue
        except (RelayUnreachable, HandshakeFailed):  # the node holding the call did not answer
            report({"call": "missed", "from": incoming.caller_phone,
                    "reason": "NODE_UNREACHABLE"})
            continue
        report({"call": "answered", "from": incoming.caller_phone,
                "group": bool(incoming.members)})
        echoed = await echo_media(call)
        if call.call_id in manager.calls:
            await manager.hang_up(call)
        report({"call": "ended", "from": incoming.caller_phone, "echoed": echoed,
                "undecryptable": call.undecryptable, "unknown_key": call.unknown_key})
