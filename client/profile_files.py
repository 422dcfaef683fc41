"""Private files of a profile: atomic writes nobody else can read or redirect, and one writer.

A profile holds private keys and the ratchet state whose message keys must never be used twice.
Two rules follow:

- **Writes are atomic and private.** `write_private` creates a temporary file with a random
  name, ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600 (so a leftover file or a symbolic link
  planted in the directory is never written through), fsyncs it, renames it over the target
  and fsyncs the directory (so the rename survives a crash). `tighten_directory` keeps the
  profile directory at 0700 even if it was created looser.
- **One writer at a time.** `ProfileLock` is an exclusive ``flock`` on ``profile.lock``. Every
  read-modify-write of the end-to-end state happens under it, so a second process on the same
  profile (``receive --follow`` beside ``send``) waits its turn, then reloads the state before
  changing it: two processes never encrypt from the same chain position. The wait is bounded
  (`PROFILE_LOCK_TIMEOUT_S`); after it, `ProfileBusyError` says which profile is busy.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import stat
from pathlib import Path

import trio

__all__ = ["LOCK_FILE", "PROFILE_LOCK_TIMEOUT_S", "ProfileBusyError", "ProfileLock",
           "tighten_directory", "write_private"]

LOCK_FILE = "profile.lock"
PROFILE_LOCK_TIMEOUT_S = 30.0
"""How long a process waits for another one on the same profile: a send holds the lock for a
few round trips, a ``receive --follow`` only while it decrypts one message."""
_LOCK_RETRY_S = 0.02
"""Interval between attempts to take the lock (``flock`` has no timeout of its own, and a
thread blocked in it could not be abandoned without leaking the lock it later takes)."""
PRIVATE_DIRECTORY_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


class ProfileBusyError(Exception):
    """Another process kept the profile locked for longer than the bounded wait."""

    def __init__(self, directory: Path, waited_s: float) -> None:
        super().__init__(f"another cryptopass process is using the profile {directory} "
                         f"(waited {waited_s:g} s); try again when it has finished")
        self.directory = directory


def tighten_directory(directory: Path) -> None:
    """Create ``directory`` (mode 0700) if needed, and narrow it to 0700 if it is looser."""
    directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIRECTORY_MODE)
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode != PRIVATE_DIRECTORY_MODE:
        directory.chmod(PRIVATE_DIRECTORY_MODE)


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, mode 0600, durable once this returns."""
    tighten_directory(path.parent)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(temporary, flags, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class ProfileLock:
    """The profile's exclusive lock; reentrant within one process (a depth count)."""

    def __init__(self, directory: Path, *, timeout_s: float = PROFILE_LOCK_TIMEOUT_S) -> None:
        self.directory = directory
        self.timeout_s = timeout_s
        self._descriptor: int | None = None
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._depth > 0

    async def acquire(self) -> None:
        """Take the lock, waiting at most ``timeout_s``.

        Raises:
            ProfileBusyError: another process held it all that time.
        """
        if self._depth:
            self._depth += 1
            return
        tighten_directory(self.directory)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        descriptor = os.open(self.directory / LOCK_FILE, flags, PRIVATE_FILE_MODE)
        deadline = trio.current_time() + self.timeout_s
        try:
            while not _try_lock(descriptor):
                if trio.current_time() >= deadline:
                    raise ProfileBusyError(self.directory, self.timeout_s)
                await trio.sleep(_LOCK_RETRY_S)
        except BaseException:
            os.close(descriptor)
            raise
        self._descriptor, self._depth = descriptor, 1

    def release(self) -> None:
        if self._depth == 0:
            raise RuntimeError("the profile lock is not held")
        self._depth -= 1
        if self._depth == 0 and self._descriptor is not None:
            descriptor, self._descriptor = self._descriptor, None
            fcntl.flock(descriptor, fcntl.LOCK_UN)
            os.close(descriptor)


def _try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
