"""The wake-up scheduler on a real SQLite file, with trio's MockClock for the intervals.

Envelopes come from real commits; the provider is a recording one (tests/push_support.py).
The clock runs at real speed (so ``fail_after`` bounds a hang) and the tests jump it over
intervals and back-offs; every check waits for ``WakeupScheduler.settled``, never sleeps.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from relay.metrics import RelayMetrics
from relay.push_providers import PushOutcome, PushResult, PushTarget
from relay.wakeups import (
    CLAIM_LEASE_S,
    MAX_PUSH_ATTEMPTS,
    RETRY_BACKOFF_CAP_S,
    RETRY_BACKOFF_FIRST_S,
    URGENT_MEMORY_S,
    WAKEUP_INTERVAL_S,
    WakeupScheduler,
    lease_for,
    retry_delay_s,
)
from storage.base import Store, User
from storage.push_records import StoredPushTarget
from storage.sqlite import open_sqlite_store
from tests.push_support import RecordingProvider
from tests.storage_conformance import NOW, _enrolled, _send, _send_now

WAIT_S = 30
"""Bound on anything that could hang, in real seconds: not a timing assertion."""
TARGET = StoredPushTarget(provider="outbox", token="wake-me")


@dataclass
class Harness:
    store: Store
    scheduler: WakeupScheduler
    provider: RecordingProvider
    metrics: RelayMetrics
    clock: trio.testing.MockClock
    connected: set[tuple[str, int]] = field(default_factory=set)
    messages: int = 0

    async def settled(self) -> None:
        with trio.fail_after(WAIT_S):
            await self.scheduler.settled()

    async def deliver(self, sender: User, recipient: User, device_id: int, *,
                      urgent: bool = False) -> None:
        """Commit one envelope for the device, as a SEND does, and tell the scheduler."""
        self.messages += 1
        outcome = await _send_now(self.store, _send(sender, recipient, [device_id],
                                                    self.messages))
        assert outcome.envelopes
        self.scheduler.note_committed(outcome.envelopes, urgent=urgent)

    async def jump(self, seconds: float) -> None:
        self.clock.jump(seconds)
        await self.settled()


def _now_ms() -> int:
    return NOW + int(trio.current_time() * 1000)


@asynccontextmanager
async def _harness(path: pathlib.Path, clock: trio.testing.MockClock,
                   provider: RecordingProvider | None = None) -> AsyncIterator[Harness]:
    clock.rate = 1.0
    provider = provider or RecordingProvider()
    metrics = RelayMetrics()
    async with open_sqlite_store(path, synchronous="NORMAL") as store, \
            trio.open_nursery() as nursery:
        connected: set[tuple[str, int]] = set()
        scheduler = WakeupScheduler(store=store, providers={"outbox": provider},
                                    metrics=metrics, now_ms=_now_ms,
                                    is_connected=connected.__contains__, shared_store=False)
        harness = Harness(store=store, scheduler=scheduler, provider=provider, metrics=metrics,
                          clock=clock, connected=connected)
        await nursery.start(scheduler.run)
        yield harness
        nursery.cancel_scope.cancel()


async def _away_device(harness: Harness, target: StoredPushTarget = TARGET,
                       ) -> tuple[User, User, int]:
    """A sender, and a recipient device with a target that is not connected."""
    sender, _ = await _enrolled(harness.store)
    recipient, [device_id] = await _enrolled(harness.store)
    assert await harness.store.set_push_target(user_id=recipient.user_id, device_id=device_id,
                                               target=target, now=_now_ms())
    harness.scheduler.target_set((recipient.user_id, device_id))
    return sender, recipient, device_id


@pytest.fixture
def database(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "relay.sqlite3"


async def test_many_messages_to_an_away_device_make_one_push_per_interval(
        database: pathlib.Path, mock_clock: trio.testing.MockClock) -> None:
    async with _harness(database, mock_clock) as harness:
        sender, recipient, device_id = await _away_device(harness)
        for _ in range(5):
            await harness.deliver(sender, recipient, device_id)
        await harness.settled()
        for _ in range(5):
            await harness.deliver(sender, recipient, device_id)
        await harness.jump(WAKEUP_INTERVAL_S - 1)
        await harness.deliver(sender, recipient, device_id)
        await harness.settled()
        assert [push.target.token for push in harness.provider.sent] == ["wake-me"]
        assert not harness.provider.sent[0].urgent
        assert harness.metrics.pushes["sent", "outbox"] == 1
        assert harness.metrics.pushes["scheduled", "outbox"] == 1
        assert harness.metrics.pushes["coalesced", "outbox"] >= 1
        assert harness.metrics.push_delay.count == 1
        # The interval has passed and the device is still away: the next envelope wakes it.
        await harness.jump(1)
        await harness.deliver(sender, recipient, device_id)
        await harness.settled()
        assert len(harness.provider.sent) == 2


async def test_a_connected_device_is_never_pushed(
        database: pathlib.Path, mock_clock: trio.testing.MockClock) -> None:
    async with _harness(database, mock_clock) as harness:
        sender, recipient, device_id = await _away_device(harness)
        harness.connected.add((recipient.user_id, device_id))
        harness.scheduler.device_connected((recipient.user_id, device_id))
        for _ in range(3):
            await harness.deliver(sender, recipient, device_id, urgent=True)
        await harness.jump(2 * WAKEUP_INTERVAL_S)
        assert harness.provider.sent == []
        assert harness.metrics.pushes == {}


async def test_connecting_restarts_coalescing(
        database: pathlib.Path, mock_clock: trio.testing.MockClock) -> None:
    async with _harness(database, mock_clock) as harness:
        sender, recipient, device_id = await _away_device(harness)
        await harness.deliver(sender, recipient, device_id)
        await harness.settled()
        # It woke, connected, read, and went away again: the next envelope wakes it at once.
        harness.scheduler.device_connected((recipient.user_id, device_id))
        await harness.settled()
        await harness.deliver(sender, recipient, device_id)
        await harness.settled()
        assert len(harness.provider.sent) == 2


async def test_an_urgent_envelope_pushes_at_once_even_within_the_interval(
        database: pathlib.Path, mock_clock: trio.testing.MockClock) -> None:
    async with _harness(database, mock_clock) as harness:
        sender, recipient, device_id = await _away_device(harness)
        await harness.deliver(sender, recipient, device_id)
        await harness.settled()
        started = trio.current_time()
        await harness.deliver(sender, recipient, device_id, urgent=True)
        await harness.settled()
        assert [push.urgent for push in harness.provider.sent] == [False, True]
        # "At once": no virtual time had to pass (the clock only ran at real speed).
        assert harness.provider.sent[1].at - started < WAKEUP_INTERVAL_S


async def test_a_gone_target_is_removed(
        database: pathlib.Path, mock_clock: trio.testing.MockClock) -> None:
    provider = RecordingProvider()
    provider.answers.append(PushOutcome(result=PushResult.GONE, detail="410"))
    async with _harness(database, mock_clock, provider) as harness:
        sender, recipient, device_id = await _away_device(harness)
        await harness.deliver(sender, recipient, device_id)
        await harness.settled()
        assert await harness.store.get_push_target(user_id=recipient.user_id,
                                                   device_id=device_id) is None
        assert harness.metrics.pushes["removed", "outbox"] == 1
        # No target, no more pushes.
        await harness.jump(2 * WAKEUP_INTERVAL_S)
        await harness.deliver(sender, recipient, device_id, urgent=True)
        await harness.settled()
        assert len(harness.provider.sent) == 1


async def test_a_retry_after_is_honoured_not_before(
        database: pathlib.Path, mock_clock: trio.testing.MockClock) -> None:
    provider = RecordingProvider()
    provider.answers.append(PushOutcome(result=PushResult.RETRY, retry_after_s=120.0))
    async with _harness(database, mock_clock, provider) as harness:
        sender, recipient, device_id = await _away_device(harness)
        await harness.deliver(sender, recipient, device_id)
        await harness.settled()
        assert len(harness.provider.sent) == 1
        assert harness.metrics.pushes["retried", "outbox"] == 1
        await harness.jump(119)  # past the first back-off, not past Retry-After
        assert len(harness.provider.sent) == 1
        await harness.jump(2)
        assert len(harness.provider.sent) == 2
        assert harness.metrics.pushes["sent", "outbox"] == 1


async def test_a_provider_that_raises_is_retried_and_its_error_logs_no_token(
        database: pathlib.Path, mock_clock: trio.testing.MockClock,
        capsys: pytest.CaptureFixture[str]) -> None:
    provider = RecordingProvider()
    provider.answers.append(RuntimeError("boom wake-me"))
    async with _harness(database, mock_clock, provider) as harness:
        sender, recipient, device_id = await _away_device(harness)
        await harness.deliver(sender, recipient, device_id)
        await harness.settled()
        await harness.jump(RETRY_BACKOFF_FIRST_S)
        assert len(harness.provider.sent) == 2
        assert harness.metrics.pushes["sent", "outbox"] == 1
    output = capsys.readouterr()
    assert "push_provider_raised" in output.out + output.err
    assert "wake-me" not in output.out + output.err
    assert recipient.user_id not in output.out + output.err


async def test_a_wakeup_retried_too_often_is_given_up(
        database: pathlib.Path, mock_clock: trio.testing.MockClock) -> None:
    provider = RecordingProvider()
    provider.answers.extend(PushOutcome(result=PushResult.RETRY)
                            for _ in range(MAX_PUSH_ATTEMPTS + 5))
    async with _harness(database, mock_clock, provider) as harness:
        sender, recipient, device_id = await _away_device(harness)
        await harness.deliver(sender, recipient, device_id)
        await harness.settled()
        for _ in range(MAX_PUSH_ATTEMPTS + 2):
            await harness.jump(RETRY_BACKOFF_CAP_S)
        assert len(harness.provider.sent) == MAX_PUSH_ATTEMPTS
        assert harness.metrics.pushes["failed", "outbox"] == 1


async def test_pending_wakeups_survive_a_restart(
        database: pathlib.Path, mock_clock: trio.testing.MockClock) -> None:
    first = RecordingProvider()
    first.answers.append(PushOutcome(result=PushResult.RETRY, retry_after_s=60.0))
    async with _harness(database, mock_clock, first) as harness:
        sender, recipient, device_id = await _away_device(harness)
        await harness.deliver(sender, recipient, device_id, urgent=True)
        await harness.settled()
    # A new store instance on the same file, a new scheduler: the wake-up is still there,
    # due when the service said.
    async with _harness(database, mock_clock) as restarted:
        assert restarted.provider.sent == []
        await restarted.jump(61)
        [push] = restarted.provider.sent
        assert push.target.token == "wake-me" and push.urgent


async def test_an_envelope_whose_wakeup_was_lost_is_announced_after_a_restart(
        database: pathlib.Path, mock_clock: trio.testing.MockClock) -> None:
    async with _harness(database, mock_clock) as harness:
        sender, recipient, device_id = await _away_device(harness)
        # Committed, but the process stopped before the scheduler heard of it.
        await _send_now(harness.store, _send(sender, recipient, [device_id], 99))
    async with _harness(database, mock_clock) as restarted:
        await restarted.settled()
        assert [push.target.token for push in restarted.provider.sent] == ["wake-me"]


async def test_devices_without_a_target_cost_no_store_work(
        database: pathlib.Path, mock_clock: trio.testing.MockClock) -> None:
    async with _harness(database, mock_clock) as harness:
        sender, _ = await _enrolled(harness.store)
        recipient, [device_id] = await _enrolled(harness.store)
        commits = harness.store.commit_count
        for _ in range(3):
            await harness.deliver(sender, recipient, device_id, urgent=True)
        await harness.settled()
        # Three sends, three commits: the scheduler wrote nothing, claimed nothing.
        assert harness.store.commit_count == commits + 3
        assert harness.provider.sent == []


def test_the_back_off_doubles_up_to_its_cap_and_bounds_retry_after() -> None:
    assert [retry_delay_s(attempt, None) for attempt in (1, 2, 3)] == [
        RETRY_BACKOFF_FIRST_S, 2 * RETRY_BACKOFF_FIRST_S, 4 * RETRY_BACKOFF_FIRST_S]
    assert retry_delay_s(40, None) == RETRY_BACKOFF_CAP_S
    assert retry_delay_s(1, 600.0) == 600.0
    assert retry_delay_s(1, 10.0**9) == 3600.0  # a hostile Retry-After is bounded
    assert retry_delay_s(1, float("nan")) == RETRY_BACKOFF_FIRST_S
    assert retry_delay_s(1, -5.0) == RETRY_BACKOFF_FIRST_S


async def test_a_device_that_leaves_with_envelopes_queued_is_woken_and_one_that_read_all_not(
        database: pathlib.Path, mock_clock: trio.testing.MockClock) -> None:
    async with _harness(database, mock_clock) as harness:
        sender, recipient, device_id = await _away_device(harness)
        _, reader, reader_device = await _away_device(
            harness, StoredPushTarget(provider="outbox", token="read-everything"))
        key, reader_key = (recipient.user_id, device_id), (reader.user_id, reader_device)
        for device in (key, reader_key):
            harness.connected.add(device)
            harness.scheduler.device_connected(device)
        # Committed while the relay still held both connections: delivered, not acknowledged.
        await harness.deliver(sender, recipient, device_id)
        await harness.deliver(sender, reader, reader_device)
        await harness.settled()
        assert harness.provider.sent == []
        [envelope] = await harness.store.fetch_queue(user_id=reader.user_id,
                                                     device_id=reader_device,
                                                     after_envelope_id=0, limit=10, now=NOW)
        await harness.store.acknowledge(user_id=reader.user_id, device_id=reader_device,
                                        envelope_ids=[envelope.envelope_id])
        for device in (key, reader_key):
            harness.connected.discard(device)
            harness.scheduler.device_disconnected(device)
        await harness.settled()
        assert [push.target for push in harness.provider.sent] == [
            PushTarget(provider="outbox", token="wake-me")]
        assert len(harness.provider.sent) == 1


async def test_an_urgent_envelope_reaching_a_closing_connection_wakes_the_device_urgently(
        database: pathlib.Path, mock_clock: trio.testing.MockClock) -> None:
    # A call offer committed while the relay still counts the device connected (its connection
    # is ending) is not read: the wake-up on disconnect must keep the offer's urgency.
    async with _harness(database, mock_clock) as harness:
        sender, recipient, device_id = await _away_device(harness)
        key = (recipient.user_id, device_id)
        harness.connected.add(key)
        harness.scheduler.device_connected(key)
        await harness.deliver(sender, recipient, device_id, urgent=True)
        await harness.settled()
        assert harness.provider.sent == []
        harness.connected.discard(key)
        harness.scheduler.device_disconnected(key)
        await harness.settled()
        assert [push.urgent for push in harness.provider.sent] == [True]


async def test_an_old_urgent_envelope_does_not_make_a_later_wakeup_urgent(
        database: pathlib.Path, mock_clock: trio.testing.MockClock) -> None:
    async with _harness(database, mock_clock) as harness:
        sender, recipient, device_id = await _away_device(harness)
        key = (recipient.user_id, device_id)
        harness.connected.add(key)
        harness.scheduler.device_connected(key)
        await harness.deliver(sender, recipient, device_id, urgent=True)
        await harness.jump(URGENT_MEMORY_S + 1)  # the offer is no longer worth ringing
        harness.connected.discard(key)
        harness.scheduler.device_disconnected(key)
        await harness.settled()
        assert [push.urgent for push in harness.provider.sent] == [False]


def test_the_claim_lease_outlasts_the_longest_provider_request() -> None:
    assert lease_for(5.0) == CLAIM_LEASE_S
    assert lease_for(100.0) > 2 * 100.0  # a request ends within twice push_timeout_s
