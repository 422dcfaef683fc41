"""A connection is authenticated once, as one fact: requests sent right behind AUTHENTICATE wait
for it, and a connection that ends takes its requests in flight with it.

Real relays on loopback: on PostgreSQL (a cluster node, whose presence claim the test holds back)
and on SQLite (whose store read the test blocks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from nacl.signing import SigningKey

from client.connection import ConnectionClosed, RelayClient, RelayError
from relay.server import RunningRelay, serve
from relay.session import DeviceSession
from relay.settings import RelaySettings
from tests.conftest import EnrolledDevice, RelayUnderTest, SmsInbox, enrol
from tests.postgres_schemas import fresh_schema, store_url
from tests.relay_processes import declare as declare_in_store
from wire.frames import (
    Authenticate,
    Authenticated,
    Challenge,
    ErrorCode,
    Hello,
    Lookup,
    LookupResult,
    Send,
    SendAccepted,
    auth_transcript,
)

WAIT_S = 30
"""Bound on anything that could hang, not a timing assertion."""
PHONE_A, PHONE_B = "+33612345678", "+33698765432"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A schema of its own, dropped once the relay using it has stopped."""
    with fresh_schema() as schema:
        yield store_url(schema)


@pytest.fixture
async def postgres_relay(postgres_url: str, tmp_path: Path,
                         nursery: trio.Nursery) -> AsyncIterator[RelayUnderTest]:
    """One in-process relay on PostgreSQL: a cluster node, which claims each device's presence."""
    await declare_in_store(postgres_url, tmp_path, (PHONE_A, PHONE_B), organisation="acme")
    sms = SmsInbox()
    settings = RelaySettings(data_dir=tmp_path / "node", listen_port=0, store=postgres_url,
                             node_name=f"node-{tmp_path.name}")
    running: RunningRelay = await nursery.start(
        lambda task_status: serve(settings, task_status=task_status, on_sms_sent=sms))
    yield RelayUnderTest(data_dir=settings.data_dir, running=running, sms=sms)
    running.stop()


async def _answer_challenge(client: RelayClient, device: EnrolledDevice) -> Authenticate:
    challenge = await client.request(Hello(user_id=device.user_id, device_id=device.device_id))
    assert isinstance(challenge, Challenge)
    transcript = auth_transcript(nonce=challenge.nonce, user_id=device.user_id,
                                 device_id=device.device_id)
    return Authenticate(signature=device.key.sign(transcript).signature)


async def test_requests_sent_right_behind_authenticate_wait_for_the_presence_claim(
        postgres_relay: RelayUnderTest) -> None:
    alice = await enrol(postgres_relay, PHONE_A)
    bob = await enrol(postgres_relay, PHONE_B)
    cluster = postgres_relay.running.context.cluster
    assert cluster is not None
    claiming, may_claim = trio.Event(), trio.Event()
    held_by: list[DeviceSession] = []
    claim = cluster.claim

    async def slow_claim(device: tuple[str, int], session: DeviceSession) -> None:
        held_by.append(session)
        claiming.set()
        await may_claim.wait()
        await claim(device, session)

    cluster.claim = slow_claim  # type: ignore[method-assign,assignment]
    answers: dict[str, object] = {}

    async def ask(name: str, request: Awaitable[object]) -> None:
        answers[name] = await request

    async with postgres_relay.connect() as client, trio.open_nursery() as requests:
        authenticate = await _answer_challenge(client, alice)
        with trio.fail_after(WAIT_S):
            requests.start_soon(ask, "authenticate", client.request(authenticate))
            await claiming.wait()  # the signature verified; the claim is under way
            # Without waiting for AUTHENTICATED, as an impatient client would:
            requests.start_soon(ask, "lookup", client.request(Lookup(phones=(PHONE_B,))))
            requests.start_soon(ask, "send", client.request(Send(
                recipient_user_id=bob.user_id, client_message_id=1,
                payloads={bob.device_id: b"sealed"})))
            await trio.testing.wait_all_tasks_blocked(cushion=0.2)  # both reached the relay
            (session,) = held_by
            assert session.requests_held == 2
            assert session.authenticated is None
            may_claim.set()
    assert answers["authenticate"] == Authenticated()
    lookup = answers["lookup"]
    assert isinstance(lookup, LookupResult)
    assert [entry.user_id for entry in lookup.entries] == [bob.user_id]
    assert answers["send"] == SendAccepted(duplicate=False)
    assert session.authenticated is not None and session.authenticated.user_id == alice.user_id


async def test_requests_in_the_same_packet_as_authenticate_are_answered_after_it(
        relay: RelayUnderTest) -> None:
    alice = await enrol(relay, PHONE_A)
    bob = await enrol(relay, PHONE_B)
    answers: list[object] = []

    async def ask(request: Awaitable[object]) -> None:
        answers.append(await request)

    async with relay.connect() as client:
        authenticate = await _answer_challenge(client, alice)
        with trio.fail_after(WAIT_S):
            async with trio.open_nursery() as requests:
                # Written in one scheduling round: they leave together, behind AUTHENTICATE.
                requests.start_soon(ask, client.request(authenticate))
                await trio.lowlevel.checkpoint()
                requests.start_soon(ask, client.request(Lookup(phones=(PHONE_B,))))
                requests.start_soon(ask, client.request(Send(
                    recipient_user_id=bob.user_id, client_message_id=1,
                    payloads={bob.device_id: b"sealed"})))
    # Answers arriving in one datagram wake their tasks in any order (trio shuffles a batch),
    # so the list's order says nothing; that the held requests succeeded, rather than being
    # refused as unauthenticated, is what shows they were served after AUTHENTICATED.
    assert Authenticated() in answers and len(answers) == 3
    assert SendAccepted(duplicate=False) in answers
    (lookup,) = [answer for answer in answers if isinstance(answer, LookupResult)]
    assert [entry.user_id for entry in lookup.entries] == [bob.user_id]


async def test_a_connection_that_ends_cancels_its_requests_in_flight(
        relay: RelayUnderTest) -> None:
    alice = await enrol(relay, PHONE_A)
    store = relay.running.context.store
    reading, cancelled = trio.Event(), trio.Event()
    find_user_by_phone: Callable[[str], Awaitable[object]] = store.find_user_by_phone

    async def blocked_read(phone: str) -> object:
        reading.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()
        return await find_user_by_phone(phone)  # never reached

    store.find_user_by_phone = blocked_read  # type: ignore[method-assign,assignment]
    sessions = relay.running.context.sessions
    with trio.fail_after(WAIT_S):
        async with relay.connect() as client, trio.open_nursery() as nursery:
            await client.authenticate(alice.user_id, alice.device_id, alice.key)
            session = sessions[(alice.user_id, alice.device_id)]
            assert isinstance(session, DeviceSession)

            async def look_up() -> None:
                with pytest.raises(ConnectionClosed):
                    await client.lookup([PHONE_B])

            nursery.start_soon(look_up)
            await reading.wait()
            assert session.requests_in_flight == 1
            client.close()
        await cancelled.wait()  # the blocked read was cancelled with its connection
    assert session.requests_in_flight == 0
    assert (alice.user_id, alice.device_id) not in sessions


async def test_requests_behind_a_refused_authenticate_are_dropped_with_the_connection(
        relay: RelayUnderTest) -> None:
    alice = await enrol(relay, PHONE_A)
    impostor = dataclasses.replace(alice, key=SigningKey.generate())
    outcomes: dict[str, BaseException] = {}

    async def refused(name: str, request: Awaitable[object]) -> None:
        try:
            await request
        except (RelayError, ConnectionClosed) as error:
            outcomes[name] = error

    async with relay.connect() as client:
        authenticate = await _answer_challenge(client, impostor)
        with trio.fail_after(WAIT_S):
            async with trio.open_nursery() as requests:
                requests.start_soon(refused, "authenticate", client.request(authenticate))
                await trio.lowlevel.checkpoint()
                requests.start_soon(refused, "lookup", client.request(Lookup(phones=(PHONE_B,))))
    refusal = outcomes["authenticate"]
    assert isinstance(refusal, RelayError) and refusal.code is ErrorCode.AUTHENTICATION_FAILED
    # Never served. Held behind AUTHENTICATE, it is dropped with the connection; if it arrived
    # after the refusal (the packets may part), the closed core refuses it on its stream first.
    dropped = outcomes["lookup"]
    if isinstance(dropped, ConnectionClosed):
        assert dropped.code == ErrorCode.AUTHENTICATION_FAILED
    else:
        assert isinstance(dropped, RelayError), dropped
        assert dropped.code is ErrorCode.UNEXPECTED_FRAME
        assert dropped.reason == "LOOKUP is not allowed in state CLOSED"
    assert relay.running.context.sessions == {}
