"""The wake-up push store on PostgreSQL: the conformance suite, then what only a store shared
by several nodes must do (claims taken once across stores, presence leaving devices out)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest
import trio

from storage.base import Store
from storage.postgres import open_postgres_store
from tests.push_conformance import *  # noqa: F403
from tests.push_conformance import INTERVAL_MS, LEASE_MS, _device_with_target
from tests.storage_conformance import NOW
from tests.test_storage_postgres import postgres_dsn  # noqa: F401  (a fixture)

WAKEUPS = 40


@pytest.fixture
def store_opener(postgres_dsn: str) -> Callable[[], AbstractAsyncContextManager[Store]]:  # noqa: F811
    return lambda: open_postgres_store(postgres_dsn)


async def test_two_stores_claiming_at_once_take_each_wakeup_once(postgres_dsn: str) -> None:  # noqa: F811
    async with open_postgres_store(postgres_dsn) as first, \
            open_postgres_store(postgres_dsn) as second:
        devices = [await _device_with_target(first) for _ in range(WAKEUPS)]
        await first.schedule_wakeups([(user.user_id, device_id, False)
                                      for user, device_id in devices],
                                     now=NOW, interval_ms=INTERVAL_MS)
        taken: list[tuple[str, int]] = []

        async def claim(store: Store) -> None:
            for _ in range(WAKEUPS):
                claims = await store.claim_wakeups(now=NOW, limit=3, lease_ms=LEASE_MS,
                                                   claim_token=secrets.token_bytes(16))
                taken.extend((claim.user_id, claim.device_id) for claim in claims.claimed)
                if not claims.claimed:
                    return

        async with trio.open_nursery() as nursery:
            for store in (first, second, first, second):
                nursery.start_soon(claim, store)
        assert sorted(taken) == sorted((user.user_id, device_id) for user, device_id in devices)


async def test_a_device_another_node_holds_gets_no_wakeup(postgres_dsn: str) -> None:  # noqa: F811
    async with open_postgres_store(postgres_dsn) as store:
        user, device_id = await _device_with_target(store)

        def hold(connection: object) -> None:
            connection.execute(  # type: ignore[attr-defined]
                "INSERT INTO presence (user_id, device_id, node_name, channel, session_token,"
                " expires_at) VALUES (%s, %s, 'other', 'other-channel', 'token', %s)",
                (user.user_id, device_id, NOW + 1))

        await store.submit_write_for_tests(hold).wait()
        held = await store.schedule_wakeups([(user.user_id, device_id, True)], now=NOW,
                                            interval_ms=INTERVAL_MS)
        assert held.scheduled == {} and held.coalesced == {}
        # Once the holder's lease ran out, the device counts as away.
        lapsed = await store.schedule_wakeups([(user.user_id, device_id, True)], now=NOW + 1,
                                              interval_ms=INTERVAL_MS)
        assert lapsed.scheduled == {"outbox": 1}
