"""Backend-independent conformance tests for ``storage.interfaces.blobs.BlobStore``.

A backend's test module reuses them with::

    from tests.blob_store_conformance import *  # noqa: F403

and defines ``store_opener`` as for ``tests.storage_conformance`` (opening THE SAME store each
time): the race tests open it twice, as two relay nodes (or two worker processes) would.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest
import trio

from storage.base import (
    BlobInfo,
    BlobOffsetMismatch,
    BlobPastSize,
    BlobQuotaExceeded,
    NotFound,
    Store,
    User,
)
from storage.interfaces.blobs import BLOB_ID_BYTES, BLOB_MINIMUM_CHARGE_BYTES, MAX_BLOB_PIECE_BYTES
from tests.storage_conformance import NOW, TIMEOUT_S, _declared, _organisation

StoreOpener = Callable[[], AbstractAsyncContextManager[Store]]

DAY_MS = 24 * 60 * 60 * 1000
BLOB_TTL_MS = 30 * DAY_MS
QUOTA = 1 << 40
"""A quota no test reaches unless it means to."""
DEVICE = 1


@pytest.fixture
async def store(store_opener: StoreOpener) -> AsyncIterator[Store]:
    async with store_opener() as opened:
        yield opened


async def _create(store: Store, user: User, size: int, *, quota: int = QUOTA,
                  now: int = NOW, ttl_ms: int = BLOB_TTL_MS,
                  upload_ttl_ms: int | None = None) -> bytes:
    return await store.create_blob(
        organisation_id=user.organisation_id, user_id=user.user_id, device_id=DEVICE, size=size,
        quota_bytes=quota, now_ms=now, expires_ms=now + ttl_ms,
        upload_deadline_ms=None if upload_ttl_ms is None else now + upload_ttl_ms)


async def _upload(store: Store, blob_id: bytes, data: bytes, *, piece: int = 7,
                  start: int = 0) -> None:
    """Append ``data[start:]`` from ``start``, ``piece`` bytes at a time."""
    for offset in range(start, len(data), piece):
        assert await store.append_blob(blob_id, offset, data[offset:offset + piece]) == min(
            offset + piece, len(data))


async def _info(store: Store, blob_id: bytes, now: int = NOW) -> BlobInfo:
    info = await store.blob_info(blob_id, now)
    assert info is not None
    return info


async def _read_all(store: Store, blob_id: bytes, *, piece: int = 5) -> bytes:
    """Every durable byte, read as the relay does: ``piece`` at a time, on from what came."""
    info = await _info(store, blob_id)
    pieces: list[bytes] = []
    offset = 0
    while offset < info.received:
        data = await store.read_blob(blob_id, offset, piece)
        assert data, "b'' before received"
        pieces.append(data)
        offset += len(data)
    return b"".join(pieces)


# -- create, append, resume, read -----------------------------------------------------


async def test_a_blob_is_created_empty_with_an_unguessable_id(store: Store) -> None:
    user = await _declared(store)
    first, second = await _create(store, user, 100), await _create(store, user, 100)
    assert len(first) == len(second) == BLOB_ID_BYTES
    assert first != second
    info = await _info(store, first)
    assert (info.blob_id, info.organisation_id, info.user_id, info.device_id) == (
        first, user.organisation_id, user.user_id, DEVICE)
    assert (info.size, info.received, info.complete) == (100, 0, False)
    assert (info.created_ms, info.expires_ms, info.upload_deadline_ms) == (
        NOW, NOW + BLOB_TTL_MS, NOW + BLOB_TTL_MS)


async def test_appended_pieces_read_back_from_any_offset(store: Store) -> None:
    user = await _declared(store)
    data = secrets.token_bytes(1000)
    blob_id = await _create(store, user, len(data))
    await _upload(store, blob_id, data[:600], piece=200)
    info = await _info(store, blob_id)
    assert (info.received, info.complete) == (600, False)
    # Only durable bytes are served: reading past received stops there.
    assert await store.read_blob(blob_id, 550, 100) == data[550:600]
    assert await store.read_blob(blob_id, 600, 100) == b""
    await _upload(store, blob_id, data, piece=150, start=600)
    assert (await _info(store, blob_id)).complete
    assert await _read_all(store, blob_id, piece=333) == data
    assert await store.read_blob(blob_id, 999, 10) == data[999:]
    assert await store.read_blob(blob_id, 5000, 10) == b""


async def test_an_upload_resumes_after_reopening_from_received(
        store_opener: StoreOpener) -> None:
    data = secrets.token_bytes(3 * 1024)
    async with store_opener() as store:
        user = await _declared(store)
        blob_id = await _create(store, user, len(data))
        await _upload(store, blob_id, data[:1024], piece=1024)
    async with store_opener() as store:
        assert (await _info(store, blob_id)).received == 1024
        await _upload(store, blob_id, data, piece=1024, start=1024)
        assert await _read_all(store, blob_id, piece=1000) == data


async def test_an_empty_blob_is_complete_at_once(store: Store) -> None:
    user = await _declared(store)
    blob_id = await _create(store, user, 0)
    assert (await _info(store, blob_id)).complete
    assert await store.read_blob(blob_id, 0, 10) == b""
    assert await store.append_blob(blob_id, 0, b"") == 0


async def test_a_piece_of_a_full_megabyte_is_taken_and_a_larger_one_refused(
        store: Store) -> None:
    user = await _declared(store)
    data = secrets.token_bytes(MAX_BLOB_PIECE_BYTES)
    blob_id = await _create(store, user, len(data) + 1)
    with pytest.raises(ValueError, match="piece"):
        await store.append_blob(blob_id, 0, data + b"x")
    assert (await _info(store, blob_id)).received == 0
    assert await store.append_blob(blob_id, 0, data) == len(data)
    assert await store.read_blob(blob_id, 0, MAX_BLOB_PIECE_BYTES) == data
    with pytest.raises(ValueError, match="piece"):
        await store.read_blob(blob_id, 0, MAX_BLOB_PIECE_BYTES + 1)
    with pytest.raises(ValueError, match="negative"):
        await store.read_blob(blob_id, -1, 10)


# -- refusals change nothing ----------------------------------------------------------


async def test_an_append_at_another_offset_is_refused_and_changes_nothing(
        store: Store) -> None:
    user = await _declared(store)
    blob_id = await _create(store, user, 100)
    await store.append_blob(blob_id, 0, b"a" * 10)
    for offset in (0, 5, 11, 50, -1):
        with pytest.raises(BlobOffsetMismatch) as refused:
            await store.append_blob(blob_id, offset, b"b" * 10)
        assert refused.value.received == 10
    assert (await _info(store, blob_id)).received == 10
    assert await store.read_blob(blob_id, 0, 100) == b"a" * 10
    assert await store.append_blob(blob_id, 10, b"c" * 5) == 15
    assert await store.read_blob(blob_id, 0, 100) == b"a" * 10 + b"c" * 5


async def test_bytes_past_the_declared_size_are_refused_and_none_kept(store: Store) -> None:
    user = await _declared(store)
    blob_id = await _create(store, user, 10)
    await store.append_blob(blob_id, 0, b"x" * 8)
    with pytest.raises(BlobPastSize) as refused:
        await store.append_blob(blob_id, 8, b"y" * 3)
    assert refused.value.size == 10
    assert (await _info(store, blob_id)).received == 8
    assert await store.read_blob(blob_id, 0, 100) == b"x" * 8
    assert await store.append_blob(blob_id, 8, b"y" * 2) == 10
    assert await store.read_blob(blob_id, 0, 100) == b"x" * 8 + b"yy"


async def test_a_negative_size_is_refused(store: Store) -> None:
    user = await _declared(store)
    with pytest.raises(ValueError, match="size"):
        await _create(store, user, -1)


async def test_a_user_outside_the_organisation_cannot_create(store: Store) -> None:
    user = await _declared(store)
    other = await _declared(store)
    with pytest.raises(NotFound):
        await store.create_blob(organisation_id=other.organisation_id, user_id=user.user_id,
                                device_id=DEVICE, size=10, quota_bytes=QUOTA, now_ms=NOW,
                                expires_ms=NOW + BLOB_TTL_MS)
    assert await store.organisation_blob_bytes(other.organisation_id, NOW) == 0


# -- the id is the capability ---------------------------------------------------------


async def test_a_wrong_id_is_refused_exactly_as_a_missing_one(store: Store) -> None:
    user = await _declared(store)
    blob_id = await _create(store, user, 4)
    await store.append_blob(blob_id, 0, b"data")
    near = bytes([blob_id[0] ^ 1]) + blob_id[1:]
    for wrong in (near, blob_id[:16], blob_id + b"\x00", b"", secrets.token_bytes(32)):
        assert await store.blob_info(wrong, NOW) is None
        with pytest.raises(NotFound) as read_refusal:
            await store.read_blob(wrong, 0, 4)
        with pytest.raises(NotFound) as append_refusal:
            await store.append_blob(wrong, 0, b"x")
        assert str(read_refusal.value) == str(append_refusal.value) == "no such blob"


# -- quota ----------------------------------------------------------------------------


async def test_the_quota_refuses_a_blob_and_stores_nothing(store: Store) -> None:
    user = await _declared(store)
    quota = 3 * BLOB_MINIMUM_CHARGE_BYTES
    await _create(store, user, 2 * BLOB_MINIMUM_CHARGE_BYTES, quota=quota)
    await _create(store, user, 1, quota=quota)  # charged one block
    assert await store.organisation_blob_bytes(user.organisation_id, NOW) == quota
    with pytest.raises(BlobQuotaExceeded) as refused:
        await _create(store, user, 0, quota=quota)
    assert refused.value.quota_bytes == quota
    assert await store.organisation_blob_bytes(user.organisation_id, NOW) == quota
    # Another organisation has its own quota.
    other = await _declared(store)
    await _create(store, other, BLOB_MINIMUM_CHARGE_BYTES, quota=quota)


async def test_expired_blobs_no_longer_count_against_the_quota(store: Store) -> None:
    user = await _declared(store)
    quota = 2 * BLOB_MINIMUM_CHARGE_BYTES
    await _create(store, user, quota, quota=quota, ttl_ms=DAY_MS)
    with pytest.raises(BlobQuotaExceeded):
        await _create(store, user, 1, quota=quota)
    later = NOW + DAY_MS
    await _create(store, user, quota, quota=quota, now=later)  # the first one has expired


async def test_two_stores_racing_for_the_last_of_the_quota_pass_only_as_many_as_fit(
        store_opener: StoreOpener) -> None:
    quota = 5 * BLOB_MINIMUM_CHARGE_BYTES
    created: list[bytes] = []
    refused: list[BlobQuotaExceeded] = []
    async with store_opener() as first, store_opener() as second:
        user = await _declared(first)

        async def create(store: Store) -> None:
            try:
                created.append(await _create(store, user, BLOB_MINIMUM_CHARGE_BYTES,
                                             quota=quota))
            except BlobQuotaExceeded as error:
                refused.append(error)

        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for index in range(12):
                    nursery.start_soon(create, (first, second)[index % 2])
        assert (len(created), len(refused)) == (5, 7)
        assert await second.organisation_blob_bytes(user.organisation_id, NOW) == quota


async def test_two_stores_racing_to_append_at_one_offset_keep_one_piece(
        store_opener: StoreOpener) -> None:
    async with store_opener() as first, store_opener() as second:
        user = await _declared(first)
        blob_id = await _create(first, user, 1000)
        outcomes: dict[bytes, int | BlobOffsetMismatch] = {}

        async def append(store: Store, data: bytes) -> None:
            try:
                outcomes[data] = await store.append_blob(blob_id, 0, data)
            except BlobOffsetMismatch as error:
                outcomes[data] = error

        pieces = [bytes([index]) * (100 + index) for index in range(6)]
        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for index, piece in enumerate(pieces):
                    nursery.start_soon(append, (first, second)[index % 2], piece)
        [winner] = [piece for piece, outcome in outcomes.items() if isinstance(outcome, int)]
        assert outcomes[winner] == len(winner)
        assert (await _info(second, blob_id)).received == len(winner)
        assert await first.read_blob(blob_id, 0, 1000) == winner
        assert await second.read_blob(blob_id, 0, 1000) == winner


# -- expiry and deletion --------------------------------------------------------------


async def test_an_expired_blob_is_gone_and_then_swept(store: Store) -> None:
    user = await _declared(store)
    expiring = await _create(store, user, 4, ttl_ms=DAY_MS)
    kept = await _create(store, user, 4, ttl_ms=2 * DAY_MS)
    for blob_id in (expiring, kept):
        await store.append_blob(blob_id, 0, b"data")
    later = NOW + DAY_MS
    assert await store.blob_info(expiring, later) is None
    assert await store.blob_info(kept, later) is not None
    assert await store.delete_expired_blobs(later, 100) == 1
    with pytest.raises(NotFound):
        await store.read_blob(expiring, 0, 4)
    assert await store.read_blob(kept, 0, 4) == b"data"
    assert await store.delete_expired_blobs(later, 100) == 0


async def test_an_upload_left_incomplete_past_its_deadline_expires_early(
        store: Store) -> None:
    user = await _declared(store)
    quota = 2 * BLOB_MINIMUM_CHARGE_BYTES
    abandoned = await _create(store, user, BLOB_MINIMUM_CHARGE_BYTES, quota=quota,
                              upload_ttl_ms=DAY_MS)
    finished = await _create(store, user, 4, quota=quota, upload_ttl_ms=DAY_MS)
    await store.append_blob(abandoned, 0, b"part")
    await store.append_blob(finished, 0, b"done")
    assert (await _info(store, abandoned)).upload_deadline_ms == NOW + DAY_MS
    with pytest.raises(BlobQuotaExceeded):
        await _create(store, user, 1, quota=quota)
    deadline = NOW + DAY_MS
    assert await store.blob_info(abandoned, deadline - 1) is not None
    assert await store.blob_info(abandoned, deadline) is None
    assert await store.blob_info(finished, deadline) is not None  # complete: kept to its TTL
    # Its quota is back at once, and the sweep takes it (only it).
    await _create(store, user, 1, quota=quota, now=deadline)
    assert await store.delete_expired_blobs(deadline, 100) == 1
    with pytest.raises(NotFound):
        await store.read_blob(abandoned, 0, 4)
    assert await store.read_blob(finished, 0, 4) == b"done"


async def test_an_upload_deadline_never_outlives_the_blob(store: Store) -> None:
    user = await _declared(store)
    blob_id = await _create(store, user, 4, ttl_ms=DAY_MS, upload_ttl_ms=2 * DAY_MS)
    assert (await _info(store, blob_id)).upload_deadline_ms == NOW + DAY_MS


async def test_expiry_is_swept_in_batches(store: Store) -> None:
    user = await _declared(store)
    for _ in range(5):
        await _create(store, user, 1, ttl_ms=DAY_MS)
    later = NOW + DAY_MS
    assert await store.delete_expired_blobs(later, 2) == 2
    assert await store.delete_expired_blobs(later, 2) == 2
    assert await store.delete_expired_blobs(later, 2) == 1


async def test_the_envelope_sweep_also_sweeps_blobs(store: Store) -> None:
    user = await _declared(store)
    blob_id = await _create(store, user, 4, ttl_ms=DAY_MS)
    await store.append_blob(blob_id, 0, b"data")
    await store.expire(now=NOW + DAY_MS, limit=100)
    with pytest.raises(NotFound):
        await store.read_blob(blob_id, 0, 4)


async def test_terminating_an_organisation_deletes_its_blobs_only(store: Store) -> None:
    terminated_name = await _organisation(store)
    terminated = await _declared(store, terminated_name)
    survivor = await _declared(store)
    gone = [await _create(store, terminated, 4) for _ in range(3)]
    kept = await _create(store, survivor, 4)
    for blob_id in (*gone, kept):
        await store.append_blob(blob_id, 0, b"data")
    await store.terminate_organisation(terminated_name)
    for blob_id in gone:
        assert await store.blob_info(blob_id, NOW) is None
        with pytest.raises(NotFound):
            await store.read_blob(blob_id, 0, 4)
    assert await store.organisation_blob_bytes(terminated.organisation_id, NOW) == 0
    assert await store.read_blob(kept, 0, 4) == b"data"


async def test_erasing_a_user_deletes_their_blobs_only(store: Store) -> None:
    organisation = await _organisation(store)
    erased, colleague = await _declared(store, organisation), await _declared(store, organisation)
    gone, kept = await _create(store, erased, 4), await _create(store, colleague, 4)
    for blob_id in (gone, kept):
        await store.append_blob(blob_id, 0, b"data")
    await store.erase_user(organisation=organisation, phone=erased.phone, pseudonym="erased-x")
    assert await store.blob_info(gone, NOW) is None
    assert await store.read_blob(kept, 0, 4) == b"data"


async def test_delete_organisation_blobs_deletes_that_organisations_only(store: Store) -> None:
    user, other = await _declared(store), await _declared(store)
    gone = [await _create(store, user, 1) for _ in range(2)]
    kept = await _create(store, other, 1)
    assert await store.delete_organisation_blobs(user.organisation_id) == 2
    assert [await store.blob_info(blob_id, NOW) for blob_id in gone] == [None, None]
    assert await store.blob_info(kept, NOW) is not None
    assert await store.delete_organisation_blobs(user.organisation_id) == 0


async def test_an_append_to_a_deleted_blob_is_refused(store: Store) -> None:
    user = await _declared(store)
    blob_id = await _create(store, user, 10)
    await store.append_blob(blob_id, 0, b"12345")
    await store.delete_organisation_blobs(user.organisation_id)
    with pytest.raises(NotFound):
        await store.append_blob(blob_id, 5, b"67890")
    assert await store.blob_info(blob_id, NOW) is None
