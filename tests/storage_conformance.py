"""Backend-independent conformance tests for ``storage.base.Store``.

A backend's test module reuses them all with::

    from tests.storage_conformance import *  # noqa: F403

and defines one fixture, ``store_opener``: a zero-argument callable returning an
async context manager that opens THE SAME persistent store each time it is
called (a file, a database), so that tests can close and reopen it. The
``store`` fixture below opens it once for the test.

Optional capabilities are used when the store has them and skipped otherwise:
``commit_count`` (group commit) and ``set_organisation_state``.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import hypothesis
import pytest
import trio
from hypothesis import strategies as st

from storage.base import (
    AlreadyExists,
    NewSend,
    NotFound,
    OrganisationState,
    Registration,
    RegistrationRefusal,
    RegistrationRefused,
    SeatLimitReached,
    SendOutcome,
    SendStatus,
    Store,
    User,
    UserState,
)
from storage.records import GuessBudgetSpent

StoreOpener = Callable[[], AbstractAsyncContextManager[Store]]

NOW = 1_700_000_000_000
"""A fixed clock reading (ms): storage never reads the clock itself."""
DAY_MS = 24 * 60 * 60 * 1000
TTL_MS = 30 * DAY_MS
MAX_DEVICES = 5
DEEP_QUEUE = 10_000
"""A max_queue_depth no test reaches unless it means to."""
TIMEOUT_S = 30
"""Generous bound on anything that could hang (a lost wake-up), not a timing assertion."""

_unique = itertools.count(1)


def _fresh(prefix: str) -> str:
    """A name unique within the test session (hypothesis reuses one store per test)."""
    return f"{prefix}{next(_unique)}"


def _fresh_phone() -> str:
    return f"+4470{next(_unique):08d}"


def _fresh_user_id() -> str:
    return f"{next(_unique):032x}"


@pytest.fixture
async def store(store_opener: StoreOpener) -> AsyncIterator[Store]:
    async with store_opener() as opened:
        yield opened


# -- helpers -----------------------------------------------------------------


async def _organisation(store: Store, *, seats: int = 10) -> str:
    name = _fresh("org")
    await store.create_organisation(name=name, seats=seats, now=NOW)
    return name


async def _declared(store: Store, organisation: str | None = None) -> User:
    if organisation is None:
        organisation = await _organisation(store)
    return await store.declare_user(organisation=organisation, phone=_fresh_phone(),
                                    user_id=_fresh_user_id(), now=NOW)


async def _code_for(store: Store, phone: str, code_hash: bytes = b"hash") -> bytes:
    phone_key = b"key:" + phone.encode()
    assert await store.record_verification_code(
        phone_key=phone_key, code_hash=code_hash, now=NOW, expires_at=NOW + 600_000,
        window_ms=DAY_MS, max_sends=100)
    return phone_key


def _fresh_key() -> bytes:
    """32 bytes no other test uses: the store keeps keys opaque (the relay checks them)."""
    return next(_unique).to_bytes(32, "big")


def _list_bytes(account_key: bytes, version: int, keys: frozenset[bytes]) -> bytes:
    """Stands for a signed device list: opaque to the store, distinct per content."""
    return b"list" + account_key + version.to_bytes(8, "big") + b"".join(sorted(keys))


async def _register_device(store: Store, *, phone: str, phone_key: bytes,
                           code_hash: bytes = b"hash", identity_key: bytes | None = None,
                           account_key: bytes | None = None, now: int = NOW,
                           max_devices: int = MAX_DEVICES,
                           revoke_reason: str = "enrolled again") -> Registration:
    """``register_device`` with a new account key and its first list (one device)."""
    identity_key = _fresh_key() if identity_key is None else identity_key
    account_key = _fresh_key() if account_key is None else account_key
    return await store.register_device(
        phone=phone, phone_key=phone_key, code_hash=code_hash, identity_key=identity_key,
        account_key=account_key,
        device_list=_list_bytes(account_key, 1, frozenset((identity_key,))),
        device_list_version=1, now=now, max_devices=max_devices, revoke_reason=revoke_reason)


async def _register(store: Store, user: User, *, now: int = NOW) -> int:
    """Add a device to ``user`` as a client would: the first by enrolment, the next ones by
    publishing a device list that adds a new key. Returns its id."""
    account = await store.account(user.user_id)
    devices = await store.list_devices(user.user_id)
    if account is None or account.account_key is None or not devices:
        phone_key = await _code_for(store, user.phone)
        registration = await _register_device(store, phone=user.phone, phone_key=phone_key,
                                              now=now)
        return registration.device.device_id
    keys = frozenset(device.identity_key for device in devices) | {_fresh_key()}
    version = account.device_list_version + 1
    published = await store.publish_device_list(
        user_id=user.user_id, publisher_device_id=devices[0].device_id,
        account_key=account.account_key, version=version, identity_keys=keys,
        encoded=_list_bytes(account.account_key, version, keys), now=now,
        max_devices=MAX_DEVICES, revoke_reason="removed")
    [added] = published.added
    return added.device_id


async def _enrolled(store: Store, devices: int = 1,
                    organisation: str | None = None) -> tuple[User, list[int]]:
    user = await _declared(store, organisation)
    return user, [await _register(store, user) for _ in range(devices)]


def _send(sender: User, recipient: User, device_ids: list[int], client_message_id: int, *,
          sender_device_id: int = 1, accepted_at: int = NOW, ttl_ms: int = TTL_MS,
          max_queue_depth: int = DEEP_QUEUE, exclude_device_id: int | None = None,
          body: bytes = b"sealed", max_sender_share: int | None = None) -> NewSend:
    return NewSend(
        sender_user_id=sender.user_id, sender_device_id=sender_device_id,
        recipient_user_id=recipient.user_id, client_message_id=client_message_id,
        payloads={device_id: body + bytes([device_id]) for device_id in device_ids},
        accepted_at=accepted_at, expires_at=accepted_at + ttl_ms,
        max_queue_depth=max_queue_depth, exclude_device_id=exclude_device_id,
        max_sender_share=max_sender_share)


async def _send_now(store: Store, send: NewSend) -> SendOutcome:
    with trio.fail_after(TIMEOUT_S):
        return await store.submit_send(send).wait()


async def _fetch_all(store: Store, user: User, device_id: int, *, now: int = NOW) -> list[Any]:
    return await store.fetch_queue(user_id=user.user_id, device_id=device_id,
                                   after_envelope_id=0, limit=1_000_000, now=now)


# -- secrets -------------------------------------------------------------------


async def test_a_secret_fingerprint_is_kept_once_even_when_raced(store: Store) -> None:
    name = _fresh("secret")
    assert await store.secret_fingerprint(name) is None
    values: list[bytes] = []

    async def keep(candidate: bytes) -> None:
        values.append(await store.keep_secret_fingerprint(name, candidate))

    async with trio.open_nursery() as nursery:
        for index in range(10):
            nursery.start_soon(keep, bytes([index]) * 32)
    assert len(set(values)) == 1
    assert await store.keep_secret_fingerprint(name, b"other") == values[0]
    assert await store.secret_fingerprint(name) == values[0]
    # Replaced only on purpose (``secret create --replace``).
    assert await store.keep_secret_fingerprint(name, b"new", replace=True) == b"new"
    assert await store.secret_fingerprint(name) == b"new"


async def test_a_store_holds_no_secret_of_its_own(store: Store) -> None:
    name = _fresh("secret")
    assert await store.legacy_secret(name) is None
    await store.forget_legacy_secret(name)  # nothing to forget: no error
    assert await store.legacy_secret(name) is None


# -- organisations and users -----------------------------------------------------


async def test_organisation_is_created_active_and_its_name_is_unique(store: Store) -> None:
    name = _fresh("org")
    created = await store.create_organisation(name=name, seats=3, now=NOW)
    assert created.state is OrganisationState.ACTIVE
    assert (created.seats, created.created_at) == (3, NOW)
    assert await store.get_organisation(name) == created
    with pytest.raises(AlreadyExists):
        await store.create_organisation(name=name, seats=5, now=NOW)
    assert await store.get_organisation(_fresh("missing")) is None


async def test_declared_users_are_listed_by_phone(store: Store) -> None:
    organisation = await _organisation(store)
    for phone in ("+33600000003", "+33600000001", "+33600000002"):
        user = await store.declare_user(organisation=organisation, phone=phone + "9",
                                        user_id=_fresh_user_id(), now=NOW)
        assert (user.state, user.declared_at, user.enrolled_at) == (
            UserState.DECLARED, NOW, None)
    listed = await store.list_users(organisation)
    assert [user.phone for user in listed] == sorted(user.phone for user in listed)
    assert await store.find_user_by_phone(listed[0].phone) == listed[0]
    assert await store.find_user_by_phone("+10000000000") is None


async def test_declare_and_list_in_unknown_organisation_raise_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.declare_user(organisation=_fresh("nope"), phone=_fresh_phone(),
                                 user_id=_fresh_user_id(), now=NOW)
    with pytest.raises(NotFound):
        await store.list_users(_fresh("nope"))


async def test_a_phone_declared_in_any_organisation_is_taken(store: Store) -> None:
    user = await _declared(store)
    other = await _organisation(store)
    with pytest.raises(AlreadyExists):
        await store.declare_user(organisation=other, phone=user.phone,
                                 user_id=_fresh_user_id(), now=NOW)
    assert await store.list_users(other) == []


async def test_declarations_stop_at_the_seat_limit(store: Store) -> None:
    organisation = await _organisation(store, seats=2)
    await _declared(store, organisation)
    await _declared(store, organisation)
    with pytest.raises(SeatLimitReached) as raised:
        await _declared(store, organisation)
    assert raised.value.seats == 2
    assert len(await store.list_users(organisation)) == 2


async def test_concurrent_declarations_for_the_last_seat_admit_exactly_one(
        store: Store) -> None:
    organisation = await _organisation(store, seats=3)
    await _declared(store, organisation)
    await _declared(store, organisation)
    winners: list[User] = []
    refused: list[SeatLimitReached] = []

    async def declare() -> None:
        try:
            winners.append(await _declared(store, organisation))
        except SeatLimitReached as error:
            refused.append(error)

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(declare)
    assert (len(winners), len(refused)) == (1, 19)
    assert len(await store.list_users(organisation)) == 3


async def test_a_failing_operation_does_not_affect_concurrent_ones(store: Store) -> None:
    # Submitted in the same scheduling tick, these usually share one group
    # commit; either way, each succeeds or fails on its own.
    organisation = await _organisation(store)
    taken = await _declared(store, organisation)
    phones = [_fresh_phone() for _ in range(5)]
    errors: list[Exception] = []

    async def declare(phone: str) -> None:
        try:
            await store.declare_user(organisation=organisation, phone=phone,
                                     user_id=_fresh_user_id(), now=NOW)
        except AlreadyExists as error:
            errors.append(error)

    async with trio.open_nursery() as nursery:
        for phone in [phones[0], phones[1], taken.phone, phones[2], phones[0], *phones[3:]]:
            nursery.start_soon(declare, phone)
    assert len(errors) == 2
    listed = {user.phone for user in await store.list_users(organisation)}
    assert listed == {taken.phone, *phones}


async def test_delete_user_removes_devices_queues_and_code_and_frees_the_phone(
        store: Store) -> None:
    organisation = await _organisation(store, seats=3)
    sender, _ = await _enrolled(store, organisation=organisation)
    doomed, doomed_devices = await _enrolled(store, devices=2, organisation=organisation)
    assert (await _send_now(store, _send(sender, doomed, doomed_devices, 1))).status is (
        SendStatus.ACCEPTED)
    # The doomed user's own send to someone else stays: it was already accepted.
    assert (await _send_now(store, _send(doomed, sender, [1], 2))).status is (
        SendStatus.ACCEPTED)
    stale_key = await _code_for(store, doomed.phone, b"stale")

    deleted = await store.delete_user(organisation=organisation, phone=doomed.phone)
    assert deleted.user_id == doomed.user_id
    assert await store.find_user_by_phone(doomed.phone) is None
    assert await store.list_devices(doomed.user_id) == []
    assert await store.load_principal(doomed.user_id, 1) is None
    for device_id in doomed_devices:
        assert await store.queue_depth(user_id=doomed.user_id, device_id=device_id) == 0
        assert await _fetch_all(store, doomed, device_id) == []
    assert len(await _fetch_all(store, sender, 1)) == 1
    assert (await _send_now(store, _send(sender, doomed, doomed_devices, 3))).status is (
        SendStatus.UNKNOWN_RECIPIENT)

    # The phone is declarable again, and the code sent before deletion is dead.
    again = await store.declare_user(organisation=organisation, phone=doomed.phone,
                                     user_id=_fresh_user_id(), now=NOW + 1)
    with pytest.raises(RegistrationRefused) as refused:
        await _register_device(store, phone=again.phone, phone_key=stale_key,
                               code_hash=b"stale")
    assert refused.value.reason is RegistrationRefusal.CODE_CONSUMED
    assert await store.list_devices(again.user_id) == []


async def test_delete_user_raises_not_found(store: Store) -> None:
    user = await _declared(store)
    other = await _organisation(store)
    with pytest.raises(NotFound):
        await store.delete_user(organisation=other, phone=user.phone)
    with pytest.raises(NotFound):
        await store.delete_user(organisation=_fresh("nope"), phone=user.phone)
    assert await store.find_user_by_phone(user.phone) == user


# -- verification codes ---------------------------------------------------------


async def test_code_sends_are_limited_over_a_rolling_window(store: Store) -> None:
    phone_key = _fresh("key").encode()

    async def record(now: int) -> bool:
        return await store.record_verification_code(
            phone_key=phone_key, code_hash=b"h", now=now, expires_at=now + 1000,
            window_ms=1000, max_sends=2)

    assert await record(NOW)
    assert await record(NOW + 500)
    assert not await record(NOW + 999)
    assert await record(NOW + 1000)  # the first send has left the window
    assert not await record(NOW + 1001)
    assert await record(NOW + 1500)


async def _attempt(store: Store, phone_key: bytes, now: int = NOW, *, max_attempts: int = 5,
                   max_guesses: int = 100) -> bytes | None:
    return await store.take_verification_attempt(
        phone_key=phone_key, now=now, max_attempts=max_attempts, guess_window_ms=DAY_MS,
        max_guesses=max_guesses)


async def test_attempts_are_counted_and_a_new_code_resets_them(store: Store) -> None:
    phone_key = _fresh("key").encode()

    async def attempt(now: int = NOW) -> bytes | None:
        return await _attempt(store, phone_key, now, max_attempts=2)

    assert await attempt() is None
    await store.record_verification_code(phone_key=phone_key, code_hash=b"first", now=NOW,
                                         expires_at=NOW + 10, window_ms=DAY_MS, max_sends=5)
    assert await attempt() == b"first"
    assert await attempt() == b"first"
    assert await attempt() is None
    await store.record_verification_code(phone_key=phone_key, code_hash=b"second", now=NOW,
                                         expires_at=NOW + 10, window_ms=DAY_MS, max_sends=5)
    assert await attempt() == b"second"
    assert await attempt(NOW + 10) is None  # expired


async def test_a_new_code_does_not_reset_the_guesses_of_its_number(store: Store) -> None:
    phone_key = _fresh("key").encode()

    async def new_code(code_hash: bytes, now: int) -> None:
        assert await store.record_verification_code(
            phone_key=phone_key, code_hash=code_hash, now=now, expires_at=now + 1000,
            window_ms=DAY_MS, max_sends=100)

    async def attempt(now: int) -> bytes | None:
        return await _attempt(store, phone_key, now, max_attempts=2, max_guesses=3)

    await new_code(b"first", NOW)
    assert await attempt(NOW) == b"first"
    assert await attempt(NOW + 1) == b"first"
    await new_code(b"second", NOW + 2)
    assert await attempt(NOW + 3) == b"second"  # the third guess of the window
    with pytest.raises(GuessBudgetSpent) as spent:
        await attempt(NOW + 4)
    assert spent.value.resume_at == NOW + DAY_MS  # the window started at the first guess
    await new_code(b"third", NOW + 5)
    with pytest.raises(GuessBudgetSpent):
        await attempt(NOW + 6)
    # Refused means unchanged: the third code still has both its attempts once the window
    # is over, and a new window starts.
    await new_code(b"fourth", NOW + DAY_MS)
    assert await attempt(NOW + DAY_MS) == b"fourth"
    assert await attempt(NOW + DAY_MS + 1) == b"fourth"
    assert await attempt(NOW + DAY_MS + 2) is None  # the code's own limit


async def test_a_check_without_a_pending_code_counts_no_guess(store: Store) -> None:
    phone_key = _fresh("key").encode()
    for index in range(5):
        assert await _attempt(store, phone_key, NOW + index, max_guesses=1) is None
    assert await store.record_verification_code(
        phone_key=phone_key, code_hash=b"h", now=NOW, expires_at=NOW + 1000, window_ms=DAY_MS,
        max_sends=1)
    assert await _attempt(store, phone_key, NOW + 10, max_guesses=1) == b"h"
    with pytest.raises(GuessBudgetSpent):
        await _attempt(store, phone_key, NOW + 11, max_guesses=1)


async def test_guesses_of_one_number_are_counted_exactly_under_concurrency(
        store: Store) -> None:
    phone_key = _fresh("key").encode()
    assert await store.record_verification_code(
        phone_key=phone_key, code_hash=b"h", now=NOW, expires_at=NOW + 1000, window_ms=DAY_MS,
        max_sends=1)
    outcomes: list[object] = []

    async def guess() -> None:
        try:
            outcomes.append(await _attempt(store, phone_key, max_attempts=100, max_guesses=4))
        except GuessBudgetSpent:
            outcomes.append("spent")

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(guess)
    assert outcomes.count(b"h") == 4
    assert outcomes.count("spent") == 6


async def test_old_enrolment_records_are_forgotten_in_bounded_batches(store: Store) -> None:
    while await store.forget_enrolment_records(now=NOW + 10 * DAY_MS, send_window_ms=DAY_MS,
                                               guess_window_ms=DAY_MS, limit=1000):
        pass  # older tests' leftovers
    old = [_fresh("old").encode() for _ in range(3)]
    for index, phone_key in enumerate(old):
        assert await store.record_verification_code(
            phone_key=phone_key, code_hash=b"h", now=NOW + index, expires_at=NOW + 1000,
            window_ms=DAY_MS, max_sends=5)
        assert await _attempt(store, phone_key, NOW + index) == b"h"
    fresh = _fresh("fresh").encode()
    later = NOW + 10 * DAY_MS
    assert await store.record_verification_code(
        phone_key=fresh, code_hash=b"f", now=later - 1, expires_at=later + 1000,
        window_ms=DAY_MS, max_sends=5)
    assert await _attempt(store, fresh, later - 1) == b"f"

    def forget(limit: int) -> Any:
        return store.forget_enrolment_records(now=later, send_window_ms=DAY_MS,
                                              guess_window_ms=DAY_MS, limit=limit)

    # Three kinds of rows (code, send, guess window) per old number: two of each per call.
    assert await forget(2) == 6
    assert await forget(2) == 3
    assert await forget(2) == 0
    # What can still count stays: the fresh number's code, its send and its guesses.
    assert await _attempt(store, fresh, later, max_guesses=2) == b"f"
    with pytest.raises(GuessBudgetSpent):
        await _attempt(store, fresh, later, max_guesses=2)
    assert not await store.record_verification_code(
        phone_key=fresh, code_hash=b"g", now=later, expires_at=later + 1000, window_ms=DAY_MS,
        max_sends=1)


# -- device registration ----------------------------------------------------------


async def test_register_device_enrols_the_user_and_numbers_devices(store: Store) -> None:
    user = await _declared(store)
    phone_key = await _code_for(store, user.phone)
    registration = await _register_device(store, phone=user.phone, phone_key=phone_key,
                                          identity_key=b"k" * 32, now=NOW + 5)
    first = registration.device
    assert registration.revoked == ()
    assert (first.user_id, first.device_id, first.identity_key, first.registered_at) == (
        user.user_id, 1, b"k" * 32, NOW + 5)
    enrolled = await store.find_user_by_phone(user.phone)
    assert enrolled is not None
    assert (enrolled.state, enrolled.enrolled_at) == (UserState.ENROLLED, NOW + 5)

    assert await _register(store, user, now=NOW + 9) == 2
    enrolled = await store.find_user_by_phone(user.phone)
    assert enrolled is not None and enrolled.enrolled_at == NOW + 5
    assert [device.device_id for device in await store.list_devices(user.user_id)] == [1, 2]

    principal = await store.load_principal(user.user_id, 1)
    assert principal is not None
    assert (principal.device, principal.user.user_id, principal.organisation.organisation_id) == (
        first, user.user_id, user.organisation_id)
    assert await store.load_principal(user.user_id, 3) is None


async def test_a_code_registers_one_device_only(store: Store) -> None:
    user = await _declared(store)
    phone_key = await _code_for(store, user.phone)
    await _register_device(store, phone=user.phone, phone_key=phone_key)
    with pytest.raises(RegistrationRefused) as refused:
        await _register_device(store, phone=user.phone, phone_key=phone_key)
    assert refused.value.reason is RegistrationRefusal.CODE_CONSUMED
    assert len(await store.list_devices(user.user_id)) == 1


async def test_a_replaced_code_is_refused_and_the_new_one_kept(store: Store) -> None:
    user = await _declared(store)
    phone_key = await _code_for(store, user.phone, b"old")
    await _code_for(store, user.phone, b"new")
    with pytest.raises(RegistrationRefused) as refused:
        await _register_device(store, phone=user.phone, phone_key=phone_key, code_hash=b"old")
    assert refused.value.reason is RegistrationRefusal.CODE_CONSUMED
    assert await _attempt(store, phone_key) == b"new"


async def test_concurrent_registrations_with_one_code_admit_exactly_one(store: Store) -> None:
    user = await _declared(store)
    phone_key = await _code_for(store, user.phone)
    outcomes: list[object] = []

    async def register() -> None:
        try:
            outcomes.append(await _register_device(store, phone=user.phone,
                                                   phone_key=phone_key))
        except RegistrationRefused as error:
            outcomes.append(error.reason)

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(register)
    assert outcomes.count(RegistrationRefusal.CODE_CONSUMED) == 9
    assert len(await store.list_devices(user.user_id)) == 1


async def test_registration_for_an_undeclared_phone_is_refused(store: Store) -> None:
    phone = _fresh_phone()
    phone_key = await _code_for(store, phone)
    with pytest.raises(RegistrationRefused) as refused:
        await _register_device(store, phone=phone, phone_key=phone_key)
    assert refused.value.reason is RegistrationRefusal.NOT_DECLARED


async def test_registration_beyond_max_devices_is_refused_and_keeps_the_code(
        store: Store) -> None:
    # The earlier devices are revoked first, so only a limit of 0 leaves no room.
    user, _ = await _enrolled(store, devices=2)
    phone_key = await _code_for(store, user.phone)
    with pytest.raises(RegistrationRefused) as refused:
        await _register_device(store, phone=user.phone, phone_key=phone_key, max_devices=0)
    assert refused.value.reason is RegistrationRefusal.TOO_MANY_DEVICES
    assert len(await store.list_devices(user.user_id)) == 2
    # Refused means nothing changed: the code is still pending.
    assert await _attempt(store, phone_key) == b"hash"


async def test_registration_in_an_inactive_organisation_is_refused(store: Store) -> None:
    organisation = await _organisation(store)
    user = await _declared(store, organisation)
    await store.set_organisation_state(name=organisation, state=OrganisationState.SUSPENDED)
    phone_key = await _code_for(store, user.phone)
    with pytest.raises(RegistrationRefused) as refused:
        await _register_device(store, phone=user.phone, phone_key=phone_key)
    assert refused.value.reason is RegistrationRefusal.ORGANISATION_INACTIVE
    assert await store.list_devices(user.user_id) == []
    found = await store.find_user_by_phone(user.phone)
    assert found is not None and found.state is UserState.DECLARED


# -- sends ---------------------------------------------------------------------------


async def test_an_accepted_send_is_queued_for_every_device(store: Store) -> None:
    sender, _ = await _enrolled(store)
    recipient, devices = await _enrolled(store, devices=3)
    outcome = await _send_now(store, _send(sender, recipient, devices, 42))
    assert outcome.status is SendStatus.ACCEPTED
    ids = [envelope.envelope_id for envelope in outcome.envelopes]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [envelope.recipient_device_id for envelope in outcome.envelopes] == devices
    for envelope in outcome.envelopes:
        assert (envelope.sender_user_id, envelope.sender_device_id, envelope.client_message_id,
                envelope.accepted_at, envelope.expires_at) == (
            sender.user_id, 1, 42, NOW, NOW + TTL_MS)
        device_id = envelope.recipient_device_id
        assert envelope.ciphertext == b"sealed" + bytes([device_id])
        assert await _fetch_all(store, recipient, device_id) == [envelope]
        assert await store.queue_depth(user_id=recipient.user_id, device_id=device_id) == 1


async def test_a_send_to_an_unknown_or_deviceless_user_is_refused(store: Store) -> None:
    sender, _ = await _enrolled(store)
    declared = await _declared(store)
    outcome = await _send_now(store, _send(sender, declared, [1], 1))
    assert outcome.status is SendStatus.UNKNOWN_RECIPIENT
    ghost = User(user_id=_fresh_user_id(), organisation_id=0, phone="+1", state=UserState.DECLARED,
                 declared_at=0, enrolled_at=None)
    assert (await _send_now(store, _send(sender, ghost, [1], 2))).status is (
        SendStatus.UNKNOWN_RECIPIENT)


async def test_a_send_must_address_exactly_the_current_devices(store: Store) -> None:
    sender, _ = await _enrolled(store)
    recipient, _ = await _enrolled(store, devices=4)  # devices 1..4
    outcome = await _send_now(store, _send(sender, recipient, [3, 1, 9, 7], 1))
    assert outcome.status is SendStatus.MISMATCHED_DEVICES
    assert (outcome.missing_devices, outcome.extra_devices) == ((2, 4), (7, 9))
    assert outcome.envelopes == ()
    assert await _fetch_all(store, recipient, 1) == []
    # Not accepted, so not remembered: the corrected retry is accepted.
    fixed = await _send_now(store, _send(sender, recipient, [1, 2, 3, 4], 1))
    assert fixed.status is SendStatus.ACCEPTED


async def test_the_excluded_device_need_not_be_addressed(store: Store) -> None:
    user, devices = await _enrolled(store, devices=3)
    outcome = await _send_now(store, _send(user, user, [2, 3], 1, sender_device_id=1,
                                           exclude_device_id=1))
    assert outcome.status is SendStatus.ACCEPTED
    assert devices == [1, 2, 3]
    assert await store.queue_depth(user_id=user.user_id, device_id=1) == 0
    missing = await _send_now(store, _send(user, user, [2], 2, exclude_device_id=1))
    assert (missing.status, missing.missing_devices) == (SendStatus.MISMATCHED_DEVICES, (3,))


async def test_a_send_to_a_full_queue_is_refused_whole(store: Store) -> None:
    sender, _ = await _enrolled(store)
    recipient, devices = await _enrolled(store, devices=3)
    for client_message_id in (1, 2):
        await _send_now(store, _send(sender, recipient, devices, client_message_id,
                                     max_queue_depth=2))
    ack = (await _fetch_all(store, recipient, 2))[0].envelope_id
    assert await store.acknowledge(user_id=recipient.user_id, device_id=2,
                                   envelope_ids=[ack]) == 1
    outcome = await _send_now(store, _send(sender, recipient, devices, 3, max_queue_depth=2))
    assert (outcome.status, outcome.full_devices) == (SendStatus.QUEUE_FULL, (1, 3))
    assert await store.queue_depth(user_id=recipient.user_id, device_id=2) == 1
    assert len(await _fetch_all(store, recipient, 2)) == 1


SHARE = 3
"""A sender share small enough to fill in a few sends."""


async def _queued_ids(store: Store, user: User, device_id: int,
                      sender: User | None = None) -> list[int]:
    return [envelope.envelope_id for envelope in await _fetch_all(store, user, device_id)
            if sender is None or envelope.sender_user_id == sender.user_id]


async def test_one_sender_holds_at_most_its_share_of_each_queue(store: Store) -> None:
    flooder, _ = await _enrolled(store, devices=2)
    contact, _ = await _enrolled(store)
    recipient, devices = await _enrolled(store, devices=2)
    for client_message_id in range(SHARE):
        accepted = await _send_now(store, _send(flooder, recipient, devices, client_message_id,
                                                max_sender_share=SHARE))
        assert accepted.status is SendStatus.ACCEPTED
    # The share is the user's: its other device is refused too, for both devices, and the
    # refusal stores nothing.
    refused = await _send_now(store, _send(flooder, recipient, devices, 100, sender_device_id=2,
                                           max_sender_share=SHARE))
    assert (refused.status, refused.full_devices, refused.envelopes) == (
        SendStatus.SENDER_SHARE_FULL, (1, 2), ())
    for device_id in devices:
        assert await store.queue_depth(user_id=recipient.user_id, device_id=device_id) == SHARE
    # Idempotency comes first: a resend of an accepted message is still a duplicate.
    resent = await _send_now(store, _send(flooder, recipient, devices, 0,
                                          max_sender_share=SHARE))
    assert resent.status is SendStatus.DUPLICATE
    # Another sender still gets through.
    other = await _send_now(store, _send(contact, recipient, devices, 0,
                                         max_sender_share=SHARE))
    assert other.status is SendStatus.ACCEPTED
    # An acknowledgement frees the share of that device only.
    first = (await _queued_ids(store, recipient, 1, flooder))[0]
    assert await store.acknowledge(user_id=recipient.user_id, device_id=1,
                                   envelope_ids=[first]) == 1
    still = await _send_now(store, _send(flooder, recipient, devices, 101,
                                         max_sender_share=SHARE))
    assert (still.status, still.full_devices) == (SendStatus.SENDER_SHARE_FULL, (2,))
    first = (await _queued_ids(store, recipient, 2, flooder))[0]
    assert await store.acknowledge(user_id=recipient.user_id, device_id=2,
                                   envelope_ids=[first]) == 1
    freed = await _send_now(store, _send(flooder, recipient, devices, 101,
                                         max_sender_share=SHARE))
    assert freed.status is SendStatus.ACCEPTED
    for device_id in devices:
        assert len(await _queued_ids(store, recipient, device_id, flooder)) == SHARE


async def test_expired_envelopes_free_the_senders_share(store: Store) -> None:
    sender, _ = await _enrolled(store)
    recipient, devices = await _enrolled(store)
    for client_message_id in range(SHARE):
        await _send_now(store, _send(sender, recipient, devices, client_message_id, ttl_ms=10,
                                     max_sender_share=SHARE))
    refused = await _send_now(store, _send(sender, recipient, devices, SHARE,
                                           max_sender_share=SHARE))
    assert refused.status is SendStatus.SENDER_SHARE_FULL
    while await store.expire(now=NOW + 10, limit=100):
        pass  # other tests' leftovers too
    later = await _send_now(store, _send(sender, recipient, devices, SHARE,
                                         accepted_at=NOW + 10, max_sender_share=SHARE))
    assert later.status is SendStatus.ACCEPTED


async def test_a_full_queue_is_reported_before_a_used_share(store: Store) -> None:
    sender, _ = await _enrolled(store)
    recipient, devices = await _enrolled(store)
    for client_message_id in range(SHARE):
        await _send_now(store, _send(sender, recipient, devices, client_message_id,
                                     max_queue_depth=SHARE, max_sender_share=SHARE))
    refused = await _send_now(store, _send(sender, recipient, devices, SHARE,
                                           max_queue_depth=SHARE, max_sender_share=SHARE))
    assert (refused.status, refused.full_devices) == (SendStatus.QUEUE_FULL, (1,))


async def test_sends_to_ones_own_devices_have_no_share(store: Store) -> None:
    user, _ = await _enrolled(store, devices=2)
    for client_message_id in range(SHARE + 2):
        outcome = await _send_now(store, _send(user, user, [2], client_message_id,
                                               exclude_device_id=1, max_sender_share=SHARE))
        assert outcome.status is SendStatus.ACCEPTED
    assert await store.queue_depth(user_id=user.user_id, device_id=2) == SHARE + 2


async def test_a_resent_message_is_a_duplicate_even_after_device_changes(
        store: Store) -> None:
    sender, _ = await _enrolled(store)
    recipient, devices = await _enrolled(store, devices=1)
    send = _send(sender, recipient, devices, 7)
    assert (await _send_now(store, send)).status is SendStatus.ACCEPTED
    assert (await _send_now(store, send)).status is SendStatus.DUPLICATE
    await _register(store, recipient)  # the recipient now has devices 1 and 2
    duplicate = await _send_now(store, send)
    assert (duplicate.status, duplicate.envelopes) == (SendStatus.DUPLICATE, ())
    assert await store.queue_depth(user_id=recipient.user_id, device_id=1) == 1
    # The key is per sender device: the same id from another device is new.
    other_device = _send(sender, recipient, [1, 2], 7, sender_device_id=2)
    assert (await _send_now(store, other_device)).status is SendStatus.ACCEPTED


async def test_concurrently_submitted_sends_commit_in_submission_order(store: Store) -> None:
    sender, _ = await _enrolled(store)
    recipient, devices = await _enrolled(store, devices=2)
    pending = [store.submit_send(_send(sender, recipient, devices, client_message_id))
               for client_message_id in range(100)]
    with trio.fail_after(TIMEOUT_S):
        outcomes = [await result.wait() for result in pending]
    ids = [envelope.envelope_id for outcome in outcomes for envelope in outcome.envelopes]
    assert ids == sorted(ids) and len(set(ids)) == 200
    for device_id in devices:
        queued = await _fetch_all(store, recipient, device_id)
        assert [envelope.client_message_id for envelope in queued] == list(range(100))


async def test_concurrent_sends_share_commits(store: Store) -> None:
    sender, _ = await _enrolled(store)
    recipient, devices = await _enrolled(store, devices=1)
    before = store.commit_count
    pending = [store.submit_send(_send(sender, recipient, devices, client_message_id))
               for client_message_id in range(200)]
    with trio.fail_after(TIMEOUT_S):
        outcomes = [await result.wait() for result in pending]
    assert all(outcome.status is SendStatus.ACCEPTED for outcome in outcomes)
    assert store.commit_count - before < 200


async def test_token_buckets_take_only_what_they_hold_and_refill(store: Store) -> None:
    key = f"test {uuid.uuid4().hex}"

    async def take(cost: int, now: int) -> bool:
        return await store.take_tokens(key=key, cost=cost, capacity=10, period_ms=1000,
                                       now=now)

    assert await take(6, NOW)  # a new bucket is full
    assert not await take(5, NOW)  # 4 left: refused, and nothing taken
    assert await take(4, NOW)
    assert not await take(1, NOW + 50)  # half a token refilled
    assert await take(1, NOW + 100)  # 10 per second: one more after 100 ms
    assert await take(10, NOW + 10_000)  # refilled to capacity, never beyond
    assert not await take(1, NOW + 10_000)
    assert not await take(1, NOW + 5_000)  # a clock behind the last take adds nothing
    assert not await store.take_tokens(key=key + " other", cost=11, capacity=10,
                                       period_ms=1000, now=NOW)  # more than it can hold
    assert await store.take_tokens(key=key + " other", cost=10, capacity=10,
                                   period_ms=1000, now=NOW)  # keys are separate


async def test_concurrent_takers_never_take_more_than_the_bucket_holds(store: Store) -> None:
    key = f"test {uuid.uuid4().hex}"
    taken: list[bool] = []

    async def take() -> None:
        taken.append(await store.take_tokens(key=key, cost=1, capacity=30,
                                             period_ms=3_600_000, now=NOW))

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(take)
    assert taken.count(True) == 30


async def test_fetch_queue_pages_by_id_and_skips_expired(store: Store) -> None:
    sender, _ = await _enrolled(store)
    recipient, devices = await _enrolled(store)
    for client_message_id, ttl_ms in enumerate([100, 10, 100, 100]):
        await _send_now(store, _send(sender, recipient, devices, client_message_id,
                                     ttl_ms=ttl_ms))
    live = await _fetch_all(store, recipient, 1, now=NOW + 10)
    assert [envelope.client_message_id for envelope in live] == [0, 2, 3]
    page = await store.fetch_queue(user_id=recipient.user_id, device_id=1,
                                   after_envelope_id=live[0].envelope_id, limit=1,
                                   now=NOW + 10)
    assert page == [live[1]]
    assert await _fetch_all(store, recipient, 1, now=NOW + 100) == []


async def test_acknowledge_deletes_only_the_devices_own_envelopes(store: Store) -> None:
    sender, _ = await _enrolled(store)
    recipient, devices = await _enrolled(store, devices=2)
    for client_message_id in range(3):
        await _send_now(store, _send(sender, recipient, devices, client_message_id))
    mine = [envelope.envelope_id for envelope in await _fetch_all(store, recipient, 1)]
    theirs = [envelope.envelope_id for envelope in await _fetch_all(store, recipient, 2)]
    deleted = await store.acknowledge(
        user_id=recipient.user_id, device_id=1,
        envelope_ids=[mine[0], mine[0], mine[2], *theirs, 10**12])
    assert deleted == 2
    assert [envelope.envelope_id for envelope in await _fetch_all(store, recipient, 1)] == [
        mine[1]]
    assert await store.queue_depth(user_id=recipient.user_id, device_id=1) == 1
    assert await store.queue_depth(user_id=recipient.user_id, device_id=2) == 3
    assert await store.acknowledge(user_id=recipient.user_id, device_id=1,
                                   envelope_ids=[]) == 0


async def test_submitted_acknowledgements_commit_in_order_with_sends(store: Store) -> None:
    sender, _ = await _enrolled(store)
    recipient, devices = await _enrolled(store)
    first = await _send_now(store, _send(sender, recipient, devices, 0))
    (envelope,) = first.envelopes
    # Submitted synchronously between two sends: committed between them.
    send_before = store.submit_send(_send(sender, recipient, devices, 1))
    acknowledged = store.submit_acknowledge(user_id=recipient.user_id, device_id=1,
                                            envelope_ids=[envelope.envelope_id])
    send_after = store.submit_send(_send(sender, recipient, devices, 2))
    assert not acknowledged.done
    with pytest.raises(RuntimeError, match="not been committed"):
        acknowledged.result()
    with trio.fail_after(TIMEOUT_S):
        await send_after.wait()
    # Committed in submission order: the earlier writes are done without waiting.
    assert acknowledged.done and send_before.done
    assert acknowledged.result() == 1
    queued = await _fetch_all(store, recipient, 1)
    assert [queued_envelope.client_message_id for queued_envelope in queued] == [1, 2]
    assert await store.queue_depth(user_id=recipient.user_id, device_id=1) == 2


async def test_expire_deletes_old_envelopes_and_records_keeping_depths(store: Store) -> None:
    sender, _ = await _enrolled(store)
    recipient, devices = await _enrolled(store, devices=2)
    for client_message_id in range(3):
        await _send_now(store, _send(sender, recipient, devices, client_message_id, ttl_ms=10))
    await _send_now(store, _send(sender, recipient, devices, 3, ttl_ms=TTL_MS))
    later = NOW + 10
    # Other tests' envelopes share the store, so drain in bounded batches.
    while await store.expire(now=later, limit=4):
        pass
    for device_id in devices:
        assert await store.queue_depth(user_id=recipient.user_id, device_id=device_id) == 1
        assert len(await _fetch_all(store, recipient, device_id, now=later)) == 1
    # The idempotency record expired with its send: the id is usable again.
    again = await _send_now(store, _send(sender, recipient, devices, 0, accepted_at=later))
    assert again.status is SendStatus.ACCEPTED
    still = await _send_now(store, _send(sender, recipient, devices, 3, accepted_at=later))
    assert still.status is SendStatus.DUPLICATE


async def test_expire_respects_its_limit(store: Store) -> None:
    sender, _ = await _enrolled(store)
    recipient, devices = await _enrolled(store)
    while await store.expire(now=NOW + 5, limit=1000):
        pass  # older tests' leftovers
    for client_message_id in range(5):
        await _send_now(store, _send(sender, recipient, devices, client_message_id, ttl_ms=5))
    assert await store.expire(now=NOW + 5, limit=2) == 2
    assert await store.queue_depth(user_id=recipient.user_id, device_id=1) == 3


async def test_everything_survives_closing_and_reopening(store_opener: StoreOpener) -> None:
    async with store_opener() as first:
        sender, _ = await _enrolled(first)
        recipient, devices = await _enrolled(first, devices=2)
        fingerprint = await first.keep_secret_fingerprint("reopen", b"s" * 32)
        pending = [first.submit_send(_send(sender, recipient, devices, client_message_id))
                   for client_message_id in range(5)]
        # Closing without awaiting: submitted writes still commit.
    outcomes = [await result.wait() for result in pending]
    async with store_opener() as second:
        assert await second.keep_secret_fingerprint("reopen", b"other") == fingerprint
        assert await second.find_user_by_phone(recipient.phone) is not None
        assert [device.device_id for device in await second.list_devices(recipient.user_id)] == (
            devices)
        queued = await _fetch_all(second, recipient, 2)
        assert queued == [outcome.envelopes[1] for outcome in outcomes]
        assert await second.queue_depth(user_id=recipient.user_id, device_id=2) == 5
        duplicate = await _send_now(second, _send(sender, recipient, devices, 4))
        assert duplicate.status is SendStatus.DUPLICATE
        # Envelope ids keep increasing across restarts.
        fresh = await _send_now(second, _send(sender, recipient, devices, 5))
        assert fresh.envelopes[0].envelope_id > queued[-1].envelope_id


# -- a property over random interleavings ----------------------------------------------

_operations = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 50), st.sampled_from([(1,), (2,), (1, 2)])),
        st.tuples(st.just("ack"), st.integers(0, 5), st.sampled_from([(1,), (2,)])),
        st.tuples(st.just("expire"), st.integers(0, 60), st.just(())),
    ),
    max_size=25,
)


@hypothesis.settings(max_examples=25, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(operations=_operations)
async def test_queue_depth_always_equals_the_queue(store_opener: StoreOpener,
                                                   operations: list[tuple[Any, ...]]) -> None:
    # pytest-trio runs each example in its own trio run, so each opens the store.
    async with store_opener() as store:
        await _check_queue_depth_invariant(store, operations)


async def _check_queue_depth_invariant(store: Store, operations: list[tuple[Any, ...]]) -> None:
    sender, _ = await _enrolled(store)
    recipient, devices = await _enrolled(store, devices=2)
    now = NOW
    client_message_ids = itertools.count()
    for kind, amount, targets in operations:
        if kind == "send":
            # Payloads for a subset of devices exercise the refusal path too.
            await _send_now(store, _send(sender, recipient, list(targets),
                                         next(client_message_ids), accepted_at=now,
                                         ttl_ms=amount, max_queue_depth=4))
        elif kind == "ack":
            device_id = targets[0]
            queued = await _fetch_all(store, recipient, device_id, now=now)
            await store.acknowledge(user_id=recipient.user_id, device_id=device_id,
                                    envelope_ids=[envelope.envelope_id
                                                  for envelope in queued[:amount]])
        else:
            now += amount
            while await store.expire(now=now, limit=1000):
                pass
        for device_id in devices:
            depth = await store.queue_depth(user_id=recipient.user_id, device_id=device_id)
            assert depth == len(await _fetch_all(store, recipient, device_id, now=now))
            assert depth <= 4


async def test_the_deepest_queue_is_the_longest_device_queue(store: Store) -> None:
    """What the operators' "queue near its limit" gauge reads: the kept counts."""
    assert await store.deepest_queue() == 0
    sender, _ = await _enrolled(store)
    recipient, [first, second] = await _enrolled(store, devices=2)
    for client_message_id in range(3):
        await _send_now(store, _send(sender, recipient, [first, second], client_message_id))
    await _send_now(store, _send(sender, recipient, [first, second], 3))
    assert await store.deepest_queue() == 4
    queued = await _fetch_all(store, recipient, first)
    await store.acknowledge(user_id=recipient.user_id, device_id=first,
                            envelope_ids=[envelope.envelope_id for envelope in queued[:3]])
    assert await store.deepest_queue() == 4  # the second device still holds four
    queued = await _fetch_all(store, recipient, second)
    await store.acknowledge(user_id=recipient.user_id, device_id=second,
                            envelope_ids=[envelope.envelope_id for envelope in queued])
    assert await store.deepest_queue() == 1


# The prekey, administration and account methods' tests join this suite (those modules import
# the helpers above).
from tests.account_conformance import *  # noqa: E402, F403
from tests.admin_conformance import *  # noqa: E402, F403
from tests.prekey_conformance import *  # noqa: E402, F403

# What ``import *`` hands a backend module: the fixture and every test.
# Built from the names so that a new test cannot be forgotten here.
__all__ = ["store", *sorted(name for name in dict(globals()) if name.startswith("test_"))]  # noqa: PLE0604
