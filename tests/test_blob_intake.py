"""An upload's raw bytes reach the store in pieces of at least MIN_BLOB_APPEND_BYTES (but the
last), however the client cuts them: a client trickling bytes cannot buy an fsync per packet."""

from __future__ import annotations

import trio
import trio.testing

from relay.blob_streams import RawIntake
from relay.blobs import BLOB_PIECE_BYTES, MIN_BLOB_APPEND_BYTES


async def test_trickled_bytes_are_appended_in_pieces_of_the_minimum_size() -> None:
    held: list[int] = []
    intake = RawIntake(hold=held.append, release=lambda size: held.append(-size))
    total = 3 * MIN_BLOB_APPEND_BYTES + 100
    taken: list[int] = []

    async def take_all() -> None:
        while (piece := await intake.take(BLOB_PIECE_BYTES,
                                          at_least=MIN_BLOB_APPEND_BYTES)) is not None:
            taken.append(len(piece))
            intake.release(len(piece))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(take_all)
            for _ in range(total // 100):
                intake.feed(b"x" * 100)  # 100 bytes a packet
                await trio.sleep(0)  # let the taker run between packets, as the loop would
            intake.feed(b"x" * (total % 100))
            intake.end()
    assert sum(taken) == total
    assert all(size >= MIN_BLOB_APPEND_BYTES for size in taken[:-1]), taken
    assert len(taken) <= total // MIN_BLOB_APPEND_BYTES + 1
    assert sum(held) == 0  # everything held was given back


async def test_a_short_upload_is_appended_once_it_ends() -> None:
    intake = RawIntake(hold=lambda _size: None, release=lambda _size: None)
    intake.feed(b"abc")
    intake.end()
    with trio.fail_after(5):
        assert await intake.take(BLOB_PIECE_BYTES, at_least=MIN_BLOB_APPEND_BYTES) == b"abc"
        assert await intake.take(BLOB_PIECE_BYTES, at_least=MIN_BLOB_APPEND_BYTES) is None


async def test_a_closed_intake_wakes_a_waiting_taker_with_nothing() -> None:
    intake = RawIntake(hold=lambda _size: None, release=lambda _size: None)
    intake.feed(b"partial")
    result: list[bytes | None] = []

    async def take() -> None:
        result.append(await intake.take(BLOB_PIECE_BYTES, at_least=MIN_BLOB_APPEND_BYTES))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(take)
            await trio.testing.wait_all_tasks_blocked()
            assert result == []  # 7 bytes are not a piece: the taker waits
            intake.close()
    assert result == [None]
