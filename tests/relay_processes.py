"""Real relay processes for tests, through the bench's own tools.

Relays are started with `bench.spawn.spawn_relay` (the one way the bench starts them);
phones are declared in a relay's store as an operator would; a device is enrolled over
QUIC with the code the relay wrote to its SMS outbox (`bench.enrol_devices`, the bench's
one enrolment path).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from bench.enrol_devices import OutboxCodes, enrol_phones
from bench.provision import BenchDevice
from bench.spawn import BIN, SpawnedRelay
from client.connection import RelayClient, connect_relay
from enrolment import admin
from storage.store_url import open_store, parse_store_url

__all__ = ["BIN", "connect", "declare", "enrol"]


def connect(relay: SpawnedRelay) -> AbstractAsyncContextManager[RelayClient]:
    """A QUIC connection to ``relay``, trusting its development certificate."""
    return connect_relay(relay.host, relay.port, ca=relay.cert, server_name="localhost")


async def declare(store_url: str | None, data_dir: Path, phones: Sequence[str], *,
                  organisation: str) -> None:
    """Create ``organisation`` and declare the phones in the store (``store_url``, or
    SQLite in ``data_dir``), as an operator would."""
    async with open_store(parse_store_url(store_url, data_dir=data_dir)) as store:
        await admin.create_organisation(store, organisation, max(10, len(phones)), 0)
        for phone in phones:
            await admin.declare_user(store, organisation, phone, 0)


async def enrol(relay: SpawnedRelay, phone: str) -> BenchDevice:
    """Enrol a new device of the declared ``phone`` through ``relay``, as a phone does."""
    outcome = await enrol_phones(relay.host, relay.port, relay.cert, [phone],
                                 OutboxCodes(relay), concurrency=1)
    assert not outcome.errors, outcome.errors
    (device,) = outcome.devices
    return device
