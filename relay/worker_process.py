"""One worker process of ``serve --workers N`` (``python -m relay.worker_process``).

Started by relay/supervisor.py, never by hand. It reads one JSON line on
standard input: its index, the worker count, the numbers of the descriptors it
inherited (its UDP socket on the shared port, its forwarding socket and one
towards each other worker, the supervisor's lock on the data directory) and its
settings, which are validated again here. The worker holds that lock with the
supervisor (relay/data_dir.py); it never takes one of its own.
It writes ``ready`` on standard output once it listens. Standard input stays
open: end of file means the supervisor is gone (even killed), and the worker
stops as on SIGTERM, so no worker outlives it holding the port.

Every log line carries ``worker``: the index.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
from typing import Any

import psycopg
import structlog
import trio

from relay.config import ConfigError, load_config
from relay.data_dir import DataDirectoryInUse, inherit_data_dir_lock
from relay.forwarding import Worker, WorkerRouting
from relay.lifecycle import run_relay
from relay.logs import configure_logging
from relay.server import RunningRelay
from relay.supervisor import LAUNCH_FORMAT_VERSION, READY_LINE, one_write_per_log_line

__all__ = ["main"]

log = structlog.get_logger("relay.worker")

MAX_LAUNCH_BYTES = 64 * 1024
"""The launch message is about a kilobyte of settings; more is a mistake."""

_STANDARD_INPUT = 0


def _report_ready(_running: RunningRelay) -> None:
    os.write(sys.stdout.fileno(), READY_LINE)


async def _supervisor_gone() -> None:
    """Return when standard input (kept open by the supervisor) reaches end of file."""
    stream = trio.lowlevel.FdStream(os.dup(_STANDARD_INPUT))
    async with stream:
        while await stream.receive_some():
            pass


def _worker(launch: dict[str, Any]) -> Worker:
    index, count = int(launch["index"]), int(launch["count"])
    udp = socket.socket(fileno=int(launch["udp_fd"]))
    receive = socket.socket(fileno=int(launch["receive_fd"]))
    peers = {int(other): socket.socket(fileno=int(fd))
             for other, fd in launch["peer_fds"].items()}
    for sock in (udp, receive, *peers.values()):
        sock.setblocking(False)
    routing = WorkerRouting(worker_index=index, worker_count=count, receive_socket=receive,
                            peer_sockets=peers)
    return Worker(index=index, udp_socket=udp, routing=routing)


def main() -> int:
    launch = json.loads(sys.stdin.buffer.readline(MAX_LAUNCH_BYTES))
    if launch.get("version") != LAUNCH_FORMAT_VERSION:
        print(f"error: unknown launch message version {launch.get('version')!r}",
              file=sys.stderr)
        return 1
    try:
        settings = load_config(environ={}, flags=launch["settings"]).settings
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    one_write_per_log_line()
    configure_logging(settings.log_format, settings.log_level)
    structlog.contextvars.bind_contextvars(worker=int(launch["index"]))
    worker = _worker(launch)
    try:
        data_dir_lock = inherit_data_dir_lock(settings.data_dir, int(launch["lock_fd"]))
    except (OSError, ValueError, DataDirectoryInUse) as error:
        log.error("worker_start_failed", error=str(error))
        worker.routing.close()
        worker.udp_socket.close()
        return 1
    try:
        trio.run(functools.partial(run_relay, settings, worker=worker,
                                   data_dir_lock=data_dir_lock,
                                   on_ready=_report_ready, orphaned=_supervisor_gone))
    except (OSError, psycopg.OperationalError) as error:
        log.error("worker_start_failed", error=str(error))
        return 1
    except ExceptionGroup as group:  # raised from inside serve's nursery
        unreachable, _ = group.split((OSError, psycopg.OperationalError))
        if unreachable is None:
            raise
        log.error("worker_start_failed", error=str(unreachable.exceptions[0]))
        return 1
    finally:
        worker.routing.close()
        worker.udp_socket.close()
        data_dir_lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
