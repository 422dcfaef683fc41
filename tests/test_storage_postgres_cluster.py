"""What several relay nodes on one PostgreSQL database rely on, at the store level.

* Envelope ids are commit-ordered PER RECIPIENT DEVICE across nodes (the
  delivery cursor depends on it): a send draws its ids only after locking the
  recipient's device rows.
* The sending transaction notifies the node holding the recipient, on commit.
* Presence claims hand a device over and tell the previous holder.

Against a real server, one fresh schema per test (see test_storage_postgres.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest
import trio
from psycopg import sql

from storage.base import SendStatus, Store
from storage.group_commit import WriteOperation
from storage.postgres import _commit_send, _open_pools, open_postgres_store, run_postgres_batch
from storage.postgres_presence import (
    NotificationKind,
    claim_device,
    current_schema,
    forget_node,
    holders,
    node_channel,
    parse_notification,
    release_device,
    renew_leases,
)
from tests.postgres_schemas import conninfo, fresh_schema
from tests.storage_conformance import NOW, TIMEOUT_S, _enrolled, _send, _send_now

T = TypeVar("T")

LEASE = NOW + 30_000


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    with fresh_schema() as schema:
        yield conninfo(schema)


class Listener:
    """A LISTENing connection read the way relay.cluster reads it (socket readiness)."""

    def __init__(self, dsn: str, channel: str) -> None:
        self.connection = psycopg.connect(dsn, autocommit=True)
        self.connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        self._received: list[str] = []

    async def next(self) -> str:
        with trio.fail_after(TIMEOUT_S):
            while not self._received:
                await trio.lowlevel.wait_readable(self.connection.fileno())
                self.connection.pgconn.consume_input()
                while (notify := self.connection.pgconn.notifies()) is not None:
                    self._received.append(notify.extra.decode())
        return self._received.pop(0)

    def close(self) -> None:
        self.connection.close()


def _in_transaction(dsn: str, work: Callable[..., T], **kwargs: Any) -> T:
    with psycopg.connect(dsn) as connection, connection.transaction():
        return work(connection, **kwargs)


def _channel(dsn: str, node: str) -> str:
    with psycopg.connect(dsn) as connection:
        return node_channel(current_schema(connection), node)


async def _wait_until_blocked_by(dsn: str, blocker_pid: int) -> None:
    """Until some backend waits for a lock ``blocker_pid`` holds.

    PostgreSQL has no event for this, so it polls (each poll is a round trip;
    no sleep), bounded by TIMEOUT_S.
    """
    def blocked() -> bool:
        with psycopg.connect(dsn, autocommit=True) as connection:
            row = connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (blocker_pid,)).fetchone()
            return row is not None and row[0] > 0

    with trio.fail_after(TIMEOUT_S):
        while not await trio.to_thread.run_sync(blocked):
            await trio.lowlevel.checkpoint()


async def test_a_send_draws_its_envelope_id_only_after_locking_the_recipient(
        postgres_dsn: str) -> None:
    async with open_postgres_store(postgres_dsn) as store:
        sender, _ = await _enrolled(store)
        recipient, devices = await _enrolled(store)
        # "Another node" in the middle of a send to the same device: it holds the
        # device lock and has not drawn its envelope id yet.
        other = psycopg.connect(postgres_dsn)
        try:
            other.execute("SELECT 1 FROM devices WHERE user_id = %s FOR UPDATE",
                          (recipient.user_id,))
            pending = store.submit_send(_send(sender, recipient, devices, 1))
            await _wait_until_blocked_by(postgres_dsn, other.info.backend_pid)
            row = other.execute(
                "INSERT INTO envelopes (recipient_user_id, recipient_device_id, sender_user_id,"
                " sender_device_id, client_message_id, ciphertext, accepted_at, expires_at)"
                " VALUES (%s, 1, %s, 1, 99, '\\x00', %s, %s) RETURNING envelope_id",
                (recipient.user_id, sender.user_id, NOW, LEASE)).fetchone()
            assert row is not None
            other.commit()
        finally:
            other.close()
        with trio.fail_after(TIMEOUT_S):
            outcome = await pending.wait()
        assert outcome.status is SendStatus.ACCEPTED
        # Had the waiting send drawn its id before the lock, it would be the smaller
        # one while committing later: a reader past it would skip the other's.
        assert outcome.envelopes[0].envelope_id > row[0]


async def test_a_cursor_reader_misses_nothing_while_two_nodes_send(postgres_dsn: str) -> None:
    sends_per_node = 60
    async with open_postgres_store(postgres_dsn) as first, \
            open_postgres_store(postgres_dsn) as second:
        sender, _ = await _enrolled(first)
        recipient, devices = await _enrolled(first)
        seen: list[int] = []

        async def send_all(store: Store, offset: int) -> None:
            for index in range(sends_per_node):
                outcome = await _send_now(store, _send(sender, recipient, devices,
                                                       offset + index))
                assert outcome.status is SendStatus.ACCEPTED

        async def read_like_a_pump() -> None:
            cursor = 0
            while len(seen) < 2 * sends_per_node:
                page = await second.fetch_queue(user_id=recipient.user_id, device_id=1,
                                                after_envelope_id=cursor, limit=7, now=NOW)
                for envelope in page:
                    assert envelope.envelope_id > cursor
                    cursor = envelope.envelope_id
                    seen.append(envelope.client_message_id)
                await trio.lowlevel.checkpoint()

        with trio.fail_after(TIMEOUT_S):  # a skipped envelope would hang the reader
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_like_a_pump)
                nursery.start_soon(send_all, first, 0)
                nursery.start_soon(send_all, second, 1000)
        assert sorted(seen) == [*range(sends_per_node), *range(1000, 1000 + sends_per_node)]


async def test_a_send_notifies_the_node_holding_the_recipient_on_commit_only(
        postgres_dsn: str) -> None:
    async with open_postgres_store(postgres_dsn) as store:
        sender, _ = await _enrolled(store)
        recipient, devices = await _enrolled(store, devices=2)
        holder = _channel(postgres_dsn, "node-2")
        listener = Listener(postgres_dsn, holder)
        try:
            await trio.to_thread.run_sync(functools.partial(
                _in_transaction, postgres_dsn, claim_device, user_id=recipient.user_id,
                device_id=2, node_name="node-2", channel=holder, session_token="t",
                expires_at=LEASE))
            refused = await _send_now(store, _send(sender, recipient, [2], 1))
            assert refused.status is SendStatus.MISMATCHED_DEVICES
            accepted = await _send_now(store, _send(sender, recipient, devices, 2))
            assert accepted.status is SendStatus.ACCEPTED
            # Notifications arrive in commit order: the refused send sent none, and
            # the accepted one only for the device node-2 holds.
            first = parse_notification(await listener.next())
            assert first is not None and first.kind is NotificationKind.WAKE
            assert (first.user_id, first.device_id) == (recipient.user_id, 2)
            # The sending node's own channel is skipped: it wakes its pumps itself.
            store.node_channel = holder
            await _send_now(store, _send(sender, recipient, devices, 3))
            store.node_channel = None
            await _send_now(store, _send(sender, recipient, devices, 4))
            assert parse_notification(await listener.next()) == first
        finally:
            listener.close()


async def test_an_expired_lease_is_not_notified(postgres_dsn: str) -> None:
    async with open_postgres_store(postgres_dsn) as store:
        sender, _ = await _enrolled(store)
        recipient, devices = await _enrolled(store)
        dead, alive = _channel(postgres_dsn, "dead"), _channel(postgres_dsn, "alive")
        listener = Listener(postgres_dsn, dead)
        try:
            await trio.to_thread.run_sync(functools.partial(
                _in_transaction, postgres_dsn, claim_device, user_id=recipient.user_id,
                device_id=1, node_name="dead", channel=dead, session_token="t",
                expires_at=NOW))  # expired when the send is accepted (at NOW)
            await _send_now(store, _send(sender, recipient, devices, 1))
            await trio.to_thread.run_sync(functools.partial(
                _in_transaction, postgres_dsn, renew_leases, channel=dead, expires_at=LEASE))
            await _send_now(store, _send(sender, recipient, devices, 2))
            assert await listener.next() == f"wake {recipient.user_id} 1"
            # Renewals only touch the node's own rows.
            renewed = await trio.to_thread.run_sync(functools.partial(
                _in_transaction, postgres_dsn, renew_leases, channel=alive, expires_at=LEASE))
            assert renewed == 0
        finally:
            listener.close()


async def test_a_claim_takes_the_device_over_and_tells_the_previous_holder(
        postgres_dsn: str) -> None:
    async with open_postgres_store(postgres_dsn) as store:
        user, _ = await _enrolled(store)
    first, second = _channel(postgres_dsn, "node-1"), _channel(postgres_dsn, "node-2")
    listener = Listener(postgres_dsn, first)

    def claim(node: str, channel: str, token: str) -> Any:
        return _in_transaction(postgres_dsn, claim_device, user_id=user.user_id, device_id=1,
                               node_name=node, channel=channel, session_token=token,
                               expires_at=LEASE)

    try:
        assert await trio.to_thread.run_sync(claim, "node-1", first, "old") is None
        previous = await trio.to_thread.run_sync(claim, "node-2", second, "new")
        assert previous is not None
        assert (previous.node_name, previous.session_token) == ("node-1", "old")
        notification = parse_notification(await listener.next())
        assert notification is not None
        assert notification.kind is NotificationKind.REPLACED
        assert (notification.user_id, notification.device_id,
                notification.session_token) == (user.user_id, 1, "old")
        assert _in_transaction(postgres_dsn, holders, user_id=user.user_id, device_id=1,
                               now=NOW) == "node-2"
        # The replaced session's late release must not erase the new holder.
        assert not _in_transaction(postgres_dsn, release_device, user_id=user.user_id,
                                   device_id=1, session_token="old")
        assert _in_transaction(postgres_dsn, holders, user_id=user.user_id, device_id=1,
                               now=NOW) == "node-2"
        assert _in_transaction(postgres_dsn, forget_node, channel=second) == 1
        assert _in_transaction(postgres_dsn, holders, user_id=user.user_id, device_id=1,
                               now=NOW) is None
    finally:
        listener.close()


def test_notification_parsing_refuses_what_it_did_not_send() -> None:
    assert parse_notification("wake abc 3") is not None
    replaced = parse_notification("replaced abc 3 token")
    assert replaced is not None and replaced.session_token == "token"
    for payload in ("", "wake", "wake abc", "wake abc x", "wake abc 3 extra", "replaced abc 3",
                    "bogus abc 3", "wake  3", "wake abc " + "9" * 600):
        assert parse_notification(payload) is None, payload


def test_channels_differ_per_schema_and_node_and_are_identifiers() -> None:
    channels = {node_channel(schema, node) for schema in ("a", "b") for node in ("n1", "n2")}
    assert len(channels) == 4
    assert all(len(channel) <= 63 and channel.isidentifier() for channel in channels)


async def test_two_writers_sending_crosswise_never_deadlock(postgres_dsn: str) -> None:
    """Node 1's batch sends to B then A while node 2's sends to A then B: taken in batch
    order, the row locks formed a cycle (PostgreSQL aborted one send). The interleaving
    that closes the cycle is forced with two blocking connections."""
    async with open_postgres_store(postgres_dsn) as store:
        sender, _ = await _enrolled(store)
        first_user, devices = await _enrolled(store)
        second_user, _ = await _enrolled(store)
    a_user, b_user = sorted((first_user, second_user), key=lambda user: user.user_id)

    def send_to(user: Any, number: int) -> WriteOperation[Any]:
        send = _send(sender, user, devices, number)
        return WriteOperation(
            lambda connection: _commit_send(connection, send, dict(send.payloads)),
            locks=(user.user_id,))

    node_1 = [send_to(b_user, 1), send_to(a_user, 2)]
    node_2 = [send_to(a_user, 3), send_to(b_user, 4)]
    holds_a, holds_b = psycopg.connect(postgres_dsn), psycopg.connect(postgres_dsn)
    pools = [_open_pools(postgres_dsn)[0] for _ in range(2)]
    outcomes: list[list[Any]] = []

    async def run(pool: Any, batch: list[WriteOperation[Any]]) -> None:
        outcomes.append(await trio.to_thread.run_sync(run_postgres_batch, pool, batch))

    try:
        for holder, user in ((holds_a, a_user), (holds_b, b_user)):
            holder.execute("SELECT 1 FROM devices WHERE user_id = %s FOR UPDATE",
                           (user.user_id,))
        async with trio.open_nursery() as nursery:
            try:
                nursery.start_soon(run, pools[0], node_1)
                await _wait_until_blocked(postgres_dsn, 1)
                nursery.start_soon(run, pools[1], node_2)
                await _wait_until_blocked(postgres_dsn, 2)
                holds_b.commit()  # node 1 (batch order) takes B, then waits for A
                await _wait_until_blocked(postgres_dsn, 2, not_by=holds_b.info.backend_pid)
                holds_a.commit()  # batch order: node 2 takes A and waits for node 1's B
            finally:  # the batches' threads cannot be cancelled: let them finish
                holds_a.close()
                holds_b.close()
    finally:
        for pool in pools:
            pool.close()
    errors = [error for batch in outcomes for _, error in batch if error is not None]
    assert errors == []
    assert len(outcomes) == 2


async def _wait_until_blocked(dsn: str, count: int, not_by: int = 0) -> None:
    """Until ``count`` backends wait for a lock, none of them for one ``not_by`` holds
    (polled, as _wait_until_blocked_by)."""
    def blocked() -> bool:
        with psycopg.connect(dsn, autocommit=True) as connection:
            row = connection.execute(
                "SELECT count(*), count(*) FILTER (WHERE %s = ANY(pg_blocking_pids(pid)))"
                " FROM pg_stat_activity WHERE cardinality(pg_blocking_pids(pid)) > 0",
                (not_by,)).fetchone()
            return row is not None and row[0] >= count and row[1] == 0

    with trio.fail_after(TIMEOUT_S):
        while not await trio.to_thread.run_sync(blocked):
            await trio.lowlevel.checkpoint()


async def test_two_nodes_share_one_rate_limit_bucket(postgres_dsn: str) -> None:
    async with open_postgres_store(postgres_dsn) as first, \
            open_postgres_store(postgres_dsn) as second:
        taken = [await store.take_tokens(key="lookup u 1", cost=1, capacity=3,
                                         period_ms=60_000, now=NOW)
                 for store in (first, second, first, second)]
        assert taken == [True, True, True, False]  # one allowance between them, not one each
