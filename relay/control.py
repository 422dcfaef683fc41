"""The local control socket: lets operator commands reach a running relay.

Operator commands (``cryptopass-relay admin ...``) change the store directly,
so they work whether or not a relay runs. When one does, they also tell it
what changed so that it acts at once (e.g. closes a deleted user's
connections). The socket lives in the data directory with mode 0600: whoever
can write the store can already do everything it allows.

Only the holder of the data directory's lock (relay/data_dir.py) creates and
removes the socket: a relay refused because another runs never gets here, so
it cannot take the running relay's socket away. A socket found at start is a
killed relay's (its lock died with it) and is replaced; at the end, the relay
removes the socket only if it is still the one it bound.

Wire: one JSON object per line each way. Requests: ``{"op": "revoke-user",
"user_id": ...}``; answers: ``{"ok": true, "closed": N}`` or ``{"ok": false,
"error": ...}``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import structlog
import trio

from relay.context import RelayContext
from relay.data_dir import DataDirLock

__all__ = ["CONTROL_SOCKET_NAME", "notify_relay", "serve_control_socket"]

log = structlog.get_logger("relay.control")

CONTROL_SOCKET_NAME = "relay.sock"
MAX_CONTROL_LINE = 4096
"""Bytes in one control request: they are tiny."""


def _socket_path(directory_fd: int) -> str:
    # Bound through /proc/self/fd so that a deep data directory never exceeds
    # the 108-byte limit of a Unix socket path.
    return f"/proc/self/fd/{directory_fd}/{CONTROL_SOCKET_NAME}"


async def serve_control_socket(data_dir_lock: DataDirLock, context: RelayContext, *,
                               task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                               ) -> None:
    """Serve ``DATA_DIR/relay.sock`` until cancelled; only the lock's holder may."""
    data_dir = data_dir_lock.data_dir
    if not data_dir_lock.held:
        raise ValueError("the control socket is served under the data directory's lock")
    directory_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound: os.stat_result | None = None
    try:
        path = data_dir / CONTROL_SOCKET_NAME
        if path.is_socket():
            path.unlink()  # left by a relay that was killed (we hold the lock)
        old_umask = os.umask(0o177)
        try:
            await sock.bind(_socket_path(directory_fd))
        finally:
            os.umask(old_umask)
        bound = os.stat(CONTROL_SOCKET_NAME, dir_fd=directory_fd)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        task_status.started()

        async def handle(stream: trio.SocketStream) -> None:
            async with stream:
                request = await _read_line(stream)
                answer = _apply(request, context) if request is not None else {
                    "ok": False, "error": "malformed request"}
                await stream.send_all(json.dumps(answer).encode() + b"\n")

        await trio.serve_listeners(handle, [listener])
    finally:
        sock.close()
        try:
            if bound is not None and _is_same_file(directory_fd, bound):
                os.unlink(CONTROL_SOCKET_NAME, dir_fd=directory_fd)
        finally:
            os.close(directory_fd)


def _is_same_file(directory_fd: int, bound: os.stat_result) -> bool:
    try:
        now = os.stat(CONTROL_SOCKET_NAME, dir_fd=directory_fd)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (bound.st_dev, bound.st_ino)


def _apply(request: dict[str, Any], context: RelayContext) -> dict[str, Any]:
    if request.get("op") == "revoke-user" and isinstance(request.get("user_id"), str):
        closed = context.revoke_user(request["user_id"])
        log.info("user_revoked", connections_closed=closed)
        return {"ok": True, "closed": closed}
    return {"ok": False, "error": "unknown operation"}


async def _read_line(stream: trio.SocketStream) -> dict[str, Any] | None:
    buffer = b""
    while b"\n" not in buffer and len(buffer) < MAX_CONTROL_LINE:
        chunk = await stream.receive_some(MAX_CONTROL_LINE)
        if not chunk:
            break
        buffer += chunk
    try:
        value = json.loads(buffer.split(b"\n", 1)[0])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def notify_relay(data_dir: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """Send one request to the relay running on ``data_dir``; None if none runs."""
    directory_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            await sock.connect(_socket_path(directory_fd))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        stream = trio.SocketStream(sock)
        with trio.fail_after(5):
            await stream.send_all(json.dumps(request).encode() + b"\n")
            return await _read_line(stream)
    finally:
        sock.close()
        os.close(directory_fd)
