"""Conformance tests for the prekey methods of ``storage.base.Store``.

``tests/storage_conformance.py`` star-imports this module at its end, so every backend that
runs the storage conformance suite runs these too (with the same ``store``/``store_opener``
fixtures). Signatures are opaque bytes here: verifying them is the relay's job.
"""

from __future__ import annotations

import itertools

import hypothesis
import pytest
import trio
from hypothesis import strategies as st

from storage.base import NotFound, Store, User
from storage.prekey_records import Prekey, PrekeyCounts, PrekeyPoolFull, PrekeyUpload
from tests.storage_conformance import (
    NOW,
    TIMEOUT_S,
    StoreOpener,
    _enrolled,
    _organisation,
    _register,
)

POOL_CAP = 50
"""max_pool_size in these tests: small enough to reach, large enough for every upload."""

_key_ids = itertools.count(1)


def _x25519(key_id: int, *, signed: bool = False) -> Prekey:
    return Prekey(key_id=key_id, public_key=key_id.to_bytes(4, "big") * 8,
                  signature=b"s" * 64 if signed else None)


def _kem(key_id: int) -> Prekey:
    return Prekey(key_id=key_id, public_key=key_id.to_bytes(4, "big") * 392, signature=b"k" * 64)


def _full_upload(*, one_time: int, kem_one_time: int, signed_id: int = 1,
                 last_resort_id: int = 1) -> PrekeyUpload:
    return PrekeyUpload(
        signed_prekey=_x25519(signed_id, signed=True), kem_last_resort_prekey=_kem(last_resort_id),
        one_time_prekeys=tuple(_x25519(next(_key_ids)) for _ in range(one_time)),
        kem_one_time_prekeys=tuple(_kem(next(_key_ids)) for _ in range(kem_one_time)))


async def _upload(store: Store, user: User, device_id: int, upload: PrekeyUpload) -> PrekeyCounts:
    return await store.store_prekeys(user_id=user.user_id, device_id=device_id, upload=upload,
                                     now=NOW, max_pool_size=POOL_CAP)


async def test_an_upload_is_counted_and_a_retry_adds_nothing(store: Store) -> None:
    user, [device] = await _enrolled(store)
    upload = _full_upload(one_time=3, kem_one_time=2, signed_id=7, last_resort_id=8)
    counts = await _upload(store, user, device, upload)
    assert counts == PrekeyCounts(one_time=3, kem_one_time=2, signed_prekey_id=7,
                                  kem_last_resort_prekey_id=8)
    assert await _upload(store, user, device, upload) == counts
    assert await store.prekey_counts(user_id=user.user_id, device_id=device) == counts
    # A new signed prekey replaces the old one; the pools are untouched.
    replaced = await _upload(store, user, device,
                             PrekeyUpload(signed_prekey=_x25519(9, signed=True)))
    assert (replaced.signed_prekey_id, replaced.one_time) == (9, 3)


async def test_an_unknown_device_is_refused(store: Store) -> None:
    user, [device] = await _enrolled(store)
    with pytest.raises(NotFound):
        await _upload(store, user, device + 1, _full_upload(one_time=1, kem_one_time=1))
    with pytest.raises(NotFound):
        await store.prekey_counts(user_id=user.user_id, device_id=device + 1)
    assert await store.claim_bundles(user_id=user.user_id, device_ids=[device + 1]) == []


async def test_an_upload_overfilling_a_pool_changes_nothing(store: Store) -> None:
    user, [device] = await _enrolled(store)
    before = await _upload(store, user, device, _full_upload(one_time=POOL_CAP - 1,
                                                             kem_one_time=1))
    with pytest.raises(PrekeyPoolFull):
        await _upload(store, user, device, _full_upload(one_time=2, kem_one_time=1,
                                                        signed_id=99))
    assert await store.prekey_counts(user_id=user.user_id, device_id=device) == before


async def test_a_claim_takes_the_oldest_keys_once_then_serves_the_last_resort(
        store: Store) -> None:
    user, [device] = await _enrolled(store)
    upload = _full_upload(one_time=2, kem_one_time=1, last_resort_id=5)
    await _upload(store, user, device, upload)
    [first] = await store.claim_bundles(user_id=user.user_id, device_ids=None)
    assert first.device.device_id == device
    assert first.signed_prekey == upload.signed_prekey
    assert first.one_time_prekey == upload.one_time_prekeys[0]
    assert (first.kem_prekey, first.kem_one_time) == (upload.kem_one_time_prekeys[0], True)
    assert (first.remaining.one_time, first.remaining.kem_one_time) == (1, 0)
    [second] = await store.claim_bundles(user_id=user.user_id, device_ids=None)
    assert second.one_time_prekey == upload.one_time_prekeys[1]
    assert (second.kem_prekey, second.kem_one_time) == (upload.kem_last_resort_prekey, False)
    [third] = await store.claim_bundles(user_id=user.user_id, device_ids=None)
    assert third.one_time_prekey is None
    assert third.kem_prekey == upload.kem_last_resort_prekey  # kept: served again
    assert third.remaining == PrekeyCounts(one_time=0, kem_one_time=0, signed_prekey_id=1,
                                           kem_last_resort_prekey_id=5)


async def test_a_claim_covers_the_listed_or_all_devices(store: Store) -> None:
    user, devices = await _enrolled(store, devices=3)
    for device in devices:
        await _upload(store, user, device, _full_upload(one_time=2, kem_one_time=0))
    everyone = await store.claim_bundles(user_id=user.user_id, device_ids=None)
    assert [bundle.device.device_id for bundle in everyone] == devices
    listed = await store.claim_bundles(user_id=user.user_id, device_ids=[devices[2], 999])
    assert [bundle.device.device_id for bundle in listed] == [devices[2]]
    counts = [await store.prekey_counts(user_id=user.user_id, device_id=device)
              for device in devices]
    assert [count.one_time for count in counts] == [1, 1, 0]


async def test_nothing_is_claimed_from_a_device_without_signed_keys(store: Store) -> None:
    user, [device] = await _enrolled(store)
    await _upload(store, user, device, PrekeyUpload(
        one_time_prekeys=(_x25519(1),), kem_last_resort_prekey=_kem(2)))
    [bundle] = await store.claim_bundles(user_id=user.user_id, device_ids=None)
    assert (bundle.signed_prekey, bundle.one_time_prekey) == (None, None)
    assert bundle.kem_prekey == _kem(2)
    assert bundle.remaining.one_time == 1
    assert await store.claim_bundles(user_id="no-such-user", device_ids=None) == []


async def test_a_deleted_user_takes_its_prekeys_along(store: Store) -> None:
    organisation = await _organisation(store)
    user, [device] = await _enrolled(store, organisation=organisation)
    await _upload(store, user, device, _full_upload(one_time=2, kem_one_time=2))
    await store.delete_user(organisation=organisation, phone=user.phone)
    assert await store.claim_bundles(user_id=user.user_id, device_ids=None) == []
    with pytest.raises(NotFound):
        await store.prekey_counts(user_id=user.user_id, device_id=device)


async def test_prekeys_survive_closing_and_reopening(store_opener: StoreOpener) -> None:
    async with store_opener() as first:
        user, [device] = await _enrolled(first)
        counts = await _upload(first, user, device, _full_upload(one_time=2, kem_one_time=1))
    async with store_opener() as second:
        assert await second.prekey_counts(user_id=user.user_id, device_id=device) == counts
        [bundle] = await second.claim_bundles(user_id=user.user_id, device_ids=None)
        assert bundle.remaining.one_time == 1


async def test_two_stores_on_one_database_never_claim_the_same_key(
        store_opener: StoreOpener) -> None:
    # Two stores on the same file or database: two relay nodes (or processes).
    async with store_opener() as first, store_opener() as second:
        user, [device] = await _enrolled(first)
        await _upload(first, user, device, _full_upload(one_time=10, kem_one_time=10))
        claimed: list[int] = []

        async def claim(store: Store) -> None:
            for _ in range(6):
                [bundle] = await store.claim_bundles(user_id=user.user_id, device_ids=None)
                if bundle.one_time_prekey is not None:
                    claimed.append(bundle.one_time_prekey.key_id)

        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(claim, first)
                nursery.start_soon(claim, second)
    assert len(claimed) == len(set(claimed)) == 10


@hypothesis.settings(max_examples=15, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(pool=st.integers(0, 12), kem_pool=st.integers(0, 4),
                  claimers=st.integers(1, 16), devices=st.integers(1, 2))
async def test_concurrent_claims_never_receive_the_same_one_time_key(
        store_opener: StoreOpener, pool: int, kem_pool: int, claimers: int,
        devices: int) -> None:
    async with store_opener() as store:
        user, device_ids = await _enrolled(store, devices=devices)
        uploads = {device: _full_upload(one_time=pool, kem_one_time=kem_pool)
                   for device in device_ids}
        for device, upload in uploads.items():
            await _upload(store, user, device, upload)
        received: list[tuple[int, str, int]] = []

        async def claim() -> None:
            for bundle in await store.claim_bundles(user_id=user.user_id, device_ids=None):
                device = bundle.device.device_id
                if bundle.one_time_prekey is not None:
                    received.append((device, "one_time", bundle.one_time_prekey.key_id))
                if bundle.kem_one_time:
                    assert bundle.kem_prekey is not None
                    received.append((device, "kem", bundle.kem_prekey.key_id))
                else:
                    assert bundle.kem_prekey == uploads[device].kem_last_resort_prekey

        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for _ in range(claimers):
                    nursery.start_soon(claim)
        assert len(received) == len(set(received))
        for device in device_ids:
            one_time = [key for owner, kind, key in received
                        if owner == device and kind == "one_time"]
            kem = [key for owner, kind, key in received if owner == device and kind == "kem"]
            assert len(one_time) == min(pool, claimers)
            assert len(kem) == min(kem_pool, claimers)
            counts = await store.prekey_counts(user_id=user.user_id, device_id=device)
            assert counts.one_time == pool - len(one_time)
            assert counts.kem_one_time == kem_pool - len(kem)


async def test_a_new_device_starts_with_no_prekeys(store: Store) -> None:
    user, [first] = await _enrolled(store)
    second = await _register(store, user)
    await _upload(store, user, first, _full_upload(one_time=1, kem_one_time=1))
    assert await store.prekey_counts(user_id=user.user_id, device_id=second) == PrekeyCounts(
        one_time=0, kem_one_time=0)
    bundles = await store.claim_bundles(user_id=user.user_id, device_ids=None)
    assert [(bundle.device.device_id, bundle.signed_prekey is None) for bundle in bundles] == [
        (first, False), (second, True)]
