"""Senders cannot stall or flood anyone (issue 14, findings 1 and 5).

* Bundle fetches are limited per requesting device before the target is looked up: 50,000
  made-up user ids make no bucket each (they once grew the rate-limit table per id and froze the
  event loop for seconds), and no loop step grows with them.
* Each device has a budget of SENDs and bytes per minute, checked before any store work.
* One sender may hold only a share of each recipient device's queue (the store's side is in
  tests/storage_conformance.py, on both backends).

Relays run in the test's trio loop on loopback, with a clock the tests move.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from client.connection import RelayClient, RelayError
from relay.limits import (
    MIN_SENDER_QUEUE_SHARE,
    SEND_BYTES_PER_MINUTE,
    SENDS_PER_MINUTE,
    sender_queue_share,
)
from relay.prekeys import (
    BUNDLE_FETCHES_PER_DEVICE,
    BUNDLE_FETCHES_PER_TARGET,
    DEVICE_LISTINGS_PER_DEVICE,
)
from relay.send_budgets import SendBudgets
from relay.server import RunningRelay, serve
from relay.settings import RelaySettings
from storage.sqlite import SqliteStore
from tests.conftest import EnrolledDevice, RelayUnderTest, SmsInbox, declare, enrol
from tests.loop_steps import LONGEST_STEP_S, measure_loop_steps
from wire.codec import decode_body
from wire.frames import Deliver, Error, ErrorCode, QueueEmpty
from wire.limits import MAX_CIPHERTEXT_SIZE
from wire.prekey_frames import FetchBundle

NOW = 1_700_000_000_000
"""Where the relay's clock starts (ms)."""
WAIT_S = 60
"""Bound on anything that could hang, not a timing assertion."""
PHONES = ("+33612345678", "+33698765432", "+33611111111")
MADE_UP_IDS = 50_000
BATCH = 100
"""Requests started at once, as a busy connection's datagrams would start them."""


@dataclasses.dataclass
class Clock:
    """The relay's clock (ms), moved by the tests."""

    now: int = NOW

    def __call__(self) -> int:
        return self.now


@asynccontextmanager
async def running_relay(settings: RelaySettings, clock: Clock) -> AsyncIterator[RelayUnderTest]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await declare(settings.data_dir, "acme", *PHONES)
    sms = SmsInbox()
    async with trio.open_nursery() as nursery:
        running: RunningRelay = await nursery.start(
            lambda task_status: serve(settings, task_status=task_status, now_ms=clock,
                                      on_sms_sent=sms))
        try:
            yield RelayUnderTest(data_dir=settings.data_dir, running=running, sms=sms)
        finally:
            running.stop()


@asynccontextmanager
async def connected(relay: RelayUnderTest, device: EnrolledDevice) -> AsyncIterator[RelayClient]:
    async with relay.connect() as client:
        await client.authenticate(device.user_id, device.device_id, device.key)
        yield client


def _error(answer: bytes) -> Error:
    frame = decode_body(answer[4:])
    assert isinstance(frame, Error), frame
    return frame


async def _send_many(client: RelayClient, recipient: EnrolledDevice, first_id: int, count: int,
                     payload: bytes = b"sealed") -> None:
    """``count`` pipelined SENDs, all accepted."""
    async def send(client_message_id: int) -> None:
        await client.send(recipient.user_id, {recipient.device_id: payload},
                          client_message_id=client_message_id)

    async with trio.open_nursery() as nursery:
        for client_message_id in range(first_id, first_id + count):
            nursery.start_soon(send, client_message_id)


# -- the budgets' arithmetic ---------------------------------------------------------


DEVICE = ("a" * 32, 1)


def test_a_device_may_send_its_budget_at_once_then_one_send_per_refill() -> None:
    budgets = SendBudgets(messages=SENDS_PER_MINUTE, payload_bytes=SEND_BYTES_PER_MINUTE)
    assert all(budgets.take(DEVICE, payload_bytes=100, now=NOW) is None
               for _ in range(SENDS_PER_MINUTE))
    refill_ms = 60_000 // SENDS_PER_MINUTE  # 100 ms
    assert budgets.take(DEVICE, payload_bytes=100, now=NOW) == refill_ms
    assert budgets.take(DEVICE, payload_bytes=100, now=NOW + refill_ms - 1) == 1
    assert budgets.take(DEVICE, payload_bytes=100, now=NOW + refill_ms) is None
    assert budgets.take(DEVICE, payload_bytes=100, now=NOW + refill_ms) == refill_ms
    assert budgets.take(DEVICE, payload_bytes=100, now=NOW) == refill_ms  # a clock behind adds
    assert budgets.take(("b" * 32, 1), payload_bytes=100, now=NOW) is None  # each device its own
    # A minute later the whole budget is back, never more.
    later = NOW + 10 * 60_000
    assert all(budgets.take(DEVICE, payload_bytes=100, now=later) is None
               for _ in range(SENDS_PER_MINUTE))
    assert budgets.take(DEVICE, payload_bytes=100, now=later) is not None


def test_bytes_are_budgeted_too_and_a_refused_send_takes_nothing() -> None:
    budgets = SendBudgets(messages=SENDS_PER_MINUTE, payload_bytes=SEND_BYTES_PER_MINUTE)
    largest = 16 * MAX_CIPHERTEXT_SIZE  # a SEND to 16 devices: 1.5 MiB
    fits = SEND_BYTES_PER_MINUTE // largest  # 42
    assert all(budgets.take(DEVICE, payload_bytes=largest, now=NOW) is None
               for _ in range(fits))
    left = SEND_BYTES_PER_MINUTE - fits * largest
    wait_ms = budgets.take(DEVICE, payload_bytes=largest, now=NOW)
    assert wait_ms == -(-(largest - left) * 60_000 // SEND_BYTES_PER_MINUTE)
    assert budgets.take(DEVICE, payload_bytes=left, now=NOW) is None  # the refusal took nothing
    assert budgets.take(DEVICE, payload_bytes=largest, now=NOW + wait_ms) is not None
    assert budgets.take(DEVICE, payload_bytes=largest,
                        now=NOW + -(-largest * 60_000 // SEND_BYTES_PER_MINUTE)) is None


def test_a_send_larger_than_the_byte_budget_passes_once_a_period() -> None:
    budgets = SendBudgets(messages=10, payload_bytes=1000, period_ms=1000)
    assert budgets.take(DEVICE, payload_bytes=5000, now=NOW) is None
    assert budgets.take(DEVICE, payload_bytes=5000, now=NOW) == 1000
    assert budgets.take(DEVICE, payload_bytes=5000, now=NOW + 1000) is None


def test_many_devices_never_grow_the_budgets_past_their_cap() -> None:
    class SmallBudgets(SendBudgets):
        MAX_DEVICES = 8

    budgets = SmallBudgets(messages=1, payload_bytes=100)
    for number in range(1000):
        assert budgets.take((f"{number:032x}", 1), payload_bytes=1, now=NOW) is None
        assert len(budgets) <= SmallBudgets.MAX_DEVICES


def test_the_default_share_is_a_tenth_of_the_queue_and_at_least_a_hundred() -> None:
    assert sender_queue_share(10_000) == 1000
    assert sender_queue_share(200) == MIN_SENDER_QUEUE_SHARE == 100
    assert sender_queue_share(10_000, percent=100) == 10_000
    assert RelaySettings().sender_queue_share_percent == 10


# -- bundle fetches (finding 1) ------------------------------------------------------


async def test_made_up_bundle_targets_make_no_bucket_and_never_stall_the_loop(
        tmp_path: Path) -> None:
    clock = Clock()
    async with running_relay(RelaySettings(data_dir=tmp_path / "relay", listen_port=0),
                             clock) as relay:
        alice = await enrol(relay, PHONES[0])
        requester = (alice.user_id, alice.device_id)
        context = relay.running.context
        store = context.store
        assert isinstance(store, SqliteStore)
        answers: dict[ErrorCode, int] = {}

        async def fetch(number: int) -> None:
            # As the session runs a request: one task each, through the prekey service.
            error = _error(await context.prekeys.handle(
                requester, FetchBundle(user_id=f"{number:032x}")))
            answers[error.code] = answers.get(error.code, 0) + 1

        async def attack(first: int, count: int) -> None:
            for start in range(first, first + count, BATCH):
                async with trio.open_nursery() as nursery:
                    for number in range(start, min(start + BATCH, first + count)):
                        nursery.start_soon(fetch, number)

        buckets_before = len(store._buckets)
        with trio.fail_after(WAIT_S), measure_loop_steps() as steps:
            await attack(0, 1000)
            buckets_after_first_ids = len(store._buckets)
            await attack(1000, MADE_UP_IDS - 1000)
        # One bucket for the requesting device, none per made-up id.
        assert buckets_after_first_ids == len(store._buckets) == buckets_before + 1
        assert answers == {ErrorCode.UNKNOWN_RECIPIENT: BUNDLE_FETCHES_PER_DEVICE,
                           ErrorCode.RATE_LIMITED: MADE_UP_IDS - BUNDLE_FETCHES_PER_DEVICE}
        assert steps.steps > MADE_UP_IDS
        # CPU time: wall time on a shared machine also counts other processes' turns.
        assert steps.longest_cpu_s < LONGEST_STEP_S, (steps.longest_cpu_s, steps.longest_cpu_task)

        # The refusal says when to retry, and the device bucket recovers then.
        limited = _error(await context.prekeys.handle(requester, FetchBundle(user_id="f" * 32)))
        assert (limited.code, limited.reason, limited.retry_after_ms) == (
            ErrorCode.RATE_LIMITED,
            "too many bundle fetches from this device (at most 200 an hour); retry after 18 s",
            18_000)
        clock.now += 18_000
        recovered = _error(await context.prekeys.handle(requester,
                                                        FetchBundle(user_id="f" * 32)))
        assert recovered.code is ErrorCode.UNKNOWN_RECIPIENT
        again = _error(await context.prekeys.handle(requester, FetchBundle(user_id="f" * 32)))
        assert again.code is ErrorCode.RATE_LIMITED


async def test_an_existing_target_keeps_a_limit_of_its_own(tmp_path: Path) -> None:
    clock = Clock()
    async with running_relay(RelaySettings(data_dir=tmp_path / "relay", listen_port=0),
                             clock) as relay:
        alice, bob, carol = [await enrol(relay, phone) for phone in PHONES]
        async with connected(relay, alice) as client:
            with trio.fail_after(WAIT_S):
                for _ in range(BUNDLE_FETCHES_PER_TARGET):
                    [bundle] = await client.fetch_bundle(bob.user_id)
                    assert bundle.identity_key == bob.identity_key
                with pytest.raises(RelayError) as refused:
                    await client.fetch_bundle(bob.user_id)
                assert (refused.value.code, refused.value.reason,
                        refused.value.error.retry_after_ms) == (
                    ErrorCode.RATE_LIMITED,
                    "too many bundle fetches for this user (at most 20 an hour); "
                    "retry after 180 s", 180_000)
                [other] = await client.fetch_bundle(carol.user_id)  # another target: its own
                assert other.identity_key == carol.identity_key
                clock.now += 180_000
                assert len(await client.fetch_bundle(bob.user_id)) == 1


async def test_device_list_requests_are_budgeted_per_device_whatever_the_user(
        tmp_path: Path) -> None:
    clock = Clock()
    async with running_relay(RelaySettings(data_dir=tmp_path / "relay", listen_port=0),
                             clock) as relay:
        alice, bob, _ = [await enrol(relay, phone) for phone in PHONES]
        async with connected(relay, alice) as client:
            with trio.fail_after(WAIT_S):
                for index in range(DEVICE_LISTINGS_PER_DEVICE):  # real and made-up users alike
                    if index % 2:
                        assert (await client.list_devices(bob.user_id)).user_id == bob.user_id
                    else:
                        with pytest.raises(RelayError) as unknown:
                            await client.list_devices(f"made-up-{index}")
                        assert unknown.value.code == ErrorCode.UNKNOWN_RECIPIENT
                with pytest.raises(RelayError) as refused:
                    await client.list_devices(bob.user_id)
                assert (refused.value.code, refused.value.error.retry_after_ms) == (
                    ErrorCode.RATE_LIMITED, 3_600)
                assert "too many device-list requests" in refused.value.reason
                clock.now += 3_600
                assert (await client.list_devices(bob.user_id)).user_id == bob.user_id


# -- SEND budgets (finding 5) ------------------------------------------------------------


async def _queue_depth(relay: RelayUnderTest, device: EnrolledDevice) -> int:
    return await relay.running.context.store.queue_depth(user_id=device.user_id,
                                                         device_id=device.device_id)


async def test_a_device_over_its_send_budget_is_refused_before_any_store_work_then_recovers(
        tmp_path: Path) -> None:
    clock = Clock()
    async with running_relay(RelaySettings(data_dir=tmp_path / "relay", listen_port=0),
                             clock) as relay:
        alice, bob = [await enrol(relay, phone) for phone in PHONES[:2]]
        metrics = relay.running.context.metrics
        store = relay.running.context.store
        assert isinstance(store, SqliteStore)
        async with connected(relay, alice) as client:
            with trio.fail_after(WAIT_S):
                await _send_many(client, bob, 0, SENDS_PER_MINUTE)
                commits = store.commit_count
                with pytest.raises(RelayError) as refused:
                    await client.send(bob.user_id, {bob.device_id: b"one more"},
                                      client_message_id=SENDS_PER_MINUTE)
                assert (refused.value.code, refused.value.reason,
                        refused.value.error.retry_after_ms) == (
                    ErrorCode.RATE_LIMITED,
                    "too many sends from this device (at most 600 SENDs and 64 MiB a minute); "
                    "retry after 1 s", 60_000 // SENDS_PER_MINUTE)
                # Refused before the store: nothing committed, nothing queued.
                assert store.commit_count == commits
                assert await _queue_depth(relay, bob) == SENDS_PER_MINUTE
                assert metrics.send_outcomes()["rate_limited"] == 1
                clock.now += 60_000 // SENDS_PER_MINUTE  # one SEND's worth refilled
                await client.send(bob.user_id, {bob.device_id: b"one more"},
                                  client_message_id=SENDS_PER_MINUTE)
                with pytest.raises(RelayError, match="RATE_LIMITED"):
                    await client.send(bob.user_id, {bob.device_id: b"and another"},
                                      client_message_id=SENDS_PER_MINUTE + 1)
        assert await _queue_depth(relay, bob) == SENDS_PER_MINUTE + 1


async def test_a_device_over_its_byte_budget_is_refused_then_recovers(tmp_path: Path) -> None:
    clock = Clock()
    budget = 300_000
    settings = RelaySettings(data_dir=tmp_path / "relay", listen_port=0,
                             send_bytes_per_minute=budget)
    async with running_relay(settings, clock) as relay:
        alice, bob = [await enrol(relay, phone) for phone in PHONES[:2]]
        largest = b"x" * MAX_CIPHERTEXT_SIZE
        async with connected(relay, alice) as client:
            with trio.fail_after(WAIT_S):
                await _send_many(client, bob, 0, budget // len(largest), largest)  # 3
                with pytest.raises(RelayError) as refused:
                    await client.send(bob.user_id, {bob.device_id: largest}, client_message_id=9)
                wait_ms = -(-(len(largest) - budget % len(largest)) * 60_000 // budget)
                assert refused.value.code is ErrorCode.RATE_LIMITED
                assert refused.value.error.retry_after_ms == wait_ms
                assert refused.value.reason.endswith(f"retry after {-(-wait_ms // 1000)} s")
                assert await _queue_depth(relay, bob) == 3
                clock.now += wait_ms
                await client.send(bob.user_id, {bob.device_id: largest}, client_message_id=9)
        assert await _queue_depth(relay, bob) == 4


# -- the sender's share of a queue (finding 5) -----------------------------------------


async def test_one_sender_fills_only_its_share_and_the_others_still_get_through(
        tmp_path: Path) -> None:
    settings = RelaySettings(data_dir=tmp_path / "relay", listen_port=0, max_queue_depth=200)
    share = sender_queue_share(settings.max_queue_depth)  # 100 of 200
    async with running_relay(settings, Clock()) as relay:
        alice, bob, carol = [await enrol(relay, phone) for phone in PHONES]
        async with connected(relay, alice) as flooder:
            with trio.fail_after(WAIT_S):
                await _send_many(flooder, bob, 0, share)
                with pytest.raises(RelayError) as refused:
                    await flooder.send(bob.user_id, {bob.device_id: b"more"},
                                       client_message_id=share)
                assert refused.value.code is ErrorCode.QUEUE_FULL
                assert refused.value.error.full_devices == (bob.device_id,)
                assert refused.value.error.retry_after_ms is None  # it depends on the reader
                assert "your share of a recipient device's queue is used up" in (
                    refused.value.reason)
                assert await _queue_depth(relay, bob) == share
                async with connected(relay, carol) as contact:
                    await contact.send(bob.user_id, {bob.device_id: b"hello"},
                                       client_message_id=1)
                # Bob reads and acknowledges his queue: the share is free again.
                await _drain(relay, bob, share + 1)
                assert await _queue_depth(relay, bob) == 0
                await flooder.send(bob.user_id, {bob.device_id: b"more"},
                                   client_message_id=share)


async def _drain(relay: RelayUnderTest, device: EnrolledDevice, expected: int) -> None:
    async with connected(relay, device) as client:
        received = 0
        async for delivery in client.deliveries():
            if isinstance(delivery, QueueEmpty):
                break
            assert isinstance(delivery, Deliver)
            client.acknowledge(delivery.envelope_id)
            received += 1
        await client.settle()
    assert received == expected

