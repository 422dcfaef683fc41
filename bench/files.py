"""The ``files`` scenario: an encrypted file's upload and download through the relay,
beside bare QUIC bulk transfer of the same byte count, measured in the same run.

- ``upload``: Alice's `Messenger.send_file` of a ``size``-byte file to Bob: read, sealed in
  chunks (`crypto.attachments`), streamed to the relay's blob store, then the end-to-end
  message carrying the key. Timed from the call to its return.
- ``download``: Bob's `client.attachments.download_file` of the message he received:
  downloaded, opened, written to a 0600 temporary file, digest checked, fsynced and renamed.
  The file is then compared with the one sent (SHA-256).
- ``bare``: the same ciphertext byte count sent on one stream of bare aioquic to a server
  that only counts it, then sent back (bench/bulk_server.py, a process of its own like the
  relay): ``bare_upload`` runs from the first byte to the first byte of the answer,
  ``bare_download`` from there to the end of the stream.

MB is 10^6 bytes; each figure is the median of ``runs`` rounds, each round a bare transfer
then a file's, so that both see the same machine. The ratios ``*_over_bare`` say what share
of the transport's ceiling a file transfer reaches.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from aioquic.quic import events

from bench.bulk_server import send_bulk
from bench.encrypted_offline import EncryptedDevice, encrypted_device
from bench.provision import BenchDevice
from bench.spawn import BIN, SpawnedServer, peak_rss_mib, spawn_server
from client.connection import (
    RelayClient,
    client_configuration,
    connect_relay,
    open_client_endpoint,
)
from client.downloads import download_file
from client.message_content import FileMessage
from client.messenger import Messenger
from crypto.attachments import ciphertext_size
from transport.quic import QuicLink

if TYPE_CHECKING:
    from bench.target import Target

__all__ = ["WRITE_PIECE", "run_files"]

WRITE_PIECE = 1024 * 1024
"""Bytes of the test file written at a time (random, so nothing compresses it)."""
MB = 1_000_000


class _BulkClient:
    """Sends N bytes on one stream and times the answer's first and last byte."""

    def __init__(self) -> None:
        self.connected = trio.Event()
        self.answered = trio.Event()
        self.finished = trio.Event()
        self.received = 0
        self.first_byte_at = 0.0
        self.last_byte_at = 0.0
        self.error: str | None = None

    def quic_events(self, link: QuicLink, batch: list[events.QuicEvent]) -> None:
        for event in batch:
            if isinstance(event, events.HandshakeCompleted):
                self.connected.set()
            elif isinstance(event, events.StreamDataReceived):
                if not self.answered.is_set():
                    self.first_byte_at = time.perf_counter()
                    self.answered.set()
                self.received += len(event.data)
                if event.end_stream:
                    self.last_byte_at = time.perf_counter()
                    self.finished.set()
            elif isinstance(event, events.ConnectionTerminated):
                self.error = f"closed: {event.reason_phrase}"
                for waiting in (self.connected, self.answered, self.finished):
                    waiting.set()


async def _bare_round(port: int, cert: Path, size: int) -> tuple[float, float]:
    """Upload then download seconds of ``size`` bytes over bare QUIC."""
    client = _BulkClient()
    async with open_client_endpoint() as endpoint:
        link = endpoint.connect(("127.0.0.1", port),
                                client_configuration(ca=cert, server_name="localhost"), client)
        await client.connected.wait()
        stream_id = link.new_stream()
        started = time.perf_counter()
        await send_bulk(link, stream_id, size)
        await client.finished.wait()
        link.close(0)
    if client.error is not None or client.received != size:
        raise RuntimeError(f"bare transfer failed: {client.error or client.received}")
    return client.first_byte_at - started, client.last_byte_at - client.first_byte_at


@asynccontextmanager
async def _bulk_server(relay_cpu: int | None) -> AsyncIterator[tuple[int, Path]]:
    """The bare bulk-transfer server (a process of its own, on the relay's CPU if pinned):
    its port and certificate."""
    with tempfile.TemporaryDirectory(prefix="cryptopass-bulk-") as temporary:
        command = [str(BIN / "cryptopass-bench"), "internal", "bulk-server", temporary]
        async with spawn_server(command, cpu=relay_cpu,
                                make=lambda process: SpawnedServer(process=process)) as server:
            listening = await server.wait_for("relay_listening")
            yield server.port, Path(str(listening["cert"]))


def _write_test_file(path: Path, size: int) -> bytes:
    """A file of ``size`` random bytes; returns its SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as file:
        left = size
        while left > 0:
            piece = os.urandom(min(WRITE_PIECE, left))
            digest.update(piece)
            file.write(piece)
            left -= len(piece)
    return digest.digest()


def _sha256_of(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while piece := file.read(WRITE_PIECE):
            digest.update(piece)
    return digest.digest()


@asynccontextmanager
async def _connected(target: Target, device: BenchDevice) -> AsyncIterator[RelayClient]:
    async with connect_relay(target.host, target.port, ca=target.ca,
                             server_name="localhost") as client:
        await client.authenticate(device.user_id, device.device_id, device.key)
        yield client


async def _file_round(target: Target, alice: EncryptedDevice, bob: EncryptedDevice,
                      source: Path, downloads: Path) -> tuple[float, float, Path]:
    """Upload and download seconds of one encrypted file, and where it landed."""
    async with _connected(target, alice.credentials) as sending, \
            _connected(target, bob.credentials) as receiving, \
            Messenger.attach(sending, alice.profile, alice.crypto, alice.contacts) as sender, \
            Messenger.attach(receiving, bob.profile, bob.crypto, bob.contacts) as receiver:
        started = time.perf_counter()
        await sender.send_file(bob.credentials.phone, source)
        uploaded = time.perf_counter() - started
        async with aclosing(receiver.messages()) as messages:
            async for message in messages:
                if isinstance(message.content, FileMessage):
                    started = time.perf_counter()
                    saved = await download_file(receiving, message.content, downloads)
                    return uploaded, time.perf_counter() - started, saved
    raise RuntimeError("the file message never arrived")


async def run_files(target: Target, *, size: int, runs: int, time_limit: float,
                    relay_cpu: int | None) -> dict[str, Any]:
    """``runs`` rounds of an encrypted file of ``size`` bytes up and down through the relay,
    and as many of bare QUIC bulk transfer of its ciphertext's size."""
    transferred = ciphertext_size(size)
    alice_credentials, bob_credentials = await target.provisioner.provision(2)
    rounds: list[tuple[float, float]] = []
    bare: list[tuple[float, float]] = []
    intact = True
    with tempfile.TemporaryDirectory(prefix="bench-files-") as temporary:
        directory = Path(temporary)
        relay = f"{target.host}:{target.port}"
        alice = encrypted_device(alice_credentials, directory / "A", relay, target.ca)
        bob = encrypted_device(bob_credentials, directory / "B", relay, target.ca)
        for device in (alice, bob):
            device.profile.save()
        source = directory / "sent.bin"
        downloads = directory / "received"
        downloads.mkdir()
        expected = await trio.to_thread.run_sync(_write_test_file, source, size)
        async with _bulk_server(relay_cpu) as (bulk_port, bulk_cert):
            for run in range(1, runs + 1):
                # Each round runs both, one after the other: a machine whose load changes
                # during the run changes both sides of the ratio alike.
                with trio.fail_after(time_limit):
                    bare_up, bare_down = await _bare_round(bulk_port, bulk_cert, transferred)
                    upload, download, saved = await _file_round(target, alice, bob, source,
                                                                downloads)
                intact &= await trio.to_thread.run_sync(_sha256_of, saved) == expected
                saved.unlink()
                rounds.append((upload, download))
                bare.append((bare_up, bare_down))
                print(f"run {run}: upload {size / upload / MB:.1f} MB/s, download "
                      f"{size / download / MB:.1f} MB/s; bare QUIC "
                      f"{transferred / bare_up / MB:.1f} / {transferred / bare_down / MB:.1f}"
                      f" MB/s", file=sys.stderr, flush=True)

    def rate(byte_count: int, seconds: list[float]) -> float:
        return round(byte_count / statistics.median(seconds) / MB, 1)

    figures = {"upload_mb_per_second": rate(size, [up for up, _ in rounds]),
               "download_mb_per_second": rate(size, [down for _, down in rounds]),
               "bare_upload_mb_per_second": rate(transferred, [up for up, _ in bare]),
               "bare_download_mb_per_second": rate(transferred, [down for _, down in bare])}
    result: dict[str, Any] = {
        "scenario": "files", "size_bytes": size, "ciphertext_bytes": transferred,
        "runs": runs, **figures,
        "upload_over_bare": round(figures["upload_mb_per_second"]
                                  / figures["bare_upload_mb_per_second"], 2),
        "download_over_bare": round(figures["download_mb_per_second"]
                                    / figures["bare_download_mb_per_second"], 2),
        "intact": intact, "errors": 0 if intact else 1}
    if target.server is not None:
        result["relay_peak_rss_mib"] = round(peak_rss_mib(target.server.pid), 1)
    return result
