"""The prekey service end to end over real QUIC on loopback: upload, claims, pushes, limits."""

from __future__ import annotations

import itertools
import secrets

import pytest
import trio
from nacl.signing import SigningKey

from client.connection import RelayClient, RelayError
from crypto.prekey_format import (
    KEM_PUBLIC_KEY_SIZE,
    X25519_PUBLIC_KEY_SIZE,
    PrekeyKind,
    signed_message,
)
from relay.prekeys import BUNDLE_FETCHES_PER_TARGET, PREKEYS_LOW_THRESHOLD
from storage.base import OrganisationState
from storage.sqlite import open_sqlite_store
from tests.conftest import EnrolledDevice, RelayUnderTest, enrol, link_device
from wire.frames import ErrorCode
from wire.prekey_frames import KemPrekey, OneTimePrekey, SignedPrekey

ALICE, BOB, CAROL = "+33612345678", "+33698765432", "+33611111111"
TIMEOUT_S = 10
"""Bound on anything that could hang; not a timing assertion."""

_key_ids = itertools.count(100)


def signed_prekey(key: SigningKey, key_id: int = 1) -> SignedPrekey:
    public_key = secrets.token_bytes(X25519_PUBLIC_KEY_SIZE)
    signature = key.sign(signed_message(PrekeyKind.SIGNED, key_id, public_key)).signature
    return SignedPrekey(key_id=key_id, public_key=public_key, signature=signature)


def kem_prekey(key: SigningKey, key_id: int, kind: PrekeyKind) -> KemPrekey:
    public_key = secrets.token_bytes(KEM_PUBLIC_KEY_SIZE)
    signature = key.sign(signed_message(kind, key_id, public_key)).signature
    return KemPrekey(key_id=key_id, public_key=public_key, signature=signature)


def one_time_prekeys(count: int) -> list[OneTimePrekey]:
    return [OneTimePrekey(key_id=next(_key_ids), public_key=secrets.token_bytes(32))
            for _ in range(count)]


def kem_one_time_prekeys(key: SigningKey, count: int) -> list[KemPrekey]:
    return [kem_prekey(key, next(_key_ids), PrekeyKind.KEM_ONE_TIME) for _ in range(count)]


async def connected(relay: RelayUnderTest, device: EnrolledDevice,
                    nursery: trio.Nursery) -> RelayClient:
    """An authenticated client that stays connected until the test ends."""
    ready: trio.Event = trio.Event()
    holder: list[RelayClient] = []

    async def hold() -> None:
        async with relay.connect() as client:
            await client.authenticate(device.user_id, device.device_id, device.key)
            holder.append(client)
            ready.set()
            await trio.sleep_forever()

    nursery.start_soon(hold)
    with trio.fail_after(TIMEOUT_S):
        await ready.wait()
    return holder[0]


async def publish(client: RelayClient, device: EnrolledDevice, *, one_time: int,
                  kem_one_time: int) -> None:
    await client.upload_prekeys(
        signed_prekey=signed_prekey(device.key),
        kem_last_resort_prekey=kem_prekey(device.key, 1, PrekeyKind.KEM_LAST_RESORT),
        one_time_prekeys=one_time_prekeys(one_time),
        kem_one_time_prekeys=kem_one_time_prekeys(device.key, kem_one_time))


async def test_a_bad_signature_is_refused_and_nothing_is_stored(
        relay: RelayUnderTest, nursery: trio.Nursery) -> None:
    alice = await enrol(relay, ALICE)
    client = await connected(relay, alice, nursery)
    impostor = SigningKey.generate()
    good_kem = kem_one_time_prekeys(alice.key, 3)
    bad_kem = kem_prekey(impostor, 7, PrekeyKind.KEM_ONE_TIME)
    with pytest.raises(RelayError) as refused:
        await client.upload_prekeys(signed_prekey=signed_prekey(alice.key),
                                    one_time_prekeys=one_time_prekeys(5),
                                    kem_one_time_prekeys=[*good_kem, bad_kem])
    assert refused.value.code is ErrorCode.INVALID_PREKEY_SIGNATURE
    assert "kem_one_time prekey 7" in refused.value.reason
    # A signature over another kind's label does not pass either (domain separation).
    public_key = secrets.token_bytes(32)
    cross_kind = SignedPrekey(key_id=1, public_key=public_key, signature=alice.key.sign(
        b"cryptopass/1 kem-prekey\x00" + (1).to_bytes(4, "big") + public_key).signature)
    with pytest.raises(RelayError) as refused:
        await client.upload_prekeys(signed_prekey=cross_kind)
    assert refused.value.code is ErrorCode.INVALID_PREKEY_SIGNATURE
    counts = await client.prekey_counts()
    assert (counts.one_time, counts.kem_one_time, counts.signed_prekey_id) == (0, 0, None)


async def test_fetches_claim_distinct_keys_then_serve_the_last_resort(
        relay: RelayUnderTest, nursery: trio.Nursery) -> None:
    alice, bob, carol = (await enrol(relay, ALICE), await enrol(relay, BOB),
                         await enrol(relay, CAROL))
    alice_client = await connected(relay, alice, nursery)
    await publish(alice_client, alice, one_time=4, kem_one_time=2)
    fetchers = [await connected(relay, bob, nursery), await connected(relay, carol, nursery)]
    bundles = []

    async def fetch(client: RelayClient) -> None:
        for _ in range(3):
            bundles.extend(await client.fetch_bundle(alice.user_id))

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as fetching:
            for client in fetchers:
                fetching.start_soon(fetch, client)
    assert {bundle.device_id for bundle in bundles} == {alice.device_id}
    one_time = [bundle.one_time_prekey.key_id for bundle in bundles if bundle.one_time_prekey]
    assert len(one_time) == len(set(one_time)) == 4
    kem = [bundle.kem_prekey for bundle in bundles if bundle.kem_one_time]
    assert len({key.key_id for key in kem if key}) == 2
    last_resort = [bundle.kem_prekey for bundle in bundles if not bundle.kem_one_time]
    assert len(last_resort) == 4
    assert all(key is not None and key.key_id == 1 for key in last_resort)
    assert all(bundle.identity_key == alice.key.verify_key.encode() for bundle in bundles)
    counts = await alice_client.prekey_counts()
    assert (counts.one_time, counts.kem_one_time, counts.kem_last_resort_prekey_id) == (0, 0, 1)


async def test_a_device_whose_pool_runs_low_is_told(relay: RelayUnderTest,
                                                    nursery: trio.Nursery) -> None:
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    alice_client = await connected(relay, alice, nursery)
    await publish(alice_client, alice, one_time=PREKEYS_LOW_THRESHOLD + 1,
                  kem_one_time=PREKEYS_LOW_THRESHOLD + 5)
    bob_client = await connected(relay, bob, nursery)
    await bob_client.fetch_bundle(alice.user_id)  # leaves exactly the threshold: no warning
    await bob_client.fetch_bundle(alice.user_id)  # one below it
    with trio.fail_after(TIMEOUT_S):
        low = await alice_client.next_prekeys_low()
    # The first warning is for the second claim: the first one did not warn.
    assert (low.one_time, low.kem_one_time) == (PREKEYS_LOW_THRESHOLD - 1,
                                               PREKEYS_LOW_THRESHOLD + 3)


async def test_bundle_fetches_are_limited_per_requester_and_target(
        relay: RelayUnderTest, nursery: trio.Nursery) -> None:
    alice, bob, carol = (await enrol(relay, ALICE), await enrol(relay, BOB),
                         await enrol(relay, CAROL))
    bob_client = await connected(relay, bob, nursery)
    for _ in range(BUNDLE_FETCHES_PER_TARGET):
        await bob_client.fetch_bundle(alice.user_id)
    with pytest.raises(RelayError) as limited:
        await bob_client.fetch_bundle(alice.user_id)
    assert limited.value.code is ErrorCode.RATE_LIMITED
    await bob_client.fetch_bundle(carol.user_id)  # another target has its own budget
    carol_client = await connected(relay, carol, nursery)
    await carol_client.fetch_bundle(alice.user_id)  # and another requester too


async def test_devices_join_and_leave_bundles_and_device_lists(
        relay: RelayUnderTest, nursery: trio.Nursery) -> None:
    first, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    second = await link_device(relay, first)
    assert (second.user_id, second.device_id) == (first.user_id, first.device_id + 1)
    first_client = await connected(relay, first, nursery)
    await publish(first_client, first, one_time=2, kem_one_time=0)
    bob_client = await connected(relay, bob, nursery)
    listed = await bob_client.list_devices(first.user_id)
    assert [device.device_id for device in listed.devices] == [first.device_id, second.device_id]
    assert [device.device_id for device in (await first_client.list_devices()).devices] == [
        first.device_id, second.device_id]
    bundles = await bob_client.fetch_bundle(first.user_id)
    assert [(bundle.device_id, bundle.signed_prekey is not None) for bundle in bundles] == [
        (first.device_id, True), (second.device_id, False)]  # the second uploaded nothing yet
    only_second = await bob_client.fetch_bundle(first.user_id, [second.device_id])
    assert [bundle.device_id for bundle in only_second] == [second.device_id]
    # One's own other devices: the asking device itself is left out.
    own = await first_client.fetch_bundle(first.user_id)
    assert [bundle.device_id for bundle in own] == [second.device_id]

    async with open_sqlite_store(relay.data_dir / "relay.db") as store:
        await store.delete_user(organisation="acme", phone=ALICE)
    with pytest.raises(RelayError) as gone:
        await bob_client.fetch_bundle(first.user_id)
    assert gone.value.code is ErrorCode.UNKNOWN_RECIPIENT
    with pytest.raises(RelayError) as gone:
        await bob_client.list_devices(first.user_id)
    assert gone.value.code is ErrorCode.UNKNOWN_RECIPIENT


async def test_users_of_a_suspended_organisation_cannot_be_fetched(
        relay: RelayUnderTest, nursery: trio.Nursery) -> None:
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    bob_client = await connected(relay, bob, nursery)
    assert await bob_client.fetch_bundle(alice.user_id)
    async with open_sqlite_store(relay.data_dir / "relay.db") as store:
        await store.set_organisation_state(name="acme", state=OrganisationState.SUSPENDED)
    with pytest.raises(RelayError) as refused:
        await bob_client.fetch_bundle(alice.user_id)
    assert refused.value.code is ErrorCode.UNKNOWN_RECIPIENT
    with pytest.raises(RelayError) as refused:
        await bob_client.fetch_bundle("f" * 32)
    assert refused.value.code is ErrorCode.UNKNOWN_RECIPIENT
