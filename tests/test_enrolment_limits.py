"""Enrolment cannot be flooded, nor used by one client to lock a number's owner out.

Each limit trips and recovers, on an injected clock: per connection (in the session's memory),
per source address and per address and number (the store's buckets), per number (codes and
guesses, the store's rows). A flood of ENROL_STARTs for made-up numbers on one connection is
refused after its allowance at the cost of one dictionary look-up each, leaving a bounded number
of rows and no long step of the event loop; and the sweeper deletes what can no longer count.
"""

from __future__ import annotations

import gc
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey

from client.connection import RelayClient, RelayError, connect_relay
from enrolment import admin
from enrolment.codes import (
    GUESS_WINDOW_MS,
    MAX_CHECKS_PER_CODE,
    MAX_GUESSES_PER_NUMBER_PER_DAY,
    MAX_SENDS_PER_NUMBER_PER_DAY,
)
from enrolment.errors import RateLimited, VerificationFailed
from enrolment.limits import (
    ADDRESS_PERIOD_MS,
    CONNECTION_PERIOD_MS,
    ENROL_STARTS_PER_ADDRESS,
    ENROL_STARTS_PER_ADDRESS_PER_NUMBER,
    ENROL_STARTS_PER_CONNECTION,
    ENROL_VERIFIES_PER_ADDRESS,
    ENROL_VERIFIES_PER_CONNECTION,
    GUESSES_PER_ADDRESS_PER_NUMBER,
    PER_NUMBER_PERIOD_MS,
    Allowance,
    EnrolmentLimits,
)
from enrolment.service import EnrolmentService
from enrolment.sms import OutboxGateway, SmsDispatcher, SmsMessage
from relay.server import ENROLMENT_SWEEP_BATCH, RunningRelay, serve
from relay.settings import RelaySettings
from storage.sqlite import SqliteStore, open_sqlite_store
from tests.conftest import SmsInbox, new_account
from tests.loop_steps import LONGEST_STEP_S, measure_loop_steps
from tests.test_enrolment_service import new_account as new_enrolment_account
from wire.frames import EnrolStart, EnrolStarted, ErrorCode

T0 = 1_700_000_000_000
DECLARED = "+33612345678"
ORGANISATION = "acme"
ATTACKER, OWNER = "203.0.113.66", "198.51.100.7"
WAIT_S = 60
"""Bound on anything that could hang, not a timing assertion."""
FLOOD = 20_000
"""ENROL_STARTs for made-up numbers in the flood (finding 6 of issue 14 sent as many)."""
IN_FLIGHT = 16
"""Requests the flooding client keeps open at once (below the relay's streams per connection)."""


def made_up(index: int) -> str:
    """A valid number nobody declared (French mobile numbers from +33 7 50 00 00 00)."""
    return f"+3375{index:07d}"


def code_in(message: SmsMessage) -> str:
    match = re.search(r"\b(\d{6})\b", message.body)
    assert match is not None
    return match.group(1)


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


# -- the allowance of a connection, alone ----------------------------------------------------


def test_an_allowance_trips_and_recovers() -> None:
    allowance = Allowance(5, CONNECTION_PERIOD_MS, now=T0)
    assert [allowance.take(T0) for _ in range(5)] == [None] * 5
    wait_ms = allowance.take(T0)
    assert wait_ms == CONNECTION_PERIOD_MS // 5
    assert allowance.take(T0 + wait_ms - 1) == 1  # refused: nothing taken
    assert allowance.take(T0 + wait_ms) is None  # one token back, and taken
    assert allowance.take(T0 + wait_ms) == CONNECTION_PERIOD_MS // 5
    # A full period refills it, never beyond its capacity.
    later = T0 + 10 * CONNECTION_PERIOD_MS
    assert [allowance.take(later) for _ in range(6)] == [None] * 5 + [CONNECTION_PERIOD_MS // 5]


def test_one_source_runs_out_before_a_number_does() -> None:
    assert ENROL_STARTS_PER_ADDRESS_PER_NUMBER < MAX_SENDS_PER_NUMBER_PER_DAY
    assert GUESSES_PER_ADDRESS_PER_NUMBER < MAX_GUESSES_PER_NUMBER_PER_DAY
    assert PER_NUMBER_PERIOD_MS == GUESS_WINDOW_MS
    assert ENROL_STARTS_PER_CONNECTION < ENROL_STARTS_PER_ADDRESS
    assert ENROL_VERIFIES_PER_CONNECTION < ENROL_VERIFIES_PER_ADDRESS


# -- the service: per address, per address and number, per number ----------------------------


@dataclass
class Enrolment:
    service: EnrolmentService
    store: SqliteStore
    delivered: trio.MemoryReceiveChannel[SmsMessage]

    async def code(self, now: int, address: str) -> str:
        """Ask for a code for the declared number and return it."""
        await self.service.start(DECLARED, now, address=address)
        with trio.fail_after(WAIT_S):
            message = await self.delivered.receive()
        assert message.to == DECLARED
        return code_in(message)

    async def verify(self, code: str, now: int, address: str) -> object:
        account = new_enrolment_account()
        return await self.service.verify(DECLARED, code, account.identity_key,
                                         account.account_key, account.device_list, now,
                                         address=address)


@pytest.fixture
async def enrolment(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Enrolment]:
    send_delivered, delivered = trio.open_memory_channel[SmsMessage](100)
    dispatcher = SmsDispatcher(OutboxGateway(tmp_path / "outbox.jsonl"), workers=1,
                               on_sent=send_delivered.send_nowait)
    async with open_sqlite_store(tmp_path / "relay.db") as store:
        await nursery.start(dispatcher.run)
        await admin.create_organisation(store, ORGANISATION, 10, T0)
        await admin.declare_user(store, ORGANISATION, DECLARED, T0)
        service = EnrolmentService(store, dispatcher, secret=bytes(range(32)))
        yield Enrolment(service, store, delivered)


async def test_starts_per_address_trip_and_recover(enrolment: Enrolment) -> None:
    service = enrolment.service
    for index in range(ENROL_STARTS_PER_ADDRESS):
        await service.start(made_up(index), T0, address=ATTACKER)
    with pytest.raises(RateLimited, match="from this address") as limited:
        await service.start(made_up(100), T0, address=ATTACKER)
    wait_ms = limited.value.retry_after_ms
    assert wait_ms == ADDRESS_PERIOD_MS // ENROL_STARTS_PER_ADDRESS
    await service.start(made_up(101), T0, address=OWNER)  # another address is not concerned
    with pytest.raises(RateLimited):
        await service.start(made_up(102), T0 + wait_ms - 1, address=ATTACKER)
    await service.start(made_up(103), T0 + wait_ms, address=ATTACKER)
    with pytest.raises(RateLimited):
        await service.start(made_up(104), T0 + wait_ms, address=ATTACKER)


async def test_the_limit_per_address_is_a_setting(enrolment: Enrolment) -> None:
    generous = EnrolmentService(enrolment.store, SmsDispatcher(OutboxGateway(Path("unused"))),
                                secret=bytes(range(32)),
                                limits=EnrolmentLimits(starts_per_address=50))
    for index in range(50):
        await generous.start(made_up(index), T0, address=ATTACKER)
    with pytest.raises(RateLimited, match="from this address"):
        await generous.start(made_up(50), T0, address=ATTACKER)


async def test_one_address_cannot_spend_a_numbers_codes(enrolment: Enrolment) -> None:
    for index in range(ENROL_STARTS_PER_ADDRESS_PER_NUMBER):
        await enrolment.code(T0 + index, ATTACKER)
    with pytest.raises(RateLimited, match="for this number from this address") as limited:
        await enrolment.service.start(DECLARED, T0 + 10, address=ATTACKER)
    assert limited.value.retry_after_ms == (PER_NUMBER_PERIOD_MS
                                            // ENROL_STARTS_PER_ADDRESS_PER_NUMBER)
    # The owner, elsewhere, still gets a code, and enrols with it.
    code = await enrolment.code(T0 + 11, OWNER)
    await enrolment.verify(code, T0 + 12, OWNER)
    # The attacker's allowance for the number comes back with time.
    await enrolment.service.start(DECLARED, T0 + limited.value.retry_after_ms, address=ATTACKER)


async def test_verifies_per_address_trip_and_recover(enrolment: Enrolment) -> None:
    service = enrolment.service
    account = new_enrolment_account()

    async def verify(phone: str, now: int) -> None:
        await service.verify(phone, "123456", account.identity_key, account.account_key,
                             account.device_list, now, address=ATTACKER)

    for index in range(ENROL_VERIFIES_PER_ADDRESS):
        with pytest.raises(VerificationFailed):  # no code pending for a made-up number
            await verify(made_up(index), T0)
    with pytest.raises(RateLimited, match="from this address") as limited:
        await verify(made_up(100), T0)
    wait_ms = limited.value.retry_after_ms
    assert wait_ms == ADDRESS_PERIOD_MS // ENROL_VERIFIES_PER_ADDRESS
    with pytest.raises(VerificationFailed):
        await verify(made_up(101), T0 + wait_ms)


async def test_one_address_cannot_spend_a_numbers_guesses(enrolment: Enrolment) -> None:
    code = await enrolment.code(T0, OWNER)
    for index in range(MAX_CHECKS_PER_CODE):  # the owner's code's checks, all used
        with pytest.raises(VerificationFailed):
            await enrolment.verify(other_code(code), T0 + index, ATTACKER)
    # The attacker asks for a code to guess more (it reaches the owner's phone, not them).
    unknown = await enrolment.code(T0 + 10, ATTACKER)
    for index in range(GUESSES_PER_ADDRESS_PER_NUMBER - MAX_CHECKS_PER_CODE):
        with pytest.raises(VerificationFailed):
            await enrolment.verify(other_code(unknown), T0 + 20 + index, ATTACKER)
    with pytest.raises(RateLimited, match="for this number from this address") as limited:
        await enrolment.verify(unknown, T0 + 30, ATTACKER)  # not even checked
    assert limited.value.retry_after_ms == -(-PER_NUMBER_PERIOD_MS
                                             // GUESSES_PER_ADDRESS_PER_NUMBER)
    # The owner, elsewhere, still has checks left: a new code, and it enrols.
    fresh = await enrolment.code(T0 + 40, OWNER)
    await enrolment.verify(fresh, T0 + 41, OWNER)


async def test_a_person_who_mistyped_a_code_away_enrols_with_the_next(
        enrolment: Enrolment) -> None:
    code = await enrolment.code(T0, OWNER)
    for index in range(MAX_CHECKS_PER_CODE):
        with pytest.raises(VerificationFailed):
            await enrolment.verify(other_code(code), T0 + index, OWNER)
    with pytest.raises(VerificationFailed):  # no checks left, even for the right code
        await enrolment.verify(code, T0 + 10, OWNER)
    fresh = await enrolment.code(T0 + 20, OWNER)  # from the same place
    await enrolment.verify(fresh, T0 + 21, OWNER)


def address(index: int) -> str:
    """Many sources: what the limits per number alone must stop."""
    return f"192.0.2.{index}"


async def test_a_new_code_does_not_reset_the_guess_budget_which_recovers_in_a_day(
        enrolment: Enrolment) -> None:
    guesses = 0
    source = 0
    codes = 0
    while guesses < MAX_GUESSES_PER_NUMBER_PER_DAY:
        code = await enrolment.code(T0 + guesses, address(source))  # a new code, new checks
        codes += 1
        for _ in range(MAX_CHECKS_PER_CODE):
            with pytest.raises(VerificationFailed):
                await enrolment.verify(other_code(code), T0 + guesses, address(source))
            guesses += 1
        source += 1
    assert codes < MAX_SENDS_PER_NUMBER_PER_DAY  # the number can still be sent codes...
    last = await enrolment.code(T0 + 100, address(source))
    with pytest.raises(RateLimited, match="verification attempts for this number") as limited:
        await enrolment.verify(last, T0 + 101, address(source + 1))  # ...which cannot be checked
    assert limited.value.retry_after_ms == GUESS_WINDOW_MS - 101  # the window of the first guess
    # A day after the first guess the budget is back (and the number's sends too).
    tomorrow = T0 + GUESS_WINDOW_MS
    code = await enrolment.code(tomorrow, address(source + 2))
    await enrolment.verify(code, tomorrow + 1, address(source + 2))


# -- over QUIC: per connection, the flood, and the sweeper -----------------------------------


@dataclass
class Clock:
    """The relay's wall clock, moved by the test."""

    now: int = T0

    def __call__(self) -> int:
        return self.now


@dataclass
class Relay:
    running: RunningRelay
    data_dir: Path
    clock: Clock
    sms: SmsInbox = field(default_factory=SmsInbox)

    def connect(self) -> AbstractAsyncContextManager[RelayClient]:
        return connect_relay("127.0.0.1", self.running.address[1], ca=self.running.cert_path,
                             server_name="localhost")

    def count(self, table: str) -> int:
        with sqlite3.connect(self.data_dir / "relay.db", timeout=WAIT_S) as connection:
            # The table names are the test's own constants.
            (rows,) = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        return int(rows)


@pytest.fixture
def sweep_interval_s() -> float:
    """Between the sweeper's passes: the relay's default unless a test needs them often."""
    return RelaySettings().sweep_interval_s


@pytest.fixture
async def quic_relay(tmp_path: Path, nursery: trio.Nursery,
                     sweep_interval_s: float) -> AsyncIterator[Relay]:
    data_dir = tmp_path / "relay"
    data_dir.mkdir()
    async with open_sqlite_store(data_dir / "relay.db") as store:
        await admin.create_organisation(store, ORGANISATION, 10, T0)
        await admin.declare_user(store, ORGANISATION, DECLARED, T0)
    clock = Clock()
    sms = SmsInbox()
    settings = RelaySettings(data_dir=data_dir, listen_port=0, sweep_interval_s=sweep_interval_s)
    running: RunningRelay = await nursery.start(
        lambda task_status: serve(settings, task_status=task_status, now_ms=clock,
                                  on_sms_sent=sms))
    yield Relay(running, data_dir, clock, sms)
    running.stop()


async def refused(request: Awaitable[object]) -> RelayError:
    with pytest.raises(RelayError) as refusal:
        await request
    return refusal.value


async def test_a_connection_s_allowance_trips_and_recovers(quic_relay: Relay) -> None:
    async with quic_relay.connect() as client:
        for index in range(ENROL_STARTS_PER_CONNECTION):
            await client.enrol_start(made_up(index))
        refusal = await refused(client.enrol_start(made_up(100)))
        assert refusal.code is ErrorCode.RATE_LIMITED
        assert "on this connection" in refusal.reason
        wait_ms = refusal.error.retry_after_ms  # the ERROR frame's
        assert wait_ms == CONNECTION_PERIOD_MS // ENROL_STARTS_PER_CONNECTION
        assert f"retry after {wait_ms // 1000} s" in refusal.reason
        # Verifying has an allowance of its own.
        key = SigningKey.generate().verify_key.encode()
        for index in range(ENROL_VERIFIES_PER_CONNECTION):
            failed = await refused(client.enrol_verify(made_up(index), "123456", key,
                                                       new_account()))
            assert failed.code is ErrorCode.VERIFICATION_FAILED
        limited = await refused(client.enrol_verify(made_up(50), "123456", key, new_account()))
        assert limited.code is ErrorCode.RATE_LIMITED and "on this connection" in limited.reason
        quic_relay.clock.now += wait_ms
        await client.enrol_start(made_up(101))
        assert (await refused(client.enrol_start(made_up(102)))).code is ErrorCode.RATE_LIMITED
    metrics = quic_relay.running.context.metrics.enrolment
    assert metrics["start", "rate_limited"] == 2
    assert metrics["verify", "rate_limited"] == 1


async def test_an_address_is_limited_across_its_connections(quic_relay: Relay) -> None:
    started = 0
    while started < ENROL_STARTS_PER_ADDRESS:
        async with quic_relay.connect() as client:
            for _ in range(ENROL_STARTS_PER_CONNECTION):
                await client.enrol_start(made_up(started))
                started += 1
    async with quic_relay.connect() as client:
        refusal = await refused(client.enrol_start(made_up(started)))
        assert refusal.code is ErrorCode.RATE_LIMITED and "from this address" in refusal.reason
        assert refusal.error.retry_after_ms == ADDRESS_PERIOD_MS // ENROL_STARTS_PER_ADDRESS
        quic_relay.clock.now += refusal.error.retry_after_ms
        await client.enrol_start(made_up(started + 1))


async def flood(client: RelayClient, count: int) -> list[object]:
    """``count`` ENROL_STARTs for made-up numbers, ``IN_FLIGHT`` at a time; their answers."""
    answers: list[object] = []
    numbers = iter(range(count))

    async def keep_asking() -> None:
        for index in numbers:
            try:
                answers.append(await client.request(EnrolStart(phone=made_up(index))))
            except RelayError as error:
                answers.append(error)

    async with trio.open_nursery() as nursery:
        for _ in range(IN_FLIGHT):
            nursery.start_soon(keep_asking)
    return answers


@contextmanager
def collector_frozen() -> Iterator[None]:
    """Leave what the test process holds before the attack out of the garbage collector's
    passes (``gc.freeze``): a full pass over the whole test process (its modules, the other
    fixtures) takes longer than a step may, whatever the relay does. What the attack
    allocates is still collected."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def test_a_flood_of_made_up_numbers_on_one_connection_is_refused_cheaply(
        quic_relay: Relay) -> None:
    with (trio.fail_after(10 * WAIT_S), collector_frozen(),
          measure_loop_steps() as steps):
        async with quic_relay.connect() as client:
            answers = await flood(client, FLOOD)
    started = [answer for answer in answers if isinstance(answer, EnrolStarted)]
    limited = [answer for answer in answers
               if isinstance(answer, RelayError) and answer.code is ErrorCode.RATE_LIMITED]
    assert len(started) == ENROL_STARTS_PER_CONNECTION
    assert len(limited) == FLOOD - ENROL_STARTS_PER_CONNECTION
    assert all(error.error.retry_after_ms for error in limited)
    # Only the allowance reached the store: as many rows as it allows.
    assert quic_relay.count("sms_sends") == ENROL_STARTS_PER_CONNECTION
    assert quic_relay.count("verification_codes") == ENROL_STARTS_PER_CONNECTION
    assert steps.longest_cpu_s < LONGEST_STEP_S, (steps.longest_cpu_task, steps.longest_cpu_s)
    assert quic_relay.running.context.metrics.enrolment["start", "rate_limited"] == len(limited)


@pytest.mark.parametrize("sweep_interval_s", [0.05])
async def test_the_sweeper_forgets_codes_sends_and_guesses_that_can_no_longer_count(
        quic_relay: Relay) -> None:
    swept = trio.Event()
    service = quic_relay.running.context.enrolment
    forget: Callable[..., Awaitable[int]] = service.forget_old_records

    async def observed(now: int, *, limit: int) -> int:
        assert limit == ENROLMENT_SWEEP_BATCH
        forgotten = await forget(now, limit=limit)
        swept.set()
        return forgotten

    service.forget_old_records = observed  # type: ignore[method-assign]

    async def sweep() -> None:
        """Wait for a whole pass of the sweeper that starts after now."""
        nonlocal swept
        for _ in range(2):
            swept = trio.Event()
            with trio.fail_after(WAIT_S):
                await swept.wait()

    async with quic_relay.connect() as client:
        await client.enrol_start(DECLARED)
        code = await quic_relay.sms.code_for(DECLARED)
        key = SigningKey.generate().verify_key.encode()
        await refused(client.enrol_verify(DECLARED, other_code(code), key, new_account()))
        for index in range(3):
            await client.enrol_start(made_up(index))
    await sweep()  # nothing is old yet
    assert (quic_relay.count("verification_codes"), quic_relay.count("sms_sends"),
            quic_relay.count("verification_guesses")) == (4, 4, 1)
    quic_relay.clock.now += 11 * 60 * 1000  # the codes expired
    await sweep()
    assert (quic_relay.count("verification_codes"), quic_relay.count("sms_sends"),
            quic_relay.count("verification_guesses")) == (0, 4, 1)
    quic_relay.clock.now = T0 + PER_NUMBER_PERIOD_MS  # the sends and the guesses no longer count
    await sweep()
    assert (quic_relay.count("verification_codes"), quic_relay.count("sms_sends"),
            quic_relay.count("verification_guesses")) == (0, 0, 0)
