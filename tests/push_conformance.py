"""Backend-independent conformance tests of the wake-up push store (``storage.interfaces.push``).

Run against SQLite by ``tests/test_push_store_sqlite.py`` and against PostgreSQL by
``tests/test_push_store_postgres.py``; each defines ``store_opener`` as for
``tests/storage_conformance.py`` (the same persistent store each time it is called).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from storage.base import Store, User
from storage.push_records import StoredPushTarget, WakeupResult
from tests.storage_conformance import (
    NOW,
    StoreOpener,
    _code_for,
    _declared,
    _enrolled,
    _organisation,
    _register_device,
    _send,
    _send_now,
)

INTERVAL_MS = 30_000
LEASE_MS = 60_000
URGENT_INTERVAL_MS = 5_000
OUTBOX = StoredPushTarget(provider="outbox", token="device-token-1")
WEBPUSH = StoredPushTarget(provider="webpush", token="https://push.example.test/w/1",
                           p256dh=b"\x04" + bytes(64), auth=bytes(range(16)))

__all__ = [
    "store",
    "test_a_claim_is_taken_once_until_its_lease_ends",
    "test_a_device_connecting_restarts_coalescing",
    "test_a_finish_from_a_stale_claim_changes_nothing",
    "test_a_gone_target_is_deleted_with_its_wakeup",
    "test_a_gone_target_replaced_meanwhile_stays_and_its_wakeup_is_due_again",
    "test_a_retry_is_not_claimed_before_its_time",
    "test_a_target_is_set_replaced_read_and_cleared",
    "test_a_target_needs_an_existing_device",
    "test_a_wakeup_row_names_only_its_recipient_device",
    "test_an_urgent_envelope_during_a_plain_push_is_pushed_again_urgently",
    "test_an_urgent_envelope_rearms_a_pushed_wakeup_at_once",
    "test_every_deletion_path_deletes_the_target",
    "test_pending_wakeups_survive_reopening",
    "test_recovery_wakes_devices_with_a_queue_and_no_wakeup",
    "test_scheduling_coalesces_within_the_interval",
    "test_scheduling_ignores_devices_without_a_target",
    "test_urgent_pushes_are_spaced_by_the_urgent_interval",
]


@pytest.fixture
async def store(store_opener: StoreOpener) -> AsyncIterator[Store]:
    async with store_opener() as opened:
        yield opened


async def _device_with_target(store: Store, target: StoredPushTarget = OUTBOX,
                              organisation: str | None = None) -> tuple[User, int]:
    user, [device_id] = await _enrolled(store, organisation=organisation)
    assert await store.set_push_target(user_id=user.user_id, device_id=device_id,
                                       target=target, now=NOW)
    return user, device_id


async def _claim(store: Store, now: int, token: bytes | None = None) -> list[Any]:
    claims = await store.claim_wakeups(now=now, limit=100, lease_ms=LEASE_MS,
                                       claim_token=token or secrets.token_bytes(16))
    return list(claims.claimed)


async def _claim_for(store: Store, user: User, now: int,
                     token: bytes | None = None) -> list[Any]:
    return [claim for claim in await _claim(store, now, token) if claim.user_id == user.user_id]


async def test_a_target_is_set_replaced_read_and_cleared(store: Store) -> None:
    user, device_id = await _device_with_target(store)
    assert await store.get_push_target(user_id=user.user_id, device_id=device_id) == OUTBOX
    assert (user.user_id, device_id) in await store.push_target_devices()
    assert await store.set_push_target(user_id=user.user_id, device_id=device_id,
                                       target=WEBPUSH, now=NOW)
    assert await store.get_push_target(user_id=user.user_id, device_id=device_id) == WEBPUSH
    other, [other_device] = await _enrolled(store)
    assert await store.devices_with_targets(
        [(user.user_id, device_id), (user.user_id, device_id + 1),
         (other.user_id, other_device)]) == {(user.user_id, device_id)}
    assert await store.devices_with_targets([]) == set()
    await store.clear_push_target(user_id=user.user_id, device_id=device_id)
    assert await store.get_push_target(user_id=user.user_id, device_id=device_id) is None
    assert (user.user_id, device_id) not in await store.push_target_devices()


async def test_a_target_needs_an_existing_device(store: Store) -> None:
    user = await _declared(store)
    assert not await store.set_push_target(user_id=user.user_id, device_id=1, target=OUTBOX,
                                           now=NOW)
    assert await store.get_push_target(user_id=user.user_id, device_id=1) is None


async def test_scheduling_ignores_devices_without_a_target(store: Store) -> None:
    user, [device_id] = await _enrolled(store)
    done = await store.schedule_wakeups([(user.user_id, device_id, True)], now=NOW,
                                        interval_ms=INTERVAL_MS)
    assert done.scheduled == {} and done.coalesced == {}
    assert await _claim_for(store, user, NOW) == []


async def test_scheduling_coalesces_within_the_interval(store: Store) -> None:
    user, device_id = await _device_with_target(store)
    key = (user.user_id, device_id, False)
    first = await store.schedule_wakeups([key, key], now=NOW, interval_ms=INTERVAL_MS)
    assert first.scheduled == {"outbox": 1} and first.coalesced == {}
    again = await store.schedule_wakeups([key], now=NOW + 1, interval_ms=INTERVAL_MS)
    assert again.scheduled == {} and again.coalesced == {"outbox": 1}
    token = secrets.token_bytes(16)
    [claim] = await _claim_for(store, user, NOW + 1, token)
    assert (claim.device_id, claim.target, claim.urgent, claim.attempts, claim.committed_at) == (
        device_id, OUTBOX, False, 0, NOW)
    assert await store.finish_wakeup(user_id=user.user_id, device_id=device_id,
                                     claim_token=token, result=WakeupResult.PUSHED, now=NOW + 2)
    # Pushed: further envelopes within the interval are coalesced, none is due...
    within = await store.schedule_wakeups([key], now=NOW + 2 + INTERVAL_MS - 1,
                                          interval_ms=INTERVAL_MS)
    assert within.coalesced == {"outbox": 1} and within.scheduled == {}
    assert await _claim_for(store, user, NOW + 10 * INTERVAL_MS) == []
    # ...and the first one after it is due at once.
    after = await store.schedule_wakeups([key], now=NOW + 2 + INTERVAL_MS,
                                         interval_ms=INTERVAL_MS)
    assert after.scheduled == {"outbox": 1}
    [claim] = await _claim_for(store, user, NOW + 2 + INTERVAL_MS)
    assert claim.committed_at == NOW + 2 + INTERVAL_MS


async def test_an_urgent_envelope_rearms_a_pushed_wakeup_at_once(store: Store) -> None:
    user, device_id = await _device_with_target(store)
    await store.schedule_wakeups([(user.user_id, device_id, False)], now=NOW,
                                 interval_ms=INTERVAL_MS)
    token = secrets.token_bytes(16)
    await _claim_for(store, user, NOW, token)
    await store.finish_wakeup(user_id=user.user_id, device_id=device_id, claim_token=token,
                              result=WakeupResult.PUSHED, now=NOW)
    urgent = await store.schedule_wakeups([(user.user_id, device_id, True)], now=NOW + 1,
                                          interval_ms=INTERVAL_MS)
    assert urgent.scheduled == {"outbox": 1}
    [claim] = await _claim_for(store, user, NOW + 1)
    assert claim.urgent


async def test_a_device_connecting_restarts_coalescing(store: Store) -> None:
    user, device_id = await _device_with_target(store)
    key = (user.user_id, device_id, False)
    await store.schedule_wakeups([key], now=NOW, interval_ms=INTERVAL_MS)
    await store.clear_wakeup(user_id=user.user_id, device_id=device_id)
    assert await _claim_for(store, user, NOW) == []  # connected before it was sent: none
    done = await store.schedule_wakeups([key], now=NOW + 1, interval_ms=INTERVAL_MS)
    assert done.scheduled == {"outbox": 1}


async def test_a_claim_is_taken_once_until_its_lease_ends(store: Store) -> None:
    user, device_id = await _device_with_target(store)
    await store.schedule_wakeups([(user.user_id, device_id, False)], now=NOW,
                                 interval_ms=INTERVAL_MS)
    claims = await store.claim_wakeups(now=NOW, limit=100, lease_ms=LEASE_MS,
                                       claim_token=b"a" * 16)
    assert [claim.device_id for claim in claims.claimed if claim.user_id == user.user_id] == [
        device_id]
    assert claims.next_due_at is not None and claims.next_due_at <= NOW + LEASE_MS
    assert await _claim_for(store, user, NOW + LEASE_MS - 1) == []
    assert await store.next_wakeup_due() == claims.next_due_at
    # The claimer died: once its lease ended, another takes the wake-up over.
    [claim] = await _claim_for(store, user, NOW + LEASE_MS)
    assert claim.attempts == 1


async def test_a_finish_from_a_stale_claim_changes_nothing(store: Store) -> None:
    user, device_id = await _device_with_target(store)
    await store.schedule_wakeups([(user.user_id, device_id, False)], now=NOW,
                                 interval_ms=INTERVAL_MS)
    await _claim_for(store, user, NOW, b"a" * 16)
    await _claim_for(store, user, NOW + LEASE_MS, b"b" * 16)
    assert not await store.finish_wakeup(user_id=user.user_id, device_id=device_id,
                                         claim_token=b"a" * 16, result=WakeupResult.GONE,
                                         now=NOW + LEASE_MS, target=OUTBOX)
    assert await store.get_push_target(user_id=user.user_id, device_id=device_id) == OUTBOX
    assert await store.finish_wakeup(user_id=user.user_id, device_id=device_id,
                                     claim_token=b"b" * 16, result=WakeupResult.PUSHED,
                                     now=NOW + LEASE_MS)


async def test_a_retry_is_not_claimed_before_its_time(store: Store) -> None:
    user, device_id = await _device_with_target(store)
    await store.schedule_wakeups([(user.user_id, device_id, False)], now=NOW,
                                 interval_ms=INTERVAL_MS)
    token = secrets.token_bytes(16)
    await _claim_for(store, user, NOW, token)
    assert await store.finish_wakeup(user_id=user.user_id, device_id=device_id,
                                     claim_token=token, result=WakeupResult.RETRY, now=NOW,
                                     retry_at=NOW + 5_000)
    assert await _claim_for(store, user, NOW + 4_999) == []
    [claim] = await _claim_for(store, user, NOW + 5_000)
    assert claim.attempts == 1


async def test_a_gone_target_is_deleted_with_its_wakeup(store: Store) -> None:
    user, device_id = await _device_with_target(store)
    await store.schedule_wakeups([(user.user_id, device_id, False)], now=NOW,
                                 interval_ms=INTERVAL_MS)
    token = secrets.token_bytes(16)
    await _claim_for(store, user, NOW, token)
    assert await store.finish_wakeup(user_id=user.user_id, device_id=device_id,
                                     claim_token=token, result=WakeupResult.GONE, now=NOW,
                                     target=OUTBOX)
    assert await store.get_push_target(user_id=user.user_id, device_id=device_id) is None
    assert await _claim_for(store, user, NOW + 10 * LEASE_MS) == []
    assert await store.next_wakeup_due() is None


async def test_a_gone_target_replaced_meanwhile_stays_and_its_wakeup_is_due_again(
        store: Store) -> None:
    user, device_id = await _device_with_target(store)
    await store.schedule_wakeups([(user.user_id, device_id, False)], now=NOW,
                                 interval_ms=INTERVAL_MS)
    token = secrets.token_bytes(16)
    await _claim_for(store, user, NOW, token)
    await store.set_push_target(user_id=user.user_id, device_id=device_id, target=WEBPUSH,
                                now=NOW)
    assert await store.finish_wakeup(user_id=user.user_id, device_id=device_id,
                                     claim_token=token, result=WakeupResult.GONE, now=NOW + 1,
                                     target=OUTBOX)
    assert await store.get_push_target(user_id=user.user_id, device_id=device_id) == WEBPUSH
    [claim] = await _claim_for(store, user, NOW + 1)
    assert claim.target == WEBPUSH


async def test_pending_wakeups_survive_reopening(store_opener: StoreOpener) -> None:
    async with store_opener() as store:
        user, device_id = await _device_with_target(store)
        await store.schedule_wakeups([(user.user_id, device_id, True)], now=NOW,
                                     interval_ms=INTERVAL_MS)
    async with store_opener() as reopened:
        [claim] = await _claim_for(reopened, user, NOW)
        assert (claim.device_id, claim.urgent, claim.target) == (device_id, True, OUTBOX)


async def test_recovery_wakes_devices_with_a_queue_and_no_wakeup(store: Store) -> None:
    sender, _ = await _enrolled(store)
    user, device_id = await _device_with_target(store)
    quiet, quiet_device = await _device_with_target(store)
    outcome = await _send_now(store, _send(sender, user, [device_id], 1))
    assert outcome.envelopes
    assert await store.recover_wakeups(now=NOW) >= 1
    claimed = {(claim.user_id, claim.device_id) for claim in await _claim(store, NOW)}
    assert (user.user_id, device_id) in claimed
    assert (quiet.user_id, quiet_device) not in claimed  # nothing queued: nothing to say
    # A device with a wake-up already (pending or pushed) gets no second one.
    await store.recover_wakeups(now=NOW)
    assert await _claim_for(store, user, NOW) == []


async def test_a_wakeup_row_names_only_its_recipient_device(store: Store) -> None:
    sender, _ = await _enrolled(store)
    user, device_id = await _device_with_target(store)
    await _send_now(store, _send(sender, user, [device_id], 7, body=b"secret-body-marker"))
    await store.schedule_wakeups([(user.user_id, device_id, True)], now=NOW,
                                 interval_ms=INTERVAL_MS)
    rows = await store.submit_write_for_tests(  # type: ignore[attr-defined]
        lambda connection: connection.execute("SELECT * FROM push_wakeups").fetchall()).wait()
    mine = [row for row in rows if user.user_id in row]
    assert len(mine) == 1
    flat = repr(mine)
    assert sender.user_id not in flat and "secret-body-marker" not in flat


async def test_every_deletion_path_deletes_the_target(store: Store) -> None:
    async def has_target(user: User, device_id: int) -> bool:
        return await store.get_push_target(user_id=user.user_id, device_id=device_id) is not None

    organisation = await _organisation(store)
    # An operator deletes the user: its target and pending wake-up go.
    deleted, deleted_device = await _device_with_target(store, organisation=organisation)
    await store.schedule_wakeups([(deleted.user_id, deleted_device, False)], now=NOW,
                                 interval_ms=INTERVAL_MS)
    await store.delete_user(organisation=organisation, phone=deleted.phone)
    assert not await has_target(deleted, deleted_device)
    assert await _claim_for(store, deleted, NOW) == []
    # An operator revokes one device.
    revoked, revoked_device = await _device_with_target(store, organisation=organisation)
    await store.revoke_device(organisation=organisation, phone=revoked.phone,
                              device_id=revoked_device, now=NOW)
    assert not await has_target(revoked, revoked_device)
    # A published device list leaves a device out.
    listed, [first, second] = await _enrolled(store, devices=2, organisation=organisation)
    assert await store.set_push_target(user_id=listed.user_id, device_id=second, target=OUTBOX,
                                       now=NOW)
    account = await store.account(listed.user_id)
    assert account is not None and account.account_key is not None
    devices = await store.list_devices(listed.user_id)
    keys = frozenset(device.identity_key for device in devices if device.device_id == first)
    await store.publish_device_list(
        user_id=listed.user_id, publisher_device_id=first, account_key=account.account_key,
        version=account.device_list_version + 1, identity_keys=keys, encoded=b"list" + bytes(8),
        now=NOW, max_devices=5, revoke_reason="removed")
    assert not await has_target(listed, second)
    # The number is enrolled again: every earlier device is revoked.
    assert await store.set_push_target(user_id=listed.user_id, device_id=first, target=OUTBOX,
                                       now=NOW)
    await _reenrol(store, listed)
    assert not await has_target(listed, first)
    # The organisation is terminated.
    terminated = await _organisation(store)
    member, [member_device] = await _enrolled(store, organisation=terminated)
    assert await store.set_push_target(user_id=member.user_id, device_id=member_device,
                                       target=OUTBOX, now=NOW)
    await store.terminate_organisation(terminated)
    assert not await has_target(member, member_device)


async def _reenrol(store: Store, user: User) -> None:
    phone_key = await _code_for(store, user.phone)
    await _register_device(store, phone=user.phone, phone_key=phone_key)



async def test_an_urgent_envelope_during_a_plain_push_is_pushed_again_urgently(
        store: Store) -> None:
    user, device_id = await _device_with_target(store)
    await store.schedule_wakeups([(user.user_id, device_id, False)], now=NOW,
                                 interval_ms=INTERVAL_MS)
    token = secrets.token_bytes(16)
    [plain] = await _claim_for(store, user, NOW, token)
    assert not plain.urgent
    during = await store.schedule_wakeups([(user.user_id, device_id, True)], now=NOW + 1,
                                          interval_ms=INTERVAL_MS)
    assert during.coalesced == {"outbox": 1}
    assert await store.finish_wakeup(user_id=user.user_id, device_id=device_id,
                                     claim_token=token, result=WakeupResult.PUSHED, now=NOW + 2,
                                     sent_urgent=False)
    [again] = await _claim_for(store, user, NOW + 2)
    assert again.urgent


async def test_urgent_pushes_are_spaced_by_the_urgent_interval(store: Store) -> None:
    user, device_id = await _device_with_target(store)
    key = (user.user_id, device_id, True)

    async def push_now(now: int) -> None:
        token = secrets.token_bytes(16)
        [claim] = await _claim_for(store, user, now, token)
        assert await store.finish_wakeup(user_id=user.user_id, device_id=device_id,
                                         claim_token=token, result=WakeupResult.PUSHED, now=now,
                                         sent_urgent=claim.urgent)

    await store.schedule_wakeups([key], now=NOW, interval_ms=INTERVAL_MS,
                                 urgent_interval_ms=URGENT_INTERVAL_MS)
    await push_now(NOW)
    soon = await store.schedule_wakeups([key], now=NOW + URGENT_INTERVAL_MS - 1,
                                        interval_ms=INTERVAL_MS,
                                        urgent_interval_ms=URGENT_INTERVAL_MS)
    assert soon.coalesced == {"outbox": 1}
    later = await store.schedule_wakeups([key], now=NOW + URGENT_INTERVAL_MS,
                                         interval_ms=INTERVAL_MS,
                                         urgent_interval_ms=URGENT_INTERVAL_MS)
    assert later.scheduled == {"outbox": 1}
