"""Several `bench.worker` processes driving one ``live`` run, kept in step.

Each worker announces the phases it reaches (every device connected and ready to
receive; for encrypted runs, also every device's prekeys published); the pool lets
them all go on together once every worker is there. So no worker sends before every
device can receive, and the relay's CPU is measured from the moment they all start.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import trio

from bench.live_link import LiveResult
from bench.provision import BenchDevice
from bench.spawn import BIN
from bench.worker import GO, PHASE_PREFIX

__all__ = ["merge_results", "run_workers"]

START_PHASE = "start"
"""The phase after which the workers send (`bench.live.run_live`)."""
STDERR_KEPT = 300
"""Characters of a failed worker's standard error quoted in its error."""


class _Rendezvous:
    """Workers wait here for each other at each named phase; one that ended early
    no longer counts, so the others never wait for it."""

    def __init__(self, workers: int) -> None:
        self.remaining = workers
        self.arrivals: dict[str, int] = {}
        self.released: dict[str, trio.Event] = {}

    async def meet(self, phase: str) -> None:
        self.arrivals[phase] = self.arrivals.get(phase, 0) + 1
        self.released.setdefault(phase, trio.Event())
        self._release()
        await self.released[phase].wait()

    def leave(self) -> None:
        self.remaining -= 1
        self._release()

    def _release(self) -> None:
        for phase, count in self.arrivals.items():
            if count >= self.remaining:
                self.released[phase].set()


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    pending = b""
    async for chunk in stream:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.decode()
    if pending:
        yield pending.decode()


async def run_workers(devices: list[BenchDevice], slices: list[tuple[int, ...]],
                      on_start: Callable[[], None], **settings: Any) -> list[LiveResult]:
    """Run one worker per slice of ``devices``; ``on_start`` is called once, when they all
    start sending. ``settings`` are the remaining `bench.live.LiveConfig` fields."""
    rendezvous = _Rendezvous(len(slices))
    started = [False]
    results: list[LiveResult] = []
    common = {"devices": [device.to_json() for device in devices], **settings}

    async def one(local: tuple[int, ...]) -> None:
        errors = bytearray()
        answer: LiveResult | None = None
        try:
            async with trio.open_nursery() as nursery:
                process: trio.Process = await nursery.start(partial(
                    trio.run_process, [str(BIN / "cryptopass-bench"), "internal", "live-worker"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    check=False))
                assert process.stdin and process.stdout and process.stderr
                nursery.start_soon(_collect, process.stderr, errors)
                request = {**common, "local": list(local)}
                await process.stdin.send_all(json.dumps(request).encode() + b"\n")
                async for line in _lines(process.stdout):
                    if line.startswith(PHASE_PREFIX):
                        phase = line.removeprefix(PHASE_PREFIX)
                        await rendezvous.meet(phase)
                        if phase == START_PHASE and not started[0]:
                            started[0] = True
                            on_start()
                        with contextlib.suppress(trio.BrokenResourceError):  # It died: see below.
                            await process.stdin.send_all(f"{GO}\n".encode())
                    elif line.startswith("{"):
                        answer = LiveResult(**json.loads(line))
        finally:
            rendezvous.leave()
        if answer is None:
            answer = LiveResult()
            answer.error(f"worker failed: {errors.decode(errors='replace')[-STDERR_KEPT:]}")
        results.append(answer)

    async with trio.open_nursery() as nursery:
        for local in slices:
            nursery.start_soon(one, local)
    return results


async def _collect(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    async for chunk in stream:
        into += chunk


def merge_results(results: list[LiveResult]) -> LiveResult:
    """One result for the whole run from each process's."""
    merged = LiveResult()
    for result in results:
        merged.sent += result.sent
        merged.delivered += result.delivered
        merged.expected += result.expected
        merged.errors += result.errors
        merged.error_samples += result.error_samples
        merged.duplicates += result.duplicates
        merged.latencies_ms += result.latencies_ms
        merged.warm_up_received += result.warm_up_received
        merged.load_cpu_seconds += result.load_cpu_seconds
        merged.datagrams += result.datagrams
        merged.last_receipt_ns = max(merged.last_receipt_ns, result.last_receipt_ns)
    starts = [result.first_send_ns for result in results if result.first_send_ns]
    merged.first_send_ns = min(starts) if starts else 0
    return merged
