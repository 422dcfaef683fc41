"""The ``memory`` scenario: where an idle device connection's memory goes, inside a relay.

``cryptopass-bench memory --devices 1000 [--tracemalloc] [--json]``

A relay runs in this process (so its objects can be inspected); a child process
(``cryptopass-bench internal hold-devices``, `hold_devices`) provisions the devices,
connects and authenticates them over loopback QUIC and holds them until told to go.
Once they are held the report gives:

* RSS per connection (compare runs without ``--tracemalloc``: tracing costs
  memory of its own);
* with ``--tracemalloc``, the Python heap grown per connection, by source
  line and by file;
* the anatomy of a connection: the bytes reachable from one connection and
  from no other object of the relay, by attribute of aioquic's
  ``QuicConnection``, of the ``QuicLink``, of the ``DeviceSession`` and of its
  delivery task, and by object type (the mean over a sample of connections);
* native memory outside the Python heap (OpenSSL contexts behind
  ``cryptography``'s AEAD and header-protection objects, the TLS key
  schedule's hash), measured by creating many such objects and reading RSS in a fresh
  process (``cryptopass-bench internal native-costs``).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import tracemalloc
import types
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from bench.spawn import BIN, rss_mib

__all__ = ["connection_anatomy", "hold_devices", "measure", "native_costs"]

SAMPLE_CONNECTIONS = 20
"""Connections whose object graph is walked (the walk is slow; the mean is stable)."""

NATIVE_OBJECTS = 20_000
"""Objects created to measure one native object's RSS (enough to dwarf allocator noise)."""

SETTLE_SECONDS = 1.0
"""Left to the relay after the last device authenticates, for its last ACKs and timers."""

LEAF_TYPES = (type, types.ModuleType, types.BuiltinFunctionType, types.CodeType)
"""Objects never counted: classes, modules and builtins are shared by every connection."""


def _relative(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _reach(roots: Iterable[object], stop: set[int]) -> Iterator[object]:
    """Every object reachable from ``roots`` without passing through ``stop`` (ids),
    depth first; ``stop`` is extended with what is yielded."""
    pending = [root for root in roots if id(root) not in stop]
    while pending:
        item = pending.pop()
        if id(item) in stop or isinstance(item, LEAF_TYPES):
            continue
        stop.add(id(item))
        yield item
        pending.extend(gc.get_referents(item))


def _roots_of(link: Any, tasks_by_pump: dict[int, Any]) -> list[tuple[str, object]]:
    """The named parts of one connection, in the order bytes are attributed to them.

    A part named ``X (object)`` is the object alone; its attributes follow as parts.
    """
    quic = link.quic
    roots: list[tuple[str, object]] = [("quic (object)", quic)]
    roots += [(f"quic.{name}", value) for name, value in vars(quic).items()]
    roots.append(("link (object)", link))
    roots += [(f"link.{name}", getattr(link, name)) for name in type(link).__slots__
              if name not in ("quic", "handler", "_endpoint")]
    session = link.handler
    if session is not None:
        pump = getattr(session, "_pump", None)
        if pump is not None:  # before the session, which reaches it
            roots.append(("pump (object)", pump))
            roots += [(f"pump.{name}", value) for name, value in vars(pump).items()
                      if name != "_wakeup"]  # the event's waiter is the task, next
            task = tasks_by_pump.get(id(pump))
            if task is not None:
                roots.append(("delivery task", task))
        roots.append(("session (object)", session))
        roots += [(f"session.{name}", value) for name, value in vars(session).items()]
    return roots


def _parts(roots: list[tuple[str, object]], stop: set[int]) -> Iterator[tuple[str, object]]:
    """(part name, object) for every object of ``roots`` not in ``stop`` (extended)."""
    for name, root in roots:
        if name.endswith("(object)"):
            if id(root) not in stop:
                stop.add(id(root))
                yield name, root
            continue
        for item in _reach([root], stop):
            yield name, item


def _tasks_by_pump(nursery: Any) -> dict[int, Any]:
    """The relay's per-device delivery tasks, keyed by the id of the pump they run."""
    found: dict[int, Any] = {}
    for task in nursery.child_tasks:
        frame = getattr(task.coro, "cr_frame", None)
        pump = frame.f_locals.get("pump") if frame is not None else None
        if pump is not None:
            found[id(pump)] = task
    return found


def connection_anatomy(links: list[Any], preexisting: set[int],
                       nursery: Any) -> dict[str, Any]:
    """Bytes (``sys.getsizeof``) reachable from a connection and from no other one.

    Objects that existed before any device connected (configuration, endpoint,
    store, modules) are shared; so is whatever a reference connection also
    reaches (interned names, small integers, shared epoch sets).

    Returns:
        mean bytes per connection by part and by type, and the sample size.
    """
    tasks_by_pump = _tasks_by_pump(nursery)
    reference, *sample = links[: SAMPLE_CONNECTIONS + 1]
    shared = set(preexisting)
    shared.update(id(item) for _, item in _parts(
        _roots_of(reference, tasks_by_pump), set(preexisting)))
    by_part: Counter[str] = Counter()
    by_type: Counter[str] = Counter()
    count_by_type: Counter[str] = Counter()
    for link in sample:
        visited = set(shared)
        for name, item in _parts(_roots_of(link, tasks_by_pump), visited):
            size = sys.getsizeof(item)
            kind = f"{type(item).__module__}.{type(item).__qualname__}"
            by_part[name] += size
            by_type[kind] += size
            count_by_type[kind] += 1
    count = max(len(sample), 1)
    return {
        "sample": len(sample),
        "bytes_per_connection": round(sum(by_part.values()) / count),
        "by_part": {name: round(size / count) for name, size in by_part.most_common()
                    if size / count >= 16},
        "by_type": {kind: {"bytes": round(size / count),
                           "objects": round(count_by_type[kind] / count, 1)}
                    for kind, size in by_type.most_common(40)},
    }


def native_costs() -> dict[str, float]:
    """RSS in bytes per object for the native-backed objects a connection holds.

    Each figure is the RSS growth for NATIVE_OBJECTS objects divided by their
    number (Python part included); run it in a fresh process.
    """
    from aioquic._crypto import AEAD, HeaderProtection  # noqa: PLC0415
    from aioquic.tls import CipherSuite, KeySchedule  # noqa: PLC0415

    makers: dict[str, Callable[[], object]] = {
        "aead_aes128gcm": lambda: AEAD(b"aes-128-gcm", os.urandom(16), os.urandom(12)),
        "header_protection_aes128": lambda: HeaderProtection(b"aes-128-ecb", os.urandom(16)),
        "key_schedule_sha256": lambda: KeySchedule(CipherSuite.AES_128_GCM_SHA256),
    }
    costs: dict[str, float] = {}
    kept: list[list[object]] = []  # nothing freed: each growth is fresh memory
    for name, make in makers.items():
        make()  # warm caches (cipher fetch, provider) before measuring
        gc.collect()
        before = rss_mib(os.getpid())
        objects = [make() for _ in range(NATIVE_OBJECTS)]
        costs[name] = round((rss_mib(os.getpid()) - before) * 1024 * 1024 / len(objects))
        kept.append(objects)
    return costs


def _tracemalloc_report(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot,
                        connections: int, top: int) -> dict[str, Any]:
    def grouped(key: str) -> dict[str, float]:
        stats = after.compare_to(before, key)
        return {f"{_relative(stat.traceback[0].filename)}"
                + (f":{stat.traceback[0].lineno}" if key == "lineno" else ""):
                round(stat.size_diff / connections)
                for stat in stats[:top] if stat.size_diff > 0}

    total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return {"heap_bytes_per_connection": round(total / connections),
            "by_file": grouped("filename"), "by_line": grouped("lineno")}


async def measure(devices: int, *, trace: bool, top: int) -> dict[str, Any]:
    """The report for ``devices`` idle connections (``trace``: with tracemalloc's ``top``
    files and lines)."""
    from relay.server import serve  # noqa: PLC0415
    from relay.settings import RelaySettings  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="connection-memory-") as directory:
        # Every device connects from loopback: one address, far more than an address may hold.
        settings = RelaySettings(data_dir=Path(directory) / "relay", listen_port=0,
                                 connections_per_address=devices + 1)
        settings.data_dir.mkdir()
        async with trio.open_nursery() as nursery:
            running = await nursery.start(serve, settings)
            gc.collect()
            keep_alive = gc.get_objects()  # their ids stay theirs while we hold them
            preexisting = {id(item) for item in keep_alive}
            rss_before = rss_mib(os.getpid())
            if trace:
                tracemalloc.start()
                snapshot_before = tracemalloc.take_snapshot()
            command = [str(BIN / "cryptopass-bench"), "internal", "hold-devices",
                       str(settings.data_dir), str(running.address[1]),
                       str(running.cert_path), str(devices)]
            child = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            try:
                assert child.stdout is not None and child.stdin is not None
                answer = b""
                while not answer.endswith(b"\n"):
                    chunk = await child.stdout.receive_some()
                    if not chunk:
                        raise RuntimeError("the client process ended before holding its devices")
                    answer += chunk
                held = json.loads(answer)
                await trio.sleep(SETTLE_SECONDS)
                gc.collect()
                links = [link for link in running.endpoint.links if link.handler is not None]
                result: dict[str, Any] = {"scenario": "memory", "devices": devices, **held,
                                          "links": len(links),
                                          "errors": devices - int(held["connected"])}
                rss_held = rss_mib(os.getpid())
                result["rss_kib_per_connection"] = round(
                    (rss_held - rss_before) * 1024 / max(len(links), 1), 1)
                if trace:
                    snapshot_after = tracemalloc.take_snapshot()
                    tracemalloc.stop()
                    result["tracemalloc"] = _tracemalloc_report(
                        snapshot_before, snapshot_after, max(len(links), 1), top)
                result["anatomy"] = connection_anatomy(
                    links, preexisting, running.context.nursery)
                await child.stdin.aclose()
                await child.wait()
            finally:
                if child.returncode is None:
                    child.kill()
            del keep_alive
            running.stop()
    # In a fresh process: freed relay memory would hide the growth here.
    measured = await trio.run_process(
        [str(BIN / "cryptopass-bench"), "internal", "native-costs"], capture_stdout=True)
    result["native_bytes_per_object"] = json.loads(measured.stdout)
    return result


async def hold_devices(data_dir: Path, port: int, ca: Path, devices: int) -> None:
    """Child side: provision ``devices`` in the relay's store (``data_dir``), connect and
    authenticate them, print a JSON line, and hold them until standard input ends."""
    from bench.live import connect_devices  # noqa: PLC0415
    from bench.provisioners import StoreProvisioner  # noqa: PLC0415
    from client.connection import open_client_endpoint  # noqa: PLC0415
    from storage.store_url import parse_store_url  # noqa: PLC0415

    location = parse_store_url(None, data_dir=data_dir)
    provisioned = await StoreProvisioner(location).provision(devices)
    async with open_client_endpoint("127.0.0.1") as endpoint, AsyncExitStack() as stack:
        failures: list[str] = []
        clients = await connect_devices(stack, endpoint, "127.0.0.1", port, ca, provisioned,
                                        failures=failures)
        print(json.dumps({"connected": len(clients), "failures": failures[:3]}), flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        while await stdin.receive_some():
            pass
