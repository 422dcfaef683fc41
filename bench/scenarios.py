"""The scenarios of ``cryptopass-bench``; each returns its JSON-ready result.

Every result has ``errors`` (with ``error_samples``), and for a relay the bench started
``server_peak_rss_mib``. A result reports only what its scenario measures: ``live`` and
``offline`` (which move messages) have ``messages_per_second`` and
``server_cpu_us_per_message``, and ``live`` ``latency_ms`` (p50/p95/p99); ``enrol`` has
``enrolments_per_second`` and ``server_cpu_us_per_enrolment``; ``connections`` has
``connections_per_second`` and the memory each connection holds.
"""

from __future__ import annotations

import secrets
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import trio

from bench.encrypted_offline import OfflineCounts, queue_and_drain_encrypted
from bench.enrol_devices import enrol_phones
from bench.live import LiveConfig, LiveResult, connect_devices, run_live
from bench.progress import progress_of
from bench.provision import BenchDevice
from bench.provisioners import fresh_phones
from bench.spawn import cpu_seconds, peak_rss_mib, rss_mib
from bench.stats import latency_summary
from bench.stats import rate as rate_of
from bench.worker_pool import merge_results, run_workers
from client.connection import connect_relay, open_client_endpoint
from wire.frames import Deliver, QueueEmpty

if TYPE_CHECKING:
    from bench.target import Target

__all__ = ["connections", "enrol", "live", "offline"]


def _server_costs(target: Target, cpu_before: float | None, count: int, *,
                  unit: str = "message") -> dict[str, Any]:
    """The relay's CPU per ``unit`` counted and its peak RSS (None for a relay reached, not
    started: its process is not ours to measure)."""
    key = f"server_cpu_us_per_{unit}"
    if target.server is None or cpu_before is None:
        return {key: None, "server_peak_rss_mib": None}
    used = cpu_seconds(target.server.pid) - cpu_before
    return {key: round(used / count * 1e6, 1) if count else None,
            "server_peak_rss_mib": round(peak_rss_mib(target.server.pid), 1)}


def _cpu_now(target: Target) -> float | None:
    return cpu_seconds(target.server.pid) if target.server is not None else None


async def live(target: Target, *, devices: int, messages: int, size: int, rate: float,
               window: int, processes: int, time_limit: float,
               encrypted: bool = False) -> dict[str, Any]:
    provisioned = await target.provisioner.provision(devices)
    seed = secrets.randbits(32)
    slices = [tuple(range(devices))[number::processes] for number in range(processes)]
    cpu_before: list[float | None] = [None]

    def measure_from_here() -> None:
        # After the handshakes: the relay's CPU per message excludes connecting.
        cpu_before[0] = _cpu_now(target)

    if processes == 1:
        counting = LiveResult()
        async with progress_of("delivered", devices * messages, lambda: counting.delivered):
            results = [await run_live(LiveConfig(
                host=target.host, port=target.port, ca=target.ca, devices=tuple(provisioned),
                local=slices[0], messages=messages, size=size, rate=rate, window=window,
                seed=seed, encrypted=encrypted, timeout=time_limit),
                counting, measure_from_here)]
    else:
        results = await run_workers(
            provisioned, slices, measure_from_here, host=target.host, port=target.port,
            ca=str(target.ca) if target.ca else None, messages=messages, size=size,
            rate=rate / processes, window=window, seed=seed, encrypted=encrypted,
            timeout=time_limit)
    merged = merge_results(results)
    seconds = max(0.0, (merged.last_receipt_ns - merged.first_send_ns) / 1e9)
    return {"scenario": "live", "devices": devices, "messages_per_device": messages,
            "size": size, "target_rate": rate, "processes": processes, "encrypted": encrypted,
            "sent": merged.sent, "delivered": merged.delivered, "expected": merged.expected,
            "seconds": round(seconds, 3),
            "messages_per_second": rate_of(merged.delivered, seconds),
            "latency_ms": latency_summary(merged.latencies_ms),
            "errors": merged.errors, "error_samples": merged.error_samples,
            "duplicates": merged.duplicates,
            # What sending and receiving cost the bench itself (encrypted: the library's work).
            "load_cpu_us_per_message": (round(merged.load_cpu_seconds / merged.delivered * 1e6, 1)
                                        if merged.delivered else None),
            # Packets are what the relay's CPU follows (docs/BENCHMARKS.md).
            "server_datagrams_per_message": (round(merged.datagrams / merged.delivered, 2)
                                             if merged.delivered else None),
            **_server_costs(target, cpu_before[0], merged.delivered)}



async def offline(target: Target, *, messages: int, size: int, window: int,
                  time_limit: float, encrypted: bool = False) -> dict[str, Any]:
    sender, recipient = await target.provisioner.provision(2)
    if encrypted:
        counts = await queue_and_drain_encrypted(
            target.host, target.port, target.ca, sender, recipient, messages=messages,
            size=size, window=window, time_limit=time_limit,
            cpu_now=lambda: _cpu_now(target))
    else:
        counts = await _queue_and_drain(target, sender, recipient, messages=messages,
                                        size=size, window=window, time_limit=time_limit)
    accepted, drained = counts.accepted, counts.drained
    result: dict[str, Any] = {
        "scenario": "offline", "messages": messages, "size": size, "window": window,
        "encrypted": encrypted, "accepted": accepted, "drained": drained,
        "accept_seconds": round(counts.accept_seconds, 3),
        "accepted_per_second": rate_of(accepted, counts.accept_seconds),
        "drain_seconds": round(counts.drain_seconds, 3),
        "messages_per_second": rate_of(drained, counts.drain_seconds),
        "errors": len(counts.errors) + (accepted - drained),
        "error_samples": counts.errors[:5],
    }
    if (target.server is not None and counts.cpu_start is not None
            and counts.cpu_accepted is not None):
        end = cpu_seconds(target.server.pid)
        result["server_cpu_us_per_accept"] = round(
            (counts.cpu_accepted - counts.cpu_start) / max(accepted, 1) * 1e6, 1)
        result["server_cpu_us_per_message"] = round(
            (end - counts.cpu_accepted) / max(drained, 1) * 1e6, 1)
        result["server_peak_rss_mib"] = round(peak_rss_mib(target.server.pid), 1)
    return result


async def _queue_and_drain(target: Target, sender: BenchDevice, recipient: BenchDevice, *,
                           messages: int, size: int, window: int,
                           time_limit: float) -> OfflineCounts:
    payload = bytes(size)
    counts = OfflineCounts()
    errors = counts.errors
    counts.cpu_start = _cpu_now(target)
    async with open_client_endpoint(target.host) as endpoint:
        async with connect_relay(target.host, target.port, ca=target.ca,
                                 server_name="localhost", endpoint=endpoint) as client:
            await client.authenticate(sender.user_id, sender.device_id, sender.key)
            started = time.perf_counter()
            slots = trio.Semaphore(window)
            number_sent = [0]

            async def send(number: int) -> None:
                try:
                    await client.send(recipient.user_id, {recipient.device_id: payload},
                                      client_message_id=number)
                except Exception as error:  # counted and reported, never fatal
                    errors.append(str(error))
                finally:
                    slots.release()

            with trio.fail_after(time_limit):
                async with progress_of("accepted", messages,
                                       lambda: number_sent[0]), trio.open_nursery() as nursery:
                    for number in range(messages):
                        number_sent[0] = number
                        await slots.acquire()
                        nursery.start_soon(send, number)
            counts.accept_seconds = time.perf_counter() - started
        counts.accepted = messages - len(errors)
        counts.cpu_accepted = _cpu_now(target)
        async with connect_relay(target.host, target.port, ca=target.ca,
                                 server_name="localhost", endpoint=endpoint) as client:
            started = time.perf_counter()
            await client.authenticate(recipient.user_id, recipient.device_id, recipient.key)
            with trio.fail_after(time_limit):
                async for delivery in client.deliveries():
                    if isinstance(delivery, QueueEmpty):
                        break
                    if isinstance(delivery, Deliver):
                        counts.drained += 1
                        client.acknowledge(delivery.envelope_id)
            await client.settle()
            counts.drain_seconds = time.perf_counter() - started
    return counts


async def enrol(target: Target, *, devices: int, concurrency: int) -> dict[str, Any]:
    """Declare fresh numbers, then enrol one device per number as phones do."""
    assert target.codes is not None  # bench/target.py refuses enrol without a code source
    phones = fresh_phones(devices)
    started = time.perf_counter()
    cpu_before = _cpu_now(target)
    await target.provisioner.declare(phones)
    outcome = await enrol_phones(target.host, target.port, target.ca, phones, target.codes,
                                 concurrency=concurrency)
    seconds = time.perf_counter() - started
    enrolled = len(outcome.devices)
    return {"scenario": "enrol", "devices": devices, "concurrency": concurrency,
            "enrolled": enrolled, "seconds": round(seconds, 3),
            "enrolments_per_second": rate_of(enrolled, seconds),
            "errors": len(outcome.errors), "error_samples": outcome.errors[:5],
            **_server_costs(target, cpu_before, enrolled, unit="enrolment")}


async def connections(target: Target, *, devices: int, processes: int) -> dict[str, Any]:
    provisioned = await target.provisioner.provision(devices)
    server = target.server
    baseline = rss_mib(server.pid) if server is not None else None
    started = time.perf_counter()
    async with open_client_endpoint(target.host) as endpoint, AsyncExitStack() as stack:
        failures: list[str] = []
        clients = await connect_devices(stack, endpoint, target.host, target.port, target.ca,
                                        provisioned, failures=failures)
        connect_seconds = time.perf_counter() - started
        # Every device is authenticated and its delivery stream open: the relay is idle.
        held = rss_mib(server.pid) if server is not None else None
    result: dict[str, Any] = {
        "scenario": "connections", "devices": devices, "connected": len(clients),
        "connect_seconds": round(connect_seconds, 3),
        "connections_per_second": rate_of(len(clients), connect_seconds),
        "errors": devices - len(clients), "error_samples": failures[:5],
        "server_peak_rss_mib": round(peak_rss_mib(server.pid), 1) if server else None,
    }
    if baseline is not None and held is not None:
        result["server_rss_before_mib"] = round(baseline, 1)
        result["server_rss_held_mib"] = round(held, 1)
        result["server_kib_per_connection"] = round((held - baseline) * 1024 / devices, 1)
    return result


