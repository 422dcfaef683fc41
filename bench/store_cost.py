"""The ``store-cost`` scenario: what durable storage costs the relay per message, with no
network at all.

    cryptopass-bench store-cost [--runs 3] [--messages 2000] [--batch 1 --batch 4 ...] [--json]

Drives the embedded store exactly as the relay does (``submit_send`` then
``submit_acknowledge`` for every envelope, ``batch`` writes in flight, so group
commit shares each commit among them) on a real SQLite file with the relay's
settings (FULL: a send's commit waits for the disk; acknowledgements commit without
waiting, see storage/group_commit.py), and reports the process CPU per send and per
acknowledgement: both threads, the trio side that submits and settles and the writer
that runs SQL. It is the floor under the relay's CPU per delivered message that no
transport work can remove (docs/BENCHMARKS.md compares it with the echo ceiling).

Each batch size in ``BATCHES`` (or those asked for) is measured in turn on one store:
paced traffic makes small groups (1 to 4 writes), a flood large ones. The writer does
not gather here (``gather_s`` 0): the bench submits exactly ``batch`` writes and waits,
so nothing more would come, and CPU, not latency, is what is measured.
"""

from __future__ import annotations

import pathlib
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from bench.provision import provision
from storage.base import NewSend, PendingResult, SendOutcome, Store
from storage.sqlite import open_sqlite_store

__all__ = ["measure"]

PAYLOAD_BYTES = 256
"""The size cryptopass-bench sends by default."""

DEVICES = 50
"""Senders and recipients the messages go round (each sends to the next)."""

TTL_MS = 30 * 24 * 3600 * 1000

BATCHES = (1, 4, 16, 64)
"""Writes in flight measured by default: paced traffic's small groups up to a flood's."""


async def _one_run(store: Store, devices: list[Any], organisation_id: int, *, messages: int,
                   batch: int, first_id: int) -> dict[str, float]:
    now = int(time.time() * 1000)
    sends: list[PendingResult[SendOutcome]] = []
    started = time.process_time()
    for number in range(messages):
        sender, recipient = devices[number % DEVICES], devices[(number + 1) % DEVICES]
        sends.append(store.submit_send(NewSend(
            sender_user_id=sender.user_id, sender_device_id=sender.device_id,
            recipient_user_id=recipient.user_id, client_message_id=first_id + number,
            payloads={recipient.device_id: bytes(PAYLOAD_BYTES)}, accepted_at=now,
            expires_at=now + TTL_MS, max_queue_depth=messages + 1, exclude_device_id=None,
            sender_organisation_id=organisation_id)))
        if len(sends) % batch == 0:
            await sends[-1].wait()  # committed in order: the whole group is done
    outcomes = [await pending.wait() for pending in sends]
    send_seconds = time.process_time() - started
    started = time.process_time()
    acknowledgements: list[PendingResult[int]] = []
    for outcome in outcomes:
        (envelope,) = outcome.envelopes
        acknowledgements.append(store.submit_acknowledge(
            user_id=envelope.recipient_user_id, device_id=envelope.recipient_device_id,
            envelope_ids=[envelope.envelope_id]))
        if len(acknowledgements) % batch == 0:
            await acknowledgements[-1].wait()
    deleted = sum([await pending.wait() for pending in acknowledgements])
    ack_seconds = time.process_time() - started
    if deleted != messages:
        raise RuntimeError(f"acknowledged {deleted} of {messages} envelopes")
    return {"send_cpu_us": send_seconds / messages * 1e6,
            "ack_cpu_us": ack_seconds / messages * 1e6}


async def measure(*, runs: int, messages: int,
                  batches: Sequence[int] = BATCHES) -> dict[str, Any]:
    """Median CPU per send and per acknowledgement over ``runs`` runs, for each batch size."""
    by_batch: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cryptopass-store-cost-") as directory:
        async with open_sqlite_store(pathlib.Path(directory) / "relay.db") as store:
            devices = await provision(store, organisation="store-cost", count=DEVICES,
                                      now=int(time.time() * 1000))
            principal = await store.load_principal(devices[0].user_id, devices[0].device_id)
            assert principal is not None
            first_id = 0
            for batch in batches:
                results = []
                commits_before = store.commit_count
                for _ in range(runs):
                    results.append(await _one_run(
                        store, devices, principal.organisation.organisation_id,
                        messages=messages, batch=batch, first_id=first_id))
                    first_id += messages
                commits = store.commit_count - commits_before
                by_batch[str(batch)] = _summary(results, commits / runs)
    return {"scenario": "store-cost", "runs": runs, "messages": messages,
            "batches": by_batch}


def _summary(results: list[dict[str, float]], commits_per_run: float) -> dict[str, Any]:
    send = statistics.median(result["send_cpu_us"] for result in results)
    acknowledge = statistics.median(result["ack_cpu_us"] for result in results)
    return {"send_cpu_us": [round(result["send_cpu_us"], 1) for result in results],
            "ack_cpu_us": [round(result["ack_cpu_us"], 1) for result in results],
            "median_send_cpu_us": round(send, 1), "median_ack_cpu_us": round(acknowledge, 1),
            "median_cpu_us_per_message": round(send + acknowledge, 1),
            "commits_per_run": round(commits_per_run, 1)}
