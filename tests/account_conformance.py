"""Conformance tests for account keys, device lists, revocation notices and link channels
(``storage.interfaces.accounts``, and the revocation done by ``register_device``).

``tests/storage_conformance.py`` star-imports this module at its end, so every backend that
runs the storage conformance suite runs these too (a real SQLite file, a real PostgreSQL
schema). Keys and lists are opaque bytes here: checking signatures is the relay's job.
"""

from __future__ import annotations

import pytest
import trio

from storage.account_records import ADMIN_REVOKE_REASON
from storage.base import (
    REVOCATION_NOTICE_RETENTION_MS,
    AccountRecord,
    DeviceListRefusal,
    DeviceListRefused,
    LinkPostResult,
    NotFound,
    OrganisationState,
    PublishedDeviceList,
    RegistrationRefusal,
    RegistrationRefused,
    RevokedDevice,
    Store,
    User,
)
from tests.prekey_conformance import _full_upload, _upload
from tests.storage_conformance import (
    MAX_DEVICES,
    NOW,
    TIMEOUT_S,
    StoreOpener,
    _code_for,
    _declared,
    _enrolled,
    _fetch_all,
    _fresh_key,
    _list_bytes,
    _organisation,
    _register_device,
    _send,
    _send_now,
)

REASON = "removed by another device"


async def _keys_of(store: Store, user: User) -> dict[int, bytes]:
    return {device.device_id: device.identity_key
            for device in await store.list_devices(user.user_id)}


async def _publish(store: Store, user: User, keys: frozenset[bytes], *,
                   publisher: int | None = None, version: int | None = None,
                   account_key: bytes | None = None, now: int = NOW,
                   max_devices: int = MAX_DEVICES) -> PublishedDeviceList:
    """Publish ``keys`` as the user's next list, by its lowest device unless told."""
    account = await store.account(user.user_id)
    assert account is not None
    account_key = account.account_key if account_key is None else account_key
    assert account_key is not None
    version = account.device_list_version + 1 if version is None else version
    if publisher is None:
        publisher = min(await _keys_of(store, user))
    return await store.publish_device_list(
        user_id=user.user_id, publisher_device_id=publisher, account_key=account_key,
        version=version, identity_keys=keys,
        encoded=_list_bytes(account_key, version, keys), now=now, max_devices=max_devices,
        revoke_reason=REASON)


async def _refusal(store: Store, user: User, keys: frozenset[bytes], *,
                   publisher: int | None = None, version: int | None = None,
                   account_key: bytes | None = None,
                   max_devices: int = MAX_DEVICES) -> DeviceListRefusal:
    """Publish, expect a refusal, and check that nothing changed."""
    account, devices = await store.account(user.user_id), await _keys_of(store, user)
    with pytest.raises(DeviceListRefused) as refused:
        await _publish(store, user, keys, publisher=publisher, version=version,
                       account_key=account_key, max_devices=max_devices)
    assert await store.account(user.user_id) == account
    assert await _keys_of(store, user) == devices
    return refused.value.reason


async def _queue_one(store: Store, recipient: User, device_ids: list[int]) -> User:
    """Queue one envelope for each of ``device_ids``; return the sender."""
    sender, _ = await _enrolled(store)
    outcome = await _send_now(store, _send(sender, recipient, device_ids, 1))
    assert outcome.envelopes and len(outcome.envelopes) == len(device_ids)
    return sender


# -- accounts and enrolment --------------------------------------------------------


async def test_an_enrolment_stores_the_account_key_and_its_first_list(store: Store) -> None:
    user = await _declared(store)
    assert await store.account(user.user_id) == AccountRecord(
        account_key=None, device_list=None, device_list_version=0)
    assert await store.account("f" * 32) is None

    account_key, identity_key = _fresh_key(), _fresh_key()
    registration = await _register_device(
        store, phone=user.phone, phone_key=await _code_for(store, user.phone),
        identity_key=identity_key, account_key=account_key)
    assert registration.revoked == ()
    assert await store.account(user.user_id) == AccountRecord(
        account_key=account_key,
        device_list=_list_bytes(account_key, 1, frozenset((identity_key,))),
        device_list_version=1)


async def test_a_new_enrolment_revokes_every_earlier_device(store: Store) -> None:
    user, [first, second] = await _enrolled(store, devices=2)
    old_keys = await _keys_of(store, user)
    sender = await _queue_one(store, user, [first, second])
    await _upload(store, user, first, _full_upload(one_time=2, kem_one_time=1))

    account_key, identity_key = _fresh_key(), _fresh_key()
    registration = await _register_device(
        store, phone=user.phone, phone_key=await _code_for(store, user.phone),
        identity_key=identity_key, account_key=account_key, now=NOW + 7,
        revoke_reason="this number was enrolled on another device")

    assert registration.revoked == (first, second)
    assert registration.device.device_id == 3  # ids are never reused
    assert await _keys_of(store, user) == {3: identity_key}
    for device_id in (first, second):
        assert await store.load_principal(user.user_id, device_id) is None
        assert await store.queue_depth(user_id=user.user_id, device_id=device_id) == 0
        assert await _fetch_all(store, user, device_id) == []
        assert await store.revoked_device(user.user_id, device_id) == RevokedDevice(
            identity_key=old_keys[device_id],
            reason="this number was enrolled on another device", revoked_at=NOW + 7)
    with pytest.raises(NotFound):
        await store.prekey_counts(user_id=user.user_id, device_id=first)
    assert await store.revoked_device(user.user_id, 3) is None
    account = await store.account(user.user_id)
    assert account is not None
    assert (account.account_key, account.device_list_version) == (account_key, 1)
    # Routing sees the new device only, with an exact (empty) queue.
    assert await store.queue_depth(user_id=user.user_id, device_id=3) == 0
    resend = await _send_now(store, _send(sender, user, [first, second], 2))
    assert resend.extra_devices == (first, second) and resend.missing_devices == (3,)
    assert (await _send_now(store, _send(sender, user, [3], 3))).envelopes
    assert await store.queue_depth(user_id=user.user_id, device_id=3) == 1


async def test_an_enrolment_with_the_account_key_in_use_changes_nothing(store: Store) -> None:
    user = await _declared(store)
    account_key = _fresh_key()
    await _register_device(store, phone=user.phone,
                           phone_key=await _code_for(store, user.phone),
                           account_key=account_key)
    account, devices = await store.account(user.user_id), await _keys_of(store, user)
    phone_key = await _code_for(store, user.phone, b"again")
    with pytest.raises(RegistrationRefused) as refused:
        await _register_device(store, phone=user.phone, phone_key=phone_key,
                               code_hash=b"again", account_key=account_key)
    assert refused.value.reason is RegistrationRefusal.SAME_ACCOUNT_KEY
    assert await store.account(user.user_id) == account
    assert await _keys_of(store, user) == devices
    assert await store.revoked_device(user.user_id, 1) is None
    assert await store.take_verification_attempt(
        phone_key=phone_key, now=NOW, max_attempts=5, guess_window_ms=24 * 3600 * 1000,
        max_guesses=10) == b"again"


async def test_a_re_enrolment_fits_whatever_the_number_of_devices(store: Store) -> None:
    user, devices = await _enrolled(store, devices=MAX_DEVICES)
    registration = await _register_device(
        store, phone=user.phone, phone_key=await _code_for(store, user.phone),
        max_devices=MAX_DEVICES)
    assert registration.revoked == tuple(devices)
    assert list(await _keys_of(store, user)) == [MAX_DEVICES + 1]


# -- publishing device lists --------------------------------------------------------


async def test_a_published_list_registers_its_new_keys(store: Store) -> None:
    user, [first] = await _enrolled(store)
    first_key = (await _keys_of(store, user))[first]
    new_keys = {_fresh_key(), _fresh_key()}
    published = await _publish(store, user, frozenset({first_key, *new_keys}), now=NOW + 3)

    assert published.revoked == ()
    assert [device.device_id for device in published.added] == [2, 3]
    assert {device.identity_key for device in published.added} == new_keys
    assert all(device.registered_at == NOW + 3 and device.user_id == user.user_id
               for device in published.added)
    assert await _keys_of(store, user) == {
        first: first_key, **{device.device_id: device.identity_key
                             for device in published.added}}
    account = await store.account(user.user_id)
    assert account is not None and account.device_list_version == 2
    assert account.account_key is not None
    assert account.device_list == _list_bytes(account.account_key, 2,
                                              frozenset({first_key, *new_keys}))
    principal = await store.load_principal(user.user_id, 3)
    assert principal is not None and principal.device in published.added


async def test_a_key_left_off_the_list_revokes_its_device(store: Store) -> None:
    user, [first, second] = await _enrolled(store, devices=2)
    keys = await _keys_of(store, user)
    await _queue_one(store, user, [first, second])
    await _upload(store, user, second, _full_upload(one_time=1, kem_one_time=1))

    published = await _publish(store, user, frozenset({keys[first]}), now=NOW + 4)
    assert published == PublishedDeviceList(added=(), revoked=(second,))
    assert await _keys_of(store, user) == {first: keys[first]}
    assert await store.revoked_device(user.user_id, second) == RevokedDevice(
        identity_key=keys[second], reason=REASON, revoked_at=NOW + 4)
    assert await store.queue_depth(user_id=user.user_id, device_id=second) == 0
    assert await _fetch_all(store, user, second) == []
    assert len(await _fetch_all(store, user, first)) == 1  # the kept device keeps its queue
    assert await store.queue_depth(user_id=user.user_id, device_id=first) == 1
    with pytest.raises(NotFound):
        await store.prekey_counts(user_id=user.user_id, device_id=second)

    # Listed again, a revoked key is not registered again: it stays revoked.
    again = await _publish(store, user, frozenset({keys[first], keys[second]}))
    assert again == PublishedDeviceList(added=(), revoked=())
    assert await _keys_of(store, user) == {first: keys[first]}
    assert await store.revoked_device(user.user_id, second) is not None


async def test_a_device_an_administrator_revoked_stays_revoked_whatever_the_lists(
        store: Store) -> None:
    organisation = await _organisation(store)
    user, [first, second] = await _enrolled(store, devices=2, organisation=organisation)
    keys = await _keys_of(store, user)
    await store.revoke_device(organisation=organisation, phone=user.phone, device_id=second,
                              now=NOW + 1)
    notice = await store.revoked_device(user.user_id, second)
    assert notice is not None and notice.reason == ADMIN_REVOKE_REASON
    # The account's next list still names the revoked key (its devices may not know yet):
    # the relay does not register it again.
    published = await _publish(store, user, frozenset(keys.values()), now=NOW + 2)
    assert published == PublishedDeviceList(added=(), revoked=())
    assert await _keys_of(store, user) == {first: keys[first]}


async def test_one_list_may_add_and_remove_at_once(store: Store) -> None:
    user, [first, second, third] = await _enrolled(store, devices=3)
    keys = await _keys_of(store, user)
    new_key = _fresh_key()
    published = await _publish(store, user, frozenset({keys[second], new_key}),
                               publisher=second)
    assert published.revoked == (first, third)
    assert [(device.device_id, device.identity_key) for device in published.added] == [
        (4, new_key)]
    assert await _keys_of(store, user) == {second: keys[second], 4: new_key}


async def test_a_list_not_newer_than_the_stored_one_is_refused(store: Store) -> None:
    user, _ = await _enrolled(store, devices=2)
    keys = frozenset((await _keys_of(store, user)).values())
    account = await store.account(user.user_id)
    assert account is not None and account.device_list_version == 2
    for version in (2, 1):
        assert await _refusal(store, user, keys | {_fresh_key()}, version=version) is (
            DeviceListRefusal.STALE_VERSION)
    # A version may skip ahead: only "newer" is required.
    await _publish(store, user, keys, version=9)
    assert await _refusal(store, user, keys, version=9) is DeviceListRefusal.STALE_VERSION


async def test_a_list_under_another_account_key_is_refused(store: Store) -> None:
    user, _ = await _enrolled(store)
    keys = frozenset((await _keys_of(store, user)).values())
    assert await _refusal(store, user, keys | {_fresh_key()}, account_key=_fresh_key()) is (
        DeviceListRefusal.ACCOUNT_KEY_MISMATCH)


async def test_a_device_cannot_remove_itself_nor_publish_unregistered(store: Store) -> None:
    user, [first, second] = await _enrolled(store, devices=2)
    keys = await _keys_of(store, user)
    assert await _refusal(store, user, frozenset({keys[second]}), publisher=first) is (
        DeviceListRefusal.PUBLISHER_NOT_LISTED)
    assert await _refusal(store, user, frozenset(keys.values()), publisher=7) is (
        DeviceListRefusal.PUBLISHER_NOT_LISTED)


async def test_a_list_beyond_max_devices_is_refused(store: Store) -> None:
    user, [first, second] = await _enrolled(store, devices=2)
    keys = await _keys_of(store, user)
    assert await _refusal(store, user, frozenset(keys.values()) | {_fresh_key()},
                          max_devices=2) is DeviceListRefusal.TOO_MANY_DEVICES
    # Replacing one key by another stays within the limit.
    published = await _publish(store, user, frozenset({keys[first], _fresh_key()}),
                               max_devices=2)
    assert published.revoked == (second,) and len(published.added) == 1


async def test_a_list_for_an_unknown_or_inactive_user_is_refused(store: Store) -> None:
    organisation = await _organisation(store)
    user, _ = await _enrolled(store, organisation=organisation)
    keys = frozenset((await _keys_of(store, user)).values())
    ghost = User(user_id="e" * 32, organisation_id=user.organisation_id, phone=user.phone,
                 state=user.state, declared_at=NOW, enrolled_at=NOW)
    with pytest.raises(DeviceListRefused) as refused:
        await store.publish_device_list(
            user_id=ghost.user_id, publisher_device_id=1, account_key=_fresh_key(), version=2,
            identity_keys=keys, encoded=b"list", now=NOW, max_devices=MAX_DEVICES,
            revoke_reason=REASON)
    assert refused.value.reason is DeviceListRefusal.UNKNOWN_USER
    await store.set_organisation_state(name=organisation, state=OrganisationState.SUSPENDED)
    assert await _refusal(store, user, keys | {_fresh_key()}) is (
        DeviceListRefusal.ORGANISATION_INACTIVE)


async def test_a_user_enrolled_without_an_account_key_cannot_publish(store: Store) -> None:
    user = await _declared(store)
    with pytest.raises(DeviceListRefused) as refused:
        await store.publish_device_list(
            user_id=user.user_id, publisher_device_id=1, account_key=_fresh_key(), version=1,
            identity_keys=frozenset({_fresh_key()}), encoded=b"list", now=NOW,
            max_devices=MAX_DEVICES, revoke_reason=REASON)
    assert refused.value.reason is DeviceListRefusal.ACCOUNT_KEY_MISMATCH


async def test_concurrent_publishes_of_one_version_admit_exactly_one(
        store: Store, store_opener: StoreOpener) -> None:
    # Two stores on one database: two relay nodes, each with its own writer.
    user, [first] = await _enrolled(store)
    first_key = (await _keys_of(store, user))[first]
    account = await store.account(user.user_id)
    assert account is not None and account.account_key is not None
    account_key = account.account_key
    candidates = [frozenset({first_key, _fresh_key()}) for _ in range(2)]
    outcomes: list[PublishedDeviceList | DeviceListRefusal] = []

    async def publish(on: Store, keys: frozenset[bytes]) -> None:
        try:
            outcomes.append(await on.publish_device_list(
                user_id=user.user_id, publisher_device_id=first, account_key=account_key,
                version=2, identity_keys=keys, encoded=_list_bytes(account_key, 2, keys),
                now=NOW, max_devices=MAX_DEVICES, revoke_reason=REASON))
        except DeviceListRefused as refused:
            outcomes.append(refused.reason)

    async with store_opener() as other:
        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish, store, candidates[0])
                nursery.start_soon(publish, other, candidates[1])
    [winner] = [outcome for outcome in outcomes if isinstance(outcome, PublishedDeviceList)]
    assert outcomes.count(DeviceListRefusal.STALE_VERSION) == 1
    [added] = winner.added
    assert await _keys_of(store, user) == {first: first_key, added.device_id: added.identity_key}
    stored = await store.account(user.user_id)
    assert stored is not None and stored.device_list_version == 2
    assert stored.device_list in {_list_bytes(account_key, 2, keys) for keys in candidates}
    assert stored.device_list == _list_bytes(account_key, 2,
                                             frozenset({first_key, added.identity_key}))


# -- revocation notices ----------------------------------------------------------------


async def test_notices_are_pruned_after_their_retention_and_go_with_the_user(
        store: Store) -> None:
    organisation = await _organisation(store)
    user, [first, second, third] = await _enrolled(store, devices=3, organisation=organisation)
    keys = await _keys_of(store, user)
    await _publish(store, user, frozenset({keys[first], keys[third]}), now=NOW)
    assert await store.revoked_device(user.user_id, second) is not None
    assert await store.revoked_device(user.user_id, first) is None  # never revoked

    # Within the retention a later revocation keeps the notice; past it, writing one prunes.
    await _publish(store, user, frozenset({keys[first]}),
                   now=NOW + REVOCATION_NOTICE_RETENTION_MS - 1)
    assert await store.revoked_device(user.user_id, second) is not None
    other, [other_first, other_second] = await _enrolled(store, devices=2,
                                                         organisation=organisation)
    other_keys = await _keys_of(store, other)
    await _publish(store, other, frozenset({other_keys[other_first]}),
                   now=NOW + REVOCATION_NOTICE_RETENTION_MS)
    assert await store.revoked_device(user.user_id, second) is None
    assert await store.revoked_device(user.user_id, third) is not None
    assert await store.revoked_device(other.user_id, other_second) is not None

    await store.delete_user(organisation=organisation, phone=user.phone)
    assert await store.revoked_device(user.user_id, third) is None


# -- link channels ------------------------------------------------------------------------

CHANNEL_TTL_MS = 600_000
MAX_OPEN = 10
MAX_POSTS = 3


def _fresh_channel() -> bytes:
    """A channel id no other test uses (a new device draws 16 random bytes)."""
    return _fresh_key()[-16:]


async def _open(store: Store, channel_id: bytes, *, now: int = NOW,
                max_open: int = MAX_OPEN) -> bool:
    return await store.open_link_channel(channel_id=channel_id, now=now,
                                         expires_at=now + CHANNEL_TTL_MS, max_open=max_open)


async def _post(store: Store, channel_id: bytes, payload: bytes, *, approver: User | None,
                now: int = NOW, max_posts: int = MAX_POSTS) -> LinkPostResult:
    """``approver`` given: the approving account posts to the new device; else the new
    device posts to the approver."""
    return await store.post_link_message(
        channel_id=channel_id, to_new_device=approver is not None, payload=payload,
        approver_user_id=None if approver is None else approver.user_id, now=now,
        max_posts=max_posts)


async def _take_for_new_device(store: Store, channel_id: bytes,
                               now: int = NOW) -> list[bytes] | None:
    return await store.take_link_messages(channel_id=channel_id, to_new_device=True,
                                          approver_user_id=None, now=now)


async def _take_for_approver(store: Store, channel_id: bytes, approver: User,
                             now: int = NOW) -> list[bytes] | None:
    return await store.take_link_messages(channel_id=channel_id, to_new_device=False,
                                          approver_user_id=approver.user_id, now=now)


async def test_a_link_channel_carries_messages_both_ways_in_order(store: Store) -> None:
    approver, _ = await _enrolled(store)
    channel = _fresh_channel()
    assert await _open(store, channel)
    assert await _take_for_new_device(store, channel) == []
    assert await _post(store, channel, b"offer", approver=approver) is LinkPostResult.POSTED
    assert await _post(store, channel, b"x" * 8192, approver=approver) is (
        LinkPostResult.POSTED)
    assert await _take_for_new_device(store, channel) == [b"offer", b"x" * 8192]
    assert await _take_for_new_device(store, channel) == []  # taking deletes

    for payload in (b"answer 1", b"answer 2"):
        assert await _post(store, channel, payload, approver=None) is LinkPostResult.POSTED
    assert await _take_for_approver(store, channel, approver) == [b"answer 1", b"answer 2"]
    assert await _take_for_approver(store, channel, approver) == []
    assert await _take_for_new_device(store, channel) == []  # each side reads its own


async def test_a_link_channel_belongs_to_the_first_approving_account(store: Store) -> None:
    approver, _ = await _enrolled(store)
    intruder, _ = await _enrolled(store)
    channel = _fresh_channel()
    assert await _open(store, channel)
    assert await _post(store, channel, b"early answer", approver=None) is (
        LinkPostResult.POSTED)
    # Unbound: no account may read what the new device posted.
    assert await _take_for_approver(store, channel, approver) is None

    assert await _post(store, channel, b"offer", approver=approver) is LinkPostResult.POSTED
    assert await _post(store, channel, b"forged", approver=intruder) is (
        LinkPostResult.OTHER_ACCOUNT)
    assert await _take_for_approver(store, channel, intruder) is None
    assert await _take_for_approver(store, channel, approver) == [b"early answer"]
    assert await _take_for_new_device(store, channel) == [b"offer"]


async def test_each_side_posts_at_most_max_posts_over_the_channel_life(store: Store) -> None:
    approver, _ = await _enrolled(store)
    channel = _fresh_channel()
    assert await _open(store, channel)
    for side in (approver, None):
        for index in range(MAX_POSTS):
            assert await _post(store, channel, bytes([index]), approver=side) is (
                LinkPostResult.POSTED)
    # Taking the messages gives no attempt back.
    assert await _take_for_new_device(store, channel) == [bytes([0]), bytes([1]), bytes([2])]
    assert await _take_for_approver(store, channel, approver) == [
        bytes([0]), bytes([1]), bytes([2])]
    for side in (approver, None):
        assert await _post(store, channel, b"more", approver=side) is LinkPostResult.EXHAUSTED
    assert await _take_for_new_device(store, channel) == []
    assert await _take_for_approver(store, channel, approver) == []


async def test_an_expired_or_unknown_channel_takes_nothing(store: Store) -> None:
    approver, _ = await _enrolled(store)
    channel = _fresh_channel()
    assert await _open(store, channel)
    assert await _post(store, channel, b"offer", approver=approver) is LinkPostResult.POSTED
    expiry = NOW + CHANNEL_TTL_MS
    assert await _post(store, channel, b"just in time", approver=None, now=expiry - 1) is (
        LinkPostResult.POSTED)
    assert await _post(store, channel, b"late", approver=None, now=expiry) is (
        LinkPostResult.UNKNOWN_CHANNEL)
    assert await _take_for_new_device(store, channel, expiry) is None
    assert await _take_for_approver(store, channel, approver, expiry) is None

    unknown = _fresh_channel()
    assert await _post(store, unknown, b"hello", approver=approver) is (
        LinkPostResult.UNKNOWN_CHANNEL)
    assert await _take_for_new_device(store, unknown) is None


async def test_open_channels_are_bounded_and_expired_ones_make_room(store: Store) -> None:
    approver, _ = await _enrolled(store)
    first, second, third = (_fresh_channel() for _ in range(3))
    assert await _open(store, first, max_open=2)
    assert not await _open(store, first, now=NOW + 1, max_open=2)  # the id is taken
    assert await _post(store, first, b"offer", approver=approver) is LinkPostResult.POSTED
    assert await _open(store, second, now=NOW + 1, max_open=2)
    assert not await _open(store, third, now=NOW + 2, max_open=2)
    assert await _take_for_new_device(store, third, NOW + 2) is None  # nothing was stored

    # The first expires: opening deletes it (with its message) and makes room.
    assert await _open(store, third, now=NOW + CHANNEL_TTL_MS, max_open=2)
    assert await _take_for_new_device(store, first, NOW + 1) is None
    assert await _open(store, first, now=NOW + CHANNEL_TTL_MS + 1, max_open=3)
    assert await _take_for_new_device(store, first, NOW + CHANNEL_TTL_MS + 1) == []
