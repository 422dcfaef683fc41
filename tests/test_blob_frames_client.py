"""The client's blob API against a relay played by the test (no network): it never trusts what
the relay streams, and it stops writing an upload the relay refused.

A download answered from another offset than asked, with more bytes than the file has, or ended
short is a ``RemoteProtocolError``; bytes waiting to be read count as held by the connection and
are given back once read or dropped; an upload refused early (the relay answers before FIN)
raises the relay's error without writing the rest of the file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from client.connection import RelayClient, RelayError
from tests.client_peer_harness import FakeLink, relay_says
from wire.blob_frames import BlobData, BlobUploaded
from wire.frames import Error, ErrorCode, RemoteProtocolError

BLOB_ID = bytes(range(32))
WAIT_S = 10


class BlobLink(FakeLink):
    """A FakeLink with the flow-control hooks the blob API uses."""

    def __init__(self) -> None:
        super().__init__()
        self.held_received = 0
        self.stopped: list[int] = []

    def hold_received(self, size: int) -> None:
        self.held_received += size

    def release_received(self, size: int) -> None:
        self.held_received -= size

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        self.stopped.append(stream_id)

    async def wait_send_room(self, stream_id: int, at_most: int) -> None:
        await trio.lowlevel.checkpoint()


def blob_client() -> tuple[RelayClient, BlobLink]:
    client, link = RelayClient(), BlobLink()
    client._link = link  # type: ignore[assignment]
    return client, link


async def read_all(client: RelayClient, link: BlobLink, header: BlobData, body: bytes,
                   *, offset: int = 0) -> bytes:
    """Download, with the relay answering ``header`` then ``body`` then FIN."""
    received = bytearray()
    refused: RemoteProtocolError | None = None
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            async def relay() -> None:
                await link.wrote.wait()
                relay_says(client, link, 0, header, body, end_stream=True)

            nursery.start_soon(relay)
            try:
                async with client.download_blob(BLOB_ID, offset) as (_, chunks):
                    async for chunk in chunks:
                        received += chunk
            except RemoteProtocolError as error:  # raised outside the nursery's group
                refused = error
    if refused is not None:
        raise refused
    return bytes(received)


async def test_a_download_is_read_as_streamed_and_its_bytes_given_back() -> None:
    client, link = blob_client()
    assert await read_all(client, link, BlobData(size=10, offset=4), b"456789", offset=4) == (
        b"456789")
    assert link.held_received == 0 and link.stopped == []


@pytest.mark.parametrize(("header", "body", "offset"), [
    (BlobData(size=10, offset=0), b"0123456789" + b"extra", 0),  # more than the file has
    (BlobData(size=10, offset=0), b"01234", 0),  # ended short
    (BlobData(size=10, offset=2), b"23456789", 0),  # from another offset than asked
], ids=["too_long", "too_short", "wrong_offset"])
async def test_a_relay_streaming_the_wrong_bytes_is_a_protocol_error(
        header: BlobData, body: bytes, offset: int) -> None:
    client, link = blob_client()
    with pytest.raises(RemoteProtocolError):
        await read_all(client, link, header, body, offset=offset)
    assert link.held_received == 0


async def test_an_upload_refused_early_stops_writing_and_raises_the_refusal() -> None:
    client, link = blob_client()
    written_chunks = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal written_chunks
        for _ in range(100):
            written_chunks += 1
            if written_chunks == 3:  # the relay refuses while the client is still sending
                relay_says(client, link, 0, Error(code=ErrorCode.BLOB_OFFSET_MISMATCH,
                                                  reason="the relay holds 0 bytes"),
                           end_stream=True)
            yield b"x" * 1000

    with pytest.raises(RelayError) as refused, trio.fail_after(WAIT_S):
        await client.upload_blob(BLOB_ID, 5, chunks())
    assert refused.value.code is ErrorCode.BLOB_OFFSET_MISMATCH
    assert written_chunks == 3  # nothing read from the file after the answer
    assert not any(end for _, _, end in link.written)  # no FIN after a refusal


async def test_an_upload_ends_with_fin_and_returns_what_the_relay_holds() -> None:
    client, link = blob_client()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    async def relay() -> None:
        while not (link.written and link.written[-1][2]):
            link.wrote = trio.Event()
            await link.wrote.wait()
        relay_says(client, link, 0, BlobUploaded(received=6, complete=True), end_stream=True)

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay)
            assert await client.upload_blob(BLOB_ID, 0, chunks()) == 6
    assert b"".join(data for _, data, _ in link.written).endswith(b"abcdef")
