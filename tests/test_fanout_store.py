"""Multi-recipient sends in the store, on a real SQLite file and a fresh PostgreSQL schema.

The shared ciphertext is stored once and counted; each device gets an ordinary envelope; an
acknowledgement, the expiry sweep or a device's deletion releases the count in the deleting
transaction, and the last one deletes the shared row. Everything SEND promises (all or
nothing, idempotency, order, queue limits, the sender's share) holds for every recipient.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import trio

from storage.base import PendingResult, SendOutcome, SendStatus, Store, User
from storage.core_store import CoreStoreMethods
from storage.fanout_records import MultiSendOutcome, NewMultiSend, RecipientRefusal
from storage.postgres import PostgresStore, open_postgres_store
from storage.sqlite import open_sqlite_store
from tests.storage_conformance import (
    DEEP_QUEUE,
    NOW,
    TIMEOUT_S,
    TTL_MS,
    _enrolled,
    _fetch_all,
    _organisation,
    _send,
    _send_now,
)
from tests.test_storage_postgres import postgres_dsn  # noqa: F401  (a fixture)

SHARED = b"one group ciphertext, stored once" * 30


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        async with open_sqlite_store(tmp_path / "relay.db", synchronous="NORMAL") as opened:
            yield opened
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        async with open_postgres_store(dsn) as opened:
            yield opened


def _material(user: User, device_id: int) -> bytes:
    return f"key for {user.user_id}/{device_id}".encode()


def _multi(sender: User, recipients: Mapping[User, list[int]], client_message_id: int, *,
           sender_device_id: int = 1, shared: bytes = SHARED, accepted_at: int = NOW,
           max_queue_depth: int = DEEP_QUEUE, max_sender_share: int | None = None,
           ) -> NewMultiSend:
    return NewMultiSend(
        sender_user_id=sender.user_id, sender_device_id=sender_device_id,
        client_message_id=client_message_id, shared=shared,
        recipients={user.user_id: {device_id: _material(user, device_id) for device_id in devices}
                    for user, devices in recipients.items()},
        accepted_at=accepted_at, expires_at=accepted_at + TTL_MS,
        max_queue_depth=max_queue_depth, max_sender_share=max_sender_share)


async def _multi_now(store: Store, send: NewMultiSend) -> MultiSendOutcome:
    with trio.fail_after(TIMEOUT_S):
        return await store.submit_multi_send(send).wait()


async def _query(store: Store, statement: str) -> list[Any]:
    """Read the store's own tables through its writer connection (both dialects)."""
    assert isinstance(store, CoreStoreMethods)
    rows: list[Any] = await store.submit_write_for_tests(
        lambda connection: connection.execute(statement).fetchall()).wait()
    return rows


async def _shared_rows(store: Store) -> list[tuple[int, int]]:
    """(remaining, payload length) of every stored shared payload."""
    return [(int(remaining), int(size)) for remaining, size in await _query(
        store, "SELECT remaining, length(payload) FROM shared_payloads")]


async def _envelope_count(store: Store) -> int:
    return int((await _query(store, "SELECT COUNT(*) FROM envelopes"))[0][0])


async def _group(store: Store) -> tuple[User, dict[User, list[int]]]:
    """A sender and three recipient users of one, two and three devices (six devices)."""
    organisation = await _organisation(store, seats=10)
    sender, _ = await _enrolled(store, organisation=organisation)
    recipients = {}
    for count in (1, 2, 3):
        user, devices = await _enrolled(store, devices=count, organisation=organisation)
        recipients[user] = devices
    return sender, recipients


async def test_the_shared_payload_is_stored_once_and_each_device_gets_its_envelope(
        store: Store) -> None:
    sender, recipients = await _group(store)
    outcome = await _multi_now(store, _multi(sender, recipients, 1))
    assert outcome.status is SendStatus.ACCEPTED
    assert len(outcome.envelopes) == 6
    ids = [envelope.envelope_id for envelope in outcome.envelopes]
    assert ids == sorted(ids)
    assert await _shared_rows(store) == [(6, len(SHARED))]
    assert await _envelope_count(store) == 6
    # Per device: the key material as the ciphertext, the shared bytes with it; the stored
    # payload bytes are the shared ciphertext once plus the key material, not six copies.
    stored = sum(int(size) for (size,) in await _query(
        store, "SELECT length(ciphertext) FROM envelopes"))
    assert stored == sum(len(_material(user, device_id)) for user, devices in recipients.items()
                         for device_id in devices)
    for user, devices in recipients.items():
        for device_id in devices:
            [envelope] = await _fetch_all(store, user, device_id)
            assert envelope.ciphertext == _material(user, device_id)
            assert envelope.shared == SHARED
            assert envelope.sender_user_id == sender.user_id
            assert await store.queue_depth(user_id=user.user_id, device_id=device_id) == 1


async def test_the_shared_payload_goes_with_the_last_acknowledgement(store: Store) -> None:
    sender, recipients = await _group(store)
    outcome = await _multi_now(store, _multi(sender, recipients, 1))
    envelopes = list(outcome.envelopes)
    last = envelopes.pop()
    for done, envelope in enumerate(envelopes, start=1):
        # An acknowledgement by another device (not the owner) releases nothing.
        stranger = next(e for e in outcome.envelopes
                        if e.recipient_user_id != envelope.recipient_user_id)
        assert await store.acknowledge(user_id=stranger.recipient_user_id,
                                       device_id=stranger.recipient_device_id,
                                       envelope_ids=[envelope.envelope_id]) == 0
        assert await store.acknowledge(user_id=envelope.recipient_user_id,
                                       device_id=envelope.recipient_device_id,
                                       envelope_ids=[envelope.envelope_id]) == 1
        # Acknowledging again changes nothing.
        assert await store.acknowledge(user_id=envelope.recipient_user_id,
                                       device_id=envelope.recipient_device_id,
                                       envelope_ids=[envelope.envelope_id]) == 0
        assert await _shared_rows(store) == [(6 - done, len(SHARED))]
    assert await store.acknowledge(user_id=last.recipient_user_id,
                                   device_id=last.recipient_device_id,
                                   envelope_ids=[last.envelope_id]) == 1
    assert await _shared_rows(store) == []
    assert await _envelope_count(store) == 0


async def test_the_shared_payload_goes_with_the_last_expiry(store: Store) -> None:
    sender, recipients = await _group(store)
    outcome = await _multi_now(store, _multi(sender, recipients, 1))
    first = outcome.envelopes[0]
    await store.acknowledge(user_id=first.recipient_user_id,
                            device_id=first.recipient_device_id, envelope_ids=[first.envelope_id])
    # Expired envelopes are not delivered, even before the sweep.
    assert await _fetch_all(store, first_user(recipients), 1, now=NOW + TTL_MS) == []
    # A bounded sweep releases what it deletes, in its own transaction.
    assert await store.expire(now=NOW + TTL_MS, limit=2) == 2
    assert await _shared_rows(store) == [(3, len(SHARED))]
    assert await store.expire(now=NOW + TTL_MS, limit=100) == 3
    assert await _shared_rows(store) == []
    for user, devices in recipients.items():
        for device_id in devices:
            assert await store.queue_depth(user_id=user.user_id, device_id=device_id) == 0


def first_user(recipients: Mapping[User, list[int]]) -> User:
    return next(iter(recipients))


async def test_a_deleted_recipient_releases_its_envelopes(store: Store) -> None:
    organisation = await _organisation(store, seats=5)
    sender, _ = await _enrolled(store, organisation=organisation)
    staying, staying_devices = await _enrolled(store, devices=1, organisation=organisation)
    doomed, doomed_devices = await _enrolled(store, devices=2, organisation=organisation)
    outcome = await _multi_now(store, _multi(
        sender, {staying: staying_devices, doomed: doomed_devices}, 1))
    assert outcome.status is SendStatus.ACCEPTED
    await store.delete_user(organisation=organisation, phone=doomed.phone)
    assert await _shared_rows(store) == [(1, len(SHARED))]
    [envelope] = await _fetch_all(store, staying, staying_devices[0])
    await store.acknowledge(user_id=staying.user_id, device_id=staying_devices[0],
                            envelope_ids=[envelope.envelope_id])
    assert await _shared_rows(store) == []


async def test_mismatched_devices_name_every_user_and_store_nothing(store: Store) -> None:
    sender, recipients = await _group(store)
    one, two, three = recipients
    wrong = {one: recipients[one], two: recipients[two][:1], three: [*recipients[three], 9]}
    outcome = await _multi_now(store, _multi(sender, wrong, 1))
    assert outcome.status is SendStatus.MISMATCHED_DEVICES
    assert sorted(outcome.refusals, key=lambda refusal: refusal.user_id) == sorted([
        RecipientRefusal(user_id=two.user_id, missing_devices=(recipients[two][1],)),
        RecipientRefusal(user_id=three.user_id, extra_devices=(9,)),
    ], key=lambda refusal: refusal.user_id)
    assert await _shared_rows(store) == []
    assert await _envelope_count(store) == 0
    # Nothing was remembered either: the corrected send with the same id is accepted.
    assert (await _multi_now(store, _multi(sender, recipients, 1))).status is (
        SendStatus.ACCEPTED)


async def test_an_unknown_recipient_stores_nothing(store: Store) -> None:
    sender, recipients = await _group(store)
    ghost = dataclasses.replace(sender, user_id="u-ghost", phone="+15550000000")
    outcome = await _multi_now(store, _multi(sender, {**recipients, ghost: [1]}, 1))
    assert outcome.status is SendStatus.UNKNOWN_RECIPIENT
    assert await _shared_rows(store) == []
    assert await _envelope_count(store) == 0


async def test_a_full_queue_refuses_the_whole_send(store: Store) -> None:
    sender, recipients = await _group(store)
    two = list(recipients)[1]
    other, _ = await _enrolled(store)
    # Fill one device of the second user to the depth the send will be checked against.
    assert (await _send_now(store, _send(other, two, recipients[two], 1))).status is (
        SendStatus.ACCEPTED)
    outcome = await _multi_now(store, _multi(sender, recipients, 1, max_queue_depth=1))
    assert outcome.status is SendStatus.QUEUE_FULL
    assert outcome.refusals == (RecipientRefusal(user_id=two.user_id,
                                                 full_devices=tuple(recipients[two])),)
    assert await _shared_rows(store) == []
    assert await _envelope_count(store) == 2  # the earlier SEND's only


async def test_the_senders_share_is_counted_per_device(store: Store) -> None:
    sender, recipients = await _group(store)
    one = first_user(recipients)
    assert (await _multi_now(store, _multi(sender, recipients, 1, max_sender_share=1))).status \
        is SendStatus.ACCEPTED
    outcome = await _multi_now(store, _multi(sender, recipients, 2, max_sender_share=1))
    assert outcome.status is SendStatus.SENDER_SHARE_FULL
    assert {refusal.user_id for refusal in outcome.refusals} == {
        user.user_id for user in recipients}
    assert await _shared_rows(store) == [(6, len(SHARED))]
    # Acknowledging frees the share of that device only.
    [envelope] = await _fetch_all(store, one, recipients[one][0])
    await store.acknowledge(user_id=one.user_id, device_id=recipients[one][0],
                            envelope_ids=[envelope.envelope_id])
    assert (await _multi_now(store, _multi(sender, {one: recipients[one]}, 3,
                                           max_sender_share=1))).status is SendStatus.ACCEPTED


async def test_a_resend_is_a_duplicate_and_sends_share_the_key_space(store: Store) -> None:
    sender, recipients = await _group(store)
    assert (await _multi_now(store, _multi(sender, recipients, 1))).status is (
        SendStatus.ACCEPTED)
    again = await _multi_now(store, _multi(sender, recipients, 1))
    assert again.status is SendStatus.DUPLICATE
    assert again.envelopes == ()
    one = first_user(recipients)
    assert (await _send_now(store, _send(sender, one, recipients[one], 1))).status is (
        SendStatus.DUPLICATE)
    assert await _shared_rows(store) == [(6, len(SHARED))]
    assert await _envelope_count(store) == 6


async def test_sends_and_multi_sends_of_one_device_keep_their_order(store: Store) -> None:
    sender, recipients = await _group(store)
    one = first_user(recipients)
    submitted: list[PendingResult[SendOutcome] | PendingResult[MultiSendOutcome]] = [
        store.submit_send(_send(sender, one, recipients[one], 1, body=b"first")),
        store.submit_multi_send(_multi(sender, recipients, 2, shared=b"second")),
        store.submit_send(_send(sender, one, recipients[one], 3, body=b"third")),
        store.submit_multi_send(_multi(sender, recipients, 4, shared=b"fourth")),
    ]
    with trio.fail_after(TIMEOUT_S):
        for pending in submitted:
            assert (await pending.wait()).status is SendStatus.ACCEPTED
    queue = await _fetch_all(store, one, recipients[one][0])
    assert [envelope.client_message_id for envelope in queue] == [1, 2, 3, 4]
    assert [envelope.shared for envelope in queue] == [None, b"second", None, b"fourth"]


async def test_a_sender_may_include_its_own_other_devices(store: Store) -> None:
    organisation = await _organisation(store)
    sender, sender_devices = await _enrolled(store, devices=2, organisation=organisation)
    friend, friend_devices = await _enrolled(store, organisation=organisation)
    outcome = await _multi_now(store, _multi(
        sender, {sender: sender_devices[1:], friend: friend_devices}, 1,
        sender_device_id=sender_devices[0]))
    assert outcome.status is SendStatus.ACCEPTED
    assert await _fetch_all(store, sender, sender_devices[0]) == []
    [own] = await _fetch_all(store, sender, sender_devices[1])
    assert own.shared == SHARED


async def test_the_tables_hold_no_more_than_bytes_devices_and_envelope_fields(
        store: Store) -> None:
    # Nothing a group could be named by: the shared table holds the bytes, a count and an
    # expiry; an envelope holds the usual fields and which shared row it refers to.
    sender, recipients = await _group(store)
    await _multi_now(store, _multi(sender, recipients, 1))
    assert await _columns(store, "shared_payloads") == {
        "shared_id", "payload", "remaining", "expires_at"}
    assert await _columns(store, "envelopes") == {"envelope_id", "recipient_user_id", "recipient_device_id",
                       "sender_user_id", "sender_device_id", "client_message_id", "ciphertext",
                       "accepted_at", "expires_at", "shared_id", "share_key"}


async def _columns(store: Store, table: str) -> set[str]:
    statement = (f"SELECT column_name FROM information_schema.columns WHERE table_name ="
                 f" '{table}' AND table_schema = current_schema()"
                 if isinstance(store, PostgresStore)
                 else f"SELECT name FROM pragma_table_info('{table}')")
    return {str(name) for (name,) in await _query(store, statement)}


async def test_the_organisation_check_applies_to_the_users_named_for_it(store: Store) -> None:
    # A sealed fan-out checks the sender's organisation only for the users that admit it by
    # organisation; the others admitted it by their delivery token.
    home, away = await _organisation(store), await _organisation(store)
    sender, _ = await _enrolled(store, organisation=home)
    near, near_devices = await _enrolled(store, organisation=home)
    far, far_devices = await _enrolled(store, organisation=away)
    await store.set_cross_organisation_allowed(organisation=away, allowed=False)
    organisation = sender.organisation_id
    recipients = {near: near_devices, far: far_devices}
    checked_all = dataclasses.replace(_multi(sender, recipients, 1),
                                      sender_organisation_id=organisation)
    assert (await _multi_now(store, checked_all)).status is SendStatus.UNKNOWN_RECIPIENT
    checked_near = dataclasses.replace(checked_all, organisation_checked=frozenset({
        near.user_id}))
    assert (await _multi_now(store, checked_near)).status is SendStatus.ACCEPTED
    checked_far = dataclasses.replace(checked_all, client_message_id=2,
                                      organisation_checked=frozenset({far.user_id}))
    assert (await _multi_now(store, checked_far)).status is SendStatus.UNKNOWN_RECIPIENT
