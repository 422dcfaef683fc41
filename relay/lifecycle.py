"""The relay process's life: signals, certificate reloads, a bounded shutdown.

* SIGTERM or SIGINT: ``RunningRelay.stop()`` (stop accepting, GOING_AWAY to every
  connection, let submitted commits finish, close the store); if that takes
  longer than ``STOP_DEADLINE_SECONDS`` everything left is cancelled, which
  loses nothing accepted (a send is answered only once it is committed).
* SIGHUP: reload the TLS certificate and key from disk for new connections;
  open connections keep theirs.
* With ``workers`` > 1 this process supervises worker processes instead
  (relay/supervisor.py), passing these signals on to them.

Before anything else the process takes the data directory's lock
(relay/data_dir.py) and holds it until it exits: a second relay on the same
directory is refused at once and touches nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import structlog
import trio

from relay.config import LoadedConfig
from relay.data_dir import DataDirLock, lock_data_dir
from relay.forwarding import Worker
from relay.server import RunningRelay, serve
from relay.settings import RelaySettings

__all__ = ["STOP_DEADLINE_SECONDS", "reload_certificate", "run_relay", "run_until_signalled"]

log = structlog.get_logger("relay.lifecycle")

STOP_DEADLINE_SECONDS = 15.0
"""Longest a stop may take before what is left is cancelled: under the 30 s an
orchestrator usually waits after SIGTERM before it sends SIGKILL."""


def certificate_paths(running: RunningRelay) -> tuple[Path, Path]:
    """The certificate and key files the relay serves (configured or generated)."""
    settings = running.context.settings
    if settings.cert is not None and settings.key is not None:
        return settings.cert, settings.key
    return running.cert_path, running.cert_path.with_name("key.pem")


def reload_certificate(running: RunningRelay) -> bool:
    """Load the certificate and key again for new connections; True if it worked.

    A broken pair (half-written during a rotation, mismatched) is logged and the
    current one stays in use: a reload never takes the relay down.
    """
    current = running.endpoint.configuration
    assert current is not None  # a server endpoint always has one
    cert, key = certificate_paths(running)
    renewed = dataclasses.replace(current, certificate=None, certificate_chain=[],
                                  private_key=None)
    try:
        renewed.load_cert_chain(str(cert), str(key))
    except (OSError, ValueError, TypeError) as error:
        log.error("certificate_reload_failed", error=type(error).__name__)
        return False
    running.endpoint.replace_configuration(renewed)
    log.info("certificate_reloaded")
    return True


def run_until_signalled(loaded: LoadedConfig) -> None:
    """Run a relay with ``loaded.settings`` until SIGTERM or SIGINT; return once it stopped.

    The data directory's lock is taken first and held throughout. With ``workers`` > 1
    this process supervises that many relay processes (relay/supervisor.py), which
    share its lock.

    Raises:
        DataDirectoryInUse: another relay (or a restore) holds the data directory.
        WorkerFailed: a worker process failed (the relay stopped).
    """
    with lock_data_dir(loaded.settings.data_dir, purpose="serve") as data_dir_lock:
        if loaded.settings.workers > 1:
            from relay.supervisor import supervise  # noqa: PLC0415 (only with several workers)

            trio.run(supervise, loaded, data_dir_lock)
            return
        trio.run(functools.partial(run_relay, loaded.settings, warnings=loaded.warnings,
                                   data_dir_lock=data_dir_lock))


async def run_relay(settings: RelaySettings, *, data_dir_lock: DataDirLock,
                    warnings: Sequence[str] = (),
                    worker: Worker | None = None,
                    on_ready: Callable[[RunningRelay], None] | None = None,
                    orphaned: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve until SIGTERM or SIGINT (or until ``orphaned`` returns), then stop.

    Args:
        data_dir_lock: the data directory's lock, held by this process (or, for a
            worker, by its supervisor, which passed it down).
        worker: run as one worker of several (relay/worker_process.py).
        on_ready: called once the relay listens.
        orphaned: returns when the supervisor of this worker is gone.
    """
    async with trio.open_nursery() as nursery:
        # Listen for signals before starting, so that one arriving during
        # start-up is handled rather than killing the process mid-way.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT,
                                       signal.SIGHUP) as signals:
            running: RunningRelay = await nursery.start(
                functools.partial(serve, settings, worker=worker,
                                  data_dir_lock=data_dir_lock))
            for warning in warnings:
                log.warning("configuration_warning", detail=warning)
            if on_ready is not None:
                on_ready(running)
            await _wait_for_stop(signals, running, orphaned)
            running.stop()
        nursery.cancel_scope.deadline = trio.current_time() + STOP_DEADLINE_SECONDS
    if nursery.cancel_scope.cancelled_caught:
        log.warning("stop_deadline_exceeded", seconds=STOP_DEADLINE_SECONDS)


async def _wait_for_stop(signals: AsyncIterator[int], running: RunningRelay,
                         orphaned: Callable[[], Awaitable[None]] | None) -> None:
    """Return on SIGTERM, SIGINT or ``orphaned()``; reload the certificate on SIGHUP."""
    async with trio.open_nursery() as waiting:
        if orphaned is not None:
            async def stop_when_orphaned() -> None:
                await orphaned()
                log.warning("supervisor_gone")
                waiting.cancel_scope.cancel()

            waiting.start_soon(stop_when_orphaned)
        async for received in signals:
            if received == signal.SIGHUP:
                reload_certificate(running)
                continue
            log.info("stop_requested", signal=signal.Signals(received).name)
            break
        waiting.cancel_scope.cancel()
