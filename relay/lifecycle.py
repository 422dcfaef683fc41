"""The relay process's life: signals, certificate reloads, a bounded shutdown.

* SIGTERM or SIGINT: ``RunningRelay.stop()`` (stop accepting, GOING_AWAY to every
  connection, let submitted commits finish, close the store); if that takes
  longer than ``STOP_DEADLINE_SECONDS`` everything left is cancelled, which
  loses nothing accepted (a send is answered only once it is committed).
* SIGHUP: reload the TLS certificate and key from disk for new connections;
  open connections keep theirs.
"""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import structlog
import trio

from relay.config import LoadedConfig
from relay.server import RunningRelay, serve

__all__ = ["STOP_DEADLINE_SECONDS", "reload_certificate", "run_until_signalled"]

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
    """Run a relay with ``loaded.settings`` until SIGTERM or SIGINT; return once it stopped."""

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            # Listen for signals before starting, so that one arriving during
            # start-up is handled rather than killing the process mid-way.
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT,
                                           signal.SIGHUP) as signals:
                running: RunningRelay = await nursery.start(serve, loaded.settings)
                for warning in loaded.warnings:
                    log.warning("configuration_warning", detail=warning)
                async for received in signals:
                    if received == signal.SIGHUP:
                        reload_certificate(running)
                        continue
                    log.info("stop_requested", signal=signal.Signals(received).name)
                    running.stop()
                    break
            nursery.cancel_scope.deadline = trio.current_time() + STOP_DEADLINE_SECONDS
        if nursery.cancel_scope.cancelled_caught:
            log.warning("stop_deadline_exceeded", seconds=STOP_DEADLINE_SECONDS)

    trio.run(run)
