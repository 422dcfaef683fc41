"""Calls' media sessions, end to end over real QUIC on loopback (PROTOCOL.md "Calls").

Two devices open and join a session and exchange datagrams both ways; leaving or
disconnecting ends it for the one left; outsiders can neither join nor inject nor read; the
size and rate limits drop (and count) and the call goes on; a group of four fans out; the relay
sees exactly the opaque payloads; an urgent envelope outlives its minute for no one.
Time is moved with injected clocks, never slept.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest

from client.call_media import CallEndedError, CallHandle
from client.connection import RelayClient, RelayError
from enrolment.sms import SmsOutcomes
from relay.calls import (
    CALL_BURST_DATAGRAMS,
    CALL_IDLE_TIMEOUT_S,
    CALL_JOINS_PER_MINUTE,
    CALL_MAX_DURATION_S,
    CALL_OPEN_PERIOD_MS,
    CALL_OPENS_PER_MINUTE,
    MAX_CALLS_PER_CONNECTION,
    CallParticipant,
)
from relay.context import RelayContext
from relay.server import serve
from relay.settings import RelaySettings
from relay.telemetry import relay_registry
from storage.sqlite import open_sqlite_store
from tests.conftest import (
    EnrolledDevice,
    RelayUnderTest,
    SmsInbox,
    declare,
    enrol,
    link_device,
)
from transport.quic import MAX_PENDING_DATAGRAMS, MAX_SENDABLE_DATAGRAM
from wire.call_frames import (
    CALL_ID_SIZE,
    CALL_SIGNAL_TTL_MS,
    MAX_CALL_DATAGRAM_PAYLOAD,
    MAX_CALL_PARTICIPANTS,
    pack_media,
)
from wire.frames import ErrorCode, LocalProtocolError, QueueEmpty

PHONES = ("+33612345678", "+33698765432", "+33611111111", "+33622222222")
OUTSIDER_PHONE = "+33633333333"  # another organisation, which keeps to itself
TIMEOUT_S = 10
"""Bound on anything that could hang; not a timing assertion."""
RESEND_S = 0.5
"""A datagram may be lost (it is UDP): the helpers send again after this long without an
answer. It bounds a retry, it asserts nothing."""


@dataclass
class Clocks:
    """The relay's wall clock (envelope TTLs) and its calls' clock (rates, timeouts)."""

    wall_ms: int = 1_800_000_000_000
    calls_s: float = 1000.0


@dataclass
class CallRelay:
    relay: RelayUnderTest
    clocks: Clocks
    devices: list[EnrolledDevice]
    outsider: EnrolledDevice

    @property
    def context(self) -> RelayContext:
        return self.relay.running.context

    @asynccontextmanager
    async def connected(self, device: EnrolledDevice) -> AsyncIterator[RelayClient]:
        async with self.relay.connect() as client:
            with trio.fail_after(TIMEOUT_S):
                await client.authenticate(device.user_id, device.device_id, device.key)
            yield client


@pytest.fixture
async def calls(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[CallRelay]:
    settings = RelaySettings(data_dir=tmp_path / "relay", listen_port=0)
    settings.data_dir.mkdir()
    await declare(settings.data_dir, "acme", *PHONES)
    await declare(settings.data_dir, "apart", OUTSIDER_PHONE)
    async with open_sqlite_store(settings.data_dir / "relay.db") as store:
        await store.set_cross_organisation_allowed(organisation="apart", allowed=False)
    clocks = Clocks()
    sms = SmsInbox()
    running = await nursery.start(lambda task_status: serve(
        settings, task_status=task_status, on_sms_sent=sms, now_ms=lambda: clocks.wall_ms))
    running.context.calls.clock = lambda: clocks.calls_s
    relay = RelayUnderTest(data_dir=settings.data_dir, running=running, sms=sms)
    devices = [await enrol(relay, phone) for phone in PHONES]
    outsider = await enrol(relay, OUTSIDER_PHONE)
    yield CallRelay(relay=relay, clocks=clocks, devices=devices, outsider=outsider)
    running.stop()


async def receive_until(handle: CallHandle, wanted: bytes, *,
                        resend: Callable[[], None] | None = None) -> list[bytes]:
    """Read ``handle`` until ``wanted`` arrives (calling ``resend`` after each RESEND_S
    without it); returns what came before it."""
    before: list[bytes] = []
    with trio.fail_after(TIMEOUT_S):
        while True:
            with trio.move_on_after(RESEND_S if resend is not None else TIMEOUT_S):
                while (payload := await handle.receive()) != wanted:
                    before.append(payload)
                return before
            if resend is not None:
                resend()


async def exchange(sender: CallHandle, receiver: CallHandle, payload: bytes) -> None:
    """``payload`` from ``sender`` reaches ``receiver`` (sent again if a datagram is lost)."""
    sender.send(payload)
    await receive_until(receiver, payload, resend=lambda: sender.send(payload))


async def two_party_call(alice: RelayClient, bob: RelayClient,
                         bob_user_id: str) -> tuple[CallHandle, CallHandle]:
    with trio.fail_after(TIMEOUT_S):
        caller = await alice.open_call([bob_user_id])
        callee = await bob.join_call(caller.call_id)
        while caller.participants != 2:
            await caller.members_changed.wait()
    return caller, callee


async def test_two_devices_exchange_media_both_ways_and_a_hang_up_ends_the_session(
        calls: CallRelay) -> None:
    alice, bob = calls.devices[:2]
    async with calls.connected(alice) as a, calls.connected(bob) as b:
        caller, callee = await two_party_call(a, b, bob.user_id)
        assert len(caller.call_id) == CALL_ID_SIZE
        assert callee.participants == 2
        await exchange(caller, callee, b"opus frame from alice")
        await exchange(callee, caller, b"opus frame from bob")
        assert calls.context.metrics.calls_open == 1
        await caller.leave()
        with trio.fail_after(TIMEOUT_S):
            await callee.ended.wait()
        assert callee.end_reason == "alone"
        with pytest.raises(CallEndedError):
            await callee.receive()
        assert calls.context.metrics.calls_open == 0
        # The ended call's id opens nothing any more.
        with pytest.raises(RelayError) as refused:
            await b.join_call(caller.call_id)
        assert refused.value.code is ErrorCode.CALL_UNKNOWN


async def test_outsiders_can_neither_join_nor_inject_nor_read(calls: CallRelay) -> None:
    alice, bob, carol = calls.devices[:3]
    async with (calls.connected(alice) as a, calls.connected(bob) as b,
                calls.connected(carol) as c):
        caller, callee = await two_party_call(a, b, bob.user_id)
        carol_got: list[bytes] = []
        c._media = carol_got.append  # type: ignore[method-assign]  # every datagram to Carol
        answers = []
        for call_id in (bytes(CALL_ID_SIZE), caller.call_id):  # a wrong id, the right one
            with pytest.raises(RelayError) as refused:
                await c.join_call(call_id)
            answers.append((refused.value.code, refused.value.reason))
        # Carol was not invited: the same answer as for an id that does not exist.
        assert answers[0] == answers[1]
        assert answers[0][0] is ErrorCode.CALL_UNKNOWN
        # Carol sends with the tags Alice and Bob use: on her connection they name nothing.
        metrics = calls.context.metrics
        dropped = metrics.call_datagrams_dropped["unknown_tag"]
        for tag in {caller.tag, callee.tag}:
            assert c.link.send_datagram(pack_media(tag, b"injected"))
        forwarded = metrics.call_datagrams_forwarded
        await exchange(caller, callee, b"after the injection")
        # The injected datagrams left Carol's connection before Alice's; none was forwarded.
        await exchange(callee, caller, b"and back")
        assert metrics.call_datagrams_dropped["unknown_tag"] >= dropped + 1
        assert metrics.call_datagrams_forwarded >= forwarded + 2
        # What the relay forwarded went to Alice and Bob only: Carol's connection got no media.
        assert carol_got == []
        assert calls.context.calls.open_calls == 1


async def test_an_invitee_out_of_the_callers_reach_is_refused_like_an_unknown_user(
        calls: CallRelay) -> None:
    alice = calls.devices[0]
    async with calls.connected(alice) as a:
        for invitee in (calls.outsider.user_id, "u-nobody"):
            with pytest.raises(RelayError) as refused:
                await a.open_call([invitee])
            assert refused.value.code is ErrorCode.UNKNOWN_RECIPIENT
    assert calls.context.metrics.calls_open == 0


async def test_size_and_rate_limits_drop_counted_and_the_call_goes_on(
        calls: CallRelay) -> None:
    alice, bob = calls.devices[:2]
    metrics, service = calls.context.metrics, calls.context.calls
    async with calls.connected(alice) as a, calls.connected(bob) as b:
        caller, callee = await two_party_call(a, b, bob.user_id)
        with pytest.raises(LocalProtocolError) as too_large:
            caller.send(b"x" * (MAX_CALL_DATAGRAM_PAYLOAD + 1))
        assert too_large.value.code is ErrorCode.PAYLOAD_TOO_LARGE
        # A client that skips that check: the relay drops it.
        assert a.link.send_datagram(pack_media(caller.tag,
                                               b"x" * (MAX_CALL_DATAGRAM_PAYLOAD + 1)))
        await exchange(caller, callee, b"fits")
        assert metrics.call_datagrams_dropped["too_large"] == 1
        # The calls' clock stands still: the burst passes, the rest is over the rate.
        burst_size = CALL_BURST_DATAGRAMS + 10
        seen, all_seen = [0], trio.Event()
        forward = service.media

        def counting(connection: CallParticipant, datagram: bytes) -> None:
            forward(connection, datagram)
            if datagram[4:].startswith(b"burst"):
                seen[0] += 1
                if seen[0] == burst_size:
                    all_seen.set()

        service.media = counting  # type: ignore[method-assign]
        for index in range(burst_size):
            caller.send(b"burst %d" % index)
            if index % 8 == 7:
                await trio.lowlevel.checkpoint()  # let the endpoint flush, as an app would
        with trio.fail_after(TIMEOUT_S):
            await all_seen.wait()
        forwarded = metrics.call_datagrams_forwarded
        # "fits" took one token of the burst allowance.
        assert metrics.call_datagrams_dropped["rate_limited"] == burst_size - (
            CALL_BURST_DATAGRAMS - 1)
        calls.clocks.calls_s += 1.0  # a second later the sender has tokens again
        before = await receive_until(callee, b"after the burst",
                                     resend=lambda: caller.send(b"after the burst"))
        assert len([payload for payload in before if payload.startswith(b"burst")]) <= (
            CALL_BURST_DATAGRAMS - 1)
        assert metrics.call_datagrams_forwarded > forwarded
        assert not callee.ended.is_set() and not caller.ended.is_set()


async def test_a_participant_that_disconnects_ends_the_call_for_the_other(
        calls: CallRelay) -> None:
    alice, bob = calls.devices[:2]
    async with calls.connected(alice) as a:
        async with calls.connected(bob) as b:
            caller, _ = await two_party_call(a, b, bob.user_id)
        with trio.fail_after(TIMEOUT_S):
            await caller.ended.wait()
        assert caller.end_reason == "alone"
    assert calls.context.metrics.calls["end", "alone"] == 1


async def test_a_group_call_of_four_fans_each_datagram_out_to_the_three_others(
        calls: CallRelay) -> None:
    devices = calls.devices
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(calls.connected(device))
                   for device in devices]
        with trio.fail_after(TIMEOUT_S):
            opener = await clients[0].open_call([device.user_id for device in devices[1:]])
            handles = [opener] + [await client.join_call(opener.call_id)
                                  for client in clients[1:]]
            while opener.participants != len(devices):
                await opener.members_changed.wait()
        for sender_index, sender in enumerate(handles):
            payload = b"from %d" % sender_index
            for receiver in handles:
                if receiver is not sender:
                    await receive_until(receiver, payload, resend=lambda s=sender, p=payload:
                                        s.send(p))
        assert calls.context.metrics.call_datagrams_forwarded >= 4 * 3
        await handles[3].leave()
        with trio.fail_after(TIMEOUT_S):
            while opener.participants != 3:
                await opener.members_changed.wait()
        assert not opener.ended.is_set()


async def test_the_relay_sees_exactly_the_opaque_payloads(calls: CallRelay) -> None:
    alice, bob = calls.devices[:2]
    service = calls.context.calls
    seen: list[bytes] = []
    forward = service.media

    def recording(connection: CallParticipant, datagram: bytes) -> None:
        seen.append(datagram)
        forward(connection, datagram)

    service.media = recording  # type: ignore[method-assign]
    payloads = [bytes([index]) * (100 + index) for index in range(5)]
    async with calls.connected(alice) as a, calls.connected(bob) as b:
        caller, callee = await two_party_call(a, b, bob.user_id)
        for payload in payloads:
            await exchange(caller, callee, payload)
    assert {datagram[4:] for datagram in seen} == set(payloads)
    assert all(datagram[:4] == caller.tag.to_bytes(4, "big") for datagram in seen)


async def test_a_call_with_no_media_ends_after_the_idle_timeout(calls: CallRelay) -> None:
    alice, bob = calls.devices[:2]
    async with calls.connected(alice) as a, calls.connected(bob) as b:
        caller, callee = await two_party_call(a, b, bob.user_id)
        service = calls.context.calls
        assert service.expire(calls.clocks.calls_s + CALL_IDLE_TIMEOUT_S - 1) == 0
        assert service.expire(calls.clocks.calls_s + CALL_IDLE_TIMEOUT_S) == 1
        with trio.fail_after(TIMEOUT_S):
            await caller.ended.wait()
            await callee.ended.wait()
        assert caller.end_reason == callee.end_reason == "idle"


async def test_a_call_ends_at_its_maximum_length_even_with_media(calls: CallRelay) -> None:
    alice, bob = calls.devices[:2]
    async with calls.connected(alice) as a, calls.connected(bob) as b:
        caller, callee = await two_party_call(a, b, bob.user_id)
        calls.clocks.calls_s += CALL_MAX_DURATION_S - 1
        await exchange(caller, callee, b"still talking")  # media keeps it from idling
        assert calls.context.calls.expire(calls.clocks.calls_s) == 0
        assert calls.context.calls.expire(calls.clocks.calls_s + 1) == 1
        with trio.fail_after(TIMEOUT_S):
            await caller.ended.wait()
            await callee.ended.wait()
        assert caller.end_reason == callee.end_reason == "too_long"


async def test_call_metrics_are_exported(calls: CallRelay) -> None:
    alice, bob = calls.devices[:2]
    async with calls.connected(alice) as a, calls.connected(bob) as b:
        caller, callee = await two_party_call(a, b, bob.user_id)
        await exchange(caller, callee, b"counted")
        assert b.link.send_datagram(pack_media(12345, b"no such tag"))
        await exchange(callee, caller, b"counted back")
        exported = generate_latest(_registry(calls)).decode()
    assert "cryptopass_calls_open 1.0" in exported
    assert 'cryptopass_call_requests_total{operation="open",outcome="ok"} 1.0' in exported
    forwarded = _sample(exported, "cryptopass_call_datagrams_forwarded_total")
    assert forwarded >= 2 and forwarded == calls.context.metrics.call_datagrams_forwarded
    assert _sample(exported, 'cryptopass_call_datagrams_dropped_total{reason="unknown_tag"}') >= 1
    assert _sample(exported, "cryptopass_call_bytes_forwarded_total") >= len(b"counted")


def _registry(calls: CallRelay) -> CollectorRegistry:
    return relay_registry(calls.context, SmsOutcomes())


def _sample(exported: str, name: str) -> float:
    (line,) = [line for line in exported.splitlines() if line.startswith(name + " ")]
    return float(line.split()[-1])


async def test_a_relay_that_carries_no_calls_says_so(calls: CallRelay) -> None:
    calls.context.calls.enabled = False  # as in a relay of several worker processes
    alice, bob = calls.devices[:2]
    async with calls.connected(alice) as a:
        with pytest.raises(RelayError) as refused:
            await a.open_call([bob.user_id])
        assert refused.value.code is ErrorCode.CALLS_UNAVAILABLE


async def test_an_urgent_envelope_for_an_offline_device_is_gone_after_its_ttl(
        calls: CallRelay) -> None:
    alice, bob = calls.devices[:2]
    async with calls.connected(alice) as a:
        await a.send(bob.user_id, {bob.device_id: b"offer"}, client_message_id=1, urgent=True)
        await a.send(bob.user_id, {bob.device_id: b"text"}, client_message_id=2)
    calls.clocks.wall_ms += CALL_SIGNAL_TTL_MS  # the offer's last millisecond is over
    async with calls.connected(bob) as b:
        received = []
        with trio.fail_after(TIMEOUT_S):
            async for delivery in b.deliveries():
                if isinstance(delivery, QueueEmpty):
                    break
                received.append(delivery.ciphertext)
                b.acknowledge(delivery.envelope_id)
    assert received == [b"text"]
    store = calls.context.store
    assert await store.expire(now=calls.clocks.wall_ms, limit=10) == 1


async def test_an_urgent_envelope_within_its_ttl_is_delivered(calls: CallRelay) -> None:
    alice, bob = calls.devices[:2]
    async with calls.connected(alice) as a:
        await a.send(bob.user_id, {bob.device_id: b"offer"}, client_message_id=1, urgent=True)
    calls.clocks.wall_ms += CALL_SIGNAL_TTL_MS - 1
    async with calls.connected(bob) as b:
        with trio.fail_after(TIMEOUT_S):
            first = await b.deliveries().__anext__()
    assert not isinstance(first, QueueEmpty) and first.ciphertext == b"offer"



async def test_calls_per_connection_and_opens_per_minute_are_bounded(calls: CallRelay) -> None:
    alice, bob = calls.devices[:2]
    async with calls.connected(alice) as a:
        handles = [await a.open_call([bob.user_id]) for _ in range(MAX_CALLS_PER_CONNECTION)]
        with pytest.raises(RelayError) as refused:
            await a.open_call([bob.user_id])
        assert refused.value.code is ErrorCode.RATE_LIMITED
        for handle in handles:
            await handle.leave()  # alone in it: the call ends
        assert calls.context.calls.open_calls == 0
        for _ in range(CALL_OPENS_PER_MINUTE - MAX_CALLS_PER_CONNECTION):
            await (await a.open_call([bob.user_id])).leave()
        with pytest.raises(RelayError) as refused:
            await a.open_call([bob.user_id])
        assert refused.value.code is ErrorCode.RATE_LIMITED
        calls.clocks.wall_ms += CALL_OPEN_PERIOD_MS  # a minute later: allowed again
        await (await a.open_call([bob.user_id])).leave()


async def test_a_connection_drops_datagrams_it_cannot_send_rather_than_queue_them(
        calls: CallRelay) -> None:
    alice = calls.devices[0]
    async with calls.connected(alice) as a:
        link = a.link
        assert not link.send_datagram(b"x" * (MAX_SENDABLE_DATAGRAM + 1))
        # Without a scheduling round nothing leaves: the queue stops at its bound.
        taken = [link.send_datagram(b"d") for _ in range(MAX_PENDING_DATAGRAMS + 5)]
        assert taken == [True] * MAX_PENDING_DATAGRAMS + [False] * 5
        await trio.lowlevel.checkpoint()


async def test_a_call_holds_at_most_eight_devices(calls: CallRelay) -> None:
    # Nine devices: the four users, and more devices linked to three of them.
    relay = calls.relay
    users = calls.devices
    linked = [await link_device(relay, users[index]) for index in (0, 0, 1, 1, 2)]
    devices = [*users, *linked]
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(calls.connected(device))
                   for device in devices]
        with trio.fail_after(TIMEOUT_S):
            opener = await clients[0].open_call([user.user_id for user in users[1:]])
            for client in clients[1:MAX_CALL_PARTICIPANTS]:
                await client.join_call(opener.call_id)
            with pytest.raises(RelayError) as refused:
                await clients[MAX_CALL_PARTICIPANTS].join_call(opener.call_id)
        assert refused.value.code is ErrorCode.CALL_FULL
        while opener.participants != MAX_CALL_PARTICIPANTS:
            with trio.fail_after(TIMEOUT_S):
                await opener.members_changed.wait()


async def test_call_joins_are_bounded_per_connection_before_any_look_up(
        calls: CallRelay) -> None:
    carol = calls.devices[2]
    async with calls.connected(carol) as c:
        for index in range(CALL_JOINS_PER_MINUTE):
            with pytest.raises(RelayError) as refused:
                await c.join_call(index.to_bytes(CALL_ID_SIZE, "big"))
            assert refused.value.code is ErrorCode.CALL_UNKNOWN
        with pytest.raises(RelayError) as refused:
            await c.join_call(bytes(CALL_ID_SIZE))
        assert refused.value.code is ErrorCode.RATE_LIMITED
        calls.clocks.calls_s += 60.0
        with pytest.raises(RelayError) as refused:
            await c.join_call(bytes(CALL_ID_SIZE))
        assert refused.value.code is ErrorCode.CALL_UNKNOWN


async def test_concurrent_opens_on_one_connection_never_pass_its_bound(
        calls: CallRelay) -> None:
    alice, bob = calls.devices[:2]
    outcomes: list[str] = []
    async with calls.connected(alice) as a:

        async def open_one() -> None:
            try:
                await a.open_call([bob.user_id])
                outcomes.append("opened")
            except RelayError as error:
                outcomes.append(error.code.name)

        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for _ in range(MAX_CALLS_PER_CONNECTION + 2):
                    nursery.start_soon(open_one)
    assert sorted(outcomes) == ["RATE_LIMITED"] * 2 + ["opened"] * MAX_CALLS_PER_CONNECTION
